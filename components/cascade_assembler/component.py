"""CascadeAssembler: one servable SavedModel from the Transform graph and the two trained models.

Its `blessing` output is blessed only when both models were blessed by their Evaluators, so a
Pusher fed it pushes the cascade only then.
"""
from __future__ import annotations

import json

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import component_spec, standard_artifacts

from hap.components.cascade_assembler import executor
from hap.serving.cascade import CascadeSettings


class CascadeAssemblerSpec(component_spec.ComponentSpec):
    PARAMETERS = {
        "custom_config": component_spec.ExecutionParameter(type=str),
        "route_fraction": component_spec.ExecutionParameter(type=float),
        "k_out": component_spec.ExecutionParameter(type=int),
        "max_candidates": component_spec.ExecutionParameter(type=int),
        "model_name": component_spec.ExecutionParameter(type=str),
    }
    INPUTS = {
        "transform_graph": component_spec.ChannelParameter(type=standard_artifacts.TransformGraph),
        "light_model": component_spec.ChannelParameter(type=standard_artifacts.Model),
        "heavy_model": component_spec.ChannelParameter(type=standard_artifacts.Model),
        "light_blessing": component_spec.ChannelParameter(type=standard_artifacts.ModelBlessing),
        "heavy_blessing": component_spec.ChannelParameter(type=standard_artifacts.ModelBlessing),
    }
    OUTPUTS = {
        "model": component_spec.ChannelParameter(type=standard_artifacts.Model),
        "blessing": component_spec.ChannelParameter(type=standard_artifacts.ModelBlessing),
    }


class CascadeAssembler(base_component.BaseComponent):
    """Writes the cascade SavedModel (signatures in `hap/serving/cascade.py`) with TF Serving
    warm-up requests, in the Model artifact's `Format-Serving` folder that Pusher reads.

    `custom_config` is the Trainers' (it carries the feature set); `model_name` is the TF Serving
    model name the warm-up requests address.
    """

    SPEC_CLASS = CascadeAssemblerSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

    def __init__(self, transform_graph, light_model, heavy_model, light_blessing, heavy_blessing,
                 custom_config: dict, settings: CascadeSettings = CascadeSettings(), model_name: str = "hap"):
        super().__init__(spec=CascadeAssemblerSpec(
            transform_graph=transform_graph, light_model=light_model, heavy_model=heavy_model,
            light_blessing=light_blessing, heavy_blessing=heavy_blessing,
            custom_config=json.dumps(custom_config, sort_keys=True),
            route_fraction=settings.route_fraction, k_out=settings.k_out,
            max_candidates=settings.max_candidates, model_name=model_name,
            model=types.Channel(type=standard_artifacts.Model),
            blessing=types.Channel(type=standard_artifacts.ModelBlessing)))
