"""Strategy selection, and training with 2 replicas against 1 (models/distribute.py,
training.RoutedTrainer). The replicas run in subprocesses (tests/replica_checks.py): logical
devices and multi-worker collectives must be set up before TensorFlow initialises, which this
process has already done."""
import json
import os
import subprocess
import sys

import numpy as np
import portpicker
import pytest
import tensorflow as tf

import replica_checks
from hap.models import distribute, transformed

# Seconds each: servers in subprocesses, subprocess training, or TensorFlow Transform runs.
pytestmark = pytest.mark.slow

CHECKS = os.path.join(os.path.dirname(__file__), "replica_checks.py")


def _tf_config(workers, index, chief=False):
    cluster = {"worker": workers} if not chief else {"chief": workers[:1], "worker": workers[1:]}
    task = {"type": "worker", "index": index}
    if chief:
        task = {"type": "chief", "index": 0} if index == 0 else {"type": "worker", "index": index - 1}
    return {"cluster": cluster, "task": task}


def test_strategy_kind_follows_the_environment():
    two = ["localhost:1", "localhost:2"]
    assert distribute.strategy_kind(_tf_config(two, 0), num_gpus=0) == distribute.MULTI_WORKER
    assert distribute.strategy_kind(_tf_config(two, 1, chief=True), num_gpus=4) == distribute.MULTI_WORKER
    # A one-task cluster is a single machine: its GPUs decide.
    assert distribute.strategy_kind(_tf_config(two[:1], 0), num_gpus=2) == distribute.MIRRORED
    assert distribute.strategy_kind({}, num_gpus=2) == distribute.MIRRORED
    assert distribute.strategy_kind({}, num_gpus=1) == distribute.DEFAULT
    assert distribute.strategy_kind({}, num_gpus=0) == distribute.DEFAULT


def test_without_gpus_or_tf_config_the_default_strategy_is_used():
    assert not tf.config.list_physical_devices("GPU")
    assert distribute.strategy_for({}) is tf.distribute.get_strategy()


def test_the_chief_writes_and_the_other_workers_get_scratch_directories(tmp_path):
    two = ["localhost:1", "localhost:2"]
    assert distribute.is_chief({})
    assert distribute.is_chief(_tf_config(two, 0)) and not distribute.is_chief(_tf_config(two, 1))
    assert distribute.is_chief(_tf_config(two, 0, chief=True))
    assert not distribute.is_chief(_tf_config(two, 1, chief=True)), "worker 0 is not the chief when a chief exists"
    with distribute.output_dir(str(tmp_path), {}) as chief_dir:
        assert chief_dir == str(tmp_path)
    assert os.path.isdir(tmp_path)
    with distribute.output_dir(str(tmp_path), _tf_config(two, 1)) as scratch:
        assert os.path.isdir(scratch) and not scratch.startswith(str(tmp_path))
        open(os.path.join(scratch, "summary"), "w").close()
    assert not os.path.exists(scratch), "a worker's scratch directory outlives its Trainer"


@pytest.mark.parametrize("raw", ["{not json", "[1, 2]", '{"cluster": ["a"]}'])
def test_a_malformed_tf_config_is_a_clear_error(raw):
    with pytest.raises(ValueError, match="TF_CONFIG"):
        distribute.parse_tf_config(raw)


def test_the_global_batch_is_shared_by_the_replicas():
    assert distribute.per_replica_batch_size(1024, 1) == 1024
    assert distribute.per_replica_batch_size(1024, 2) == 512
    assert distribute.per_replica_batch_size(1025, 2) == 513
    assert distribute.per_replica_batch_size(1, 2) == 1


def _run(mode, out, env=None):
    return subprocess.Popen([sys.executable, CHECKS, mode, out], env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process, timeout=540):
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]


def _load(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def one_replica():
    """The reference: the same steps on one replica, in this process."""
    return replica_checks.run_steps(tf.distribute.get_strategy(), replica_checks.step_batches())


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("mirrored") / "result.npz")
    _finish(_run("mirrored", out))
    return _load(out)


def _assert_same_training(result, reference):
    np.testing.assert_allclose(result["losses"], reference["losses"], rtol=1e-5)
    weights = [k for k in reference if k.startswith("w")]
    assert weights
    for k in weights:
        np.testing.assert_allclose(result[k], reference[k], rtol=1e-4, atol=1e-6, err_msg=k)


def _assert_whole_requests(batches, arrays, num_replicas):
    sizes = dict(zip(*np.unique([k.decode() for k in arrays[transformed.REQUEST_KEY]], return_counts=True)))
    seen = set()
    for keys in batches:
        found, counts = np.unique(keys, return_counts=True) if keys else ([], [])
        for key, count in zip(found, counts):
            assert count == sizes[key], f"request {key} split: {count} of {sizes[key]} samples in one batch"
        seen.update(found)
    assert seen == set(sizes), "an epoch's steps reach every request"
    assert len(batches) % num_replicas == 0, "every replica runs every step"


def test_the_steps_really_differ_between_replicas():
    for step in replica_checks.step_batches():
        sizes = [len(part[transformed.LABEL]) for part in step]
        assert sizes[0] != sizes[1] and min(sizes) > 0, sizes


def test_two_mirrored_replicas_train_exactly_like_one(mirrored, one_replica):
    assert mirrored["default_replicas"] == 1 and mirrored["replicas"] == 2
    _assert_same_training(mirrored, one_replica)


def test_each_mirrored_replica_gets_whole_requests_of_its_own(mirrored):
    batches = json.loads(str(mirrored["batches"]))
    _assert_whole_requests(batches, replica_checks.synthetic_arrays(30, seed=2), num_replicas=2)


def test_the_trainer_runs_under_two_replicas(mirrored):
    history = json.loads(str(mirrored["history"]))
    (aucs,) = history["per_source_auc"]
    assert all(np.isfinite(v) for v in aucs.values()), aucs
    assert history["gradient_conflict"] and all(np.isfinite(v) for v in history["gradient_conflict"][0].values())


def test_two_workers_train_exactly_like_one_replica(tmp_path, one_replica):
    ports = [portpicker.pick_unused_port() for _ in range(2)]
    workers = [f"localhost:{p}" for p in ports]
    outs = [str(tmp_path / f"worker{i}.npz") for i in range(2)]
    processes = [_run("multi_worker", out, {"TF_CONFIG": json.dumps(_tf_config(workers, i))})
                 for i, out in enumerate(outs)]
    for process in processes:
        _finish(process)
    results = [_load(out) for out in outs]
    assert [bool(r["multi_worker"]) for r in results] == [True, True]
    assert [bool(r["chief"]) for r in results] == [True, False]
    for result in results:
        _assert_same_training(result, one_replica)
    # Each worker feeds its own replica; together they see every request once per epoch.
    per_worker = [json.loads(str(r["batches"])) for r in results]
    assert len(per_worker[0]) == len(per_worker[1]), "both workers run the same number of steps"
    interleaved = [batch for step in zip(*per_worker) for batch in step]
    _assert_whole_requests(interleaved, replica_checks.synthetic_arrays(30, seed=2), num_replicas=2)
