"""Where a cascade request's milliseconds go: TensorFlow's profiler over the pushed cascade's
`cascade` signature, in-process, for requests of 10, 100 and 1000 candidates from the data's
funnel (benchmarks/serving_latency.py's requests), beside a dense matrix product of the same
FLOPs timed in the same process.

    .venv/bin/python benchmarks/serving_profile.py --run demo/run --data demo/data [--requests 30]

For each N: the untraced p50 of a call; then one traced pass over the same requests, whose
TensorFlow op events (the profiler's host trace, `tf_Compute` threads) are summed per call by
the model part their name scope says (Transform, the light user and item towers, the heavy
model, the rest: input checks, routing, top-k) and by op type. Op times are summed over the
threads that ran them, so a part's share is of op time, not of the wall clock; the gap between
the wall p50 and the summed op time is what runs outside TensorFlow's ops (the Python call,
argument conversion, the executor). Writes results/serving_profile.json and, beside it,
results/serving_profile.png (the parts per N, stacked).
"""
from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import tempfile

import hap  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf
from tensorflow.tsl.profiler.protobuf import xplane_pb2

from hap.data import contract as c
from hap.serving import cascade, flops, model_versions
from results import RESULTS_DIR, command_line, table, write_result
from serving_latency import build_requests, dense_reference_ms, time_calls

# A part is the first of these name scopes an op's name holds (the models' own layer names).
PARTS = (("Transform", "transform_features_layer"), ("light user tower", "user_tower"),
         ("light item tower", "item_tower"), ("heavy model", "heavy_model"))
OTHER = "checks, routing, top-k"


def part_of(op_name: str) -> str:
    for part, scope in PARTS:
        if scope in op_name:
            return part
    return OTHER


def op_times(logdir: str) -> tuple[collections.Counter, collections.Counter]:
    """Milliseconds of TensorFlow op events in the newest trace under `logdir`, by part and by op
    type, summed over threads."""
    (path,) = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True))[-1:]
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    by_part, by_type = collections.Counter(), collections.Counter()
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                # Op events are "<scope>/<op>:<OpType>"; the executor's own are "ExecutorState::...".
                if ":" not in name or "::" in name:
                    continue
                scope, op_type = name.rsplit(":", 1)
                by_part[part_of(scope)] += event.duration_ps / 1e9
                by_type[op_type] += event.duration_ps / 1e9
    return by_part, by_type


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [part for part, _ in PARTS] + [OTHER, "outside ops"]
    fig, ax = plt.subplots(figsize=(7, 4))
    bottom = np.zeros(len(rows))
    labels = [f"N = {r['n']}" for r in rows]
    for part in parts:
        values = np.array([r["parts_ms"].get(part, 0.0) for r in rows])
        ax.bar(labels, values, bottom=bottom, label=part)
        bottom += values
    ax.set_ylabel("ms per request (op time summed over threads)")
    ax.set_title("Where a cascade request's time goes")
    ax.legend(fontsize=8)
    fig.tight_layout()
    staging = path + ".tmp.png"
    fig.savefig(staging)
    os.replace(staging, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a `hap run` output directory with a pushed cascade")
    parser.add_argument("--data", required=True, help="the dataset the requests come from")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000], help="candidates per request")
    parser.add_argument("--requests", type=int, default=30, help="requests timed, then traced, per size")
    args = parser.parse_args()

    version_dir = model_versions.newest_complete_version(os.path.join(args.run, "serving", "hap"))
    with open(os.path.join(version_dir, "assets.extra", cascade.INFO_FILE)) as f:
        info = json.load(f)
    features = c.parse_features({"version": 1, "features": info["features"]}, cascade.INFO_FILE)
    model = tf.saved_model.load(version_dir)
    signature = model.signatures["cascade"]
    rows = []
    for n in args.sizes:
        requests = build_requests(args.data, features, n, count=args.requests)
        tensors = [{name: tf.constant(v, dtype=tf.string if v.dtype == object else None) for name, v in r.items()}
                   for r in requests]
        routed = float(np.mean([signature(**t)["routed"].numpy().sum() for t in tensors]))
        wall = time_calls(lambda i: signature(**tensors[i]), list(range(len(tensors))), len(tensors) * 3)
        request_flops = flops.request_flops(info["flops"], n, routed)["cascade"]
        with tempfile.TemporaryDirectory() as logdir:
            tf.profiler.experimental.start(logdir)
            for t in tensors:
                signature(**t)
            tf.profiler.experimental.stop()
            by_part, by_type = op_times(logdir)
        per_call = {part: ms / len(tensors) for part, ms in by_part.items()}
        op_ms = sum(per_call.values())
        row = {"n": n, "routed": routed, "p50_ms": wall["p50_ms"], "op_ms": op_ms,
               "parts_ms": {**per_call, "outside ops": max(0.0, wall["p50_ms"] - op_ms)},
               "top_op_types_ms": {k: v / len(tensors) for k, v in by_type.most_common(10)},
               "mflops": request_flops / 1e6, "dense_reference_ms": dense_reference_ms(request_flops)}
        row["times_dense_reference"] = row["p50_ms"] / row["dense_reference_ms"]
        rows.append(row)
        print(f"N = {n}: p50 {row['p50_ms']:.2f} ms, op time {op_ms:.2f} ms "
              f"({', '.join(f'{k} {v:.2f}' for k, v in sorted(per_call.items(), key=lambda kv: -kv[1]))}); "
              f"{row['times_dense_reference']:.1f}x a dense product of {row['mflops']:.1f} MFLOPs", flush=True)
    plot(rows, os.path.join(RESULTS_DIR, "serving_profile.png"))
    parts = [part for part, _ in PARTS] + [OTHER, "outside ops"]
    columns = ["N", "routed", "p50 ms", *[f"{part} ms" for part in parts], "MFLOPs", "dense product ms",
               "p50 / dense product"]
    cells = [[r["n"], f"{r['routed']:.0f}", f"{r['p50_ms']:.2f}",
              *[f"{r['parts_ms'].get(part, 0.0):.2f}" for part in parts], f"{r['mflops']:.1f}",
              f"{r['dense_reference_ms']:.3f}", f"{r['times_dense_reference']:.1f}"] for r in rows]
    top = "; ".join(f"N = {r['n']}: " + ", ".join(f"{k} {v:.2f}" for k, v in list(r["top_op_types_ms"].items())[:6])
                    for r in rows)
    write_result("serving_profile", command_line(), table(columns, cells),
                 notes=f"model {version_dir}; {args.requests} requests per N, each timed 3 times untraced, then "
                       "traced once; part columns are op time summed over TensorFlow's threads per request; "
                       "'outside ops' is the p50 less the summed op time (0 where threads overlap more than the "
                       f"call waits); the slowest op types, ms per request: {top}; plot: results/serving_profile.png")


if __name__ == "__main__":
    main()
