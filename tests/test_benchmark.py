"""`hap benchmark`: each variant trains with the loss and samples it claims, the HAP scores are the
cascade's, and the report comes out whole."""
import collections
import dataclasses
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
from hap.evaluation import benchmark, report
from hap.models import distribute, heavy, light, losses, trainer_module, training, transformed
from hap.serving import request as rq
from hap.serving import routing
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
    "heavy_narrow_s_ghcl": (heavy.HeavyModel, losses.GHCLLoss, NEGATIVES, ALL, ALL),
    "heavy_narrow_m_ghcl": (heavy.HeavyModel, losses.GHCLLoss, NEGATIVES, ALL, ALL),
}


def test_sample_routing_setting():
    own = trainer_module.TrainerSettings(model="heavy")
    assert own.routing.trains_on == ALL and own.routing.contrasts == NEGATIVES
    paper = trainer_module.TrainerSettings(model="heavy", sample_routing="hard_only")
    assert paper.routing.trains_on == HARD and paper.routing.contrasts == (c.EN, c.RN)
    assert trainer_module.TrainerSettings.from_config({"model": "heavy", "sample_routing": "hard_only"}) == paper
    with pytest.raises(ValueError, match="unknown model or sample routing 'hard'"):
        trainer_module.TrainerSettings(sample_routing="hard")
    with pytest.raises(ValueError, match="unknown model 'hard_only'"):
        trainer_module.TrainerSettings(model="hard_only")


def test_variants_cover_the_issue():
    fractions = [0.1, 0.5]
    chosen = {v.key: v for v in benchmark.variants(fractions)}
    pushed = CascadeSettings().routing
    assert (chosen["f"].policy, chosen["f"].route_fraction) == (pushed.kind, pushed.fraction)
    assert chosen["f"].models == ("light_ghcl", "heavy_narrow_s_ghcl")
    assert [chosen[k].models for k in "abcde"] == [(m,) for m in list(benchmark.MODELS)[:5]]
    cascades = [v for v in chosen.values() if v.is_cascade and v.key != "f"]
    cutoffs = {routing.TOP_K: (pushed.cutoff,), routing.BAND: (100, 200), routing.ADAPTIVE: (100, 200),
               routing.LEARNED: (pushed.cutoff,)}
    assert sorted((v.policy, v.cutoff, v.heavy, v.route_fraction) for v in cascades) == sorted(
        (p, cutoff, h, f) for p in routing.POLICIES for cutoff in cutoffs[p]
        for h in ("heavy_hard_ghcl", "heavy_all_ghcl", "heavy_narrow_s_ghcl") for f in fractions)
    assert len({v.family for v in cascades}) == 18 and chosen["f"].family is None
    routing_set = [v.key for v in benchmark.variants(fractions, "routing")]
    assert routing_set[:5] == ["c", "e", "us", "um", "f"] and len(routing_set) == 5 + len(cascades)
    assert [v.key for v in benchmark.variants(fractions, "losses")] == [
        "a", "b", "c", "c-gradnorm", "c-ghm", "c-pcgrad", "c-sampled", "c-bce", "c-batch_en", "d", "d-pooled", "e",
        "e-sampled"]


def test_narrowed_heavy_models_fall_between_the_light_and_heavy_compute(pipeline_run, e2e_data):
    inputs = benchmark.load_inputs(e2e_data, pipeline_run)
    keras = {name: trainer_module.build_scorer(benchmark.MODELS[name].model, inputs.model_inputs,
                                               benchmark.MODELS[name].model_config)
             for name in ("light_ghcl", "heavy_all_ghcl", "heavy_narrow_s_ghcl", "heavy_narrow_m_ghcl")}
    parts = benchmark.model_flops(keras)
    assert (parts["light_per_candidate"] < parts["heavy_narrow_s_ghcl"] < parts["heavy_narrow_m_ghcl"]
            < parts["heavy_all_ghcl"])
    # Light models alone (`--only a c`) are counted too.
    assert benchmark.model_flops({"light_ghcl": keras["light_ghcl"]}) == {
        k: parts[k] for k in ("light_user", "light_per_candidate")}
    # About 10% and 25% of the heavy model's FLOPs per candidate.
    assert 0.05 < parts["heavy_narrow_s_ghcl"] / parts["heavy_all_ghcl"] < 0.2
    assert 0.15 < parts["heavy_narrow_m_ghcl"] / parts["heavy_all_ghcl"] < 0.35


def test_cascade_variants_equal_the_cascade_signature(cascade_model, e2e_data):
    """A cascade variant's scores, made from the light and heavy signatures by the routing module,
    are the cascade signature's `scores`."""
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
    pushed = next(v for v in benchmark.variants() if v.key == "f")
    # Sigmoid probabilities keep the logits' order, which is all that top-K routing reads.
    composed, _ = benchmark.variant_scores(pushed, {pushed.light: np.concatenate(light_scores),
                                                    pushed.heavy: np.concatenate(heavy_scores)}, request, {})
    np.testing.assert_allclose(composed, np.concatenate(cascade_scores), rtol=1e-6, atol=1e-7)


def test_the_learned_policy_in_the_cascade_graph_equals_the_routing_module(pipeline_run, e2e_data):
    """The cascade graph under the learned policy routes what serving/routing.py routes from the
    light model's logits and its router's, and orders as it does."""
    from tfx.utils import path_utils

    from hap.pipeline import run_report

    inputs = benchmark.load_inputs(e2e_data, pipeline_run)
    light, heavy = (tf.keras.models.load_model(path_utils.serving_model_path(
        run_report.latest_artifact(pipeline_run, f"Trainer_{m}", "Model").uri), compile=False) for m in ("light", "heavy"))
    policy = routing.RoutingPolicy(routing.LEARNED, fraction=0.3)
    serving = benchmark.Serving(inputs, inputs.tft_output.transform_features_layer(), light, heavy, policy)
    layout = rq.RequestLayout(inputs.features)
    for request in inputs.compute_requests[:3]:
        tensors = layout.to_tensors(request)
        out = serving.functions[benchmark.CASCADE](tensors)
        light_out, heavy_out = serving.functions["light"](tensors), serving.functions["heavy"](tensors)
        keys, routed = routing.route_request(policy, light_out["logits"], heavy_out["logits"], light_out["router_logits"])
        np.testing.assert_array_equal(out["routed"].numpy(), routed.numpy())
        k = routing.routed_count(len(routed), 0.3)
        assert set(np.flatnonzero(routed)) == set(np.argsort(-light_out["router_logits"].numpy(), kind="stable")[:k])
        np.testing.assert_allclose(out["scores"].numpy(), keys.numpy(), rtol=0, atol=1e-7)
    # The router learned something of the funnel: on the eval day its cross-entropy against
    # `difficulty` is below that of the best constant, the training split's mean difficulty.
    router = training.score_records(tf.function(light.router_logits), inputs.eval)
    difficulty = inputs.eval.columns((transformed.DIFFICULTY,))[transformed.DIFFICULTY]
    mean = float(np.mean(inputs.train.columns((transformed.DIFFICULTY,))[transformed.DIFFICULTY]))

    def bce(logits):
        return float(tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=difficulty, logits=logits)))

    assert bce(router) < bce(np.full_like(router, math.log(mean / (1 - mean)))) - 0.01


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

    def build_scorer(model, model_inputs, model_config=None):
        scorer = real_build(model, model_inputs, model_config)
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
                     "--route-fractions", "0.1", "0.5", "--latency-requests", "2", "--max-epochs", "1",
                     "--quiet"]) == 0
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


def test_the_report_has_every_variant_table_and_plot(spied_run, tmp_path):
    out, _ = spied_run
    report_dir = os.path.join(out, "report")
    with open(os.path.join(report_dir, "benchmark.json"), encoding="utf-8") as f:
        result = json.load(f)
    keys = [v["key"] for v in result["variants"]]
    assert keys == [v.key for v in benchmark.variants([0.1, 0.5])]
    assert result["funnel"] and result["compute"]["part"] == "funnel"
    summary = result["summary"]
    for key in keys:
        for name in ("auc_mean", "gauc", "hitrate@1", "ndcg@100", "oracle_recall@100", "ndcg@200",
                     "oracle_recall@200"):
            assert summary[key][name]["values"] and all(v is not None and 0 <= v <= 1
                                                        for v in summary[key][name]["values"])
        assert summary[key]["train_seconds"]["mean"] > 0
    flops = {k: summary[k]["flops"]["mean"] for k in keys}
    assert flops["a"] == flops["b"] == flops["c"] < flops["us"] < flops["um"] < flops["d"] == flops["e"]
    assert flops["f"] == flops["top_k-narrow-50%"] < flops["us"] < flops["e"]
    assert flops["top_k-hard-10%"] < flops["top_k-hard-50%"] < flops["e"]
    # The adaptive policy's margin holds its mean budget: its FLOPs are those of the fixed share.
    for fraction in ("10%", "50%"):
        assert flops[f"adaptive@200-hard-{fraction}"] <= flops[f"top_k-hard-{fraction}"] * 1.0001
    # HAP's training time is both its models'.
    seed = result["per_seed"][0]["models"]
    assert summary["f"]["train_seconds"]["mean"] == pytest.approx(
        seed["light_ghcl"]["seconds"] + seed["heavy_narrow_s_ghcl"]["seconds"])
    families = {claim["family"] for claim in result["claims"]}
    assert families == {v["family"] for v in result["variants"]} - {None} and len(families) == 18
    for claim in result["claims"]:
        assert isinstance(claim["no_harm"], bool) and isinstance(claim["beats_uniform"], bool)
    with open(os.path.join(report_dir, "benchmark.md"), encoding="utf-8") as f:
        text = f.read()
    for key in keys:
        assert f"| ({key}) |" in text
    assert "## Routing claims" in text and "| top_k, heavy hard |" in text and "| band around 100, heavy all |" in text
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert images == ["pareto.png", "gradient_conflict.png"]
    for name in images:
        with open(os.path.join(report_dir, name), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", name
    assert not math.isnan(result["seconds"]["total"])
    summary_path = str(tmp_path / "summary.md")
    report.write_benchmark_summary({"one": result, "two": result}, summary_path)
    with open(summary_path, encoding="utf-8") as f:
        text = f.read()
    assert "## one" in text and "## two" in text and "![two](two/report/pareto.png)" in text


def test_a_run_of_other_data_is_refused(pipeline_run, tiny_csv, tmp_path, capsys):
    assert cli.main(["benchmark", "--data", tiny_csv, "--run", pipeline_run, "--out", str(tmp_path),
                     "--quiet"]) == 2
    assert "not made from" in capsys.readouterr().err


def test_only_names_variants_of_the_chosen_set(tiny_csv, tmp_path, capsys):
    assert cli.main(["benchmark", "--data", tiny_csv, "--out", str(tmp_path), "--variants", "losses",
                     "--only", "a", "c-bce", "f", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no variant f in the 'losses' set; it has a, b, c, c-gradnorm" in err
    assert not os.listdir(tmp_path), "nothing is run or written before the variants are checked"


def test_a_directory_that_is_not_a_run_is_refused(tiny_csv, tmp_path, capsys):
    run = str(tmp_path / "not_a_run")
    assert cli.main(["benchmark", "--data", tiny_csv, "--run", run, "--out", str(tmp_path / "out"),
                     "--quiet"]) == 2
    assert f"{run}: no metadata.sqlite" in capsys.readouterr().err


def _claims_result(cascade_recall100: dict[str, float], recall200_drop: float) -> dict:
    """A benchmark result by hand: light (c) at 0.5, heavy (e) at 0.9 on every funnel metric;
    the uniform-scaling models on a straight line in log FLOPs between them; one routing family
    at 10% and 20%."""
    flops = {"c": 1e6, "us": 1e7, "um": 1e7 * 2.5, "e": 1e8}
    quality = {"c": 0.5, "us": 0.6, "um": 0.65, "e": 0.9}
    variants = [{"key": k, "policy": None, "heavy": None, "light": None, "route_fraction": None, "label": k,
                 "family": None} for k in flops]
    for key, fraction, cost in (("band-hard-10%", 0.1, 1.2e7), ("band-hard-20%", 0.2, 2.2e7)):
        variants.append({"key": key, "policy": "band", "heavy": "heavy_hard_ghcl", "light": "light_ghcl",
                         "route_fraction": fraction, "label": key, "family": "band around 100, heavy hard"})
        flops[key] = cost
        quality[key] = cascade_recall100[key]
    metrics = ("oracle_recall@100", "ndcg@100", "oracle_recall@200")
    per_seed = []
    for seed_offset in (-0.01, 0.01):
        per_seed.append({"metrics": {k: {m: quality[k] + seed_offset - (recall200_drop if m == "oracle_recall@200"
                                                                        and k.startswith("band") else 0.0)
                                         for m in metrics} for k in flops}})
    summary = {k: {"flops": {"mean": flops[k]}, **{m: {"mean": quality[k] - (recall200_drop if m == "oracle_recall@200"
                                                                            and k.startswith("band") else 0.0)}
                                                for m in metrics}} for k in flops}
    return {"funnel": True, "summary": summary, "per_seed": per_seed, "variants": variants}


def test_routing_claims_in_closed_form():
    # Heavy-on-all costs 1e8, so the budget is 2.5e7: both fractions are within it. 20% recovers
    # (0.85 - 0.5) / (0.9 - 0.5) = 87.5% of the gap; the uniform curve at 2.2e7 FLOPs is below 0.65.
    result = _claims_result({"band-hard-10%": 0.7, "band-hard-20%": 0.85}, recall200_drop=0.0)
    (claim,) = benchmark.routing_claims(result)
    assert claim["family"] == "band around 100, heavy hard"
    assert claim["best_within_budget"]["key"] == "band-hard-20%"
    assert claim["best_within_budget"]["recovered"]["oracle_recall@100"] == pytest.approx(0.875)
    assert claim["recovers_gap"] and claim["beats_uniform"]
    assert claim["no_harm"]  # Recall@200 at 0.7 and 0.85 against the light model's 0.5
    uniform = benchmark.uniform_curve(result, "oracle_recall@100", 2.2e7)
    x = (np.log(2.2e7) - np.log(1e7)) / (np.log(2.5e7) - np.log(1e7))
    assert uniform == pytest.approx(0.6 + x * 0.05)
    assert benchmark.uniform_curve(result, "oracle_recall@100", 1e9) is None

    # A cascade at 0.6 (20%) recovers 25% only and lies below the uniform curve at its FLOPs; one
    # that drops Recall@200 by 0.3 below the light model harms at that fraction.
    result = _claims_result({"band-hard-10%": 0.55, "band-hard-20%": 0.6}, recall200_drop=0.3)
    (claim,) = benchmark.routing_claims(result)
    assert not claim["recovers_gap"] and not claim["beats_uniform"] and not claim["no_harm"]
    assert claim["worst_recall200_diff_plus_std"] == pytest.approx(0.55 - 0.3 - 0.5)


def test_routing_claims_need_the_funnel():
    result = _claims_result({"band-hard-10%": 0.7, "band-hard-20%": 0.85}, 0.0)
    assert benchmark.routing_claims({**result, "funnel": False}) == []


def _loss_result(auc: dict[str, tuple[float, float]], recall: dict[str, tuple[float, float]]) -> dict:
    """A loss-comparison result by hand: per variant key, (mean, half-spread) of the mean AUC and
    of Recall@100 over two seeds (values mean - spread and mean + spread)."""
    variants = [dataclasses.asdict(v) for v in benchmark.variants(which="losses") if v.key in auc]
    per_seed = [{"metrics": {k: {"auc_mean": auc[k][0] + sign * auc[k][1],
                                 "oracle_recall@100": recall[k][0] + sign * recall[k][1]} for k in auc}}
                for sign in (-1, 1)]
    summary = {k: {"auc_mean": {"mean": auc[k][0], "std": auc[k][1]},
                   "oracle_recall@100": {"mean": recall[k][0], "std": recall[k][1]},
                   "train_seconds": {"mean": 1.0, "std": 0.0}} for k in auc}
    return {"funnel": True, "summary": summary, "per_seed": per_seed, "variants": variants}


def test_loss_claims_in_closed_form(tmp_path):
    # (c) beats pooled (b) by 0.03 > 2 x 0.01 and mixed (a) by 0.04; (c-ghm) beats pooled by
    # 0.015 < 2 x 0.01; (c-pcgrad) wins on AUC but loses 0.05 of Recall@100.
    result = _loss_result(
        {"a": (0.80, 0.005), "b": (0.81, 0.005), "c": (0.84, 0.01), "c-ghm": (0.825, 0.01), "c-pcgrad": (0.85, 0.0)},
        {"a": (0.5, 0.01), "b": (0.5, 0.01), "c": (0.5, 0.01), "c-ghm": (0.52, 0.0), "c-pcgrad": (0.45, 0.0)})
    claims = {e["key"]: e for e in benchmark.loss_claims(result)}
    assert set(claims) == {"a", "c", "c-ghm", "c-pcgrad"}
    assert claims["a"]["holds"] is None and claims["a"]["gains"]["auc_mean"] == pytest.approx([-0.01, 0.0])
    assert claims["c"]["gain_over_pooled"] == pytest.approx(0.03) and claims["c"]["holds"]
    assert claims["c"]["gains"]["auc_mean"] == pytest.approx([0.03, 0.005])  # per seed: 0.025 and 0.035
    assert not claims["c-ghm"]["beats_pooled"] and claims["c-ghm"]["beats_mixed"] and not claims["c-ghm"]["holds"]
    assert claims["c-pcgrad"]["beats_pooled"] and claims["c-pcgrad"]["keeps_recall"] is False
    assert not claims["c-pcgrad"]["holds"]
    assert benchmark.loss_claims({**result, "summary": {k: v for k, v in result["summary"].items() if k != "b"}}) == []
    result["loss_claims"] = claims = benchmark.loss_claims(result)
    text = report.losses_table(result)
    assert "| (c) | light, GHCL |" in text and "+0.0300" in text and text.count("| yes |") >= 1
    assert report.loss_gain_plot({"one": result, "two": result}, str(tmp_path / "gain.png"))
    with open(tmp_path / "gain.png", "rb") as f:
        header = f.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    # Light variants only: one row of panels, 4.5 inches at 110 dpi, not an empty heavy row below.
    assert int.from_bytes(header[16:20], "big") == 15 * 110 and int.from_bytes(header[20:24], "big") == round(4.5 * 110)
    assert not report.loss_gain_plot({"one": {**result, "loss_claims": []}}, str(tmp_path / "none.png"))
