import os

import hap  # noqa: F401  (Keras 2 for TensorFlow Recommenders, before anything imports TensorFlow)
import pytest

from hap.data import simulator

# Small enough for seconds, large enough that every sample group occurs many times.
TINY = simulator.SimulationConfig(requests=120, funnel_requests=3, seed=7)


@pytest.fixture(scope="session")
def tiny_csv(tmp_path_factory):
    out = os.path.join(tmp_path_factory.mktemp("data"), "tiny_csv")
    simulator.simulate(out, TINY, fmt="csv", progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_tfrecord(tmp_path_factory):
    out = os.path.join(tmp_path_factory.mktemp("data"), "tiny_tfrecord")
    simulator.simulate(out, TINY, fmt="tfrecord", progress=False)
    return out
