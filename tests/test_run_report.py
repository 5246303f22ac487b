"""Artifacts of a finished run, found through its ML Metadata (pipeline/run_report.py)."""
import os
import re

import pytest

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
