"""Latency and compute of the pushed cascade for requests of N candidates (default N = 1000; K,
the candidates routed to the heavy model, as the cascade's own routing policy decides, its mean
over the requests):

(a) the `cascade` signature in-process, (b) the same through `hap serve` over gRPC (a separate
process, one client sending requests back to back), (c) the `heavy` signature on all N
in-process; and FLOPs per request of the cascade, the light model alone and the heavy model on
all N, from the per-part counts the assembler stored with the model (serving/flops.py).

    .venv/bin/python benchmarks/serving_latency.py --run demo/run --data demo/data [--requests 200]

Requests are the data's funnel/ requests (a whole retrieval result each), cut or cycled to N
rows; without funnel/, N sample rows under one request's user. Prints a markdown table and
writes `serving_latency.json` under --out (default: <run>/benchmarks).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import socket
import subprocess
import sys
import time

import hap  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf

from hap.data import contract as c
from hap.data import reader
from hap.serving import cascade, client, flops, model_versions
from hap.serving import request as rq
from results import command_line, table, write_result


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_grpc(version_dir: str, requests: list, total: int) -> dict:
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
        protos = [rq.predict_request("hap", "cascade", r) for r in requests]
        return time_calls(lambda p: stub.Predict(p, timeout=60), protos, total)
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a `hap run` output directory with a pushed cascade")
    parser.add_argument("--data", required=True, help="the dataset the requests come from")
    parser.add_argument("--n", type=int, default=1000, help="candidates per request")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per setting")
    parser.add_argument("--out")
    args = parser.parse_args()
    out = args.out or os.path.join(args.run, "benchmarks")
    os.makedirs(out, exist_ok=True)

    version_dir = model_versions.newest_complete_version(os.path.join(args.run, "serving", "hap"))
    with open(os.path.join(version_dir, "assets.extra", cascade.INFO_FILE)) as f:
        info = json.load(f)
    features = c.parse_features({"version": 1, "features": info["features"]}, cascade.INFO_FILE)
    policy = cascade.CascadeSettings(**info["settings"]).routing
    requests = build_requests(args.data, features, args.n, count=20)
    model = tf.saved_model.load(version_dir)
    tensors = [{name: tf.constant(v, dtype=tf.string if v.dtype == object else None) for name, v in r.items()}
               for r in requests]
    k = float(np.mean([model.signatures["cascade"](**t)["routed"].numpy().sum() for t in tensors]))
    print(f"model {version_dir}: N = {args.n}, routing {policy.label}: K = {k:g} routed on average", flush=True)

    def in_process(signature):
        fn = model.signatures[signature]
        return lambda i: fn(**tensors[i])

    index = list(range(len(requests)))
    results = {"n": args.n, "k": k, "model": version_dir, "flops": flops.request_flops(info["flops"], args.n, k)}
    for name, signature in (("cascade_in_process", "cascade"), ("heavy_all_in_process", "heavy")):
        print(f"timing {name} ...", flush=True)
        results[name] = time_calls(in_process(signature), index, args.requests)
    print("timing cascade_grpc (hap serve in a subprocess) ...", flush=True)
    results["cascade_grpc"] = time_grpc(version_dir, requests, args.requests)
    with open(os.path.join(out, "serving_latency.json"), "w") as f:
        json.dump(results, f, indent=1)

    columns = [f"N = {args.n}, K = {k:g}", "p50 ms", "p99 ms", "requests/s", "MFLOPs per request"]
    rows = []
    for label, key, cost in (("(a) cascade, in-process", "cascade_in_process", "cascade"),
                             ("(b) cascade, gRPC via `hap serve`", "cascade_grpc", "cascade"),
                             ("(c) heavy model on all N, in-process", "heavy_all_in_process", "heavy_all")):
        r = results[key]
        rows.append([label, f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}", f"{r['requests_per_s']:.1f}",
                     f"{results['flops'][cost] / 1e6:.1f}"])
    rows.append(["light model alone (FLOPs only)", "", "", "", f"{results['flops']['light_only'] / 1e6:.1f}"])
    print("\n| " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    write_result("serving_latency", command_line(), table(columns, rows),
                 notes=f"routing {policy.label}; {args.requests} timed requests per row; model {version_dir}")


if __name__ == "__main__":
    main()
