"""How much of the eval split the per-epoch validation needs to choose the epoch.

    .venv/bin/python benchmarks/validation_size.py --run RUN --model light [--epochs 7] [--draws 60]

Trains the model as the Trainer does on a finished `hap run` (RUN), for `--epochs` epochs (every
epoch runs), scoring the whole eval split after each. Then, for draws of random eval requests
holding about N exposed positives (at the split's rate), applies the Trainer's early-stopping
rule (best mean AUC over the model's contrasts, `patience` epochs without improvement) to the
draw's AUCs and compares the epoch it picks with the one the whole split picks: how often it is
the same epoch, and its regret (the whole split's mean AUC of its pick less that of the draw's
pick; negative when a draw picks better than the rule does on the whole split). Prints a markdown
table; `trainer_module.TrainerSettings.eval_positives` was chosen from it.
"""
from __future__ import annotations

import argparse
import math
import tempfile

import hap  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
from scipy import stats
from results import command_line, table, write_result  # this script's folder is first on sys.path
from training_steps import trainer_inputs

from hap.data import contract as c
from hap.models import trainer_module, training, transformed


def epoch_scores(run_dir: str, model: str, epochs: int) -> tuple[list[np.ndarray], dict, tuple[str, ...], int]:
    """The model's logits on the whole eval split after each epoch, its sample groups and
    request ids, its contrasts and its patience."""
    tft_output, config, features, train_records, eval_records = trainer_inputs(run_dir, model)
    settings = trainer_module.TrainerSettings.from_config(
        {**config, "max_epochs": epochs, "patience": epochs, "eval_requests": eval_records.requests,
         "eval_positives": max(1, eval_records.samples_by_group[c.EP])})
    logits = []
    scoring = training.PerSourceAUC.on_epoch_end

    def keep_scores(callback, epoch, logs=None):
        scoring(callback, epoch, logs)
        logits.append(training.score_records(callback.predict, callback.eval_records))

    training.PerSourceAUC.on_epoch_end = keep_scores
    try:
        with tempfile.TemporaryDirectory() as logs:
            trainer_module.train(settings, transformed.ModelInputs.from_transform_output(features, tft_output),
                                 train_records, eval_records, logs)
    finally:
        training.PerSourceAUC.on_epoch_end = scoring
    columns = eval_records.columns((transformed.SAMPLE_GROUP, transformed.REQUEST_KEY))
    return logits, columns, settings.routing.contrasts, config.get("patience", trainer_module.TrainerSettings.patience)


def _auc(scores: np.ndarray, positive: np.ndarray, negative: np.ndarray) -> float:
    """Mann-Whitney AUC (ties half): the rank form, faster than pairwise on 10^5 samples."""
    ranks = stats.rankdata(np.r_[scores[positive], scores[negative]])[: positive.sum()]
    return (ranks.sum() - positive.sum() * (positive.sum() + 1) / 2) / (positive.sum() * negative.sum())


def chosen_epoch(values, patience: int) -> int:
    """The epoch (0-based) Keras' EarlyStopping(restore_best_weights=True) keeps."""
    best, best_epoch, waited = -math.inf, 0, 0
    for epoch, value in enumerate(values):
        if value > best:
            best, best_epoch, waited = value, epoch, 0
        else:
            waited += 1
            if waited >= patience:
                break
    return best_epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a finished `hap run` output directory")
    parser.add_argument("--model", default="light", choices=("light", "heavy"))
    parser.add_argument("--epochs", type=int, default=7)
    parser.add_argument("--draws", type=int, default=60)
    parser.add_argument("--positives", type=int, nargs="+", default=[250, 500, 1000, 2000, 4000])
    args = parser.parse_args()
    logits, columns, contrasts, patience = epoch_scores(args.run, args.model, args.epochs)
    groups = columns[transformed.SAMPLE_GROUP]
    _, request = np.unique(columns[transformed.REQUEST_KEY], return_inverse=True)
    requests = request.max() + 1
    per_request = (groups == transformed.GROUP_INDEX[c.EP]).sum() / requests

    def mean_auc(epoch: int, rows: np.ndarray) -> float:
        g = groups[rows]
        positive = g == transformed.GROUP_INDEX[c.EP]
        return float(np.mean([_auc(logits[epoch][rows], positive, g == transformed.GROUP_INDEX[n]) for n in contrasts]))

    every = np.ones(len(groups), bool)
    whole = [mean_auc(e, every) for e in range(len(logits))]
    pick = chosen_epoch(whole, patience)
    print(f"{args.model} model, {requests:,} eval requests, {per_request:.2f} positives a request; mean AUC by epoch on "
          f"the whole split {np.round(whole, 4).tolist()}: it picks epoch {pick + 1}\n")
    columns = ["positives (requests)", "same epoch", "regret mean", "regret max", "mean AUC sd",
               "epoch-to-epoch difference sd"]
    table_rows = []
    print("| " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for positives in args.positives:
        size = math.ceil(positives / per_request)
        if size >= requests:
            continue
        same, regrets, curves = 0, [], []
        for _ in range(args.draws):
            rows = np.isin(request, rng.choice(requests, size, replace=False))
            curve = [mean_auc(e, rows) for e in range(len(logits))]
            draw_pick = chosen_epoch(curve, patience)
            same += draw_pick == pick
            regrets.append(whole[pick] - whole[draw_pick])
            curves.append(curve)
        curves = np.array(curves)
        table_rows.append([f"{positives:,} ({size:,})", f"{same}/{args.draws}", f"{np.mean(regrets):+.4f}",
                           f"{np.max(regrets):+.4f}", f"{curves.std(0).mean():.4f}",
                           f"{np.diff(curves, axis=1).std(0).mean():.4f}"])
        print("| " + " | ".join(table_rows[-1]) + " |")
    write_result(f"validation_size_{args.model}", command_line(), table(columns, table_rows),
                 notes=f"{args.model} model, {requests:,} eval requests, {per_request:.2f} positives a request; mean AUC "
                       f"by epoch on the whole split {np.round(whole, 4).tolist()}: it picks epoch {pick + 1}")


if __name__ == "__main__":
    main()
