"""What tracing and export cost a Trainer's fresh process, now and as they were before.

    .venv/bin/python benchmarks/trace_cost.py --run RUN [--records DIR]

On the first batch of a finished `hap run`'s request records (RUN's RequestGrouper output, or
DIR), for each model, each measurement in a fresh process of its own (AutoGraph caches what it
converted, so a second measurement in one process would be cheaper than a Trainer's):

- step trace: tracing the Keras train step (`RoutedTrainer.train_step`) on the batch;
- first fit call: `fit` over one call of the train function (`steps_per_execution` steps),
  building the model included;
- export: `trainer_module.export` of the built model.

Variants (VARIANTS): "AutoGraph" as before 1d572be: the step undecorated and converted by
AutoGraph, Keras' own multi-step train function, export with Keras' per-layer call traces
(`save_traces=True`); "Keras' loop" as from 1d572be: no AutoGraph, but Keras' own train
function, which traces the step twice (first fit call only; the other two do not use it); "now"
as the Trainer does now (`RoutedTrainer.make_train_function`, the step's variables made first by
`RoutedTrainer.create_step_variables`, timed in the first fit call). Prints a markdown table of seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import types

MEASUREMENTS = ("step trace", "first fit call", "export")
VARIANTS = ("AutoGraph", "Keras' loop", "now")


def _child(run_dir: str, records_uri: str | None, model: str, measurement: str, variant: str) -> float:
    import hap  # noqa: F401  (Keras 2 before TensorFlow)
    import tensorflow as tf
    import tensorflow_transform as tft

    from hap.models import preprocessing, request_records, trainer_module, training, transformed
    from hap.pipeline import run_report

    tft_output = tft.TFTransformOutput(run_report.latest_artifact(run_dir, "Transform", "TransformGraph").uri)
    records_uri = records_uri or run_report.latest_artifact(run_dir, "RequestGrouper", "Examples").uri
    config = json.loads(run_report.latest_execution_property(run_dir, f"Trainer_{model}", "custom_config"))
    features = preprocessing.feature_set_from_config(config)
    records = request_records.RequestRecords.from_split(
        os.path.join(records_uri, "Split-train", "*"), tft_output.transformed_feature_spec(), features)
    settings = trainer_module.TrainerSettings.from_config(config)
    records = records.only(settings.routing.trains_on)
    batch = next(iter(records.dataset(records.requests_per_batch(settings.batch_size))))
    trainer = trainer_module.compiled_trainer(settings, transformed.ModelInputs.from_transform_output(features, tft_output),
                                              tf.distribute.get_strategy())
    autograph = variant == "AutoGraph"
    if autograph:
        trainer.train_step = types.MethodType(training.RoutedTrainer.train_step.__wrapped__, trainer)
    if variant != "now":
        trainer.make_train_function = types.MethodType(tf.keras.Model.make_train_function, trainer)
    start = time.perf_counter()
    if measurement == "step trace":
        trainer.scorer(batch)  # builds the model's weights outside the timed trace
        start = time.perf_counter()
        tf.function(trainer.train_step, autograph=autograph).get_concrete_function(batch)
    elif measurement == "first fit call":
        if variant == "now":
            trainer.create_step_variables(batch)  # as trainer_module.train does, timed with the call
        trainer.fit(tf.data.Dataset.from_tensors(batch).repeat(), epochs=1, steps_per_epoch=settings.steps_per_execution,
                    verbose=0)
    else:
        trainer.scorer(batch)
        scorer = trainer.scorer
        if autograph:
            save = scorer.save
            scorer.save = lambda *args, **kwargs: save(*args, **{**kwargs, "save_traces": True})
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            trainer_module.export(scorer, tft_output, os.path.join(out, "model"))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a finished `hap run` output directory")
    parser.add_argument("--records", help="request records to read instead of the run's (benchmarks/training_steps.py --regroup)")
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "MEASUREMENT", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        model, measurement, variant = args.child
        print(json.dumps(_child(args.run, args.records, model, measurement, variant)))
        return
    from results import command_line, table, write_result  # not in --child: it reads and prints only its number

    columns = ["model", "measurement"] + [f"{variant} s" for variant in VARIANTS]
    rows = []
    print("| " + " | ".join(columns) + " |")
    print("|---|---|" + "---|" * len(VARIANTS))
    for model in ("light", "heavy"):
        for measurement in MEASUREMENTS:
            cells = []
            for variant in VARIANTS:
                if variant == "Keras' loop" and measurement != "first fit call":
                    cells.append("")
                    continue
                command = [sys.executable, os.path.abspath(__file__), "--run", args.run, "--child", model, measurement,
                           variant] + (["--records", args.records] if args.records else [])
                result = subprocess.run(command, check=True, capture_output=True, text=True)
                cells.append(f"{float(result.stdout.strip().splitlines()[-1]):.2f}")
            rows.append([model, measurement] + cells)
            print(f"| {model} | {measurement} | " + " | ".join(cells) + " |", flush=True)
    write_result("trace_cost", command_line(), table(columns, rows),
                 notes="each measurement in a fresh process of its own")


if __name__ == "__main__":
    main()
