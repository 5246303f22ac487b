"""Which tf.distribute strategy a Trainer uses, and how whole-request batches reach its replicas.

The choice follows the machine the Trainer lands on, so one `run_fn` serves a laptop, a GPU box
and a multi-worker job alike:

- `TF_CONFIG` naming more than one worker (chief included): MultiWorkerMirroredStrategy, the
  environment Vertex AI and the Kubernetes TF operators set up for multi-worker training;
- otherwise more than one GPU: MirroredStrategy over them;
- otherwise the default strategy (one CPU or one GPU: there is nothing to all-reduce).

Batches must hold whole requests (the contrastive losses compare each positive with its own
request's negatives), so the input is not split by tf.distribute's automatic batch splitting:
each worker's input pipeline reads its own share of the request records (by files, or by
records when the files do not divide evenly; models/request_records.py) and hands whole-request
batches to its replicas in turn. The input repeats and every epoch has the same number of
steps on every worker, as collective ops require.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile

import tensorflow as tf

from hap.models import request_records

MULTI_WORKER, MIRRORED, DEFAULT = "multi_worker_mirrored", "mirrored", "default"
_WORKER_TASKS = ("chief", "worker")


def parse_tf_config(raw: str | None) -> dict:
    """TF_CONFIG as a dict ({} when unset); a malformed one fails here rather than in TF."""
    if not raw:
        return {}
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON ({e}): {raw!r}") from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster", {}), dict):
        raise ValueError(f"TF_CONFIG must be an object with a 'cluster' object, got {raw!r}")
    return config


def num_workers(tf_config: dict) -> int:
    cluster = tf_config.get("cluster", {})
    return sum(len(cluster.get(task, [])) for task in _WORKER_TASKS)


def strategy_kind(tf_config: dict, num_gpus: int) -> str:
    if num_workers(tf_config) > 1:
        return MULTI_WORKER
    if num_gpus > 1:
        return MIRRORED
    return DEFAULT


def is_chief(tf_config: dict) -> bool:
    """The chief writes the model and the logs; without a chief task, worker 0 is the chief."""
    task = tf_config.get("task", {})
    if not task:
        return True
    has_chief = bool(tf_config.get("cluster", {}).get("chief"))
    return task.get("type") == "chief" or (not has_chief and task.get("type") == "worker"
                                            and int(task.get("index", 0)) == 0)


def tf_config_from_environment() -> dict:
    return parse_tf_config(os.environ.get("TF_CONFIG"))


def strategy_for(tf_config: dict) -> tf.distribute.Strategy:
    """The strategy for this process. Call it before any TensorFlow op runs:
    MultiWorkerMirroredStrategy can only set up collectives at program start."""
    kind = strategy_kind(tf_config, len(tf.config.list_physical_devices("GPU")))
    if kind == MULTI_WORKER:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == MIRRORED:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


@contextlib.contextmanager
def output_dir(path: str, tf_config: dict):
    """`path` for the chief; for the other workers, which must still write (saving and summaries
    are collective) but must not overwrite the chief's files, a scratch directory removed on exit."""
    if is_chief(tf_config):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="hap_worker_") as scratch:
        yield scratch


def per_replica_batch_size(batch_size: int, num_replicas: int) -> int:
    """`batch_size` counts samples per step over all replicas, so a run trains the same way
    whatever hardware it lands on; each replica packs its share of whole requests."""
    return max(1, -(-batch_size // num_replicas))


def request_dataset(strategy: tf.distribute.Strategy, records: request_records.RequestRecords, requests_per_batch: int,
                    shuffle_requests: int, seed: int):
    """Endless shuffled whole-request batches, each replica getting batches of its own."""

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        return records.dataset(requests_per_batch, shuffle_requests=shuffle_requests, seed=seed, repeat=True,
                               num_shards=context.num_input_pipelines, shard=context.input_pipeline_id)

    return strategy.distribute_datasets_from_function(dataset_fn)
