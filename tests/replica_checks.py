"""Training with several replicas, run in subprocesses of tests/test_distribute.py.

Replicas need their devices configured before TensorFlow initialises them, which the pytest
process has long done, so each check runs in a fresh interpreter:

    python tests/replica_checks.py mirrored OUT.npz       # MirroredStrategy on 2 logical CPUs
    python tests/replica_checks.py multi_worker OUT.npz   # one of 2 workers, under TF_CONFIG

Each writes what it observed to OUT.npz; the test compares it with one replica in its own process.
The helpers here build the identical model, data and steps on both sides.
"""
from __future__ import annotations

import json
import sys

import hap  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf

from hap.data.sample_routing import routing_of
from hap.models import distribute, losses, trainer_module, training, transformed
from synthetic_requests import model_inputs, synthetic_arrays, write_records

# The (model, loss) stepped on both sides: GHCL carries harmoniser state from step to step. The
# gathering is the same for every model and loss, and each case costs half a minute of tracing.
MODEL, LOSS = "light", "ghcl"


def step_batches(num_replicas: int = 2) -> list[list[dict[str, np.ndarray]]]:
    """Two steps of one whole-request batch per replica, of unequal sizes: the replicas' mean
    losses then differ from the step's mean loss, which the gathered loss must not."""
    arrays = synthetic_arrays(40, seed=1)
    keys = list(dict.fromkeys(arrays[transformed.REQUEST_KEY].tolist()))
    # Per step, replica 0 takes 3 requests and replica 1 the next 5.
    cuts = [(0, 3), (3, 8), (8, 11), (11, 16)]
    parts = []
    for start, end in cuts:
        rows = np.isin(arrays[transformed.REQUEST_KEY], keys[start:end])
        parts.append({k: v[rows] for k, v in arrays.items()})
    return [parts[i:i + num_replicas] for i in range(0, len(parts), num_replicas)]


def _initial_value(i: int, shape) -> np.ndarray:
    return np.random.default_rng(i).normal(scale=0.05, size=shape).astype(np.float32)


def run_steps(strategy: tf.distribute.Strategy, steps, model: str = MODEL, loss: str = LOSS) -> dict[str, np.ndarray]:
    """Trains from fixed weights with plain SGD (its update is the gradient itself, unlike Adam's
    first step) on `steps`, each a list of per-replica batches; returns the reported losses and
    the final weights. One replica gets each step's batches concatenated."""
    one = strategy.num_replicas_in_sync == 1
    with strategy.scope():
        scorer = trainer_module.build_scorer(model, model_inputs())
        trainer = training.RoutedTrainer(scorer, losses.make_loss(loss, routing_of(model)))
        trainer.compile(optimizer=tf.keras.optimizers.SGD(0.5))
        scorer({k: tf.constant(v) for k, v in steps[0][0].items()})  # builds the weights
        for i, variable in enumerate(scorer.trainable_variables):
            variable.assign(_initial_value(i, variable.shape))

    @tf.function
    def train_step(batch):
        return strategy.run(trainer.train_step, args=(batch,))

    reported = []
    for step in steps:
        parts = [{k: np.concatenate([p[k] for p in step]) for k in step[0]}] if one else step
        batch = strategy.experimental_distribute_values_from_function(
            lambda context, parts=parts: {k: tf.constant(v) for k, v in parts[context.replica_id_in_sync_group].items()})
        out = train_step(batch)
        reported.append(float(strategy.experimental_local_results(out)[0]["loss"]))
    return {"losses": np.array(reported),
            **{f"w{i}": v.numpy() for i, v in enumerate(scorer.trainable_variables)}}


def local_request_batches(strategy, records, requests_per_batch: int) -> list[list[bytes]]:
    """The request keys of each batch this process's replicas get from `request_dataset`, step by
    step (one list per local replica per step), for one epoch's steps."""
    steps = records.steps(requests_per_batch, strategy.num_replicas_in_sync)
    dataset = distribute.request_dataset(strategy, records, requests_per_batch, shuffle_requests=16, seed=0)
    seen = []
    for step, _ in zip(dataset, range(steps)):
        for local in strategy.experimental_local_results(step):
            seen.append(local[transformed.REQUEST_KEY].numpy().tolist())
    return seen


def _mirrored(out: str) -> None:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    default = distribute.strategy_for({})
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    result = {"default_replicas": default.num_replicas_in_sync, "replicas": strategy.num_replicas_in_sync,
              **run_steps(strategy, step_batches())}
    records = write_records(out + ".records", synthetic_arrays(30, seed=2))
    result["batches"] = json.dumps([[k.decode() for k in keys] for keys in local_request_batches(strategy, records, 4)])
    settings = trainer_module.TrainerSettings(model="light", batch_size=80, max_epochs=1, conflict_budget=1.0)
    _, history = trainer_module.train(settings, model_inputs(), records,
                                      write_records(out + ".records", synthetic_arrays(10, seed=3), split="eval"),
                                      out + ".logs", strategy)
    result["history"] = json.dumps(history)
    np.savez(out, **result)


def _multi_worker(out: str) -> None:
    tf_config = distribute.tf_config_from_environment()
    strategy = distribute.strategy_for(tf_config)
    result = {"multi_worker": isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy),
              "chief": distribute.is_chief(tf_config), **run_steps(strategy, step_batches())}
    records = write_records(out + ".records", synthetic_arrays(30, seed=2))
    keys = local_request_batches(strategy, records, 4)
    result["batches"] = json.dumps([[k.decode() for k in batch] for batch in keys])
    np.savez(out, **result)


if __name__ == "__main__":
    {"mirrored": _mirrored, "multi_worker": _multi_worker}[sys.argv[1]](sys.argv[2])
