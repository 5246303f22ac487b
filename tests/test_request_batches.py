import numpy as np
import pytest

from hap.models import request_batches, transformed


def _arrays(sizes, seed=0):
    rng = np.random.default_rng(seed)
    keys = np.concatenate([[f"r{i}".encode()] * n for i, n in enumerate(sizes)])
    order = rng.permutation(len(keys))  # ExampleGen shuffles records
    return {transformed.REQUEST_KEY: keys[order], "x": np.arange(len(keys), dtype=np.float32)[order]}


@pytest.mark.parametrize("batch_size", [1, 7, 30, 1000])
def test_a_batch_never_splits_a_request(batch_size):
    sizes = [3, 12, 1, 40, 8, 8, 25, 2]
    arrays = _arrays(sizes)
    batcher = request_batches.RequestBatcher(arrays, batch_size=batch_size, seed=1)
    seen = []
    for idx in batcher.batch_indices(epoch=0):
        keys, counts = np.unique(arrays[transformed.REQUEST_KEY][idx], return_counts=True)
        for k, n in zip(keys, counts):
            assert n == sizes[int(k.decode()[1:])], "request split across batches"
        assert len(idx) <= batch_size or len(keys) == 1, "a batch overflows only for a single large request"
        seen.extend(idx)
    assert sorted(seen) == list(range(sum(sizes)))


def test_epochs_reshuffle_requests_deterministically():
    arrays = _arrays([5] * 40)
    batcher = request_batches.RequestBatcher(arrays, batch_size=20, seed=3)
    first = [b.tolist() for b in batcher.batch_indices(0)]
    assert first == [b.tolist() for b in batcher.batch_indices(0)]
    assert first != [b.tolist() for b in batcher.batch_indices(1)]
    assert batcher.steps_per_epoch() == 10 and batcher.num_requests == 40


def test_dataset_yields_whole_requests_as_tensors():
    arrays = _arrays([4, 6, 5])
    batcher = request_batches.RequestBatcher(arrays, batch_size=10, seed=0)
    batches = list(batcher.dataset(epochs=2).as_numpy_iterator())
    assert sum(len(b["x"]) for b in batches) == 2 * 15
    assert all(b[transformed.REQUEST_KEY].dtype == object for b in batches)


def test_each_replica_takes_its_own_batch_of_a_step_and_the_last_step_is_padded():
    arrays = _arrays([5] * 9)
    batcher = request_batches.RequestBatcher(arrays, batch_size=10, seed=0)
    steps = list(batcher.step_batches(epoch=0, num_replicas=2))
    assert [len(step) for step in steps] == [2, 2, 2] and batcher.steps_per_epoch(num_replicas=2) == 3
    assert len(steps[-1][1]) == 0, "the fifth batch's step is padded with an empty one"
    assert [b.tolist() for step in steps for b in step if len(b)] == [b.tolist() for b in batcher.batch_indices(0)]
    second = list(batcher.dataset(epochs=1, num_replicas=2, replicas=[1]).as_numpy_iterator())
    assert [sorted(b["x"].tolist()) for b in second] == [sorted(arrays["x"][s[1]].tolist()) for s in steps]


@pytest.mark.parametrize("replicas", [[], [2], [-1]])
def test_replicas_outside_the_step_are_an_error(replicas):
    batcher = request_batches.RequestBatcher(_arrays([5] * 4), batch_size=10, seed=0)
    with pytest.raises(ValueError, match="replicas"):
        batcher.dataset(epochs=1, num_replicas=2, replicas=replicas)
