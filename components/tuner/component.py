"""Tuner: TFX's Tuner (KerasTuner, `tuner_fn`) that reuses the last tuned hyper-parameters of its
Trainer until they are `retune_days` days older than today, until a drift was accepted, or until
what is tuned changed; then it searches again.

A daily pipeline would otherwise search on every run, at several times a Trainer's cost, though
a day's new data rarely moves the best loss or width. "Drift" here is today's statistics against
those of the day that searched, with the pipeline's drift comparators (executor.py says why not
the DriftGate's verdict). The Trainer reads `best_hyperparameters` either way; its properties say
which day tuned them and why they were (re)used."""
from __future__ import annotations

import json
from typing import Optional

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import component_spec, standard_artifacts, standard_component_specs as specs

from hap.components.tuner import executor

PREVIOUS = "previous_hyperparameters"


class TunerSpec(specs.TunerSpec):
    PARAMETERS = {**specs.TunerSpec.PARAMETERS, executor.RETUNE_DAYS: component_spec.ExecutionParameter(type=int),
                  executor.DRIFT_COMPARATORS: component_spec.ExecutionParameter(type=str)}
    INPUTS = {**specs.TunerSpec.INPUTS,
              PREVIOUS: component_spec.ChannelParameter(type=standard_artifacts.HyperParameters, optional=True),
              executor.STATISTICS: component_spec.ChannelParameter(type=standard_artifacts.ExampleStatistics)}


class Tuner(base_component.BaseComponent):
    """examples, transform_graph, schema, tuner_fn, custom_config: as TFX's Tuner's.
    statistics: StatisticsGen's output of this run.
    retune_days: how many days old the previous hyper-parameters may be (0: always search).
    drift_comparators: {feature: {"comparator", "threshold"}} (the settings' drift.comparators
    of the dataset's features; {}: drift brings no new search).
    previous_hyperparameters: the last `best_hyperparameters` of this Tuner (a resolver's)."""

    SPEC_CLASS = TunerSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

    def __init__(self, examples: types.BaseChannel, transform_graph: types.BaseChannel, schema: types.BaseChannel,
                 statistics: types.BaseChannel, tuner_fn: str, custom_config: dict, retune_days: int,
                 drift_comparators: dict, previous_hyperparameters: Optional[types.BaseChannel] = None):
        from tfx.proto import trainer_pb2

        super().__init__(spec=TunerSpec(
            examples=examples, transform_graph=transform_graph, schema=schema, tuner_fn=tuner_fn,
            train_args=trainer_pb2.TrainArgs(), eval_args=trainer_pb2.EvalArgs(),
            custom_config=json.dumps(custom_config, sort_keys=True), retune_days=retune_days,
            drift_comparators=json.dumps(drift_comparators, sort_keys=True), statistics=statistics,
            previous_hyperparameters=previous_hyperparameters,
            best_hyperparameters=types.Channel(type=standard_artifacts.HyperParameters),
            tuner_results=types.Channel(type=standard_artifacts.TunerResults)))
