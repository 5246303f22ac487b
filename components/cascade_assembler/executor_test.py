"""CascadeAssembler's executor on the Transform graph and models of a real pipeline run."""
import dataclasses
import glob
import json
import os

import pytest
from tfx.types import standard_artifacts

from hap.components.cascade_assembler import component, executor
from hap.data import contract as c
from hap.models import preprocessing
from hap import settings as hap_settings
from hap.serving import cascade, flops, routing
from hap.tree import parse, to_plain


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
    policy = routing.RoutingPolicy(kind=routing.BAND, fraction=0.25, cutoff=20)
    settings = cascade.CascadeSettings(routing=policy, k_out=7, max_candidates=900)
    tree = hap_settings.override(hap_settings.defaults(), {"cascade": to_plain(settings), "serving.model_name": "ranker"})
    model = _artifact(standard_artifacts.Model, str(tmp_path / "model"))
    blessing = _artifact(standard_artifacts.ModelBlessing, str(tmp_path / "blessing"))
    model.id = 42
    os.makedirs(model.uri)
    os.makedirs(blessing.uri)
    executor.Executor().Do(
        {**inputs, "light_blessing": [_artifact(standard_artifacts.ModelBlessing, "", blessed=True)],
         "heavy_blessing": [_artifact(standard_artifacts.ModelBlessing, "", blessed=False)]},
        {"model": [model], "blessing": [blessing]},
        {"custom_config": json.dumps(preprocessing.make_custom_config(features)),
         "settings": json.dumps(to_plain(tree.cascade)), "model_name": "ranker", "data_root": e2e_data,
         "hap_settings": tree.to_json()})

    assert blessing.get_int_custom_property("blessed") == 0
    assert os.listdir(blessing.uri) == [executor.NOT_BLESSED_FILE]
    assert "not blessed by its Evaluator" in blessing.get_string_custom_property("reason")
    assert blessing.get_int_custom_property("current_model_id") == 42
    serving = os.path.join(model.uri, "Format-Serving")
    assert sorted(os.listdir(model.uri)) == ["Format-Serving"], "the staging folder was left behind"
    assert os.path.isfile(os.path.join(serving, "saved_model.pb"))
    with open(os.path.join(serving, "assets.extra", cascade.INFO_FILE)) as f:
        info = json.load(f)
    assert info["settings"] == to_plain(settings)
    assert cascade.CascadeSettings(**info["settings"]) == settings
    # Provenance: the whole effective tree and the commit of the code that assembled it.
    assert hap_settings.HapSettings.from_json(json.dumps(info["hap_settings"])) == tree
    assert info["source_commit"] == executor.source_commit() and len(info["source_commit"] or "x" * 40) == 40
    assert [f["name"] for f in info["features"]] == list(features.names)
    parts = info["flops"]
    # The second stage (the heavy architecture narrowed, hap/defaults.yaml, heavy.trainer.model_config) is the
    # expensive one per candidate, about 6 times the light model on these features; the routed
    # quarter costs a quarter of it on every candidate, beside the light model's pass.
    assert parts["heavy_per_candidate"] > 3 * parts["light_per_candidate"] > 0
    cost = flops.request_flops(parts, 1000, routing.routed_count(1000, 0.25))
    assert cost["cascade"] == pytest.approx(cost["light_only"] + 0.25 * cost["heavy_all"])
    assert cost["light_only"] < cost["cascade"] < cost["heavy_all"]


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


def test_a_budget_chooses_the_routing_on_half_the_eval_day_and_the_cascade_is_saved_with_it(inputs, e2e_data,
                                                                                            tmp_path):
    import tensorflow as tf

    from hap.evaluation import evaluate
    from hap.serving import budget

    features = c.load_features(e2e_data)
    light_dir, heavy_dir = (os.path.join(inputs[k][0].uri, "Format-Serving") for k in ("light_model", "heavy_model"))
    parts = flops.model_flops(*(tf.keras.models.load_model(d, compile=False) for d in (light_dir, heavy_dir)))
    light_only = flops.request_flops(parts, 1000, 0)["cascade"] / 1e6
    # Room for a fifth of the candidates on the heavy model, not for half.
    limit = light_only + 200.5 * parts["heavy_per_candidate"] / 1e6
    policies = ["top_k", "band", "learned"]
    settings = hap_settings.override(hap_settings.defaults(), {
        "cascade.budget.mflops": limit, "cascade.budget.policies": policies}).cascade

    def assemble(settings, name):
        return executor.assemble(inputs["transform_graph"][0].uri, light_dir, heavy_dir,
                                 preprocessing.make_custom_config(features), settings, "hap", str(tmp_path / name),
                                 data_root=e2e_data)

    saved = assemble(settings, "budget")
    with open(os.path.join(tmp_path, "budget", "assets.extra", cascade.INFO_FILE)) as f:
        info = json.load(f)
    record = info["budget"]
    within = [o for o in record["options"] if o["within"]]
    assert {o["label"] for o in within} == {f"{p}{' around 200' if p == 'band' else ''} {f:.0%}" for p in policies
                                            for f in (0.05, 0.1, 0.2)} | {"light model alone"}
    assert len(record["options"]) == 3 * 4 + 1
    chosen = next(o for o in record["options"] if o["label"] == record["chosen"])
    assert chosen["value"] == max(o["value"] for o in within) and chosen["mflops"] <= limit
    assert saved.routing == routing.RoutingPolicy(**chosen["routing"]) and info["settings"]["routing"] == chosen["routing"]
    assert record["margin"] == pytest.approx(chosen["value"] - next(
        o["value"] for o in record["options"] if o["label"] == record["runner_up"]))
    # Chosen on one half of the eval day's requests (the other half blesses).
    half = evaluate.eval_day_requests(e2e_data, features, half=budget.CHOOSING_HALF)[1]
    assert (record["part"], record["metric"], record["requests"]) == ("logged", "gauc", len(half))

    with pytest.raises(budget.BudgetError, match=f"{light_only:.1f} MFLOPs"):
        assemble(dataclasses.replace(settings, budget=dataclasses.replace(settings.budget, mflops=light_only - 1)),
                 "too_small")
    assert not os.path.exists(tmp_path / "too_small")


def test_the_component_passes_its_settings_to_the_executor():
    from tfx.types import Channel

    tree = hap_settings.override(hap_settings.defaults(), {
        "cascade.routing.fraction": 0.2, "cascade.k_out": 50, "cascade.tolerance": 0.02, "serving.model_name": "ranker"})
    assembler = component.CascadeAssembler(
        transform_graph=Channel(type=standard_artifacts.TransformGraph),
        light_model=Channel(type=standard_artifacts.Model), heavy_model=Channel(type=standard_artifacts.Model),
        light_blessing=Channel(type=standard_artifacts.ModelBlessing),
        heavy_blessing=Channel(type=standard_artifacts.ModelBlessing),
        custom_config={"features": []}, data_root="/data", settings=tree)
    params = assembler.exec_properties
    # Its subtree as one JSON property, parsed by the same class the tree is made of.
    assert parse(cascade.CascadeSettings, json.loads(params["settings"])) == tree.cascade
    assert (tree.cascade.routing.fraction, tree.cascade.k_out, tree.cascade.tolerance) == (0.2, 50, 0.02)
    assert (params["model_name"], params["data_root"]) == ("ranker", "/data")
    assert hap_settings.HapSettings.from_json(params["hap_settings"]) == tree
    assert json.loads(params["custom_config"]) == {"features": []}
    assert set(assembler.outputs) == {"model", "blessing"}


def test_a_cascade_is_validated_against_the_last_blessed_one(cascade_model, e2e_data, monkeypatch):
    # Against itself: the same GAUC on the logged eval day (the dataset has no funnel/), no regression.
    check = executor.validate(cascade_model, cascade_model, e2e_data, tolerance=0.01)
    assert (check["metric"], check["part"]) == ("gauc", "logged")
    assert 0.5 < check["value"] <= 1 and check["baseline"] == check["value"] and not check["regressed"]
    assert executor.validate(cascade_model, None, e2e_data, 0.01)["reason"] == "no blessed cascade to compare with"

    # A new cascade 0.02 below the last blessed one regresses at a tolerance of 0.01, not at 0.03.
    values = {"new": 0.70, "old": 0.72}
    monkeypatch.setattr(executor.evaluate, "cascade_quality", lambda version, data, max_requests, **_: {
        "part": "funnel", "metric": "oracle_recall@200", "value": values[version], "requests": 3})
    check = executor.validate("new", "old", e2e_data, tolerance=0.01)
    assert check["regressed"] and "0.7000 is more than 0.01 below the last blessed cascade's 0.7200" in check["reason"]
    assert not executor.validate("new", "old", e2e_data, tolerance=0.03)["regressed"]


def test_a_first_cascade_must_beat_item_popularity_on_the_same_requests(cascade_model, e2e_data):
    """Without a last blessed cascade, the baseline is item popularity on the training days, scored
    on the requests the cascade is scored on with the same metric."""
    import numpy as np

    from hap.evaluation import auc_metrics, evaluate
    from hap.evaluation.popularity import ItemPopularity

    features = c.load_features(e2e_data)
    check = executor.validate(cascade_model, None, e2e_data, tolerance=0.01, popularity_days=[0, 1])
    # The eval day's logged requests (the dataset has no funnel/), scored here by popularity alone.
    _, requests = evaluate.eval_day_requests(e2e_data, features)
    rows = [r for rs in requests.values() for r in rs]
    popularity = ItemPopularity.from_days(e2e_data, features, [0, 1])
    expected = auc_metrics.gauc(np.array([r["request_id"] for r in rows]), np.array([r["click"] for r in rows]),
                                popularity.scores(r["item_id"] for r in rows), np.array(evaluate.groups_of(rows)))
    assert check["baseline_name"] == "item popularity" and check["baseline"] == pytest.approx(expected.value)
    assert check["regressed"] == (not check["value"] > check["baseline"])
    assert "no blessed cascade to compare with; gauc on" in check["reason"]
    assert "item popularity's (days 0-1)" in check["reason"]
    # A margin no GAUC can clear refuses it, saying by how much it had to win.
    refused = executor.validate(cascade_model, None, e2e_data, 0.01, popularity_days=[0, 1], popularity_margin=1.0)
    assert refused["regressed"] and "does not beat item popularity's" in refused["reason"]
    assert refused["reason"].endswith("by more than 1.0")
    # A negative margin lets it trail popularity by that much.
    lenient = executor.validate(cascade_model, None, e2e_data, 0.01, popularity_days=[0, 1], popularity_margin=-1.0)
    assert not lenient["regressed"] and " is less than 1.0 below item popularity's " in lenient["reason"]
    # A last blessed cascade that cannot be scored on this data gives way to popularity.
    fallback = executor.validate(cascade_model, "/nonexistent/cascade", e2e_data, 0.01, popularity_days=[0, 1])
    assert fallback["baseline"] == check["baseline"]
    assert fallback["reason"].startswith("the last blessed cascade cannot be scored on this data")
