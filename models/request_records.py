"""Whole requests as records: one `ExampleListWithContext` per request, streamed with tf.data.

The contrastive losses compare each exposed positive with the negatives of its own request, so a
batch must hold every sample of each request it touches. Transform writes one tf.Example per
sample in no particular order; the RequestGrouper component (components/request_grouper) groups
them by `request_key` with a Beam GroupByKey, which scales with the runner (Dataflow, Flink,
Spark), and writes one record per request. The Trainers stream those records: nothing holds a
split in memory, and no Python runs in the input path.

Record format: TF Serving's `ExampleListWithContext` (tensorflow_serving/apis/input.proto), the
ecosystem's form of "one request: context features plus a list of candidates", which TF Ranking
reads too. Its `context` Example holds what the contract says is known once per request (the
user and context features, `transformed.ModelInputs.user_side`) and the request key; each of its
`examples` holds one candidate's item and cross features and its training columns (label, sample
group, difficulty). A user's click history is thus stored once per request instead of once per
candidate. Evaluation-only `contrast` is not carried: the Evaluators read Transform's output.
Parsing is vectorised in the graph: `tf.io.decode_proto` splits a batch of records into their
serialized context and candidate Examples (as TF Ranking does), `tf.io.parse_example` parses
both, and the context features are repeated once per candidate.

A batch holds `requests_per_batch` whole requests: `batch_size` samples on average (the split's
mean request size comes from the statistics the grouper writes beside the records).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Iterable

import numpy as np
import tensorflow as tf
from google.protobuf import descriptor_pb2
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow_serving.apis import input_pb2

from hap.data import contract as c
from hap.models import transformed

STATS_FILE = "request_stats.json"
REQUESTS, SAMPLES = "requests", "samples"
_RECORD_TYPE = input_pb2.ExampleListWithContext.DESCRIPTOR.full_name


def _descriptor_source() -> bytes:
    """input.proto and the protos it imports, for decode_proto, which cannot see the Python
    protobuf registry."""
    files = descriptor_pb2.FileDescriptorSet()
    for module in (feature_pb2, example_pb2, input_pb2):
        module.DESCRIPTOR.CopyToProto(files.file.add())
    return b"bytes://" + files.SerializeToString()


_DESCRIPTOR_SOURCE = _descriptor_source()


def context_names(features: c.FeatureSet) -> tuple[str, ...]:
    """The transformed features stored once per request: the request key and the user-side
    (user and context) features."""
    return (transformed.REQUEST_KEY,) + tuple(f.name for f in features.features if f.role in (c.USER, c.CONTEXT))


def request_record(request_key: bytes, serialized_examples: Iterable[bytes],
                   context: tuple[str, ...]) -> input_pb2.ExampleListWithContext:
    """One request's transformed tf.Examples as an ExampleListWithContext.

    A context feature whose value differs between the request's samples breaks the contract
    ("known once per request"): that is an error naming the request and the feature."""
    record = input_pb2.ExampleListWithContext()
    first = True
    for serialized in serialized_examples:
        candidate = record.examples.add()
        candidate.ParseFromString(serialized)
        values = candidate.features.feature
        if first:
            for name in context:
                record.context.features.feature[name].CopyFrom(values[name])
            first = False
        for name in context:
            if values[name] != record.context.features.feature[name]:
                raise ValueError(f"request {request_key!r}: feature {name!r} differs between its samples; "
                                 "the contract says user and context features are known once per request")
            del values[name]
        if transformed.CONTRAST in values:
            del values[transformed.CONTRAST]
    return record


def group_counts(record: input_pb2.ExampleListWithContext) -> dict[str, int]:
    """Samples of each sample group in a request record."""
    counts = dict.fromkeys(c.SAMPLE_GROUPS, 0)
    for candidate in record.examples:
        counts[c.SAMPLE_GROUPS[candidate.features.feature[transformed.SAMPLE_GROUP].int64_list.value[0]]] += 1
    return counts


@dataclasses.dataclass(frozen=True)
class RequestRecords:
    """A split of request records: its files, its size, and how to parse it.

    `requests` bounds what a pass reads (the split's count by default; fewer for a quick run).
    `groups`: the sample groups a batch keeps (a model trains on its `SampleRouting.trains_on`);
    the others are dropped in the graph, and batch sizes count only the kept samples."""

    files: tuple[str, ...]
    requests: int
    samples_by_group: dict
    feature_spec: dict
    context: tuple[str, ...]
    groups: tuple[str, ...] = c.SAMPLE_GROUPS

    @classmethod
    def from_split(cls, file_patterns: str | list[str], feature_spec: dict, features: c.FeatureSet) -> "RequestRecords":
        """The records matching `file_patterns` (a Trainer's `train_files`: `<artifact>/Split-<name>/*`);
        the split's statistics are read from `<artifact>/request_stats.json`."""
        patterns = [file_patterns] if isinstance(file_patterns, str) else list(file_patterns)
        files = tuple(sorted(f for p in patterns for f in tf.io.gfile.glob(p)))
        if not files:
            raise FileNotFoundError(f"no request records match {patterns}")
        requests, samples = 0, dict.fromkeys(c.SAMPLE_GROUPS, 0)
        for pattern in patterns:
            split_dir = os.path.dirname(pattern)
            split = os.path.basename(split_dir).removeprefix("Split-")
            stats_path = os.path.join(os.path.dirname(split_dir), STATS_FILE)
            with tf.io.gfile.GFile(stats_path) as f:
                stats = json.load(f)
            if split not in stats:
                raise ValueError(f"{stats_path} has no statistics for split {split!r}")
            requests += stats[split][REQUESTS]
            for group, count in stats[split][SAMPLES].items():
                samples[group] += count
        spec = {k: v for k, v in feature_spec.items() if isinstance(v, tf.io.FixedLenFeature)}
        return cls(files, requests, samples, spec, context_names(features))

    def only(self, groups: tuple[str, ...]) -> "RequestRecords":
        return dataclasses.replace(self, groups=tuple(groups))

    @property
    def samples(self) -> int:
        return sum(self.samples_by_group[g] for g in self.groups)

    @property
    def mean_request_size(self) -> float:
        return self.samples / max(self.requests, 1)

    def requests_per_batch(self, batch_size: int) -> int:
        """Whole requests per batch so that a batch holds `batch_size` samples on average."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return max(1, round(batch_size / self.mean_request_size))

    def steps(self, requests_per_batch: int, num_replicas: int = 1) -> int:
        """Steps of one pass, each one batch per replica."""
        return max(1, math.ceil(self.requests / (requests_per_batch * num_replicas)))

    def parse(self, serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        """A batch of serialized records [k] -> the features of all their candidates, [n, ...],
        each request's candidates contiguous."""
        sizes, (context, candidates) = tf.io.decode_proto(
            serialized, _RECORD_TYPE, ["context", "examples"], [tf.string, tf.string],
            descriptor_source=_DESCRIPTOR_SOURCE)
        counts = sizes[:, 1]
        flat = tf.boolean_mask(candidates, tf.sequence_mask(counts, tf.shape(candidates)[1]))
        out = tf.io.parse_example(flat, {k: v for k, v in self.feature_spec.items() if k not in self.context})
        per_request = tf.io.parse_example(context[:, 0], {k: v for k, v in self.feature_spec.items() if k in self.context})
        for name, value in per_request.items():
            out[name] = tf.repeat(value, counts, axis=0)
        if set(self.groups) != set(c.SAMPLE_GROUPS):
            wanted = tf.constant([transformed.GROUP_INDEX[g] for g in self.groups], tf.int64)
            keep = tf.reduce_any(tf.equal(out[transformed.SAMPLE_GROUP][:, None], wanted[None, :]), axis=1)
            out = {name: tf.boolean_mask(value, keep) for name, value in out.items()}
        return out

    def columns(self, names: tuple[str, ...], requests_per_batch: int = 256, derived: dict | None = None) -> dict:
        """Some features of every sample, streamed, in the records' (deterministic) order; and
        `derived` {name: function of a batch to one value per sample}, such as a model's logits,
        from the same pass."""
        derived = derived or {}
        parts = {name: [] for name in (*names, *derived)}
        for batch in self.dataset(requests_per_batch):
            for name in names:
                parts[name].append(batch[name].numpy())
            for name, fn in derived.items():
                parts[name].append(np.asarray(fn(batch)))
        return {name: np.concatenate(values) if values else np.zeros(0) for name, values in parts.items()}

    def dataset(self, requests_per_batch: int, *, shuffle_requests: int = 0, seed: int = 0, repeat: bool = False,
                num_shards: int = 1, shard: int = 0) -> tf.data.Dataset:
        """Batches of `requests_per_batch` whole requests.

        shuffle_requests > 0: files in a fresh order every pass, interleaved, and requests
        shuffled in a buffer of that many (memory is bounded by the buffer, not the split).
        num_shards > 1: this input pipeline's share (`shard`): by files when they divide evenly
        between the shards (the grouper's files are of about equal size), else by records, so
        every shard holds about the same number of requests and an epoch's steps reach them all.
        """
        files = list(self.files)
        by_files = num_shards > 1 and len(files) % num_shards == 0
        if by_files:
            files = files[shard::num_shards]
        ds = tf.data.Dataset.from_tensor_slices(files)
        if shuffle_requests:
            ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        ds = ds.interleave(lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP"),
                           cycle_length=min(len(files), 4), num_parallel_calls=tf.data.AUTOTUNE)
        if num_shards > 1 and not by_files:
            ds = ds.shard(num_shards, shard)
        ds = ds.take(self.requests)
        if shuffle_requests:
            ds = ds.shuffle(shuffle_requests, seed=seed, reshuffle_each_iteration=True)
        # Batched before repeating: a batch never spans two passes, so it never holds a request twice.
        ds = ds.batch(requests_per_batch)
        if repeat:
            ds = ds.repeat()
        return ds.map(self.parse, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
