"""Executor of ContractExampleGen.

Reads `samples/` of a contract dataset (CSV or GZIP TFRecord, whatever its feature set), turns
each row into the canonical tf.Example (data/canonical.py) and splits by day: the last
`eval_days` days are the `eval` split, the rest `train`, or with `window_days` only the
`window_days` days before the eval days (a rolling window: older rows are read and dropped).
The Examples artifact's span is the newest day, and `days.json` beside its splits lists the days
each split holds. Plain CSV files are cut into byte
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
from tfx.dsl.io import fileio
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_component_specs

from hap.data import canonical, reader
from hap.data import contract as c

TRAIN, EVAL = "train", "eval"


DAYS_FILE = "days.json"


def custom_config_proto(eval_days: int, range_bytes: int | None = None,
                        window_days: int | None = None) -> example_gen_pb2.CustomConfig:
    settings = struct_pb2.Struct()
    settings.update({"eval_days": eval_days})
    # Only when set, so that a pipeline which does not use them keeps its execution cache.
    if range_bytes is not None:
        settings.update({"range_bytes": range_bytes})
    if window_days is not None:
        settings.update({"window_days": window_days})
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


_TRAIN, _EVAL, _OUTSIDE = 0, 1, 2


def _split_of(row: dict, num_partitions: int, last_day: int, eval_days: int, window_days: int | None) -> int:
    del num_partitions
    if row["day"] > last_day - eval_days:
        return _EVAL
    if window_days is not None and row["day"] <= last_day - eval_days - window_days:
        return _OUTSIDE
    return _TRAIN


def _split_days(days: list, eval_days: int, window_days: int | None) -> dict:
    """Which of the dataset's `days` each split holds."""
    last = max(days)
    split = {TRAIN: [], EVAL: [], "outside_window": []}
    for day in sorted(days):
        split[(TRAIN, EVAL, "outside_window")[_split_of({"day": day}, 3, last, eval_days, window_days)]].append(day)
    return split


def read_days(examples_uri: str) -> dict:
    """The days each split of a ContractExampleGen output holds ({} for an output without the record)."""
    path = os.path.join(examples_uri, DAYS_FILE)
    if not fileio.exists(path):
        return {}
    with fileio.open(path) as f:
        return json.load(f)


class Executor(base_example_gen_executor.BaseExampleGenExecutor):

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        raise NotImplementedError("ContractExampleGen splits by day in GenerateExamplesByBeam")

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        examples = artifact_utils.get_single_instance(output_dict[standard_component_specs.EXAMPLES_KEY])
        self._days_file = os.path.join(examples.uri, DAYS_FILE)
        super().Do(input_dict, output_dict, exec_properties)
        days = read_days(examples.uri)
        if not days[TRAIN]:
            settings = settings_from(exec_properties)
            every_day = sorted(days[TRAIN] + days[EVAL] + days["outside_window"])
            window = f" and a window of {int(settings['window_days'])} day(s) trains" if "window_days" in settings else ""
            raise ValueError(f"no training day: the dataset's days are {every_day}, the last "
                             f"{int(settings.get('eval_days', 1))} evaluate{window}")
        examples.span = max(days[EVAL])

    def GenerateExamplesByBeam(self, pipeline: beam.Pipeline,
                               exec_properties: Dict[str, Any]) -> Dict[str, beam.pvalue.PCollection]:
        input_base = exec_properties[standard_component_specs.INPUT_BASE_KEY]
        settings = settings_from(exec_properties)
        eval_days = int(settings.get("eval_days", 1))
        window_days = int(settings["window_days"]) if "window_days" in settings else None
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
        days = (rows | "Days" >> beam.Map(lambda r: r["day"]) | "DistinctDays" >> beam.Distinct()
                | "AllDays" >> beam.combiners.ToList())
        days_file = getattr(self, "_days_file", None)
        if days_file:
            _ = days | "RecordDays" >> beam.Map(_write_days, days_file, eval_days, window_days)
        last_day = days | "LastDay" >> beam.Map(max)
        train, evaluation, _ = rows | "SplitByDay" >> beam.Partition(
            _split_of, 3, last_day=beam.pvalue.AsSingleton(last_day), eval_days=eval_days, window_days=window_days)
        return {
            TRAIN: train | "TrainToExample" >> beam.Map(canonical.to_example, types),
            EVAL: evaluation | "EvalToExample" >> beam.Map(canonical.to_example, types),
        }


def _write_days(days: list, path: str, eval_days: int, window_days: int | None) -> None:
    with fileio.open(path, "w") as f:
        f.write(json.dumps(_split_days(days, eval_days, window_days)))
