"""Item popularity as a baseline: how three definitions of it score, and how the pushed cascade
and its two models score on the same requests (docs/decisions/0018-popularity-baseline.md).

    .venv/bin/python benchmarks/popularity_baseline.py \
        --evaluated default=demo/data:demo/evaluation/metrics.json \
        --simulate default sparse_noisy rare_clicks light_enough --seeds 0 1

`--evaluated NAME=DATA:METRICS` reads a dataset and the `hap evaluate` metrics of a cascade on it
(`hap demo` writes both); `--simulate` draws simulator regimes at their default size (no model).
Popularity counts the days before the last one (the eval day) and is scored on the whole eval
day's logged requests (GAUC, the mean and EN per-source AUC) and on funnel/ (oracle Recall@100
and @200), as `hap evaluate` scores the cascade. Writes results/popularity_baseline.json.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile

import hap  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np

from hap.data import contract as c
from hap.data import reader, simulator
from hap.evaluation import evaluate
from hap.evaluation.popularity import ItemPopularity
from results import command_line, table, write_result

LOGGED = ("gauc", "auc_mean", "auc_EP_vs_EN")
FUNNEL = ("oracle_recall@100", "oracle_recall@200")
COLUMNS = ["dataset", "scorer", "GAUC", "mean per-source AUC", "EP vs EN AUC", "Recall@100 (funnel)",
           "Recall@200 (funnel)"]


def _definitions(popularity: ItemPopularity) -> dict:
    """The candidates for "popularity": HAP's (clicks, then exposures) and two it was chosen over."""
    most = 1.0 + max(popularity.clicks.values(), default=0)
    return {
        "popularity: clicks, then exposures (HAP's)": popularity.scores,
        "popularity: exposures, then clicks": lambda items: np.array(
            [popularity.exposures.get(i, 0) + popularity.clicks.get(i, 0) / most for i in items], np.float64),
        "popularity: clicks only": lambda items: np.array([popularity.clicks.get(i, 0) for i in items], np.float64),
    }


def _rows_by_part(data_dir: str, features: c.FeatureSet) -> dict:
    _, requests = evaluate.eval_day_requests(data_dir, features)
    parts = {"logged": [r for rows in requests.values() for r in rows]}
    funnel = evaluate.funnel_requests(data_dir, features)
    if funnel is not None:
        parts["funnel"] = [r for rows in funnel.values() for r in rows]
    return parts


def _metrics(parts: dict, score) -> dict:
    out = {}
    logged = parts["logged"]
    metrics = evaluate.logged_metrics(np.array([r["request_id"] for r in logged]), np.array([r["click"] for r in logged]),
                                      np.array(evaluate.groups_of(logged)), score([r["item_id"] for r in logged]))
    out.update({name: metrics[name].value for name in LOGGED})
    if "funnel" in parts:
        funnel = parts["funnel"]
        metrics = evaluate.funnel_metrics(np.array([r["request_id"] for r in funnel]),
                                          np.array([r[c.ORACLE_COLUMN] for r in funnel], np.float64),
                                          score([r["item_id"] for r in funnel]))
        out.update({name: metrics[name].value for name in FUNNEL})
    return out


def _row(dataset: str, scorer: str, values: dict) -> list:
    return [dataset, scorer, *(round(values[k], 4) if k in values else "" for k in LOGGED + FUNNEL)]


def measure(name: str, data_dir: str, metrics_file: str | None) -> list[list]:
    features = c.load_features(data_dir)
    days = sorted({r["day"] for r in reader.read_rows(data_dir, features=features)})
    popularity = ItemPopularity.from_days(data_dir, features, days[:-1])
    parts = _rows_by_part(data_dir, features)
    rows = [_row(name, scorer, _metrics(parts, score)) for scorer, score in _definitions(popularity).items()]
    if metrics_file:
        with open(metrics_file) as f:
            evaluated = json.load(f)
        for signature in ("light", "heavy", "cascade"):
            values = {k: evaluated["logged"]["metrics"][signature][k]["value"] for k in LOGGED}
            if evaluated.get("funnel"):
                values.update({k: evaluated["funnel"]["metrics"][signature][k]["value"] for k in FUNNEL})
            rows.append(_row(name, f"{signature} (the pushed cascade's signature)", values))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--evaluated", nargs="*", default=[], metavar="NAME=DATA:METRICS")
    parser.add_argument("--simulate", nargs="*", default=[], metavar="REGIME")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    args = parser.parse_args()
    rows = []
    for spec in args.evaluated:
        name, paths = spec.split("=", 1)
        data_dir, metrics_file = paths.split(":", 1)
        rows += measure(name, data_dir, metrics_file)
        print(f"{name}: done", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        for regime in args.simulate:
            for seed in args.seeds:
                data_dir = os.path.join(scratch, f"{regime}-{seed}")
                simulator.simulate(data_dir, simulator.config_for_regime(regime, seed=seed), progress=False)
                rows += measure(f"{regime}, seed {seed}", data_dir, None)
                print(f"{regime}, seed {seed}: done", flush=True)
    write_result("popularity_baseline", command_line(), table(COLUMNS, rows))
    for row in rows:
        print(" | ".join(map(str, row)))


if __name__ == "__main__":
    main()
