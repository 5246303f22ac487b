"""Latency and compute of the pushed cascade for requests of N candidates (default N = 1000; K,
the candidates routed to the heavy model, as the cascade's own routing policy decides, its mean
over the requests), each beside a dense matrix product of the same FLOPs timed in the same
process (benchmarks/serving_profile.py's reference):

- in-process: the `cascade`, `light` and `heavy` (on all N) signatures;
- through `hap serve` over gRPC (a separate process), with 1, 4 and 16 concurrent clients
  (threads of this process sending requests back to back): p50, p99 and requests per second,
  also per core; one client's p50 against the in-process p50 is what the server adds.

The in-process rows and the one-client row are timed in `--rounds` rounds, in alternation, and
reported as medians of the rounds; a time on two shared cores drifts within minutes.

FLOPs per request come from the per-part counts the assembler stored with the model
(serving/flops.py), counting the models as served: both light towers for every candidate and
the heavy model for the routed ones.

    .venv/bin/python benchmarks/serving_latency.py --run demo/run --data demo/data [--requests 200]

Requests are the data's funnel/ requests (a whole retrieval result each), cut or cycled to N
rows; without funnel/, N sample rows under one request's user. Prints a markdown table and
writes results/serving_latency.json.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent import futures

import hap  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf

from hap.data import contract as c
from hap.data import reader
from hap.serving import cascade, client, flops, model_versions
from hap.serving import request as rq
from results import command_line, load, render_table, table, write_result


def build_requests(data_dir: str, features: c.FeatureSet, n: int, count: int) -> list[dict]:
    part = c.FUNNEL_DIR if os.path.isdir(os.path.join(data_dir, c.FUNNEL_DIR)) else c.SAMPLES_DIR
    by_request = collections.OrderedDict()
    for row in reader.read_rows(data_dir, part, c.load_features(data_dir)):
        by_request.setdefault(row["request_id"], []).append(row)
    if part == c.SAMPLES_DIR:
        # Logged requests are small: each user gets N candidates from the whole pool
        # (from_rows takes the user and context features from a request's first row).
        pool = [r for rows in by_request.values() for r in rows]
        groups = [[rows[0]] + [pool[(i * n + j) % len(pool)] for j in range(n - 1)]
                  for i, rows in enumerate(list(by_request.values())[:count])]
    else:
        groups = [[rows[j % len(rows)] for j in range(n)] for rows in list(by_request.values())[:count]]
    return [rq.RequestLayout(features).from_rows(rows) for rows in groups]


def summarise(latencies: list[float], wall: float) -> dict:
    ms = np.array(latencies) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "requests_per_s": len(ms) / wall, "requests": len(ms)}


def time_calls(call, requests: list, total: int, warmup: int = 5) -> dict:
    for i in range(warmup):
        call(requests[i % len(requests)])
    latencies, start = [], time.perf_counter()
    for i in range(total):
        t = time.perf_counter()
        call(requests[i % len(requests)])
        latencies.append(time.perf_counter() - t)
    return summarise(latencies, time.perf_counter() - start)


def dense_reference_ms(flop_count: float, repeats: int = 50, warmup: int = 10) -> float:
    """p50 milliseconds of a float32 matrix product of about `flop_count` FLOPs (2 m k n), after
    `warmup` products: the first ones wait for the math library's threads."""
    side = max(8, int(round((flop_count / 2) ** (1 / 3))))
    a, b = tf.random.normal([side, side]), tf.random.normal([side, side])
    product = tf.function(lambda: tf.matmul(a, b))
    for _ in range(warmup):
        product().numpy()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        product().numpy()
        times.append(time.perf_counter() - start)
    return float(np.percentile(times, 50) * 1000) * flop_count / (2 * side ** 3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_concurrent(call, requests: list, clients: int, total: int) -> dict:
    """`clients` threads sending `total` requests in all, each back to back."""
    latencies, lock = [], threading.Lock()

    def client_loop(first: int) -> None:
        for i in range(first, total, clients):
            started = time.perf_counter()
            call(requests[i % len(requests)])
            with lock:
                latencies.append(time.perf_counter() - started)

    with futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda i: call(requests[i % len(requests)]), range(2 * clients)))  # warm-up
        started = time.perf_counter()
        list(pool.map(client_loop, range(clients)))
    return summarise(latencies, time.perf_counter() - started)


@contextlib.contextmanager
def hap_serve(version_dir: str):
    """A PredictionService stub of `hap serve` on the version's base path, in a subprocess."""
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "hap.cli", "serve", os.path.dirname(version_dir),
                                "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        stub = client.connect(f"127.0.0.1:{port}")
        deadline = time.time() + 300
        while True:
            try:
                client.signature_def(stub, "hap", "cascade", timeout=5)
                break
            except Exception:
                if time.time() > deadline or process.poll() is not None:
                    raise RuntimeError("hap serve did not come up")
                time.sleep(1)
        yield stub
    finally:
        process.terminate()
        process.wait(timeout=30)


def _median_of_rounds(rounds: list[dict]) -> dict:
    return {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}


def request_arguments(description: str, requests: int) -> argparse.ArgumentParser:
    """The arguments of the serving benchmarks that time funnel requests in rounds."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a `hap run` output directory with a pushed cascade")
    parser.add_argument("--data", required=True, help="the dataset the requests come from")
    parser.add_argument("--n", type=int, default=1000, help="candidates per request")
    parser.add_argument("--requests", type=int, default=requests, help="timed requests per row and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the rows timed in alternation")
    return parser


def main() -> None:
    parser = request_arguments(__doc__, requests=200)
    parser.add_argument("--clients", type=int, nargs="+", default=[4, 16], help="concurrent gRPC clients, beside one")
    args = parser.parse_args()

    version_dir = model_versions.newest_complete_version(os.path.join(args.run, "serving", "hap"))
    with open(os.path.join(version_dir, "assets.extra", cascade.INFO_FILE)) as f:
        info = json.load(f)
    features = c.parse_features({"version": 1, "features": info["features"]}, cascade.INFO_FILE)
    policy = cascade.CascadeSettings(**info["settings"]).routing
    requests = build_requests(args.data, features, args.n, count=20)
    model = tf.saved_model.load(version_dir)
    tensors = [{name: tf.constant(v, dtype=tf.string if v.dtype == object else None) for name, v in r.items()}
               for r in requests]
    protos = [rq.predict_request("hap", "cascade", r) for r in requests]
    k = float(np.mean([model.signatures["cascade"](**t)["routed"].numpy().sum() for t in tensors]))
    cost = flops.request_flops(info["flops"], args.n, k)
    cores = os.cpu_count()
    print(f"model {version_dir}: N = {args.n}, routing {policy.label}: K = {k:g} routed on average; "
          f"{cores} cores", flush=True)

    in_process = (("cascade, in-process", "cascade", "cascade"), ("light model alone, in-process", "light", "light_only"),
                  ("heavy model on all N, in-process", "heavy", "heavy_all"))
    grpc_label = "cascade, gRPC via `hap serve`, {} client{}"
    timed = collections.defaultdict(list)
    with hap_serve(version_dir) as stub:
        for round_ in range(args.rounds):
            for label, signature, flop_key in in_process:
                fn = model.signatures[signature]
                row = time_calls(lambda i: fn(**tensors[i % len(tensors)]), list(range(len(tensors))), args.requests)
                row["dense_reference_ms"] = dense_reference_ms(cost[flop_key])
                timed[label].append(row)
            timed[grpc_label.format(1, "")].append(
                time_calls(lambda p: stub.Predict(p, timeout=60), protos, args.requests))
            print(f"round {round_ + 1}: " + "; ".join(f"{label} {rows[-1]['p50_ms']:.2f} ms"
                                                     for label, rows in timed.items()), flush=True)
        for clients in args.clients:
            timed[grpc_label.format(clients, "s")].append(
                time_concurrent(lambda p: stub.Predict(p, timeout=60), protos, clients, args.requests))
    columns = [f"N = {args.n}, K = {k:g}", "p50 ms", "p99 ms", "requests/s", "requests/s per core",
               "MFLOPs per request", "dense product ms", "p50 / dense product"]
    flop_of = {label: cost[flop_key] for label, _, flop_key in in_process}
    rows = []
    for label, rounds in timed.items():
        row = _median_of_rounds(rounds)
        dense = [f"{row['dense_reference_ms']:.3f}", f"{row['p50_ms'] / row['dense_reference_ms']:.1f}"] \
            if "dense_reference_ms" in row else ["", ""]
        rows.append([label, f"{row['p50_ms']:.2f}", f"{row['p99_ms']:.2f}", f"{row['requests_per_s']:.1f}",
                     f"{row['requests_per_s'] / cores:.1f}", f"{flop_of.get(label, cost['cascade']) / 1e6:.1f}", *dense])
    grpc_one = _median_of_rounds(timed[grpc_label.format(1, "")])["p50_ms"]
    local = _median_of_rounds(timed[in_process[0][0]])["p50_ms"]
    path = write_result("serving_latency", command_line(), table(columns, rows),
                        notes=f"routing {policy.label}; medians of {args.rounds} rounds in alternation of "
                              f"{args.requests} requests for the single-client rows, one round of each "
                              f"concurrent one; model {version_dir}; gRPC clients are threads of the benchmark's "
                              f"process, on the same cores as the server; one gRPC client's p50 is "
                              f"{100 * (grpc_one / local - 1):.0f}% over the in-process p50")
    print("\n" + render_table(load(path)), flush=True)

if __name__ == "__main__":
    main()
