"""Trains the light model with each sample-routing loss on a finished run's Transform output and
compares per-source AUCs on the eval split (and the gradient-conflict signal during training).

    .venv/bin/python benchmarks/light_losses.py --data demo/data --run demo/run [--seeds 0 1 2] [--epochs 1]

Prints a markdown table (mean ± std over seeds) and writes `light_losses.json` and
`light_losses.png` under --out (default: <run>/benchmarks).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import time

import hap  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow_transform as tft

from hap.data import contract as c
from hap.models import request_batches, spec, trainer

GROUPS = ("EN", "RN", "PRN", "GN")


def latest(pattern: str) -> str:
    paths = glob.glob(pattern)
    if not paths:
        raise FileNotFoundError(f"nothing matches {pattern}: run `hap run` first")
    return max(paths, key=lambda p: int(p.rstrip("/").split("/")[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--run", required=True)
    parser.add_argument("--out")
    parser.add_argument("--losses", nargs="+", default=["mixed_bce", "pooled_infonce", "ghcl"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=trainer.TrainerSettings.epochs)
    parser.add_argument("--temperature", type=float, default=trainer.TrainerSettings.temperature)
    parser.add_argument("--learning-rate", type=float, default=trainer.TrainerSettings.learning_rate)
    args = parser.parse_args()
    out = args.out or os.path.join(args.run, "benchmarks")
    os.makedirs(out, exist_ok=True)

    root = os.path.join(args.run, "pipeline_root", "Transform")
    tft_output = tft.TFTransformOutput(latest(os.path.join(root, "transform_graph", "*")))
    examples = latest(os.path.join(root, "transformed_examples", "*"))
    feature_spec = tft_output.transformed_feature_spec()
    train = request_batches.load_split(os.path.join(examples, "Split-train", "*"), feature_spec)
    evaluation = request_batches.load_split(os.path.join(examples, "Split-eval", "*"), feature_spec)
    model_spec = spec.ModelSpec.from_transform_output(c.load_features(args.data), tft_output)

    results = []
    for loss in args.losses:
        for seed in args.seeds:
            settings = trainer.TrainerSettings(role="light", loss=loss, epochs=args.epochs, seed=seed,
                                               temperature=args.temperature, learning_rate=args.learning_rate)
            start = time.time()
            _, history = trainer.train(settings, model_spec, train, evaluation, os.path.join(out, "logs", f"{loss}-{seed}"))
            results.append({"loss": loss, "seed": seed, "seconds": time.time() - start,
                            "auc": history["per_source_auc"][-1], "conflict": history["gradient_conflict"]})
            print(f"{loss} seed {seed}: {results[-1]['auc']}", flush=True)
    with open(os.path.join(out, "light_losses.json"), "w") as f:
        json.dump(results, f, indent=1)

    keys = [f"auc_EP_vs_{g}" for g in GROUPS] + ["auc_mean"]
    print("\n| loss | " + " | ".join(k.replace("auc_", "").replace("_", " ") for k in keys) + " | mean cos |")
    print("|---" * (len(keys) + 2) + "|")
    for loss in args.losses:
        runs = [r for r in results if r["loss"] == loss]
        cells = []
        for k in keys:
            v = np.array([r["auc"][k] for r in runs])
            cells.append(f"{v.mean():.4f} ± {v.std():.4f}")
        cos = np.mean([np.mean([h["cos_mean"] for h in r["conflict"]]) for r in runs])
        print(f"| {loss} | " + " | ".join(cells) + f" | {cos:+.3f} |")
    plot(results, args.losses, keys, os.path.join(out, "light_losses.png"))


def plot(results, losses, keys, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(losses)
    for i, loss in enumerate(losses):
        runs = [r for r in results if r["loss"] == loss]
        means = [np.mean([r["auc"][k] for r in runs]) for k in keys]
        stds = [np.std([r["auc"][k] for r in runs]) for k in keys]
        left.bar(np.arange(len(keys)) + i * width, means, width, yerr=stds, label=loss, capsize=3)
        steps = [h["step"] for h in runs[0]["conflict"]]
        cos = np.mean([[h["cos_mean"] for h in r["conflict"]] for r in runs], axis=0)
        right.plot(steps, cos, label=loss)
    left.set_xticks(np.arange(len(keys)) + width * (len(losses) - 1) / 2)
    left.set_xticklabels([k.replace("auc_", "").replace("_vs_", " vs ") for k in keys])
    left.set_ylim(0.5, 1.0)
    left.set_ylabel("AUC on the eval day")
    left.set_title("Light model: AUC of exposed positives vs each source")
    left.legend()
    right.axhline(0, color="grey", lw=0.5)
    right.set_xlabel("training step")
    right.set_ylabel("mean pairwise cosine of per-source gradients")
    right.set_title("Gradient conflict during training")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
