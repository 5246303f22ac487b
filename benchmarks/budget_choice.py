"""The routing chosen within a serving budget against the settings' fixed routing, on a pipeline
run's models (docs/decisions/0021-tuning.md).

    .venv/bin/python benchmarks/budget_choice.py --run demo/run --data demo/data --mflops 40 90 \\
        [--name budget_choice] [--dataset default]

Per budget: what the CascadeAssembler would choose (serving/budget.py, on the half of the eval
day that chooses), its runner-up and margin there; then, on the other half (the one the cascade
is blessed on), the chosen routing, the settings' routing (`cascade.routing`) and the light model
alone, each with its MFLOPs per request of 1000 candidates. Writes results/<name>.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import os

import hap  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf
import tensorflow_transform as tft
from tfx.utils import path_utils

from hap import settings as hap_settings
from hap.data import contract as c
from hap.models import heavy, light  # noqa: F401  (registers the Keras classes)
from hap.pipeline import run_report
from hap.serving import budget, cascade, flops
from hap.serving.policy import LIGHT_ONLY
from results import command_line, table, write_result

COLUMNS = ["dataset", "budget MFLOPs", "chosen", "its MFLOPs", "runner-up", "margin (choosing half)", "metric",
           "chosen (blessing half)", "settings' routing (blessing half)", "its MFLOPs ", "light alone (blessing half)"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--mflops", type=float, nargs="+", required=True)
    parser.add_argument("--dataset", default=None, help="the dataset's name in the table (default: --data's folder)")
    parser.add_argument("--name", default="budget_choice")
    args = parser.parse_args(argv)
    dataset = args.dataset or os.path.basename(os.path.normpath(args.data))
    features = c.load_features(args.data)
    models = [tf.keras.models.load_model(path_utils.serving_model_path(
        run_report.latest_artifact(args.run, f"Trainer_{m}", "Model").uri), compile=False) for m in ("light", "heavy")]
    tft_output = tft.TFTransformOutput(run_report.latest_artifact(args.run, "Transform", "TransformGraph").uri)
    base = hap_settings.defaults().cascade
    module = cascade.CascadeModule(*models, tft_output.transform_features_layer(), tft_output.raw_feature_spec(),
                                   features, base)
    parts = flops.model_flops(*models)
    reporting = budget.score_requests(module, features, args.data, base.blessing_requests, budget.BLESSING_HALF)
    alone = dataclasses.replace(base.routing, kind=LIGHT_ONLY)
    rows = []
    for limit in args.mflops:
        settings = dataclasses.replace(base, budget=dataclasses.replace(base.budget, mflops=limit))
        policy, record = budget.choose_routing(module, features, args.data, settings, parts)
        n = settings.budget.candidates
        rows.append([dataset, limit, record["chosen"], round(budget.mflops(parts, policy, n), 1), record["runner_up"],
                     round(record["margin"], 4) if record["margin"] is not None else "", record["metric"],
                     round(budget.value(policy, reporting), 4), round(budget.value(base.routing, reporting), 4),
                     round(budget.mflops(parts, base.routing, n), 1), round(budget.value(alone, reporting), 4)])
        print(rows[-1], flush=True)
    write_result(args.name, command_line(), table(COLUMNS, rows),
                 notes="requests: at most cascade.blessing_requests of each half; MFLOPs per request of 1000 candidates")


if __name__ == "__main__":
    main()
