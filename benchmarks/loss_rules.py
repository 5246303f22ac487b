"""What each GHCL harmonising rule costs per training step, side by side:

    .venv/bin/python benchmarks/loss_rules.py --data DATA --run RUN [--steps 30] [--rounds 3]

On the request records and Transform output of a finished `hap run` (RUN) of DATA, for the light
model and the full-size heavy model on every sample group (the benchmark's (c) and (e)), every
loss of `LOSSES` is compiled and its training step traced on one batch held in memory (no input
pipeline, no callbacks); then `--rounds` rounds each time `--steps` steps of every loss in turn,
so that whatever else the machine runs weighs on all of them alike. Prints a markdown table of
the median wall ms per step over the rounds and its ratio to GHCL's default rule ("ghcl", ema).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import hap  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf

from hap.data.sample_routing import HEAVY, LIGHT
from hap.evaluation import benchmark
from hap.models import trainer_module
from results import command_line, table, write_result

LOSSES = ("mixed_bce", "pooled_infonce", "ghcl", "ghcl_none", "ghcl_gradnorm", "ghcl_ghm", "ghcl_pcgrad",
          "ghcl_sampled")
REFERENCE = "ghcl"


def measure(inputs, model: str, steps: int, rounds: int) -> dict[str, list[float]]:
    """loss -> ms per step of each round."""
    strategy = tf.distribute.get_strategy()
    trainers, batches = {}, {}
    for loss in LOSSES:
        settings = trainer_module.TrainerSettings(model=model, loss=loss)
        records = inputs.train.only(settings.routing.trains_on)
        batch = next(iter(records.dataset(records.requests_per_batch(settings.batch_size))))
        trainers[loss] = trainer_module.compiled_trainer(settings, inputs.model_inputs, strategy)
        batches[loss] = tf.data.Dataset.from_tensors(batch).repeat()
        trainers[loss].fit(batches[loss], epochs=1, steps_per_epoch=2, verbose=0)  # traces the step
    times: dict[str, list[float]] = {loss: [] for loss in LOSSES}
    for _ in range(rounds):
        for loss in LOSSES:
            start = time.perf_counter()
            trainers[loss].fit(batches[loss], epochs=1, steps_per_epoch=steps, verbose=0)
            times[loss].append(1000.0 * (time.perf_counter() - start) / steps)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the dataset the run was made from")
    parser.add_argument("--run", required=True, help="a finished `hap run` output directory of --data")
    parser.add_argument("--steps", type=int, default=30, help="steps per loss per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over every loss")
    parser.add_argument("--json", help="also write the measured times here")
    args = parser.parse_args()
    inputs = benchmark.load_inputs(args.data, args.run)
    result = {model: measure(inputs, model, args.steps, args.rounds) for model in (LIGHT, HEAVY)}
    columns = ["loss", f"{LIGHT} ms/step", f"ratio to {REFERENCE}", f"{HEAVY} ms/step", f"ratio to {REFERENCE}"]
    rows = []
    print("| " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|")
    for loss in LOSSES:
        cells = []
        for model in (LIGHT, HEAVY):
            ms = statistics.median(result[model][loss])
            cells += [f"{ms:.1f}", f"{ms / statistics.median(result[model][REFERENCE]):.2f}x"]
        rows.append([loss] + cells)
        print(f"| {loss} | " + " | ".join(cells) + " |")
    write_result("loss_rules", command_line(), table(columns, rows),
                 notes=f"median of {args.rounds} rounds of {args.steps} steps per loss, one batch held in memory")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
