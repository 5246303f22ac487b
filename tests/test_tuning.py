"""The Tuner's search (models/tuner_module.py): the space, the settings' trial first, and the
Trainer's settings with the chosen values. Its component's reuse: components/tuner; a whole
search inside the pipeline: the session's `hap run` (conftest.TUNED_RUN, tests/test_console.py)."""
import dataclasses
import json
import math

import keras_tuner
import pytest

from hap import settings
from hap.data.sample_routing import HEAVY, LIGHT
from hap.models import tuner_module
from hap.models.trainer_settings import TrainerSettings, TuningSettings, TuningSpace

TUNING = settings.defaults().tuning
NARROW = {"embedding_dim": 8, "deep_units": [32, 16]}


def _trainer(model=LIGHT, **changes) -> TrainerSettings:
    return dataclasses.replace(settings.defaults().model(model).trainer, **changes)


def _space(**changes) -> TuningSettings:
    return dataclasses.replace(TUNING, space=dataclasses.replace(TUNING.space, **changes))


def test_the_space_defaults_to_the_trainers_own_values_and_adds_them_to_the_choices():
    trainer = _trainer(loss="ghcl_pcgrad", learning_rate=0.004, temperature=0.5)
    hp = tuner_module.search_space(trainer, _space(loss=["ghcl", "mixed_bce"], learning_rate=[0.001]))
    assert hp.values == {"loss": "ghcl_pcgrad", "temperature": 0.5, "learning_rate": 0.004, "embedding_dim": 16}
    choices = {p.name: p.values for p in hp.space}
    assert choices["loss"] == ["ghcl_pcgrad", "ghcl", "mixed_bce"]
    assert choices["learning_rate"] == [0.004, 0.001]
    assert choices["temperature"] == [0.5, *TUNING.space.temperature]
    assert "model_config" not in choices, "the light model's architecture is its settings'"


def test_the_heavy_model_chooses_among_its_own_architecture_and_the_spaces():
    trainer = _trainer(HEAVY, model_config=NARROW)
    hp = tuner_module.search_space(trainer, _space(heavy_model_configs=[{}, NARROW]))
    configs = {p.name: p.values for p in hp.space}["model_config"]
    assert [json.loads(v) for v in configs] == [NARROW, {}], "its own first, no duplicate"
    assert hp.values["embedding_dim"] == 8


def test_the_temperature_is_chosen_only_with_a_contrastive_loss():
    only_pointwise = tuner_module.search_space(_trainer(loss="mixed_bce"), _space(loss=["mixed_bce"]))
    assert "temperature" not in {p.name for p in only_pointwise.space}
    both = tuner_module.search_space(_trainer(), _space(loss=["mixed_bce"]))
    temperature = next(p for p in both.space if p.name == "temperature")
    both.values["loss"] = "mixed_bce"
    assert not both.is_active(temperature)
    both.values["loss"] = "ghcl"
    assert both.is_active(temperature)


def test_the_first_trial_is_the_settings_and_the_next_are_drawn_from_the_space(tmp_path):
    trainer = _trainer()
    space = tuner_module.search_space(trainer, TUNING)
    oracle = tuner_module.SettingsFirstOracle(objective=keras_tuner.Objective(tuner_module.OBJECTIVE, "max"),
                                              max_trials=4, hyperparameters=space, seed=0)
    oracle._set_project_dir(str(tmp_path), "search")
    first = oracle.create_trial("tuner0").hyperparameters.values
    assert first == {"loss": "ghcl", "temperature": 1.0, "learning_rate": 0.002, "embedding_dim": 16}
    later = [oracle.create_trial(f"tuner{i}").hyperparameters.values for i in range(1, 4)]
    choices = {p.name: p.values for p in space.space}
    for values in later:
        assert values != first
        assert all(value in choices[name] for name, value in values.items())


def _searched(tmp_path, scores: list[float]) -> tuner_module.SettingsFirstOracle:
    """An oracle whose trials (the settings' first) scored `scores` on the holdout."""
    oracle = tuner_module.SettingsFirstOracle(objective=keras_tuner.Objective(tuner_module.OBJECTIVE, "max"),
                                              max_trials=len(scores), seed=0,
                                              hyperparameters=tuner_module.search_space(_trainer(), TUNING))
    oracle._set_project_dir(str(tmp_path), "search")
    for i, score in enumerate(scores):
        trial = oracle.create_trial(f"tuner{i}")
        oracle.update_trial(trial.trial_id, {tuner_module.OBJECTIVE: score})
        trial.status = keras_tuner.engine.trial.TrialStatus.COMPLETED  # as KerasTuner's search loop sets it
        oracle.end_trial(trial)
    return oracle


@pytest.mark.parametrize("scores, noise, settings_kept", [
    ([0.80, 0.805, 0.79], 0.01, True),    # the best other is within the noise of the settings
    ([0.80, 0.815, 0.79], 0.01, False),   # ... and beyond it
    ([0.80, 0.70, 0.79], 0.01, True),     # the settings scored best
])
def test_another_trial_replaces_the_settings_only_beyond_the_holdouts_noise(tmp_path, scores, noise, settings_kept):
    oracle = _searched(tmp_path, scores)
    chosen = tuner_module.settings_unless_beaten(oracle, noise, 2)
    settings = oracle.trials[oracle.settings_trial_id].hyperparameters.values
    assert (chosen[0].values == settings) is settings_kept
    assert len(chosen) == 2 and chosen[0].values != chosen[1].values


def test_the_holdouts_noise_is_the_random_scorers_auc_error_averaged_over_the_contrasts():
    counts = {"EP": 100, "EN": 300, "RN": 0, "PRN": 100, "GN": 100}
    expected = (math.sqrt(401 / (12 * 100 * 300)) + 2 * math.sqrt(201 / (12 * 100 * 100))) / 3
    assert tuner_module.holdout_noise(counts, ("EN", "RN", "PRN", "GN")) == pytest.approx(expected)
    assert tuner_module.holdout_noise({**counts, "EP": 0}, ("EN",)) == math.inf


def test_the_trainer_trains_the_chosen_values_and_keeps_the_rest():
    trainer = _trainer(HEAVY, model_config=NARROW)
    chosen = trainer.with_hyperparameters({"loss": "mixed_bce", "learning_rate": 0.01, "embedding_dim": 32,
                                           "model_config": "{}"})
    assert (chosen.loss, chosen.learning_rate, chosen.temperature) == ("mixed_bce", 0.01, trainer.temperature)
    assert chosen.model_config == {"embedding_dim": 32}
    kept = trainer.with_hyperparameters({"embedding_dim": 4})
    assert kept.model_config == {**NARROW, "embedding_dim": 4}
    assert trainer.with_hyperparameters({}) == trainer
    with pytest.raises(ValueError, match="unknown hyper-parameter"):
        trainer.with_hyperparameters({"epochs": 3})


def test_each_trial_trains_at_most_the_tunings_epochs():
    config = {**dataclasses.asdict(_trainer(max_epochs=10)), "tuning": dataclasses.asdict(TUNING)}
    trainer, tuning = tuner_module.tuner_settings(config)
    assert trainer.max_epochs == TUNING.max_epochs < 10
    assert tuning == TUNING


@pytest.mark.parametrize("key, value, message", [
    ("tuning.trials", -1, "trials must be an integer >= 0"),
    ("tuning.holdout_share", 1.0, "holdout_share must be in"),
    ("tuning.space.loss", ["ghcl", "focal"], "unknown loss"),
    ("tuning.space.learning_rate", [], "learning_rate needs at least one value"),
    ("tuning.space.heavy_model_configs", [{"deep_layers": 3}], "unknown heavy model hyper-parameter"),
])
def test_bad_tuning_settings_are_refused_naming_the_key(key, value, message):
    with pytest.raises(settings.SettingsError, match=message) as raised:
        settings.override(settings.defaults(), {key: value})
    assert key.rsplit(".", 1)[0] in str(raised.value)


def test_a_pipeline_with_trials_tunes_each_model_before_it_trains(tmp_path, tiny_csv):
    from hap.data import contract as c
    from hap.pipeline import pipeline

    paths = pipeline.PipelinePaths(str(tmp_path / "data"), str(tmp_path / "root"), str(tmp_path / "serving"),
                                   str(tmp_path / "schema.pbtxt"))
    for trials in (0, 3):
        tree = settings.override(settings.defaults(), {"tuning.trials": trials})
        built = pipeline.create_pipeline(paths, tree, c.load_features(tiny_csv))
        nodes = {node.id: node for node in built.components}
        for model in (LIGHT, HEAVY):
            trainer_inputs = nodes[f"Trainer_{model}"].inputs
            if not trials:
                assert f"Tuner_{model}" not in nodes and "hyperparameters" not in trainer_inputs
                continue
            tuner = nodes[f"Tuner_{model}"]
            assert trainer_inputs["hyperparameters"].producer_component_id == tuner.id
            assert tuner.inputs["previous_hyperparameters"].producer_component_id == f"LastTuned_{model}"
            assert tuner.inputs["statistics"].producer_component_id == "StatisticsGen"
            assert set(json.loads(tuner.exec_properties["drift_comparators"])) == set(tree.drift.comparators)
            config = json.loads(tuner.exec_properties["custom_config"])
            assert config["tuning"]["trials"] == 3 and config["model"] == model
