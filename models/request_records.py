"""Whole requests as records: one tf.Example per request, its candidates in columns, streamed with tf.data.

The contrastive losses compare each exposed positive with the negatives of its own request, so a
batch must hold every sample of each request it touches. Transform writes one tf.Example per
sample in no particular order; the RequestGrouper component (components/request_grouper) groups
them by `request_key` with a Beam GroupByKey, which scales with the runner (Dataflow, Flink,
Spark), and writes one record per request. The Trainers stream those records: nothing holds a
split in memory, and no Python runs in the input path.

Record format: a request Example. The features the contract says are known once per request
(the user and context features, `transformed.ModelInputs.user_side`) and the request key hold
their values once; every other feature (item, cross, and the training columns label, sample
group, difficulty) holds the values of all the request's candidates one after another, in the
same candidate order for every feature. A feature of shape [d] thus holds n x d values for n
candidates, and the sample group (one value per candidate) gives n. A user's click history is
stored once per request, not once per candidate. Evaluation-only `contrast` is not carried: the
Evaluators read Transform's output. Parsing is one `tf.io.parse_example` of a batch of records
(ragged for the candidates' columns), in the graph; the context features are repeated once per
candidate.

Why not TF Serving's `ExampleListWithContext` (tensorflow_serving/apis/input.proto, which TF
Ranking reads too, and which this module wrote until it was measured): it holds a whole Example
per candidate, each with every feature's name, so it is several times the bytes and the parsing
of this form, and so is TF Ranking's other format, SequenceExample
(docs/decisions/0013-request-records.md; benchmarks/record_formats.py). The shuffle buffer holds
serialized records, so its memory shrinks by the same factor. TF Serving clients may still send
`ExampleListWithContext` to the served model (serving/ accepts it); the request Example is only
the Trainers' input.

A batch holds `requests_per_batch` whole requests: `batch_size` samples on average (the split's
mean request size comes from the statistics the grouper writes beside the records).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from typing import Iterable

import numpy as np
import tensorflow as tf
from tensorflow.core.example import example_pb2, feature_pb2

from hap.data import contract as c
from hap.models import transformed

STATS_FILE = "request_stats.json"
REQUESTS, SAMPLES = "requests", "samples"
# Written into STATS_FILE beside the splits' counts, and a RequestGrouper execution property, so
# that a change of format also changes TFX's cache key: records of an older format are neither
# reused from cache nor read by a newer Trainer.
FORMAT, RECORD_FORMAT = "record_format", "request_example/1"


def context_names(features: c.FeatureSet) -> tuple[str, ...]:
    """The transformed features stored once per request: the request key and the user-side
    (user and context) features."""
    return (transformed.REQUEST_KEY,) + tuple(f.name for f in features.features if f.role in (c.USER, c.CONTEXT))


def request_record(request_key: bytes, serialized_examples: Iterable[bytes],
                   context: tuple[str, ...]) -> example_pb2.Example:
    """One request's transformed tf.Examples as one request Example (the module's docstring).

    The contract's "known once per request" is checked: a context feature whose value differs
    between the request's samples is an error naming the request and the feature. So is a
    candidate feature missing from a sample, or with another number or type of values than the
    first sample's, which would misalign the columns."""
    record = example_pb2.Example()
    columns = record.features.feature
    shapes: dict[str, tuple] | None = None
    for serialized in serialized_examples:
        values = example_pb2.Example.FromString(serialized).features.feature
        if shapes is None:
            for name in context:
                columns[name].CopyFrom(values[name])
            shapes = {name: _shape(feature) for name, feature in values.items()
                      if name not in context and name != transformed.CONTRAST}
        for name in context:
            if values[name] != columns[name]:
                raise ValueError(f"request {request_key!r}: feature {name!r} differs between its samples; "
                                 "the contract says user and context features are known once per request")
        for name, (kind, size) in shapes.items():
            shape = _shape(values[name]) if name in values else (None, 0)
            if shape != (kind, size):
                raise ValueError(f"request {request_key!r}: feature {name!r} has {shape[1]} values of type {shape[0]} in "
                                 f"one sample and {size} of type {kind} in another; a candidate feature has one shape")
            if kind:
                getattr(columns[name], kind).value.extend(getattr(values[name], kind).value)
    return record


_VALUE_LISTS = {"bytes_list": tf.string, "float_list": tf.float32, "int64_list": tf.int64}


def request_records(requests: list[tuple[bytes, list[bytes]]], context: tuple[str, ...]) -> list[example_pb2.Example]:
    """`request_record` of each (request key, serialized examples), the batch parsed at once.

    Building records sample by sample and feature by feature in Python was the RequestGrouper's
    cost (docs/decisions/0013-request-records.md; benchmarks/record_building.py); here one
    `tf.io.parse_example` reads the whole batch and each column is cut per request from its flat
    values. The checks of
    `request_record` are made on the parsed columns (a candidate feature's number of values, a
    context feature's values, the same within a request; a type that differs fails the parse);
    when one fails, the batch is built by `request_record`, which raises naming the request and
    the feature. Both give equal records (a test compares them)."""
    keys, examples = [key for key, _ in requests], [list(e) for _, e in requests]
    counts = np.array([len(e) for e in examples])
    firsts = [example_pb2.Example.FromString(e[0]).features.feature for e in examples]
    kinds = {name: feature.WhichOneof("kind") for name, feature in firsts[0].items() if name != transformed.CONTRAST}
    # request_record takes each request's features from its first sample: here they must be one set.
    same_features = all(set(first) - {transformed.CONTRAST} == set(kinds) for first in firsts[1:])
    parsed = None
    if same_features and None not in kinds.values() and set(context) <= set(kinds):
        try:
            parsed = tf.io.parse_example(
                [s for e in examples for s in e],
                {name: tf.io.RaggedFeature(_VALUE_LISTS[kind], row_splits_dtype=tf.int64) for name, kind in kinds.items()})
        except tf.errors.InvalidArgumentError:
            pass
    columns = None if parsed is None else _request_columns(parsed, counts, context)
    if columns is None:
        return [request_record(key, e, context) for key, e in zip(keys, examples)]
    records = []
    for r in range(len(keys)):
        record = example_pb2.Example()
        for name, (values, start, end) in columns.items():
            getattr(record.features.feature[name], kinds[name]).value.extend(values[start[r]:end[r]])
        records.append(record)
    return records


def _request_columns(parsed: dict, counts: np.ndarray, context: tuple[str, ...]) -> dict | None:
    """{feature: (flat values, each request's start and end in them)}: the first sample's values
    of a context feature, all samples' of a candidate feature; None when a candidate feature's
    number of values, or a context feature's values, differ within a request."""
    starts = np.cumsum(counts) - counts
    first_of_sample = np.repeat(starts, counts)
    out = {}
    for name, ragged in parsed.items():
        values, splits = ragged.values.numpy(), ragged.row_splits.numpy()
        lengths = np.diff(splits)
        if (lengths != lengths[first_of_sample]).any():
            return None
        if name in context:
            sample = np.repeat(np.arange(len(lengths)), lengths)
            same_place = splits[first_of_sample[sample]] + np.arange(len(values)) - splits[sample]
            if (values != values[same_place]).any():
                return None
            out[name] = (values.tolist(), splits[starts].tolist(), splits[starts + 1].tolist())
        else:
            out[name] = (values.tolist(), splits[starts].tolist(), splits[starts + counts].tolist())
    return out


def _shape(feature: feature_pb2.Feature) -> tuple[str | None, int]:
    """(which value list, how many values) of a Feature."""
    kind = feature.WhichOneof("kind")
    return kind, len(getattr(feature, kind).value) if kind else 0


def group_counts(record: example_pb2.Example) -> dict[str, int]:
    """Samples of each sample group in a request record."""
    counts = dict.fromkeys(c.SAMPLE_GROUPS, 0)
    for group in record.features.feature[transformed.SAMPLE_GROUP].int64_list.value:
        counts[c.SAMPLE_GROUPS[group]] += 1
    return counts


# The resolution of a holdout share (split_holdout).
HOLDOUT_BUCKETS = 10_000


@dataclasses.dataclass(frozen=True)
class RequestRecords:
    """A split of request records: its files, its size, and how to parse it.

    `requests` bounds what a pass reads (the split's count by default; fewer for a quick run).
    `groups`: the sample groups a batch keeps (a model trains on its `SampleRouting.trains_on`);
    the others are dropped in the graph, and batch sizes count only the kept samples.
    `holdout_share`, `holdout`: one side of `split_holdout` (a share of 0: every record)."""

    files: tuple[str, ...]
    requests: int
    samples_by_group: dict
    feature_spec: dict
    context: tuple[str, ...]
    groups: tuple[str, ...] = c.SAMPLE_GROUPS
    holdout_share: float = 0.0
    holdout: bool = False

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
            if stats.get(FORMAT) != RECORD_FORMAT:
                raise ValueError(f"{stats_path}: the records are of format {stats.get(FORMAT, 'ExampleListWithContext')!r}; "
                                 f"this version reads {RECORD_FORMAT!r}: group the examples again with its RequestGrouper")
            if split not in stats:
                raise ValueError(f"{stats_path} has no statistics for split {split!r}")
            requests += stats[split][REQUESTS]
            for group, count in stats[split][SAMPLES].items():
                samples[group] += count
        spec = {k: v for k, v in feature_spec.items() if isinstance(v, tf.io.FixedLenFeature)}
        return cls(files, requests, samples, spec, context_names(features))

    def split_holdout(self, share: float) -> tuple["RequestRecords", "RequestRecords"]:
        """(the rest, the holdout): about `share` of the requests, chosen by a hash of each
        request's record, so the two sides never share a request and every pass reads the same
        ones whatever the files' order. Their requests are counted (one pass over the records);
        their samples per group are the split's in proportion."""
        if not 0.0 < share < 1.0 or self.holdout_share:
            raise ValueError(f"a holdout share must be in (0, 1) of records not split already, got {share}")
        holdout = dataclasses.replace(self, holdout_share=share, holdout=True)
        records = tf.data.TFRecordDataset(list(self.files), compression_type="GZIP").take(self.requests)
        held_out = int(records.filter(holdout._in_side).reduce(0, lambda n, _: n + 1))

        def side(records: "RequestRecords", requests: int) -> "RequestRecords":
            part = requests / max(self.requests, 1)
            return dataclasses.replace(records, requests=requests,
                                       samples_by_group={g: round(n * part) for g, n in self.samples_by_group.items()})

        return (side(dataclasses.replace(holdout, holdout=False), self.requests - held_out),
                side(holdout, held_out))

    def _in_side(self, record: tf.Tensor) -> tf.Tensor:
        in_holdout = tf.strings.to_hash_bucket_fast(record, HOLDOUT_BUCKETS) < round(self.holdout_share * HOLDOUT_BUCKETS)
        return tf.equal(in_holdout, self.holdout)

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

    @functools.cached_property
    def parse(self):
        """A batch of serialized records [k] -> the features of all their candidates, [n, ...],
        each request's candidates contiguous. Traced once per records object: a Trainer maps it
        in several passes (each epoch's validation, the probe, the router), and would otherwise
        trace it again for each."""
        return tf.function(self._parse, input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)

    def _parse(self, serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        spec = {name: feature if name in self.context else tf.io.RaggedFeature(feature.dtype)
                for name, feature in self.feature_spec.items()}
        parsed = tf.io.parse_example(serialized, spec)
        counts = parsed[transformed.SAMPLE_GROUP].row_lengths()
        out = {name: tf.repeat(value, counts, axis=0) if name in self.context
               else tf.reshape(value.flat_values, [-1, *self.feature_spec[name].shape])
               for name, value in parsed.items()}
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
        if self.holdout_share:
            ds = ds.filter(self._in_side)
        ds = ds.take(self.requests)
        if shuffle_requests:
            ds = ds.shuffle(shuffle_requests, seed=seed, reshuffle_each_iteration=True)
        # Batched before repeating: a batch never spans two passes, so it never holds a request twice.
        ds = ds.batch(requests_per_batch)
        if repeat:
            ds = ds.repeat()
        return ds.map(self.parse, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
