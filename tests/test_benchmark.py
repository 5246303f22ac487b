"""`hap benchmark`: each variant trains with the loss and samples it claims, the HAP scores are the
cascade's, and the report comes out whole."""
import collections
import json
import math
import os
import re

import numpy as np
import pytest
import tensorflow as tf

from hap import cli
from hap.data import contract as c
from hap.data import reader
from hap.evaluation import benchmark
from hap.evaluation.defaults import DEFAULT_ROUTE_FRACTIONS
from hap.models import distribute, heavy, light, losses, trainer_module, transformed
from hap.serving import request as rq
from hap.serving.cascade import CascadeSettings

ALL = c.SAMPLE_GROUPS
NEGATIVES = c.NEGATIVE_GROUPS
HARD = (c.EP, c.EN, c.RN)
# model -> (scorer class, loss class, negative groups the loss contrasts, samples its BCE reads,
# groups of the training samples); written out, not read from data/sample_routing.py, so that a
# change of the table shows here.
EXPECTED = {
    "light_mixed_bce": (light.LightModel, losses.MixedBCELoss, None, ALL, ALL),
    "light_pooled_infonce": (light.LightModel, losses.PooledInfoNCELoss, NEGATIVES, ALL, ALL),
    "light_ghcl": (light.LightModel, losses.GHCLLoss, NEGATIVES, ALL, ALL),
    "heavy_all_mixed_bce": (heavy.HeavyModel, losses.MixedBCELoss, None, ALL, ALL),
    "heavy_all_ghcl": (heavy.HeavyModel, losses.GHCLLoss, NEGATIVES, ALL, ALL),
    "heavy_hard_ghcl": (heavy.HeavyModel, losses.GHCLLoss, (c.EN, c.RN), (c.EP, c.EN), HARD),
}


def test_sample_routing_setting():
    own = trainer_module.TrainerSettings(model="heavy")
    assert own.routing.trains_on == HARD and own.routing.contrasts == (c.EN, c.RN)
    as_light = trainer_module.TrainerSettings(model="heavy", sample_routing="light")
    assert as_light.routing.trains_on == ALL and as_light.routing.contrasts == NEGATIVES
    assert trainer_module.TrainerSettings.from_config({"model": "heavy", "sample_routing": "light"}) == as_light
    with pytest.raises(ValueError, match="unknown model 'hard'"):
        trainer_module.TrainerSettings(sample_routing="hard")


def test_variants_cover_the_issue():
    chosen = {v.key: v for v in benchmark.variants()}
    assert chosen["f"].route_fraction == CascadeSettings().route_fraction
    assert [chosen[k].models for k in "abcde"] == [(m,) for m in list(benchmark.MODELS)[:5]]
    assert chosen["f"].models == ("light_ghcl", "heavy_hard_ghcl")
    fractions = sorted(v.route_fraction for v in chosen.values() if v.route_fraction is not None)
    assert fractions == sorted(DEFAULT_ROUTE_FRACTIONS)


def test_cascade_scores_equal_the_cascade_signature(cascade_model, e2e_data):
    """HAP's scores, composed from the light and heavy signatures, are the cascade's `scores`."""
    model = tf.saved_model.load(cascade_model)
    features = c.load_features(e2e_data)
    by_request = collections.defaultdict(list)
    for row in reader.read_rows(e2e_data, features=features):
        by_request[row["request_id"]].append(row)
    chosen = sorted(by_request.items(), key=lambda kv: len(kv[1]), reverse=True)[:3]
    request, light_scores, heavy_scores, cascade_scores = [], [], [], []
    for request_id, rows in chosen:
        inputs = {k: tf.constant(v, dtype=tf.string if v.dtype == object else None)
                  for k, v in rq.RequestLayout(features).from_rows(rows).items()}
        light_scores.append(model.signatures["light"](**inputs)["scores"].numpy())
        heavy_scores.append(model.signatures["heavy"](**inputs)["scores"].numpy())
        cascade_scores.append(model.signatures["cascade"](**inputs)["scores"].numpy())
        request += [request_id] * len(rows)
    composed = benchmark.cascade_scores(request, np.concatenate(light_scores), np.concatenate(heavy_scores),
                                        CascadeSettings().route_fraction)
    np.testing.assert_allclose(composed, np.concatenate(cascade_scores), rtol=1e-5, atol=1e-6)


def test_cascade_scores_route_the_top_k_of_each_request():
    request = np.array(["a"] * 4 + ["b"] * 3)
    light_scores = np.array([0.1, 0.9, 0.5, 0.5, 0.2, 0.3, 0.1])
    heavy_scores = np.array([0.7, 0.2, 0.4, 0.8, 0.6, 0.1, 0.9])
    out = benchmark.cascade_scores(request, light_scores, heavy_scores, 0.5)
    # a: K = 2, the light 0.9 and the first of the tied 0.5s; b: K = 2 of 3.
    np.testing.assert_allclose(out, [0.1, 1.2, 1.4, 0.5, 1.6, 1.1, 0.1])


@pytest.fixture(scope="module")
def spied_run(pipeline_run, e2e_funnel_data, tmp_path_factory, monkeypatch_module):
    """One benchmark run (one seed) with spies on what reaches training, per model."""
    seen = collections.defaultdict(dict)
    current = {"name": "warm-up"}  # the untimed training before the variants
    real_train_model, real_make_loss, real_build = benchmark.train_model, losses.make_loss, trainer_module.build_scorer

    def train_model(name, *args, **kwargs):
        current["name"] = name
        return real_train_model(name, *args, **kwargs)

    def make_loss(name, routing, **settings):
        loss = real_make_loss(name, routing, **settings)
        seen[current["name"]]["loss"] = loss
        return loss

    def build_scorer(model, model_inputs):
        scorer = real_build(model, model_inputs)
        seen[current["name"]]["scorer"] = scorer
        return scorer

    real_request_dataset = distribute.request_dataset

    def request_dataset(strategy, records, *args, **kwargs):
        present = np.unique(records.columns((transformed.SAMPLE_GROUP,))[transformed.SAMPLE_GROUP])
        seen[current["name"]]["groups"] = tuple(c.SAMPLE_GROUPS[g] for g in present)
        return real_request_dataset(strategy, records, *args, **kwargs)

    monkeypatch_module.setattr(benchmark, "train_model", train_model)
    monkeypatch_module.setattr(losses, "make_loss", make_loss)
    monkeypatch_module.setattr(trainer_module, "build_scorer", build_scorer)
    monkeypatch_module.setattr(distribute, "request_dataset", request_dataset)
    out = str(tmp_path_factory.mktemp("benchmark") / "out")
    assert cli.main(["benchmark", "--data", e2e_funnel_data, "--run", pipeline_run, "--out", out, "--seeds", "0",
                     "--route-fractions", "0.1", "0.5", "--latency-requests", "2", "--quiet"]) == 0
    seen.pop("warm-up")
    return out, dict(seen)


@pytest.fixture(scope="module")
def monkeypatch_module():
    patch = pytest.MonkeyPatch()
    yield patch
    patch.undo()


def test_each_model_trains_with_the_loss_and_samples_it_claims(spied_run):
    _, seen = spied_run
    assert set(seen) == set(EXPECTED)
    for name, (scorer_class, loss_class, negatives, bce_on, groups) in EXPECTED.items():
        got = seen[name]
        assert type(got["scorer"]) is scorer_class, name
        assert type(got["loss"]) is loss_class, name
        if loss_class is losses.MixedBCELoss:
            assert tuple(got["loss"].samples) == bce_on, name
        else:
            assert tuple(got["loss"].negative_groups) == tuple(negatives), name
            assert tuple(got["loss"].bce_on) == bce_on, name
        assert got["groups"] == groups, name


def test_the_report_has_every_variant_table_and_plot(spied_run):
    out, _ = spied_run
    report = os.path.join(out, "report")
    with open(os.path.join(report, "benchmark.json"), encoding="utf-8") as f:
        result = json.load(f)
    keys = [v["key"] for v in result["variants"]]
    assert keys == ["a", "b", "c", "d", "e", "f", "g50%"]
    assert result["funnel"] and result["compute"]["part"] == "funnel"
    for key in keys:
        summary = result["summary"][key]
        for name in ("auc_mean", "gauc", "hitrate@1", "ndcg@100", "oracle_recall@100"):
            assert summary[name]["values"] and all(v is not None and 0 <= v <= 1 for v in summary[name]["values"])
        assert summary["train_seconds"]["mean"] > 0
    flops = {k: result["compute"]["variants"][k]["flops_mean"] for k in keys}
    assert flops["a"] == flops["b"] == flops["c"] < flops["f"] < flops["g50%"] < flops["d"] == flops["e"]
    # HAP's training time is both its models'.
    seed = result["per_seed"][0]["models"]
    assert result["summary"]["f"]["train_seconds"]["mean"] == pytest.approx(
        seed["light_ghcl"]["seconds"] + seed["heavy_hard_ghcl"]["seconds"])
    with open(os.path.join(report, "benchmark.md"), encoding="utf-8") as f:
        text = f.read()
    for key in keys:
        assert f"| ({key}) |" in text
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert images == ["pareto.png", "gradient_conflict.png"]
    for name in images:
        with open(os.path.join(report, name), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", name
    assert not math.isnan(result["seconds"]["total"])


def test_a_run_of_other_data_is_refused(pipeline_run, tiny_csv, tmp_path, capsys):
    assert cli.main(["benchmark", "--data", tiny_csv, "--run", pipeline_run, "--out", str(tmp_path),
                     "--quiet"]) == 2
    assert "not made from" in capsys.readouterr().err


def test_a_directory_that_is_not_a_run_is_refused(tiny_csv, tmp_path, capsys):
    run = str(tmp_path / "not_a_run")
    assert cli.main(["benchmark", "--data", tiny_csv, "--run", run, "--out", str(tmp_path / "out"),
                     "--quiet"]) == 2
    assert f"{run}: no metadata.sqlite" in capsys.readouterr().err
