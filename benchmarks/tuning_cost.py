"""What tuning costs and what it buys (docs/decisions/0021-tuning.md): the pipeline untuned and
tuned on one dataset, then both again a day later, the tuned one reusing its search.

    .venv/bin/python benchmarks/tuning_cost.py --data demo/data --out /tmp/tuning_cost [--name NAME]

`--data` must be a simulated dataset (`simulation.json`): the day after is `hap data simulate
--append-day` on a copy. Per run: the Tuners' and the Trainers' seconds (ML Metadata's execution
times), the Tuners' choice, each model's mean per-source AUC on the eval day (the Trainer's
validation at the chosen epoch) and whether it was blessed. Tuning's cost is the first day's
Tuners against the untuned run's Trainers; a reusing day's is its Tuners and Trainers against the
untuned run's Trainers of the same day. Nothing else should run meanwhile (the ratios are of runs
made one after the other). Writes results/<name>.json (default tuning_cost).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time

import hap  # noqa: F401  (Keras 2 before TensorFlow)

from hap import settings
from hap.data import simulator
from hap.data.sample_routing import MODELS
from hap.pipeline import local_runner, run_report
from results import command_line, table, write_result

COLUMNS = ["day", "run", "Tuners s", "Trainers s", "Tuners / untuned Trainers", "Tuners + Trainers / untuned Trainers",
           "light eval AUC", "heavy eval AUC", "blessed", "light choice", "heavy choice"]


def _seconds(out_dir: str, prefix: str) -> float:
    """Seconds of the newest execution of each model's `prefix` component (Tuner, Trainer)."""
    latest = run_report.latest_by_node(out_dir)
    return sum(latest[f"{prefix}_{m}"]["seconds"] for m in MODELS if f"{prefix}_{m}" in latest)


def _choice(out_dir: str, model: str) -> str:
    text = run_report.tuning_text(out_dir, model)
    return text.strip() if text else "(settings)"


def _run(data: str, out: str, tree) -> dict:
    start = time.perf_counter()
    local_runner.run(data, out, tree)
    trained = run_report.training_summary(out)
    return {"wall": time.perf_counter() - start, "tuner": _seconds(out, "Tuner"), "trainer": _seconds(out, "Trainer"),
            "auc": {m: trained[m]["auc"]["auc_mean"] for m in MODELS},
            "blessed": all(trained[m]["blessed"] for m in MODELS),
            "choice": {m: _choice(out, m) for m in MODELS}}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--name", default="tuning_cost")
    parser.add_argument("--set", action="append", default=[], help="settings key=value of both runs")
    args = parser.parse_args(argv)
    shutil.rmtree(args.out, ignore_errors=True)
    data = os.path.join(args.out, "data")
    shutil.copytree(args.data, data)
    base = settings.load(sets=args.set, env={}).settings
    trees = {"untuned": settings.override(base, {"tuning.trials": 0}), "tuned": base}
    results = {}
    for day in ("first", "next"):
        if day == "next":
            simulator.append_day(data, progress=False)
        for name, tree in trees.items():
            results[(day, name)] = _run(data, os.path.join(args.out, name), tree)
            print(day, name, json.dumps(results[(day, name)]), flush=True)
    rows = []
    for (day, name), r in results.items():
        untuned = results[(day, "untuned")]["trainer"]
        rows.append([day, name, round(r["tuner"], 1), round(r["trainer"], 1), f"{r['tuner'] / untuned:.2f}x",
                     f"{(r['tuner'] + r['trainer']) / untuned:.2f}x", round(r["auc"]["light"], 4),
                     round(r["auc"]["heavy"], 4), "yes" if r["blessed"] else "no", r["choice"]["light"],
                     r["choice"]["heavy"]])
    tuning = base.tuning
    write_result(args.name, command_line(), table(COLUMNS, rows), notes=(
        f"tuning.trials {tuning.trials}, max_epochs {tuning.max_epochs}, holdout_share {tuning.holdout_share}, "
        f"retune_days {tuning.retune_days}; eval AUC: the Trainer's validation on the eval day at its chosen epoch, "
        "mean over the model's contrasts"))

if __name__ == "__main__":
    main()
