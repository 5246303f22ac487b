"""Each Beam component under the DirectRunner in-memory (one process) and multi-process:

    .venv/bin/python benchmarks/beam_throughput.py --data DATA [--workers 2] [--work DIR]

Runs the whole pipeline twice with the cache off, once with every Beam component in memory
(`--direct_running_mode=in_memory --direct_num_workers=1`) and once with every one in
`--direct_running_mode=multi_processing --direct_num_workers=N`, reads each component's wall
time back from ML Metadata, and prints a markdown table with the ratio per component and the
1-minute load average when each run started (on a shared machine other work skews it). The
pipeline's per-component choice (the settings' beam.multi_process_*) is read off this table.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import hap  # noqa: F401  (Keras 2 before TensorFlow)
from tfx import v1 as tfx

from hap import settings as hap_settings
from hap.pipeline import local_runner, run_report
from results import command_line, table, write_result


def modes(workers: int) -> dict[str, list[str]]:
    return {"in_memory": hap_settings.defaults().beam.args,
            f"multi_processing x{workers}": ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="contract dataset (e.g. the `hap data simulate` default)")
    parser.add_argument("--workers", type=int, default=2, help="Beam worker processes in multi-process mode")
    parser.add_argument("--work", help="keep every run's artifacts here (default: a temporary directory)")
    args = parser.parse_args()
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    if args.work and os.path.exists(args.work) and os.listdir(args.work):
        parser.error(f"--work {args.work} is not empty")

    with tempfile.TemporaryDirectory(prefix="beam_throughput_") as tmp:
        work = args.work or tmp
        seconds, loads = {}, {}
        for name, beam_args in modes(args.workers).items():
            out = os.path.join(work, name.replace(" ", "_"))
            loads[name] = os.getloadavg()[0]
            start = time.time()
            settings = hap_settings.override(hap_settings.defaults(), {
                "beam.args": beam_args, "beam.component_args": {}, "enable_cache": False})
            pipeline = local_runner.build(args.data, out, settings)
            tfx.orchestration.LocalDagRunner().run(pipeline)
            print(f"{name}: {time.time() - start:.0f}s")
            seconds[name] = {node: e["seconds"] for node, e in run_report.latest_by_node(out).items()}
            beam_nodes = [c.id for c in pipeline.components if hasattr(c.executor_spec, "beam_pipeline_args")]

    first, second = list(seconds)
    columns = ["component", f"{first} s", f"{second} s", f"{second} / {first}"]
    rows = [[node, f"{seconds[first][node]:.1f}", f"{seconds[second][node]:.1f}",
             f"{seconds[second][node] / seconds[first][node]:.2f}"] for node in beam_nodes]
    total = {name: sum(s.values()) for name, s in seconds.items()}
    rows.append(["whole pipeline", f"{total[first]:.0f}", f"{total[second]:.0f}", f"{total[second] / total[first]:.2f}"])
    print("\n| " + " | ".join(columns) + " |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    load_line = ", ".join(f"{name} {load:.2f}" for name, load in loads.items())
    print(f"\nload average (1 min) at the start of each run: {load_line}")
    write_result("beam_throughput", command_line(), table(columns, rows),
                 notes=f"load average (1 min) at the start of each run: {load_line}")


if __name__ == "__main__":
    main()
