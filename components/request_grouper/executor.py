"""Executor of RequestGrouper.

Per split: read the transformed tf.Examples, key each by its `request_key`, GroupByKey, and write
one serialized request Example per request (models/request_records.request_records, a batch of
requests at a time). The split's request and sample counts go to `request_stats.json`, which the
Trainers read to size batches and epochs without a pass over the data. Outputs are written
straight into the artifact: TFX publishes it only when the executor succeeds, and a retry gets a
fresh folder.

Order. A runner writes a GroupByKey's output in no promised order, and the DirectRunner in the
order of the input: request after request, day after day. A Trainer's shuffle buffer mixes only
neighbouring records, so that order would reach training as it is. The records are therefore
written in a random order: each goes to one of ceil(requests / RECORDS_PER_SHARD) shards by a
hash of its request key, and each shard is sorted by a second hash before one worker writes it.
Streaming a few shards interleaved then gives batches of requests from every day, whatever the
buffer's size.
"""
from __future__ import annotations

import hashlib
import json
import math
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
# Records per output file; a worker holds one shard in memory to order it, so a shard's size
# bounds its memory.
RECORDS_PER_SHARD = 10_000
# Requests whose records are built together (request_records.request_records); measured with
# benchmarks/record_building.py: docs/decisions/0013-request-records.md.
REQUESTS_PER_BATCH = 256


def _hash(key: bytes, salt: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(key, digest_size=8, salt=salt).digest(), "big")


def num_shards(requests: int) -> int:
    return max(1, math.ceil(requests / RECORDS_PER_SHARD))


def _to_shard(key: bytes, record: bytes, _counts, shards: int = 1) -> tuple[int, tuple[int, bytes]]:
    return _hash(key, b"shard") % shards, (_hash(key, b"order"), record)


def _write_shard(shard: int, records, output_dir: str = "", shards: int = 1) -> None:
    """Writes one shard's records in the order of their keys' second hash (a random order that
    a retry repeats), to a temporary file renamed into place."""
    path = os.path.join(output_dir, f"{_FILE_PREFIX}-{shard:05d}-of-{shards:05d}.gz")
    tf.io.gfile.makedirs(output_dir)
    with tf.io.TFRecordWriter(f"{path}.tmp", "GZIP") as writer:
        for _, record in sorted(records, key=lambda item: item[0]):
            writer.write(record)
    tf.io.gfile.rename(f"{path}.tmp", path, overwrite=True)


def _request_key(serialized: bytes) -> bytes:
    return tf.train.Example.FromString(serialized).features.feature[transformed.REQUEST_KEY].bytes_list.value[0]


def _serialized_records(requests, context: tuple[str, ...] = ()) -> list[tuple[bytes, bytes, dict[str, int]]]:
    records = request_records.request_records(requests, context)
    return [(key, record.SerializeToString(), request_records.group_counts(record))
            for (key, _), record in zip(requests, records)]


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
               | f"Batch[{split}]" >> beam.BatchElements(min_batch_size=REQUESTS_PER_BATCH,
                                                         max_batch_size=REQUESTS_PER_BATCH)
               | f"ToRecords[{split}]" >> beam.FlatMap(_serialized_records, context=context))
    shards = (records
              | f"Count[{split}]" >> beam.combiners.Count.Globally()
              | f"Shards[{split}]" >> beam.Map(num_shards))
    _ = (records
         | f"ToShard[{split}]" >> beam.MapTuple(_to_shard, shards=beam.pvalue.AsSingleton(shards))
         | f"GroupByShard[{split}]" >> beam.GroupByKey()
         | f"Write[{split}]" >> beam.MapTuple(_write_shard, output_dir=output_dir,
                                              shards=beam.pvalue.AsSingleton(shards)))
    return (records
            | f"Counts[{split}]" >> beam.MapTuple(lambda _key, _record, counts: counts)
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
        stats = {request_records.FORMAT: request_records.RECORD_FORMAT}
        with tf.io.gfile.GFile(totals_path) as f:
            for line in f:
                stats.update(json.loads(line))
        with tf.io.gfile.GFile(os.path.join(output.uri, request_records.STATS_FILE), "w") as f:
            json.dump(stats, f, indent=1, sort_keys=True)
        tf.io.gfile.remove(totals_path)
        output.split_names = artifact_utils.encode_split_names(splits)
        examples_utils.set_payload_format(output, example_gen_pb2.PayloadFormat.FORMAT_PROTO)
