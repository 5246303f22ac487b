"""How the pipeline's cost grows with the data: 1x, 3x and 10x the default dataset.

    .venv/bin/python benchmarks/pipeline_scale.py --work DIR [--scales 1 3 10] [--plot docs/scale.png]

Per scale s: `hap data simulate --requests s x 3000` (the default size, no funnel), then in a
fresh process `hap run --no-cache` on it, each component's wall time read back from ML Metadata
and the run's peak resident memory (`wait4`). Each Trainer is then run again alone, in a fresh
process, on the run's own request records and Transform output (`trainer_module.run_fn`, as the
Trainer component calls it), for its own peak memory and time; and TFX's CsvExampleGen reads the
same CSV files in a fresh process, as the peer of ContractExampleGen (in-memory DirectRunner,
like the pipeline's default). Prints a markdown table, writes it with every number to
DIR/scale.json, and plots seconds and memory against samples.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import hap  # noqa: F401  (Keras 2 before TensorFlow)
from hap.data import simulator
import results as result_files

BASE_REQUESTS = simulator.SimulationConfig().requests
HAP = [sys.executable, "-m", "hap.cli"]


def _child(command: list[str], log: str) -> tuple[float, float]:
    """Runs `command` to completion; (seconds, peak resident GiB of that process alone)."""
    start = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed; see {log}")
    return time.perf_counter() - start, usage.ru_maxrss / 2**20


def _trainer_alone(run: str, model: str) -> None:
    """Child process: `run_fn` of the run's Trainer `model` on the run's own inputs."""
    import tempfile

    from tfx.components.trainer.fn_args_utils import FnArgs

    from hap.models import trainer_module
    from hap.pipeline import run_report

    records = run_report.latest_artifact(run, "RequestGrouper", "Examples").uri
    scratch = tempfile.mkdtemp(prefix=f"scale_{model}_")
    trainer_module.run_fn(FnArgs(
        train_files=[os.path.join(records, "Split-train", "*")], eval_files=[os.path.join(records, "Split-eval", "*")],
        transform_output=run_report.latest_artifact(run, "Transform", "TransformGraph").uri,
        custom_config=json.loads(run_report.latest_execution_property(run, f"Trainer_{model}", "custom_config")),
        model_run_dir=os.path.join(scratch, "run"), serving_model_dir=os.path.join(scratch, "model")))


def _csv_example_gen(data: str, out: str) -> None:
    """Child process: TFX's CsvExampleGen over the dataset's sample files, in memory."""
    from tfx.components.example_gen.csv_example_gen import executor as csv_executor
    from tfx.proto import example_gen_pb2
    from tfx.types import standard_artifacts, standard_component_specs
    from tfx.utils import proto_utils

    from hap import settings

    examples = standard_artifacts.Examples()
    examples.uri = out
    split = example_gen_pb2.Input(splits=[example_gen_pb2.Input.Split(name="all", pattern="samples/*.csv")])
    output = example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(
        splits=[example_gen_pb2.SplitConfig.Split(name="all", hash_buckets=1)]))
    csv_executor.Executor(csv_executor.Executor.Context(beam_pipeline_args=settings.defaults().beam.args)).Do(
        {}, {standard_component_specs.EXAMPLES_KEY: [examples]},
        {standard_component_specs.INPUT_BASE_KEY: data,
         standard_component_specs.INPUT_CONFIG_KEY: proto_utils.proto_to_json(split),
         standard_component_specs.OUTPUT_CONFIG_KEY: proto_utils.proto_to_json(output),
         standard_component_specs.OUTPUT_DATA_FORMAT_KEY: example_gen_pb2.FORMAT_TF_EXAMPLE})


def measure(scale: int, work: str) -> dict:
    from hap.data import reader
    from hap.pipeline import run_report

    data, run = os.path.join(work, f"data_{scale}x"), os.path.join(work, f"run_{scale}x")
    if not os.path.isdir(data):
        _child(HAP + ["data", "simulate", "--out", data, "--requests", str(BASE_REQUESTS * scale),
                      "--funnel-requests", "0", "--quiet"], os.path.join(work, f"simulate_{scale}x.log"))
    samples = sum(1 for _ in reader.read_rows(data))
    load = os.getloadavg()[0]
    seconds, peak = _child(HAP + ["run", "--data", data, "--out", run, "--no-cache"], os.path.join(work, f"run_{scale}x.log"))
    result = {"scale": scale, "samples": samples, "pipeline_seconds": seconds, "pipeline_peak_gib": peak,
              "load_at_start": load,
              "components": {node: e["seconds"] for node, e in run_report.latest_by_node(run).items()},
              "training": run_report.training_summary(run)}
    for model in ("light", "heavy"):
        result[f"Trainer_{model}_alone"] = dict(zip(("seconds", "peak_gib"), _child(
            [sys.executable, __file__, "--trainer-alone", run, model], os.path.join(work, f"trainer_{model}_{scale}x.log"))))
    result["CsvExampleGen"] = dict(zip(("seconds", "peak_gib"), _child(
        [sys.executable, __file__, "--csv-example-gen", data, os.path.join(work, f"csv_{scale}x")],
        os.path.join(work, f"csv_{scale}x.log"))))
    return result


ROWS = ("ContractExampleGen", "StatisticsGen", "Transform", "RequestGrouper", "Trainer_light", "Trainer_heavy",
        "Evaluator_light", "Evaluator_heavy", "CascadeAssembler")


def table(results: list[dict]) -> str:
    head = " | ".join(f"{r['scale']}x ({r['samples']:,} samples)" for r in results)
    lines = [f"| seconds | {head} |", "|---|" + "---|" * len(results)]
    for node in ROWS:
        lines.append(f"| {node} | " + " | ".join(f"{r['components'].get(node, float('nan')):.0f}" for r in results) + " |")
    lines.append("| CsvExampleGen (TFX, peer of ContractExampleGen) | "
                 + " | ".join(f"{r['CsvExampleGen']['seconds']:.0f}" for r in results) + " |")
    lines.append("| **pipeline, wall** | " + " | ".join(f"**{r['pipeline_seconds']:.0f}**" for r in results) + " |")
    lines.append("| pipeline peak memory, GiB | " + " | ".join(f"{r['pipeline_peak_gib']:.2f}" for r in results) + " |")
    for model in ("light", "heavy"):
        lines.append(f"| Trainer_{model} alone: peak memory GiB (s) | " + " | ".join(
            f"{r[f'Trainer_{model}_alone']['peak_gib']:.2f} ({r[f'Trainer_{model}_alone']['seconds']:.0f})" for r in results)
                     + " |")
        lines.append(f"| Trainer_{model}: chosen epoch / run | " + " | ".join(
            f"{r['training'][model]['chosen_epoch']} / {r['training'][model]['epochs_run']}" for r in results) + " |")
    lines.append("| load average at start | " + " | ".join(f"{r['load_at_start']:.2f}" for r in results) + " |")
    return "\n".join(lines)


def plot(results: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = [r["samples"] for r in results]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for node in ROWS:
        left.plot(samples, [r["components"][node] for r in results], marker="o", label=node)
    left.plot(samples, [r["CsvExampleGen"]["seconds"] for r in results], "k--", marker="x", label="CsvExampleGen (TFX)")
    left.plot(samples, [r["pipeline_seconds"] for r in results], "k-", linewidth=2, marker="s", label="pipeline (wall)")
    left.set(xscale="log", yscale="log", xlabel="samples", ylabel="seconds", title="time per component")
    left.legend(fontsize=7)
    for model in ("light", "heavy"):
        right.plot(samples, [r[f"Trainer_{model}_alone"]["peak_gib"] for r in results], marker="o", label=f"Trainer_{model}")
    right.plot(samples, [r["pipeline_peak_gib"] for r in results], "k-", marker="s", label="whole pipeline process")
    right.set(xscale="log", xlabel="samples", ylabel="peak resident memory, GiB", title="memory", ylim=(0, None))
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", help="datasets, runs and logs go here (datasets are reused)")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 3, 10])
    parser.add_argument("--plot", default="docs/scale.png")
    parser.add_argument("--trainer-alone", nargs=2, metavar=("RUN", "MODEL"), help=argparse.SUPPRESS)
    parser.add_argument("--csv-example-gen", nargs=2, metavar=("DATA", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trainer_alone:
        return _trainer_alone(*args.trainer_alone)
    if args.csv_example_gen:
        return _csv_example_gen(*args.csv_example_gen)
    if not args.work:
        parser.error("--work is required")
    os.makedirs(args.work, exist_ok=True)
    results = []
    for scale in args.scales:
        results.append(measure(scale, args.work))
        print(f"{scale}x: pipeline {results[-1]['pipeline_seconds']:.0f}s", flush=True)
        with open(os.path.join(args.work, "scale.json"), "w") as f:
            json.dump(results, f, indent=1)
    print(table(results))
    result_files.write_result("pipeline_scale", result_files.command_line(), result_files.from_markdown(table(results)),
                              notes=f"every number of every scale: {os.path.join(args.work, 'scale.json')}")
    plot(results, args.plot)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
