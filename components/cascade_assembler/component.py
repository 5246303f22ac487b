"""CascadeAssembler: one servable SavedModel from the Transform graph and the two trained models.

Its `blessing` output is blessed only when both models were blessed by their Evaluators and the
cascade, as routed, did not regress: its blessing metric on the eval day
(`evaluation.evaluate.cascade_quality`: funnel/ Recall@200 when the dataset has a funnel, else
the logged requests' GAUC) is at most `regression_tolerance` below the last blessed cascade's
(`baseline_model`) on the same data: the same `blessing_requests` requests at most, those whose
ids hash lowest, so the cost does not grow with the eval day. Where there is no such cascade (a
first run), it must beat item popularity on those requests by more than `popularity_margin`
(decision 0018). A Pusher fed it pushes the cascade only then.
"""
from __future__ import annotations

import json

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import component_spec, standard_artifacts

from hap.components.cascade_assembler import executor
from hap.settings import HapSettings
from hap.tree import to_plain


class CascadeAssemblerSpec(component_spec.ComponentSpec):
    PARAMETERS = {
        "custom_config": component_spec.ExecutionParameter(type=str),
        # The `cascade` subtree of the settings, as JSON (serving.cascade.CascadeSettings).
        "settings": component_spec.ExecutionParameter(type=str),
        "model_name": component_spec.ExecutionParameter(type=str),
        "data_root": component_spec.ExecutionParameter(type=str),
        # The whole effective settings tree, recorded in the pushed cascade (provenance).
        "hap_settings": component_spec.ExecutionParameter(type=str),
    }
    INPUTS = {
        "transform_graph": component_spec.ChannelParameter(type=standard_artifacts.TransformGraph),
        "light_model": component_spec.ChannelParameter(type=standard_artifacts.Model),
        "heavy_model": component_spec.ChannelParameter(type=standard_artifacts.Model),
        "light_blessing": component_spec.ChannelParameter(type=standard_artifacts.ModelBlessing),
        "heavy_blessing": component_spec.ChannelParameter(type=standard_artifacts.ModelBlessing),
        "baseline_model": component_spec.ChannelParameter(type=standard_artifacts.Model, optional=True),
        # ContractExampleGen's output: its training days are item popularity's (no baseline_model).
        "examples": component_spec.ChannelParameter(type=standard_artifacts.Examples, optional=True),
    }
    OUTPUTS = {
        "model": component_spec.ChannelParameter(type=standard_artifacts.Model),
        "blessing": component_spec.ChannelParameter(type=standard_artifacts.ModelBlessing),
    }


class CascadeAssembler(base_component.BaseComponent):
    """Writes the cascade SavedModel (signatures in `hap/serving/cascade.py`) with TF Serving
    warm-up requests, in the Model artifact's `Format-Serving` folder that Pusher reads.

    `custom_config` is the Trainers' (it carries the feature set); `settings` the whole tree, of
    which the component reads `cascade` (routing, sizes, blessing tolerance and sample) and
    `serving.model_name` (the TF Serving model name the warm-up requests address) and records all;
    `data_root` the contract dataset whose eval day (and funnel/) the cascade is validated on;
    `baseline_model` the last blessed cascade, if any; without one that can be scored on the
    day, item popularity on the training days of `examples` (evaluation/popularity.py).
    """

    SPEC_CLASS = CascadeAssemblerSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

    def __init__(self, transform_graph, light_model, heavy_model, light_blessing, heavy_blessing,
                 custom_config: dict, data_root: str, settings: HapSettings, baseline_model=None, examples=None):
        super().__init__(spec=CascadeAssemblerSpec(
            transform_graph=transform_graph, light_model=light_model, heavy_model=heavy_model,
            light_blessing=light_blessing, heavy_blessing=heavy_blessing, baseline_model=baseline_model,
            examples=examples,
            data_root=data_root, custom_config=json.dumps(custom_config, sort_keys=True),
            settings=json.dumps(to_plain(settings.cascade), sort_keys=True),
            model_name=settings.serving.model_name, hap_settings=settings.to_json(),
            model=types.Channel(type=standard_artifacts.Model),
            blessing=types.Channel(type=standard_artifacts.ModelBlessing)))
