"""Executor of RequestGrouper.

Per split: read the transformed tf.Examples, key each by its `request_key`, GroupByKey, and write
one serialized ExampleListWithContext per request (models/request_records.request_record). The
split's request and sample counts go to `request_stats.json`, which the Trainers read to size
batches and epochs without a pass over the data. Outputs are written straight into the artifact:
TFX publishes it only when the executor succeeds, and a retry gets a fresh folder.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List

import apache_beam as beam
import tensorflow as tf
from tfx import types
from tfx.components.util import examples_utils
from tfx.dsl.components.base import base_beam_executor
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils

from hap.models import preprocessing, request_records, transformed

_FILE_PREFIX = "requests"


def _request_key(serialized: bytes) -> bytes:
    return tf.train.Example.FromString(serialized).features.feature[transformed.REQUEST_KEY].bytes_list.value[0]


def _serialized_record(key: bytes, examples, context: tuple[str, ...] = ()) -> tuple[bytes, dict[str, int]]:
    record = request_records.request_record(key, examples, context)
    return record.SerializeToString(), request_records.group_counts(record)


class _SplitTotals(beam.CombineFn):
    """{"requests": R, "samples": {group: n}} of a split's records."""

    def create_accumulator(self):
        return {request_records.REQUESTS: 0, request_records.SAMPLES: {}}

    def add_input(self, totals, counts):
        totals[request_records.REQUESTS] += 1
        for group, n in counts.items():
            totals[request_records.SAMPLES][group] = totals[request_records.SAMPLES].get(group, 0) + n
        return totals

    def merge_accumulators(self, accumulators):
        merged = self.create_accumulator()
        for totals in accumulators:
            merged[request_records.REQUESTS] += totals[request_records.REQUESTS]
            for group, n in totals[request_records.SAMPLES].items():
                merged[request_records.SAMPLES][group] = merged[request_records.SAMPLES].get(group, 0) + n
        return merged

    def extract_output(self, totals):
        return totals


def group_split(pipeline: beam.Pipeline, split: str, input_pattern: str, output_dir: str,
                context: tuple[str, ...]) -> beam.PCollection:
    """Writes `split`'s request records under `output_dir`; returns a one-element PCollection
    {split: {"requests": R, "samples": {group: n}}}."""
    records = (pipeline
               | f"Read[{split}]" >> beam.io.ReadFromTFRecord(input_pattern)
               | f"KeyByRequest[{split}]" >> beam.Map(lambda s: (_request_key(s), s))
               | f"GroupByRequest[{split}]" >> beam.GroupByKey()
               | f"ToRecord[{split}]" >> beam.MapTuple(_serialized_record, context=context))
    _ = (records
         | f"Serialized[{split}]" >> beam.MapTuple(lambda record, _: record)
         | f"Write[{split}]" >> beam.io.WriteToTFRecord(os.path.join(output_dir, _FILE_PREFIX), file_name_suffix=".gz"))
    return (records
            | f"Counts[{split}]" >> beam.MapTuple(lambda _, counts: counts)
            | f"Total[{split}]" >> beam.CombineGlobally(_SplitTotals())
            | f"Name[{split}]" >> beam.Map(lambda totals: {split: totals}))


class Executor(base_beam_executor.BaseBeamExecutor):

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        examples = artifact_utils.get_single_instance(input_dict["examples"])
        output = artifact_utils.get_single_instance(output_dict["request_examples"])
        features = preprocessing.feature_set_from_config(json.loads(exec_properties["custom_config"]))
        context = request_records.context_names(features)
        splits = artifact_utils.decode_split_names(examples.split_names)
        totals_path = os.path.join(output.uri, "totals")
        with self._make_beam_pipeline() as pipeline:
            totals = [group_split(pipeline, split,
                                  os.path.join(artifact_utils.get_split_uri([examples], split), "*"),
                                  os.path.join(output.uri, f"Split-{split}"), context)
                      for split in splits]
            _ = (totals
                 | "AllSplits" >> beam.Flatten()
                 | "ToJson" >> beam.Map(json.dumps)
                 | "WriteTotals" >> beam.io.WriteToText(totals_path, shard_name_template=""))
        stats = {}
        with tf.io.gfile.GFile(totals_path) as f:
            for line in f:
                stats.update(json.loads(line))
        with tf.io.gfile.GFile(os.path.join(output.uri, request_records.STATS_FILE), "w") as f:
            json.dump(stats, f, indent=1, sort_keys=True)
        tf.io.gfile.remove(totals_path)
        output.split_names = artifact_utils.encode_split_names(splits)
        examples_utils.set_payload_format(output, example_gen_pb2.PayloadFormat.FORMAT_PROTO)
