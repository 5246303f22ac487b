"""Executor of ContractExampleGen.

Reads `samples/` of a contract dataset (CSV or GZIP TFRecord, whatever its feature set), turns
each row into the canonical tf.Example (data/canonical.py) and splits by day: the last
`eval_days` days are the `eval` split, the rest `train`. Plain CSV files are cut into byte
ranges of `range_bytes` (custom config, default reader.DEFAULT_RANGE_BYTES) that spread over the
workers, so a day in one large file is not one worker's job; compressed files, and CSV files
whose quoting could put a record over several lines, are one range each (reader.file_ranges).
The project's own reader reads them, so a malformed row fails the run with its file, line and
column.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict

import apache_beam as beam
from google.protobuf import json_format, struct_pb2
from tfx.components.example_gen import base_example_gen_executor
from tfx.proto import example_gen_pb2
from tfx.types import standard_component_specs

from hap.data import canonical, reader
from hap.data import contract as c

TRAIN, EVAL = "train", "eval"


def custom_config_proto(eval_days: int, range_bytes: int | None = None) -> example_gen_pb2.CustomConfig:
    settings = struct_pb2.Struct()
    settings.update({"eval_days": eval_days})
    # Only when set, so that a pipeline which does not tune it keeps its execution cache.
    if range_bytes is not None:
        settings.update({"range_bytes": range_bytes})
    config = example_gen_pb2.CustomConfig()
    config.custom_config.Pack(settings)
    return config


def settings_from(exec_properties: Dict[str, Any]) -> dict:
    raw = exec_properties.get(standard_component_specs.CUSTOM_CONFIG_KEY)
    if not raw:
        return {}
    config = example_gen_pb2.CustomConfig()
    json_format.Parse(raw, config)
    settings = struct_pb2.Struct()
    if config.custom_config.Unpack(settings):
        return json.loads(json_format.MessageToJson(settings))
    return {}


def _split_of(row: dict, num_partitions: int, last_day: int, eval_days: int) -> int:
    del num_partitions
    return 1 if row["day"] > last_day - eval_days else 0


class Executor(base_example_gen_executor.BaseExampleGenExecutor):

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        raise NotImplementedError("ContractExampleGen splits by day in GenerateExamplesByBeam")

    def GenerateExamplesByBeam(self, pipeline: beam.Pipeline,
                               exec_properties: Dict[str, Any]) -> Dict[str, beam.pvalue.PCollection]:
        input_base = exec_properties[standard_component_specs.INPUT_BASE_KEY]
        settings = settings_from(exec_properties)
        eval_days = int(settings.get("eval_days", 1))
        range_bytes = int(settings.get("range_bytes", reader.DEFAULT_RANGE_BYTES))
        features = c.load_features(input_base)
        _, files = reader.data_files(os.path.join(input_base, c.SAMPLES_DIR))
        kinds = features.column_kinds()
        types = canonical.canonical_types(features)

        rows = (pipeline
                | "ListFiles" >> beam.Create(files)
                | "CutRanges" >> beam.FlatMap(reader.file_ranges, range_bytes)
                | "SpreadRanges" >> beam.Reshuffle()
                | "ReadRows" >> beam.FlatMap(reader.range_rows, kinds))
        last_day = rows | "Days" >> beam.Map(lambda r: r["day"]) | "LastDay" >> beam.CombineGlobally(max)
        train, evaluation = rows | "SplitByDay" >> beam.Partition(
            _split_of, 2, last_day=beam.pvalue.AsSingleton(last_day), eval_days=eval_days)
        return {
            TRAIN: train | "TrainToExample" >> beam.Map(canonical.to_example, types),
            EVAL: evaluation | "EvalToExample" >> beam.Map(canonical.to_example, types),
        }
