"""CascadeAssembler's executor on the Transform graph and models of a real pipeline run."""
import glob
import json
import os

import pytest
from tfx.types import standard_artifacts

from hap.components.cascade_assembler import component, executor
from hap.data import contract as c
from hap.models import preprocessing
from hap.serving import cascade, flops, routing


def _artifact(cls, uri, blessed=None):
    artifact = cls()
    artifact.uri = uri
    if blessed is not None:
        artifact.set_int_custom_property("blessed", int(blessed))
    return artifact


def _latest(pipeline_run, node, name):
    return sorted(glob.glob(os.path.join(pipeline_run, "pipeline_root", node, name, "*")), key=os.path.getmtime)[0]


@pytest.fixture(scope="module")
def inputs(pipeline_run):
    return {
        "transform_graph": [_artifact(standard_artifacts.TransformGraph, _latest(pipeline_run, "Transform",
                                                                                 "transform_graph"))],
        "light_model": [_artifact(standard_artifacts.Model, _latest(pipeline_run, "Trainer_light", "model"))],
        "heavy_model": [_artifact(standard_artifacts.Model, _latest(pipeline_run, "Trainer_heavy", "model"))],
    }


def test_a_cascade_of_an_unblessed_model_is_written_but_not_blessed(inputs, e2e_data, tmp_path):
    features = c.load_features(e2e_data)
    settings = cascade.CascadeSettings(route_fraction=0.25, k_out=7, max_candidates=900)
    model = _artifact(standard_artifacts.Model, str(tmp_path / "model"))
    blessing = _artifact(standard_artifacts.ModelBlessing, str(tmp_path / "blessing"))
    model.id = 42
    os.makedirs(model.uri)
    os.makedirs(blessing.uri)
    executor.Executor().Do(
        {**inputs, "light_blessing": [_artifact(standard_artifacts.ModelBlessing, "", blessed=True)],
         "heavy_blessing": [_artifact(standard_artifacts.ModelBlessing, "", blessed=False)]},
        {"model": [model], "blessing": [blessing]},
        {"custom_config": json.dumps(preprocessing.make_custom_config(features)), "route_fraction": 0.25,
         "k_out": 7, "max_candidates": 900, "model_name": "ranker"})

    assert blessing.get_int_custom_property("blessed") == 0
    assert os.listdir(blessing.uri) == [executor.NOT_BLESSED_FILE]
    assert blessing.get_int_custom_property("current_model_id") == 42
    serving = os.path.join(model.uri, "Format-Serving")
    assert sorted(os.listdir(model.uri)) == ["Format-Serving"], "the staging folder was left behind"
    assert os.path.isfile(os.path.join(serving, "saved_model.pb"))
    with open(os.path.join(serving, "assets.extra", cascade.INFO_FILE)) as f:
        info = json.load(f)
    assert info["settings"] == {"route_fraction": 0.25, "k_out": 7, "max_candidates": 900}
    assert [f["name"] for f in info["features"]] == list(features.names)
    parts = info["flops"]
    # The heavy model is the expensive one per candidate; the routed quarter costs accordingly.
    assert parts["heavy_per_candidate"] > 10 * parts["light_per_candidate"] > 0
    cost = flops.request_flops(parts, 1000, routing.routed_count(1000, 0.25))
    assert cost["light_only"] < cost["cascade"] < 0.3 * cost["heavy_all"]


def test_a_failed_assembly_leaves_nothing_in_place(inputs, e2e_data, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(executor.warmup, "write_warmup", fail)
    export_dir = str(tmp_path / "Format-Serving")
    with pytest.raises(OSError, match="disk full"):
        executor.assemble(inputs["transform_graph"][0].uri,
                          os.path.join(inputs["light_model"][0].uri, "Format-Serving"),
                          os.path.join(inputs["heavy_model"][0].uri, "Format-Serving"),
                          preprocessing.make_custom_config(c.load_features(e2e_data)), cascade.CascadeSettings(),
                          "hap", export_dir)
    assert not os.path.exists(export_dir)


def test_the_component_passes_its_settings_to_the_executor():
    from tfx.types import Channel

    assembler = component.CascadeAssembler(
        transform_graph=Channel(type=standard_artifacts.TransformGraph),
        light_model=Channel(type=standard_artifacts.Model), heavy_model=Channel(type=standard_artifacts.Model),
        light_blessing=Channel(type=standard_artifacts.ModelBlessing),
        heavy_blessing=Channel(type=standard_artifacts.ModelBlessing),
        custom_config={"features": []}, settings=cascade.CascadeSettings(route_fraction=0.2, k_out=50),
        model_name="ranker")
    params = assembler.exec_properties
    assert (params["route_fraction"], params["k_out"], params["model_name"]) == (0.2, 50, "ranker")
    assert json.loads(params["custom_config"]) == {"features": []}
    assert set(assembler.outputs) == {"model", "blessing"}
