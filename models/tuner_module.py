"""The TFX Tuner's module: `tuner_fn` chooses a Trainer's loss, temperature, learning rate and
widths by validation on the user's own data.

Each trial trains the model as its Trainer would (`trainer_module.train`: the same loss, input
and early stopping) on the training days' requests but a held-out share, and is scored by the
mean per-source AUC on that share, the metric the Evaluators judge. The eval days are never read,
so the Evaluators' verdict on the model trained with the choice stays a test. KerasTuner's random
search proposes the trials; the first is the Trainer's own settings, and another trial replaces
them only when it beats them by more than the holdout's noise (`holdout_noise`): a handful of
trials on one holdout otherwise picks whichever near-tie the noise favoured. The Trainer then
trains the chosen hyper-parameters on every training request (`TrainerSettings.with_hyperparameters`).

The custom_config is the Trainer's with the `tuning` subtree of the settings tree under
`TUNING` (hap/defaults.yaml, docs/settings.md).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os

import keras_tuner
import tensorflow as tf
import tensorflow_transform as tft
from tfx.components.tuner.component import TunerFnResult

from hap.data import contract as c
from hap.data.sample_routing import HEAVY, MEAN_AUC
from hap.models import preprocessing, request_records, trainer_module, transformed
from hap.models.trainer_settings import (EMBEDDING_DIM, LEARNING_RATE, LOSS, MODEL_CONFIG, POINTWISE_LOSSES,
                                         TEMPERATURE, TUNING, TrainerSettings, TuningSettings, model_hparams)
from hap.tree import parse

OBJECTIVE = f"val_{MEAN_AUC}"


def _choices(own, values: list) -> list:
    """`values` with the Trainer's own value first (KerasTuner's default is a choice's first)."""
    return [own, *(v for v in values if v != own)]


def config_key(model_config: dict) -> str:
    """A model_config as a hyper-parameter value (KerasTuner's choices are scalars)."""
    return json.dumps(model_config, sort_keys=True)


def search_space(trainer: TrainerSettings, tuning: TuningSettings) -> keras_tuner.HyperParameters:
    """The hyper-parameters of `trainer.model` to choose among, each defaulting to the Trainer's
    own value; the temperature only where a contrastive loss is chosen."""
    space = tuning.space
    hp = keras_tuner.HyperParameters()
    losses = _choices(trainer.loss, space.loss)
    hp.Choice(LOSS, losses)
    contrastive = [loss for loss in losses if loss not in POINTWISE_LOSSES]
    if contrastive:
        with hp.conditional_scope(LOSS, contrastive):
            hp.Choice(TEMPERATURE, _choices(trainer.temperature, space.temperature))
    hp.Choice(LEARNING_RATE, _choices(trainer.learning_rate, space.learning_rate))
    own_width = model_hparams(trainer.model, trainer.model_config).embedding_dim
    hp.Choice(EMBEDDING_DIM, _choices(own_width, space.embedding_dim))
    if trainer.model == HEAVY:
        configs = [config_key(config) for config in space.heavy_model_configs]
        hp.Choice(MODEL_CONFIG, _choices(config_key(trainer.model_config), configs))
    return hp


def holdout_noise(samples_by_group: dict, contrasts) -> float:
    """The standard error of an AUC of exposed positives against each contrast's negatives on the
    holdout, were the scores random (Mann-Whitney: sqrt((P + N + 1) / (12 P N))), averaged over
    the contrasts with samples: how far apart two trials' mean per-source AUCs may lie by chance."""
    positives = samples_by_group[c.EP]
    errors = [math.sqrt((positives + samples_by_group[g] + 1) / (12 * positives * samples_by_group[g]))
              for g in contrasts if positives and samples_by_group[g]]
    return float(sum(errors) / len(errors)) if errors else math.inf


class SettingsFirstOracle(keras_tuner.oracles.RandomSearchOracle):
    """KerasTuner's random search whose first trial is every hyper-parameter's default: the
    Trainer's own settings are always scored (`settings_trial_id`)."""

    settings_trial_id = None

    def populate_space(self, trial_id):
        if self.trials:
            return super().populate_space(trial_id)
        self.settings_trial_id = trial_id
        hps = keras_tuner.HyperParameters()
        for hp in self.hyperparameters.space:
            hps.merge([hp])
        return {"status": keras_tuner.engine.trial.TrialStatus.RUNNING, "values": hps.values}


class RequestTuner(keras_tuner.engine.base_tuner.BaseTuner):
    """Runs each trial as its Trainer trains (`trainer_module.train`), on `fit` records, and
    scores it by the mean per-source AUC on `holdout` at the epoch early stopping keeps."""

    def __init__(self, oracle: SettingsFirstOracle, trainer: TrainerSettings, model_inputs: transformed.ModelInputs,
                 fit: request_records.RequestRecords, holdout: request_records.RequestRecords, **kwargs):
        super().__init__(oracle, **kwargs)
        self.trainer, self.model_inputs, self.fit, self.holdout = trainer, model_inputs, fit, holdout
        self.noise = holdout_noise(holdout.samples_by_group, trainer.routing.contrasts)

    def get_best_hyperparameters(self, num_trials=1):
        """What TFX's Tuner executor writes for the Trainer: `settings_unless_beaten`."""
        return settings_unless_beaten(self.oracle, self.noise, num_trials)

    def run_trial(self, trial, *args, **kwargs):
        settings = self.trainer.with_hyperparameters(trial.hyperparameters.values)
        log_dir = os.path.join(self.project_dir, f"trial_{trial.trial_id}")
        _, history = trainer_module.train(settings, self.model_inputs, self.fit, self.holdout, log_dir, fit_router=False)
        tf.keras.backend.clear_session()  # each trial builds its own model; the last ones' graphs would pile up
        return {OBJECTIVE: history["per_source_auc"][history["chosen_epoch"] - 1][MEAN_AUC]}


def settings_unless_beaten(oracle: SettingsFirstOracle, noise: float, num_trials: int = 1) -> list:
    """The best trials' hyper-parameters, best first, except that the settings' trial comes first
    unless the best beats it by more than `noise`."""
    best = [t.hyperparameters for t in oracle.get_best_trials(num_trials)]
    settings = oracle.trials.get(oracle.settings_trial_id)
    if not best or settings is None or settings.score is None or oracle.get_best_trials(1)[0].score - settings.score > noise:
        return best
    return [settings.hyperparameters, *(hp for hp in best if hp.values != settings.hyperparameters.values)][:num_trials]


def tuner_settings(custom_config: dict) -> tuple[TrainerSettings, TuningSettings]:
    """The Trainer's settings (each trial's `max_epochs` capped by the tuning's) and the tuning's."""
    config = dict(custom_config)
    tuning = parse(TuningSettings, config.pop(TUNING), TUNING)
    trainer = TrainerSettings.from_config(config)
    return dataclasses.replace(trainer, max_epochs=min(trainer.max_epochs, tuning.max_epochs)), tuning


def tuner_fn(fn_args) -> TunerFnResult:
    """TFX Tuner entry point: a `RequestTuner` over the Trainer's search space, with the trials'
    records split off the training split (`RequestRecords.split_holdout`)."""
    trainer, tuning = tuner_settings(fn_args.custom_config)
    features = preprocessing.feature_set_from_config(fn_args.custom_config)
    tft_output = tft.TFTransformOutput(fn_args.transform_graph_path)
    records = request_records.RequestRecords.from_split(fn_args.train_files, tft_output.transformed_feature_spec(),
                                                        features)
    fit, holdout = records.split_holdout(tuning.holdout_share)
    if not holdout.samples_by_group[c.EP]:
        raise ValueError(f"the tuning holdout ({tuning.holdout_share:.0%} of {records.requests} training requests) "
                         "holds no exposed positive to score a trial on: raise tuning.holdout_share or set "
                         "tuning.trials=0")
    oracle = SettingsFirstOracle(objective=keras_tuner.Objective(OBJECTIVE, "max"), max_trials=tuning.trials,
                                 hyperparameters=search_space(trainer, tuning), seed=trainer.seed,
                                 allow_new_entries=False)
    tuner = RequestTuner(oracle, trainer, transformed.ModelInputs.from_transform_output(features, tft_output),
                         fit, holdout, directory=fn_args.working_dir, project_name=f"tune_{trainer.model}",
                         overwrite=True)
    return TunerFnResult(tuner=tuner, fit_kwargs={})
