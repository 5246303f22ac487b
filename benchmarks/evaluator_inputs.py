"""What scoring raw examples through each model's own Transform costs the Evaluators, against
scoring Transform's output (what they did before docs/decisions/0014).

    .venv/bin/python benchmarks/evaluator_inputs.py --run RUN

For each model of a finished `hap run`: TFMA's per-source AUCs on the eval split, as the
Evaluator computes them (pipeline.eval_config), once from the raw examples through the model's
`score_examples` and `transform_features` signatures, and once from Transform's transformed
examples through a `transformed` signature that parses them directly, re-saved beside the model
for this comparison. Both in this process, one after the other, on the DirectRunner; prints the
seconds and the largest AUC difference.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import hap  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf
import tensorflow_model_analysis as tfma
import tensorflow_transform as tft

from hap.data.sample_routing import MODELS
from hap.models import transformed
from hap.pipeline import pipeline, run_report
from results import command_line, table, write_result


def with_transformed_signature(model_dir: str, transform_dir: str, out_dir: str) -> str:
    """The model re-saved with a signature over serialized transformed examples."""
    model = tf.keras.models.load_model(model_dir, compile=False)
    spec = tft.TFTransformOutput(transform_dir).transformed_feature_spec()

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")], autograph=False)
    def serve(serialized):
        return {"score": tf.sigmoid(model(tf.io.parse_example(serialized, spec), training=False))}

    model.save(out_dir, save_format="tf", save_traces=False, signatures={"transformed": serve.get_concrete_function()})
    return out_dir


def aucs(model_dir: str, examples_dir: str, config: tfma.EvalConfig) -> tuple[dict, float]:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        result = tfma.run_model_analysis(
            eval_shared_model=tfma.default_eval_shared_model(model_dir, eval_config=config), eval_config=config,
            data_location=os.path.join(examples_dir, "Split-eval", "*"), file_format="tfrecords", output_path=out)
    seconds = time.perf_counter() - start
    values = {}
    for slice_key, metrics in result.slicing_metrics:
        if slice_key:
            values[dict(slice_key)[transformed.CONTRAST]] = metrics[""][""]["auc"]["doubleValue"]
    return values, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a finished `hap run` output directory")
    args = parser.parse_args()
    raw = run_report.latest_artifact(args.run, "ContractExampleGen", "Examples").uri
    transform = run_report.latest_artifact(args.run, "Transform", "TransformGraph").uri
    transformed_examples = run_report.latest_artifact(args.run, "Transform", "Examples").uri
    raw_config = pipeline.eval_config({}, 0.0)
    transformed_config = tfma.EvalConfig()
    transformed_config.CopyFrom(raw_config)
    del transformed_config.model_specs[0].preprocessing_function_names[:]
    transformed_config.model_specs[0].signature_name = "transformed"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in MODELS:
            model_dir = os.path.join(run_report.latest_artifact(args.run, f"Trainer_{model}", "Model").uri,
                                     "Format-Serving")
            old = with_transformed_signature(model_dir, transform, os.path.join(tmp, model))
            new_aucs, new_seconds = aucs(model_dir, raw, raw_config)
            old_aucs, old_seconds = aucs(old, transformed_examples, transformed_config)
            assert set(new_aucs) == set(old_aucs), (new_aucs, old_aucs)
            difference = max(abs(new_aucs[k] - old_aucs[k]) for k in new_aucs)
            rows.append([model, round(old_seconds, 1), round(new_seconds, 1), round(new_seconds / old_seconds, 2),
                         f"{difference:.1e}", ", ".join(f"{k} {v:.4f}" for k, v in sorted(new_aucs.items()))])
            print(rows[-1], flush=True)
    write_result("evaluator_inputs", command_line(), table(
        ["model", "transformed examples s", "raw examples, own Transform s", "ratio", "largest AUC difference",
         "per-source AUC (raw)"], rows),
        notes="TFMA on the DirectRunner in one process, the two inputs one after the other; nothing else running")


if __name__ == "__main__":
    main()
