"""What a Trainer's time goes to: its steps' pure compute against the steps as trained.

    .venv/bin/python benchmarks/training_steps.py --run RUN [--epochs 3 | --epochs trainer] [--regroup DIR]

On the request records and Transform output of a finished `hap run` (RUN), for each model:

- pure compute: the compiled training step on one batch held in memory, repeated (no input
  pipeline, no callbacks), after a warm-up epoch that traces it; ms per step;
- input alone: a pass of that input read and parsed with no step; wall and CPU ms per batch;
- streamed floor: the larger of the pure step and (pure CPU + input CPU) / cores, the fastest a
  streamed step can be on this machine when the input and the step share its cores;
- streamed step: the same step fed by the real input (`distribute.request_dataset`: files,
  shuffle buffer, parsing), no callbacks; ms per step;
- trained: `trainer_module.train` as the Trainer runs it for `--epochs` epochs (patience set so
  that every epoch runs; `--epochs trainer`: the run's own max_epochs and patience, so
  validation decides, as in the pipeline; the epochs column then says which it chose), with its
  per-epoch streamed evaluation, the gradient-conflict probe and TensorBoard logging; its wall
  time against `epochs x steps x pure compute`, and its parts: the steps as Keras ran them (the
  first one traces the step), the evaluation, the probe;
- step tracing: the pure run's first epoch less its second (the train function traced);
- router fit: the light model's difficulty router, fit after it (in the CPU column, not in "trained");
- export: `trainer_module.export` of the trained model, as the Trainer writes it.

Wall time depends on what else the machine runs; CPU time (this process, all threads) is
reported beside it as the cost that does not: "CPU: trained / pure" is the whole training's CPU
seconds against epochs x steps x the pure step's CPU ms.

`--regroup DIR`: first group the run's Transform output again with this checkout's
RequestGrouper executor into DIR (reused when DIR already holds records) and train on those
records (for a run made before a change of the grouper). The input's fill column is the time to
the first batch of a fresh pass: the shuffle buffer fills then, once per epoch.

Prints a markdown table. Tracing is included in "trained" (it is a one-off: its share falls as
the data grows) and reported apart from the probe's cost.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
import time

import hap  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf
import tensorflow_transform as tft

from hap.data.sample_routing import HEAVY, LIGHT
from hap.models import distribute, preprocessing, request_records, trainer_module, transformed
from hap.pipeline import run_report
from results import command_line, from_markdown, write_result


class _EpochTimer(tf.keras.callbacks.Callback):
    """Wall and CPU seconds (this process, all its threads) of each epoch."""

    def __init__(self):
        super().__init__()
        self.seconds: list[tuple[float, float]] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = (time.perf_counter(), time.process_time())

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append((time.perf_counter() - self._start[0], time.process_time() - self._start[1]))


def _ms_per_step(model, dataset, steps: int) -> tuple[float, float, float]:
    """(wall, CPU) ms per step of the second of two epochs, and the first epoch's extra wall
    seconds: the one-off tracing of Keras' train function."""
    timer = _EpochTimer()
    model.fit(dataset, epochs=2, steps_per_epoch=steps, callbacks=[timer], verbose=0)
    (first, _), (wall, cpu) = timer.seconds
    return 1000.0 * wall / steps, 1000.0 * cpu / steps, first - wall


def _input_ms_per_step(dataset, steps: int) -> tuple[float, float]:
    """(wall, CPU) ms per batch of the input alone, read and parsed with no step: a pass of
    `steps` batches after the first (whose shuffle buffer fill is the fill column)."""
    batches = iter(dataset)
    next(batches)
    start = (time.perf_counter(), time.process_time())
    for _ in range(steps):
        next(batches)
    return 1000.0 * (time.perf_counter() - start[0]) / steps, 1000.0 * (time.process_time() - start[1]) / steps


def regroup(run_dir: str, out_dir: str) -> str:
    """The run's Transform output grouped by this checkout's RequestGrouper into out_dir."""
    from tfx.types import artifact_utils, standard_artifacts

    from hap.components.request_grouper import executor

    transformed_uri = run_report.latest_artifact(run_dir, "Transform", "Examples").uri
    examples = standard_artifacts.Examples()
    examples.uri = transformed_uri
    examples.split_names = artifact_utils.encode_split_names(["train", "eval"])
    output = standard_artifacts.Examples()
    output.uri = out_dir
    os.makedirs(out_dir, exist_ok=True)
    config = run_report.latest_execution_property(run_dir, "RequestGrouper", "custom_config")
    executor.Executor().Do({"examples": [examples]}, {"request_examples": [output]}, {"custom_config": config})
    return out_dir


def _fill_seconds(records, requests_per_batch: int, shuffle_requests: int) -> float:
    """Seconds to the first batch of a fresh pass (the shuffle buffer fills first)."""
    start = time.perf_counter()
    next(iter(records.dataset(requests_per_batch, shuffle_requests=shuffle_requests, seed=0)))
    return time.perf_counter() - start


def trainer_inputs(run_dir: str, model: str, records_uri: str | None = None):
    """What a finished run gave its Trainer `model`: (Transform output, the Trainer's custom_config,
    its feature set, the train and eval request records); `records_uri`: other request records."""
    tft_output = tft.TFTransformOutput(run_report.latest_artifact(run_dir, "Transform", "TransformGraph").uri)
    records_uri = records_uri or run_report.latest_artifact(run_dir, "RequestGrouper", "Examples").uri
    config = json.loads(run_report.latest_execution_property(run_dir, f"Trainer_{model}", "custom_config"))
    features = preprocessing.feature_set_from_config(config)
    spec = tft_output.transformed_feature_spec()
    train_records, eval_records = (request_records.RequestRecords.from_split(
        os.path.join(records_uri, f"Split-{split}", "*"), spec, features) for split in ("train", "eval"))
    return tft_output, config, features, train_records, eval_records


def measure(run_dir: str, model: str, epochs: int | None, records_uri: str | None = None) -> dict:
    """The table's row for `model`; epochs None: as many as the Trainer's validation runs."""
    tft_output, config, features, train_records, eval_records = trainer_inputs(run_dir, model, records_uri)
    settings = trainer_module.TrainerSettings.from_config(
        config if epochs is None else {**config, "max_epochs": epochs, "patience": epochs})
    model_inputs = transformed.ModelInputs.from_transform_output(features, tft_output)
    strategy = tf.distribute.get_strategy()
    routed = train_records.only(settings.routing.trains_on)
    requests_per_batch = routed.requests_per_batch(settings.batch_size)
    steps = routed.steps(requests_per_batch)

    fill = _fill_seconds(routed, requests_per_batch, settings.shuffle_requests)
    one_batch = next(iter(routed.dataset(requests_per_batch)))

    def trainer():  # as `trainer_module.train` makes it: its variables made before the step is traced
        model = trainer_module.compiled_trainer(settings, model_inputs, strategy)
        model.create_step_variables(one_batch)
        return model

    pure, pure_cpu, step_trace = _ms_per_step(trainer(), tf.data.Dataset.from_tensors(one_batch).repeat(), steps)
    def streamed_input():
        return distribute.request_dataset(strategy, routed, requests_per_batch,
                                          shuffle_requests=settings.shuffle_requests, seed=0)

    input_ms, input_cpu = _input_ms_per_step(streamed_input(), steps)
    streamed, streamed_cpu, _ = _ms_per_step(trainer(), streamed_input(), steps)
    with tempfile.TemporaryDirectory() as logs:
        cpu_start = time.process_time()
        scorer, history = trainer_module.train(settings, model_inputs, train_records, eval_records, logs)
        trained_cpu = time.process_time() - cpu_start
        start = time.perf_counter()
        trainer_module.export(scorer, tft_output, os.path.join(logs, "export"))
        export_s = time.perf_counter() - start
    cost = history["conflict_cost"]
    return {"model": model, "steps_per_epoch": steps, "samples_per_step": round(routed.mean_request_size * requests_per_batch),
            "pure_ms": pure, "streamed_ms": streamed, "epochs": history["epochs_run"], "chosen_epoch": history["chosen_epoch"], "trained_s": history["seconds"],
            "pure_s": history["epochs_run"] * steps * pure / 1000.0, "steps_s": cost["train_seconds"],
            "step_trace_s": step_trace, "export_s": export_s, "router_s": history.get("router_seconds", 0.0),
            "eval_s": history["eval_seconds"], "probe_s": cost["probe_seconds"],
            "probe_trace_s": cost["trace_seconds"], "probes": cost["probes"], "fill_s": fill,
            "shuffle_requests": settings.shuffle_requests, "files": len(train_records.files),
            "pure_cpu_ms": pure_cpu, "streamed_cpu_ms": streamed_cpu, "trained_cpu_s": trained_cpu,
            "input_ms": input_ms, "input_cpu_ms": input_cpu, "cores": os.cpu_count(),
            "pure_cpu_s": history["epochs_run"] * steps * pure_cpu / 1000.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a finished `hap run` output directory")
    parser.add_argument("--epochs", type=lambda v: None if v == "trainer" else int(v), default=3,
                        help="epochs of the full training, or 'trainer': as many as its validation runs")
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--regroup", metavar="DIR", help="group the run's Transform output again into DIR first")
    args = parser.parse_args()
    if args.regroup and not os.path.exists(os.path.join(args.regroup, request_records.STATS_FILE)):
        regroup(args.run, args.regroup)
    records_uri = args.regroup or None
    rows = [measure(args.run, m, args.epochs, records_uri) for m in (LIGHT, HEAVY)]
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        print("| model | files | buffer (requests) | pass fill s | steps/epoch | samples/step | pure compute ms/step | "
              "input alone ms/step (CPU) | streamed floor ms/step | streamed ms/step (ratio) | epochs (chosen) | trained s | "
              "pure compute s | trained / pure | of which steps s | eval s | "
              "probe s (probes) | probe tracing s | step tracing s | CPU: pure ms/step | CPU: trained s | CPU: trained / pure | "
              "router fit s | export s |")
        print("|---" * 24 + "|")
        for r in rows:
            print(f"| {r['model']} | {r['files']} | {r['shuffle_requests']:,} | {r['fill_s']:.2f} | "
                  f"{r['steps_per_epoch']} | {r['samples_per_step']} | {r['pure_ms']:.1f} | "
                  f"{r['input_ms']:.1f} ({r['input_cpu_ms']:.1f}) | "
                  f"{max(r['pure_ms'], (r['pure_cpu_ms'] + r['input_cpu_ms']) / r['cores']):.1f} | "
                  f"{r['streamed_ms']:.1f} ({r['streamed_ms'] / r['pure_ms']:.2f}x) | {r['epochs']} ({r['chosen_epoch']}) | "
                  f"{r['trained_s']:.1f} | "
                  f"{r['pure_s']:.1f} | {r['trained_s'] / r['pure_s']:.2f}x | {r['steps_s']:.1f} | {r['eval_s']:.1f} | "
                  f"{r['probe_s']:.2f} ({r['probes']}) | "
                  f"{r['probe_trace_s']:.1f} | {r['step_trace_s']:.1f} | {r['pure_cpu_ms']:.1f} | {r['trained_cpu_s']:.1f} | "
                  f"{r['trained_cpu_s'] / r['pure_cpu_s']:.2f}x | {r['router_s']:.1f} | {r['export_s']:.1f} |")
    print(printed.getvalue(), end="")
    epochs = "as the Trainer's validation runs them" if args.epochs is None else f"{args.epochs} epochs"
    write_result("training_steps" if args.epochs else "training_steps_trainer", command_line(),
                 from_markdown(printed.getvalue()), notes=f"{epochs}; rows of {args.run}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
