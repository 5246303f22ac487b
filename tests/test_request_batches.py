import numpy as np
import pytest

from hap.models import request_batches, spec


def _arrays(sizes, seed=0):
    rng = np.random.default_rng(seed)
    keys = np.concatenate([[f"r{i}".encode()] * n for i, n in enumerate(sizes)])
    order = rng.permutation(len(keys))  # ExampleGen shuffles records
    return {spec.REQUEST_KEY: keys[order], "x": np.arange(len(keys), dtype=np.float32)[order]}


@pytest.mark.parametrize("batch_size", [1, 7, 30, 1000])
def test_a_batch_never_splits_a_request(batch_size):
    sizes = [3, 12, 1, 40, 8, 8, 25, 2]
    arrays = _arrays(sizes)
    batcher = request_batches.RequestBatcher(arrays, batch_size=batch_size, seed=1)
    seen = []
    for idx in batcher.batch_indices(epoch=0):
        keys, counts = np.unique(arrays[spec.REQUEST_KEY][idx], return_counts=True)
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
    assert all(b[spec.REQUEST_KEY].dtype == object for b in batches)
