"""Training batches that keep requests whole.

The contrastive losses compare each exposed positive with the negatives of its own request, so a
batch must hold every sample of each request it touches. TFX's ExampleGen shuffles records, so
the grouping happens here: a split of transformed examples is read into memory once, its rows
are grouped by `request_key`, and each epoch packs whole requests, in a fresh random order,
into batches of about `batch_size` samples (a request larger than that gets a batch of its own;
none is ever split). At the default data size a split is a few tens of MB.

With several replicas (models/distribute.py) the same packing is cut into steps of one batch per
replica, so each replica holds whole requests of its own; every worker holds the whole split and
packs it the same way, which bounds a split by one worker's memory (see docs/deploying.md).
"""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import tensorflow as tf

from hap.models import transformed


def load_split(file_patterns: str | list[str], feature_spec: dict, read_batch: int = 8192) -> dict[str, np.ndarray]:
    """All transformed examples of a split as numpy arrays, one per fixed-length feature (the
    variable-length evaluation-only `contrast` is left out)."""
    patterns = [file_patterns] if isinstance(file_patterns, str) else file_patterns
    files = sorted(f for p in patterns for f in tf.io.gfile.glob(p))
    if not files:
        raise FileNotFoundError(f"no transformed examples match {patterns}")
    feature_spec = {k: v for k, v in feature_spec.items() if isinstance(v, tf.io.FixedLenFeature)}
    dataset = (tf.data.TFRecordDataset(files, compression_type="GZIP")
               .batch(read_batch)
               .map(lambda x: tf.io.parse_example(x, feature_spec), num_parallel_calls=tf.data.AUTOTUNE))
    parts: dict[str, list[np.ndarray]] = {name: [] for name in feature_spec}
    for batch in dataset.as_numpy_iterator():
        for name, value in batch.items():
            parts[name].append(value)
    return {name: np.concatenate(values) for name, values in parts.items()}


class RequestBatcher:
    """Packs whole requests of in-memory arrays into batches."""

    def __init__(self, arrays: dict[str, np.ndarray], batch_size: int, seed: int = 0):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.arrays = arrays
        self.batch_size = batch_size
        self.seed = seed
        keys = arrays[transformed.REQUEST_KEY]
        order = np.argsort(keys, kind="stable")
        starts = np.flatnonzero(np.r_[True, keys[order][1:] != keys[order][:-1]])
        self.requests = np.split(order, starts[1:])

    @property
    def num_requests(self) -> int:
        return len(self.requests)

    def batch_indices(self, epoch: int) -> Iterator[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        batch: list[np.ndarray] = []
        size = 0
        for r in rng.permutation(self.num_requests):
            request = self.requests[r]
            if batch and size + len(request) > self.batch_size:
                yield np.concatenate(batch)
                batch, size = [], 0
            batch.append(request)
            size += len(request)
        if batch:
            yield np.concatenate(batch)

    def steps_per_epoch(self, num_replicas: int = 1) -> int:
        return sum(1 for _ in self.step_batches(0, num_replicas))

    def step_batches(self, epoch: int, num_replicas: int = 1) -> Iterator[list[np.ndarray]]:
        """The epoch's batches, `num_replicas` per step (replica k takes the k-th); the last
        step is padded with empty batches, since every replica must run every step."""
        batches = list(self.batch_indices(epoch))
        batches += [np.zeros(0, np.int64)] * (-len(batches) % num_replicas)
        for start in range(0, len(batches), num_replicas):
            yield batches[start:start + num_replicas]

    def dataset(self, epochs: int, num_replicas: int = 1, replicas: Iterable[int] = (0,)) -> tf.data.Dataset:
        """`epochs` passes over the data, requests reshuffled every pass, as dicts of tensors:
        per step, the batches of `replicas` (of `num_replicas`), in that order."""
        replicas = list(replicas)
        if not replicas or min(replicas) < 0 or max(replicas) >= num_replicas:
            raise ValueError(f"replicas must be in [0, {num_replicas}), got {replicas}")
        signature = {name: tf.TensorSpec((None,) + value.shape[1:], tf.as_dtype(value.dtype)
                                         if value.dtype.kind != "O" else tf.string)
                     for name, value in self.arrays.items()}

        def generate():
            for epoch in range(epochs):
                for step in self.step_batches(epoch, num_replicas):
                    for replica in replicas:
                        yield {name: value[step[replica]] for name, value in self.arrays.items()}

        return tf.data.Dataset.from_generator(generate, output_signature=signature).prefetch(2)
