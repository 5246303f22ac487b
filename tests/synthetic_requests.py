"""Transformed-looking requests for tests that train without a pipeline run, and their request
records, written with the functions the RequestGrouper uses."""
from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf

from hap.data import contract, simulator
from hap.models import request_records, transformed

VOCAB = 50
FEATURES = simulator.FEATURE_SET


def model_inputs() -> transformed.ModelInputs:
    names = {transformed.vocabulary_name(f) for f in FEATURES.features if f.kind != contract.NUMERIC}
    return transformed.ModelInputs(FEATURES, {n: VOCAB for n in names})


def feature_spec() -> dict:
    spec = {transformed.LABEL: tf.io.FixedLenFeature([], tf.float32),
            transformed.SAMPLE_GROUP: tf.io.FixedLenFeature([], tf.int64),
            transformed.DIFFICULTY: tf.io.FixedLenFeature([], tf.float32),
            transformed.REQUEST_KEY: tf.io.FixedLenFeature([], tf.string)}
    for name, s in transformed.tensor_specs(FEATURES.features).items():
        spec[name] = tf.io.FixedLenFeature(s.shape[1:], s.dtype)
    return spec


def synthetic_arrays(num_requests: int, seed: int) -> dict[str, np.ndarray]:
    """Rows of whole requests (3 to 11 samples, the first one a click; user and context features
    shared by a request's samples), shuffled as Transform leaves them."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(3, 12, num_requests)
    n = int(sizes.sum())
    request_of_row = np.repeat(np.arange(num_requests), sizes)
    once_per_request = {f.name for f in FEATURES.features if f.role in (contract.USER, contract.CONTEXT)}
    arrays = {}
    for f in FEATURES.features:
        rows = num_requests if f.name in once_per_request else n
        if f.kind == contract.CATEGORICAL:
            value = rng.integers(0, VOCAB, rows)
        elif f.kind == contract.NUMERIC:
            value = rng.normal(size=rows).astype(np.float32)
        else:
            value = rng.integers(0, VOCAB, (rows, f.max_len))
        arrays[f.name] = value[request_of_row] if f.name in once_per_request else value
    groups = np.concatenate([np.r_[0, rng.integers(0, 5, s - 1)] for s in sizes]).astype(np.int64)
    arrays[transformed.SAMPLE_GROUP] = groups
    arrays[transformed.LABEL] = (groups == 0).astype(np.float32)
    # Within each group's range of preprocessing.difficulty (EP, EN, RN, PRN, GN).
    arrays[transformed.DIFFICULTY] = np.array([1.0, 1.0, 0.75, 0.375, 0.0], np.float32)[groups]
    arrays[transformed.REQUEST_KEY] = np.array([f"r{i}".encode() for i in request_of_row], dtype=object)
    order = rng.permutation(n)
    return {k: v[order] for k, v in arrays.items()}


def example(arrays: dict[str, np.ndarray], row: int) -> bytes:
    """Row `row` of `arrays` as a serialized tf.Example, as Transform writes it."""
    feature = {}
    for name, values in arrays.items():
        value = np.atleast_1d(values[row])
        if value.dtype.kind in "OSU":
            feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=list(value)))
        elif value.dtype.kind == "f":
            feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=value))
        else:
            feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=value))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_records(directory: str, arrays: dict[str, np.ndarray], num_files: int = 3,
                  split: str = "train") -> request_records.RequestRecords:
    """`arrays` as a split of request records under `directory` (requests dealt round-robin to
    `num_files` files, in order of first appearance)."""
    split_dir = os.path.join(directory, f"Split-{split}")
    os.makedirs(split_dir, exist_ok=True)
    keys = arrays[transformed.REQUEST_KEY]
    order = list(dict.fromkeys(keys.tolist()))
    writers = [tf.io.TFRecordWriter(os.path.join(split_dir, f"requests-{i}.gz"), "GZIP") for i in range(num_files)]
    totals = dict.fromkeys(contract.SAMPLE_GROUPS, 0)
    context = request_records.context_names(FEATURES)
    for i, key in enumerate(order):
        rows = np.flatnonzero(keys == key)
        record = request_records.request_record(key, (example(arrays, r) for r in rows), context)
        for group, count in request_records.group_counts(record).items():
            totals[group] += count
        writers[i % num_files].write(record.SerializeToString())
    for writer in writers:
        writer.close()
    stats_path = os.path.join(directory, request_records.STATS_FILE)
    stats = json.load(open(stats_path)) if os.path.exists(stats_path) else {}
    stats[split] = {request_records.REQUESTS: len(order), request_records.SAMPLES: totals}
    stats[request_records.FORMAT] = request_records.RECORD_FORMAT
    with open(stats_path, "w") as f:
        json.dump(stats, f)
    return request_records.RequestRecords.from_split(os.path.join(split_dir, "*"), feature_spec(), FEATURES)
