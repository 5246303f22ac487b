"""Executor of ContractExampleGen.

Reads `samples/` of a contract dataset (CSV or GZIP TFRecord, whatever its feature set), turns
each row into the canonical tf.Example (data/canonical.py) and splits by day: the last
`eval_days` days are the `eval` split, the rest `train`. Files are read one per worker with
the project's own reader, so a malformed row fails the run with its file, line and column.
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


def custom_config_proto(eval_days: int) -> example_gen_pb2.CustomConfig:
    settings = struct_pb2.Struct()
    settings.update({"eval_days": eval_days})
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
        eval_days = int(settings_from(exec_properties).get("eval_days", 1))
        features = c.load_features(input_base)
        _, files = reader.data_files(os.path.join(input_base, c.SAMPLES_DIR))
        kinds = features.column_kinds()
        types = canonical.canonical_types(features)

        rows = (pipeline
                | "ListFiles" >> beam.Create(files)
                | "SpreadFiles" >> beam.Reshuffle()
                | "ReadRows" >> beam.FlatMap(reader.file_rows, kinds))
        last_day = rows | "Days" >> beam.Map(lambda r: r["day"]) | "LastDay" >> beam.CombineGlobally(max)
        train, evaluation = rows | "SplitByDay" >> beam.Partition(
            _split_of, 2, last_day=beam.pvalue.AsSingleton(last_day), eval_days=eval_days)
        return {
            TRAIN: train | "TrainToExample" >> beam.Map(canonical.to_example, types),
            EVAL: evaluation | "EvalToExample" >> beam.Map(canonical.to_example, types),
        }
