"""RequestGrouper: one request Example per request, from Transform's transformed examples,
for the Trainers to stream (record format: models/request_records.py)."""
from __future__ import annotations

import json

from tfx import types
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.types import component_spec, standard_artifacts

from hap.components.request_grouper import executor
from hap.models import request_records


class RequestGrouperSpec(component_spec.ComponentSpec):
    PARAMETERS = {"custom_config": component_spec.ExecutionParameter(type=str),
                  request_records.FORMAT: component_spec.ExecutionParameter(type=str)}
    INPUTS = {"examples": component_spec.ChannelParameter(type=standard_artifacts.Examples)}
    OUTPUTS = {"request_examples": component_spec.ChannelParameter(type=standard_artifacts.Examples)}


class RequestGrouper(base_beam_component.BaseBeamComponent):
    """Groups every split of `examples` by request with a Beam GroupByKey; writes the records as
    GZIP TFRecords under `Split-<name>/` and their counts to `request_stats.json`.

    `custom_config` is the Trainers' (it carries the feature set, which says what is stored once
    per request). `record_format` is the format it writes (models/request_records.py): a new
    format is a new cache key."""

    SPEC_CLASS = RequestGrouperSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

    def __init__(self, examples: types.BaseChannel, custom_config: dict):
        super().__init__(spec=RequestGrouperSpec(
            examples=examples, custom_config=json.dumps(custom_config, sort_keys=True),
            record_format=request_records.RECORD_FORMAT,
            request_examples=types.Channel(type=standard_artifacts.Examples)))
