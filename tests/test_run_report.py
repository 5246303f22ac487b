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
