"""GHCL's gain over each baseline against the number of clicks the light model trained on:

    .venv/bin/python benchmarks/loss_gain_by_clicks.py --out PNG BENCH [BENCH ...]

Each BENCH is the output folder of a `hap benchmark --variants losses` with (a), (b) and (c);
rule variants benchmarked into other folders of the same data may follow it as `BENCH+OTHER`
(merged, so the table says for which GHCL variants the issue's bar holds). The clicks are the
exposed samples with click 1 on the days before the eval day (the days the pipeline trains on
without a window), counted with the contract's reader from the dataset the benchmark names.
Prints a markdown table, one row per benchmark (funnel Recall@100 where the data has a funnel),
and draws GHCL minus mixed_bce and GHCL minus pooled_infonce (mean per-source AUC, paired over
the seeds: mean and std of the per-seed differences) against the clicks, one marker per regime.
A script, not part of the benchmark: a benchmark compares the losses on one dataset, and the
click count only tells something across several.
"""
from __future__ import annotations

import argparse
import json
import os
import re

import numpy as np

from hap.data import contract, reader
from hap.data.sample_routing import MEAN_AUC
from hap.evaluation import benchmark, report
from results import command_line, table, write_result


def train_clicks(data: str, eval_day: int) -> tuple[int, int]:
    """(clicks, exposed samples) on the days before `eval_day`."""
    clicks = exposed = 0
    for row in reader.read_rows(data):
        if row["source"] == contract.EXPOSED and row["day"] < eval_day:
            exposed += 1
            clicks += row["click"] == 1
    return clicks, exposed


def merged(folders: list[str]) -> dict:
    """One benchmark.json of the first folder with the variants, summaries and per-seed metrics of
    the others added."""
    results = []
    for folder in folders:
        with open(os.path.join(folder, "report", "benchmark.json"), encoding="utf-8") as f:
            results.append(json.load(f))
    base = results[0]
    for other in results[1:]:
        base["variants"] += other["variants"]
        base["summary"].update(other["summary"])
        by_seed = {s["seed"]: s for s in base["per_seed"]}
        for s in other["per_seed"]:
            by_seed[s["seed"]]["metrics"].update(s["metrics"])
    return base


def paired(result: dict, key: str, baseline: str, metric: str = MEAN_AUC) -> tuple[float, float]:
    summary = result["summary"]
    d = np.array(summary[key][metric]["values"], float) - np.array(summary[baseline][metric]["values"], float)
    return float(d.mean()), float(d.std())


def _plus_minus(mean_std, digits: int) -> str:
    return "-" if mean_std is None else f"{mean_std[0]:+.{digits}f} ± {mean_std[1]:.{digits}f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("benchmarks", nargs="+", metavar="BENCH[+OTHER]")
    parser.add_argument("--out", required=True, help="the PNG to draw")
    args = parser.parse_args(argv)

    rows = []
    for spec in args.benchmarks:
        result = merged(spec.split("+"))
        clicks, exposed = train_clicks(result["data"], result["eval_day"])
        name = os.path.basename(os.path.normpath(result["data"]))
        claims = {c["key"]: c for c in benchmark.loss_claims(result)}
        rows.append({"name": name, "clicks": clicks, "rate": clicks / exposed,
                     "over_mixed": paired(result, "c", "a"), "over_pooled": paired(result, "c", "b"),
                     "recall_over_mixed": paired(result, "c", "a", benchmark.LOSS_RECALL) if result["funnel"] else None,
                     "holds": {k: c["holds"] for k, c in claims.items() if c["holds"] is not None}})
    rows.sort(key=lambda r: r["clicks"])
    columns = ["dataset", "training clicks", "(c) minus (a), paired", "(c) minus (b), paired",
               "Recall@100, (c) minus (a)", "bar holds for"]
    cells = [[r["name"], f"{r['clicks']} ({100 * r['rate']:.2f}%)", _plus_minus(r["over_mixed"], 4),
              _plus_minus(r["over_pooled"], 4), _plus_minus(r["recall_over_mixed"], 3),
              ", ".join(f"({k})" for k, ok in r["holds"].items() if ok) or "none"] for r in rows]
    print("| " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|---|")
    for row in cells:
        print("| " + " | ".join(row) + " |")
    write_result("loss_gain_by_clicks", command_line(), table(columns, cells))

    plt = report.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), sharey=True)
    regimes = sorted({re.sub(r"_s\d+$", "", r["name"]) for r in rows})
    for ax, field, title in zip(axes, ("over_mixed", "over_pooled"),
                                ("GHCL minus mixed_bce", "GHCL minus pooled_infonce")):
        for marker, regime in zip("osD^v<>", regimes):
            mine = [r for r in rows if re.sub(r"_s\d+$", "", r["name"]) == regime]
            ax.errorbar([r["clicks"] for r in mine], [r[field][0] for r in mine], yerr=[r[field][1] for r in mine],
                        fmt=marker, capsize=3, label=regime)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_xticks([200, 300, 500, 1000, 2000, 3000], labels=["200", "300", "500", "1000", "2000", "3000"])
        ax.set_xlabel("clicks the light model trained on")
        ax.set_title(f"{title}, light model, mean per-source AUC")
    axes[0].axhline(benchmark.MIXED_MARGIN, color="grey", lw=0.8, ls="--")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    tmp = args.out + ".tmp.png"
    fig.savefig(tmp, dpi=90)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
