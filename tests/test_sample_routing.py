"""data/sample_routing.py is the one table of which samples each model sees: change it, and the
Trainer's settings, the losses, the Evaluators' floors and slices, and the tests' floors follow."""
import json

import pytest

from conftest import floors_at
from hap.data import contract as c
from hap.data.sample_routing import HARD_ONLY, HEAVY, LIGHT, SAMPLE_ROUTING, SampleRouting, contrast_metric, routing_of
from hap.models import losses, transformed
from hap.models.trainer_module import TrainerSettings
from hap import settings
from hap.pipeline import local_runner

# The heavy model narrowed to the pre-ranking negatives and harder, as someone changing its band would.
WIDER_HEAVY = SampleRouting(trains_on=(c.EP, c.EN, c.RN, c.PRN), contrasts=(c.EN, c.RN, c.PRN),
                            bce_on=(c.EP, c.EN))


def _evaluator_thresholds(pipeline, model: str) -> dict[str, float]:
    (evaluator,) = [n for n in pipeline.components if n.id == f"Evaluator_{model}"]
    config = json.loads(evaluator.exec_properties["eval_config"])
    (metric,) = [m for m in config["metrics_specs"][0]["metrics"] if m["class_name"] == "AUC"]
    return {t["slicing_specs"][0]["feature_values"][transformed.CONTRAST]:
            t["threshold"]["value_threshold"]["lower_bound"] for t in metric["per_slice_thresholds"]}


def test_every_consumer_follows_the_table(monkeypatch, tiny_csv, tmp_path):
    monkeypatch.setitem(SAMPLE_ROUTING, HEAVY, WIDER_HEAVY)
    routing = TrainerSettings(model=HEAVY).routing
    assert routing is WIDER_HEAVY
    ghcl = losses.make_loss("ghcl", routing)
    assert ghcl.negative_groups == (c.EN, c.RN, c.PRN) and ghcl.bce_on == (c.EP, c.EN)
    assert losses.make_loss("pooled_infonce", routing).negative_groups == (c.EN, c.RN, c.PRN)
    assert losses.make_loss("mixed_bce", routing).samples == (c.EP, c.EN, c.RN, c.PRN)
    assert floors_at(0.0)[HEAVY] == {c.EN: 0.0, c.RN: 0.0, c.PRN: 0.0}
    # The floors are settings, one per contrast: the default ones no longer fit the table, and say so.
    with pytest.raises(settings.SettingsError, match=r"heavy: auc_floors needs one floor for each contrast"):
        settings.load()
    floors = {c.EN: 0.5, c.RN: 0.6, c.PRN: 0.65}
    tree = settings.load(options=[("heavy.auc_floors", {}, "test"), ("heavy.auc_floors", floors, "test")]).settings
    pipeline = local_runner.build(tiny_csv, str(tmp_path / "run"), tree)
    assert _evaluator_thresholds(pipeline, HEAVY) == floors
    assert _evaluator_thresholds(pipeline, LIGHT) == tree.light.auc_floors


def test_the_default_table():
    light, heavy = routing_of(LIGHT), routing_of(HEAVY)
    assert light.trains_on == c.SAMPLE_GROUPS and light.contrasts == (c.EN, c.RN, c.PRN, c.GN)
    assert heavy == light, "the second stage re-scores every kind of candidate, so it learns from every kind"
    paper = routing_of(HARD_ONLY)
    assert paper.trains_on == (c.EP, c.EN, c.RN) and paper.contrasts == (c.EN, c.RN)
    assert paper.bce_on == (c.EP, c.EN)
    assert contrast_metric(c.RN) == "auc_EP_vs_RN"


@pytest.mark.parametrize("fields, message", [
    ({"trains_on": (c.EN, c.RN)}, "must hold EP"),
    ({"contrasts": (c.GN,)}, "negative groups the model trains on"),
    ({"bce_on": (c.PRN,)}, "bce_on must be groups"),
])
def test_an_inconsistent_routing_is_refused(fields, message):
    base = dict(trains_on=(c.EP, c.EN, c.RN), contrasts=(c.EN, c.RN), bce_on=(c.EP, c.EN))
    with pytest.raises(ValueError, match=message):
        SampleRouting(**{**base, **fields})


def test_unknown_trainer_settings_are_named(tiny_csv, tmp_path):
    with pytest.raises(ValueError, match=r"unknown trainer setting\(s\) \['epoch'\]"):
        TrainerSettings.from_config({"model": LIGHT, "epoch": 3})
    # The settings refuse it while they are read, before any component runs, naming the nearest keys.
    with pytest.raises(settings.SettingsError, match=r"unknown setting 'light.trainer.epoch'; did you mean "
                                                    r"light.trainer.max_epochs"):
        settings.load(sets=["light.trainer.epoch=3"])
