"""Artifacts of a finished run, found through its ML Metadata (pipeline/run_report.py)."""
import json
import os
import re

import numpy as np
import pytest

from conftest import QUICK_TRAINER
from hap.pipeline import run_report


def test_latest_artifact_is_an_output_of_the_component(pipeline_run):
    graph = run_report.latest_artifact(pipeline_run, "Transform", "TransformGraph")
    assert graph.uri.startswith(os.path.join(pipeline_run, "pipeline_root", "Transform", "transform_graph"))
    assert os.path.isdir(graph.uri)
    model = run_report.latest_artifact(pipeline_run, "Trainer_light", "Model")
    assert model.uri.startswith(os.path.join(pipeline_run, "pipeline_root", "Trainer_light", "model"))
    # The Trainer reads the transform graph, which TFX attributes to its node too: not an output.
    with pytest.raises(FileNotFoundError, match=re.escape(
            f"{pipeline_run}: its ML Metadata records no TransformGraph output of Trainer_light")):
        run_report.latest_artifact(pipeline_run, "Trainer_light", "TransformGraph")


def test_a_component_the_run_does_not_have_is_named(pipeline_run):
    with pytest.raises(FileNotFoundError, match=re.escape(f"{pipeline_run}: its ML Metadata records no Model "
                                                          "output of Trainer_medium")):
        run_report.latest_artifact(pipeline_run, "Trainer_medium", "Model")


def test_a_directory_without_metadata_is_not_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metadata.sqlite"):
        run_report.latest_artifact(str(tmp_path), "Transform", "TransformGraph")
    assert not os.listdir(tmp_path), "nothing may be created in it"


def test_training_summary_reports_the_epoch_validation_chose(pipeline_run):
    summary = run_report.training_summary(pipeline_run)
    assert set(summary) == {"light", "heavy"}
    for model, trained in summary.items():
        run_dir = run_report.latest_artifact(pipeline_run, f"Trainer_{model}", "ModelRun").uri
        with open(os.path.join(run_dir, "training_history.json")) as f:
            history = json.load(f)
        means = [epoch["auc_mean"] for epoch in history["per_source_auc"]]
        # The chosen epoch is the best of those run (ties: the first), and runs stop at max_epochs.
        assert trained["chosen_epoch"] == int(np.nanargmax(means)) + 1
        assert trained["epochs_run"] == len(means) <= QUICK_TRAINER["max_epochs"]
        assert trained["auc"] == history["per_source_auc"][trained["chosen_epoch"] - 1]
        blessing = run_report.latest_artifact(pipeline_run, f"Evaluator_{model}", "ModelBlessing")
        assert trained["blessed"] == bool(blessing.custom_properties["blessed"].int_value)


VALIDATION = """
validation_ok: false
metric_validations_per_slice {
  slice_key { single_slice_keys { column: "contrast" bytes_value: "EN" } }
  failures {
    metric_key { name: "auc" model_name: "candidate" }
    metric_threshold { value_threshold { lower_bound { value: 0.55 } } }
    metric_value { double_value { value: 0.521 } }
  }
}
metric_validations_per_slice {
  slice_key { single_slice_keys { column: "contrast" bytes_value: "RN" } }
  failures {
    metric_key { name: "auc" model_name: "candidate" is_diff: true }
    metric_threshold { change_threshold { direction: HIGHER_IS_BETTER absolute { value: -0.01 } } }
    metric_value { double_value { value: -0.034 } }
  }
}
"""


def test_the_summary_names_each_floor_missed_and_each_regression():
    from google.protobuf import text_format
    from tensorflow_model_analysis.proto import validation_result_pb2

    result = text_format.Parse(VALIDATION, validation_result_pb2.ValidationResult())
    failures = run_report.validation_failures(result)
    assert failures == [{"contrast": "EN", "kind": "floor", "value": 0.521, "floor": 0.55},
                        {"contrast": "RN", "kind": "regression", "change": -0.034, "tolerance": 0.01}]
    assert [run_report.failure_text(f) for f in failures] == [
        "EP vs EN AUC 0.521 < floor 0.55",
        "EP vs RN AUC -0.034 against the last blessed model, more than the 0.01 allowed"]
    assert run_report.validation_failures(validation_result_pb2.ValidationResult(validation_ok=True)) == []


def test_summary_of_the_shared_run_agrees_with_its_blessings(pipeline_run):
    """Whatever the floors of the last run into the shared folder, each model's line says blessed
    exactly when its Evaluator blessed it, and names a floor when it did not."""
    lines = run_report.summary_lines(pipeline_run)
    for model, trained in run_report.training_summary(pipeline_run).items():
        line = next(i for i, line in enumerate(lines) if line.startswith(f"{model}: epoch "))
        if trained["blessed"]:
            assert lines[line].endswith(": blessed")
        else:
            assert lines[line].endswith(": NOT blessed")
            assert re.match(r"  EP vs \w+ AUC [\d.]+ < floor 1$", lines[line + 1]), lines
    if all(trained["blessed"] for trained in run_report.training_summary(pipeline_run).values()):
        cascade = run_report.cascade_blessing(pipeline_run)
        assert f"cascade: {'blessed' if cascade['blessed'] else 'NOT blessed'} ({cascade['reason']})" in lines
    assert any(line.startswith("pushed: ") for line in lines)
