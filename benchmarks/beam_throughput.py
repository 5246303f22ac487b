"""Throughput of the pipeline's data-parallel components under Beam's DirectRunner in
multi-processing mode, with 1 and 2 worker processes (or the counts given):

    .venv/bin/python benchmarks/beam_throughput.py --data demo/data [--workers 1 2] [--work DIR]

For each worker count it runs the pipeline up to Transform (ExampleGen, StatisticsGen, the
schema, ExampleValidator, AnomalyGate, Transform: the components of `hap run`, from
`local_runner.build`, with `--direct_running_mode=multi_processing --direct_num_workers=N`) with
the cache off, and reads each component's wall time back from ML Metadata. Rows are the
examples of both splits, which each of these components reads. Prints a markdown table with
the 1-minute load average when each run started: on a shared machine other work skews it.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import hap  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow_data_validation as tfdv
from tfx import v1 as tfx
from tfx.orchestration.pipeline import RunOptions

from hap.pipeline import local_runner, run_report

MEASURED = ("ContractExampleGen", "StatisticsGen", "Transform")


def beam_args(workers: int) -> list[str]:
    return ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]


def run_until_transform(data: str, out: str, workers: int) -> None:
    pipeline = local_runner.build(data, out, beam_pipeline_args=beam_args(workers), enable_cache=False)
    local_runner.show_component_progress()
    # A partial run: Transform and what it depends on.
    tfx.orchestration.LocalDagRunner().run(pipeline, run_options=RunOptions(to_nodes=["Transform"]))


def example_count(out: str) -> int:
    """Examples of all splits, from StatisticsGen's own statistics."""
    root = os.path.join(out, "pipeline_root", "StatisticsGen", "statistics")
    (execution,) = os.listdir(root)
    total = 0
    for split in os.listdir(os.path.join(root, execution)):
        stats = tfdv.load_stats_binary(os.path.join(root, execution, split, "FeatureStats.pb"))
        total += sum(d.num_examples for d in stats.datasets)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="contract dataset (e.g. the `hap data simulate` default)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Beam worker processes per run")
    parser.add_argument("--work", help="keep every run's artifacts here (default: a temporary directory)")
    args = parser.parse_args()
    if any(w < 1 for w in args.workers):
        parser.error("--workers must be >= 1")
    if args.work and os.path.exists(args.work) and os.listdir(args.work):
        parser.error(f"--work {args.work} is not empty")

    with tempfile.TemporaryDirectory(prefix="beam_throughput_") as tmp:
        work = args.work or tmp
        rows = []
        for workers in args.workers:
            out = os.path.join(work, f"workers_{workers}")
            load = os.getloadavg()[0]
            start = time.time()
            run_until_transform(args.data, out, workers)
            print(f"{workers} worker(s): {time.time() - start:.0f}s")
            seconds = run_report.latest_by_node(out)
            examples = example_count(out)
            rows += [(node, workers, examples, seconds[node]["seconds"], load) for node in MEASURED]

    print("\n| component | Beam workers | rows | seconds | rows/s | load avg (1 min) at start |")
    print("|---|---|---|---|---|---|")
    for node, workers, examples, seconds, load in sorted(rows, key=lambda r: (MEASURED.index(r[0]), r[1])):
        print(f"| {node} | {workers} | {examples:,} | {seconds:.1f} | {examples / seconds:,.0f} | {load:.2f} |")


if __name__ == "__main__":
    main()
