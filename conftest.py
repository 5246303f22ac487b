import dataclasses
import json
import os

import hap  # noqa: F401  (Keras 2 for TensorFlow Recommenders, before anything imports TensorFlow)
import pytest

from hap.data import simulator
from hap.data.sample_routing import SAMPLE_ROUTING

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


# The end-to-end pipeline data: a few more requests than TINY, so both Evaluators have every slice.
E2E = simulator.SimulationConfig(requests=150, funnel_requests=0, seed=3)
QUICK_TRAINER = {"max_epochs": 2, "patience": 1, "batch_size": 512}


def quick_settings(floor: float = 0.0, **more):
    """The default settings with QUICK_TRAINER for both models, every per-source AUC floor at
    `floor`, and `more` dotted keys (e.g. {"data.window_days": 2}) as the tests' pipelines run."""
    from hap import settings

    return settings.override(settings.defaults(), {**quick_keys(floor), **more})


def quick_keys(floor: float = 0.0) -> dict:
    """quick_settings' dotted keys, e.g. for --set options or HAP_SET."""
    keys = {f"{model}.trainer.{name}": value for model in SAMPLE_ROUTING for name, value in QUICK_TRAINER.items()}
    # Two epochs on a few dozen requests a day: whether a first cascade beats item popularity
    # is a coin's toss (tests that push need it not to be); the gate has tests of its own.
    keys["cascade.popularity_margin"] = -1.0
    # Tuning has its own tests (tests/test_tuning.py) and the session's `hap run` (TUNED_RUN).
    keys["tuning.trials"] = 0
    return {**keys, **{f"{model}.auc_floors": floors for model, floors in floors_at(floor).items()}}


def _run_pipeline(data: str, out: str, floor: float, **more) -> None:
    """Runs the whole pipeline with every per-source AUC floor at `floor`, and `more` dotted keys
    as quick_settings takes them."""
    from hap.pipeline import local_runner

    local_runner.run(data, out, quick_settings(floor, **more))


def floors_at(floor: float) -> dict:
    """Every model's per-contrast AUC floor at `floor`."""
    return {model: dict.fromkeys(routing.contrasts, floor) for model, routing in SAMPLE_ROUTING.items()}


@pytest.fixture(scope="session")
def run_pipeline():
    return _run_pipeline


@pytest.fixture(scope="session")
def e2e_data(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("e2e") / "data")
    simulator.simulate(out, E2E, progress=False)
    return out


@pytest.fixture(scope="session")
def e2e_funnel_data(e2e_data, tmp_path_factory):
    """`e2e_data` with a funnel/ of 3 requests: the simulator writes the same samples/ whatever
    the number of funnel requests, so `pipeline_run` and `cascade_model` fit it too."""
    out = str(tmp_path_factory.mktemp("e2e") / "data_with_funnel")
    simulator.simulate(out, dataclasses.replace(E2E, funnel_requests=3), progress=False)
    return out


# The session's `hap run` tunes both models: two trials of one epoch each, the heavy model also
# choosing between its settings' architecture and the full one.
TUNED_RUN = {"tuning.trials": 2, "tuning.max_epochs": 1, "tuning.space.heavy_model_configs": [{}]}


@pytest.fixture(scope="session")
def pipeline_run_console(e2e_data, tmp_path_factory):
    """One `hap run` on `e2e_data` as a user starts it, with quick_settings: (its output directory,
    its CompletedProcess). It blesses and pushes the cascade; tests/test_console.py reads what it
    printed, the others what it wrote (`pipeline_run`)."""
    import subprocess
    import sys

    out = str(tmp_path_factory.mktemp("e2e") / "run")
    sets = [arg for key, value in {**quick_keys(0.0), **TUNED_RUN}.items() for arg in ("--set", f"{key}={json.dumps(value)}")]
    hap_command = os.path.join(os.path.dirname(sys.executable), "hap")
    done = subprocess.run([hap_command, "run", "--data", e2e_data, "--out", out, *sets], capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stdout + done.stderr
    return out, done


@pytest.fixture(scope="session")
def pipeline_run(pipeline_run_console):
    """The output directory of `pipeline_run_console`. Tests may run the pipeline again into it;
    the first pushed version stays where it is."""
    return pipeline_run_console[0]


@pytest.fixture(scope="session")
def cascade_model(pipeline_run):
    """The directory of the first cascade SavedModel the pipeline pushed."""
    base = os.path.join(pipeline_run, "serving", "hap")
    return os.path.join(base, sorted(os.listdir(base))[0])


@pytest.fixture(scope="session")
def e2e_features(e2e_data):
    from hap.data import contract

    return contract.load_features(e2e_data)


@pytest.fixture(scope="session")
def e2e_requests(e2e_data, e2e_features):
    """The three largest requests of `e2e_data` as cascade request tensors (serving/request.py),
    largest first."""
    from hap.data import reader
    from hap.serving import request

    by_request = {}
    for row in reader.read_rows(e2e_data, features=e2e_features):
        by_request.setdefault(row["request_id"], []).append(row)
    largest = sorted(by_request.values(), key=len, reverse=True)[:3]
    return [request.RequestLayout(e2e_features).from_rows(rows) for rows in largest]


# Tests that read the session's pipeline run share one xdist worker, so that `make test`'s two
# workers run the pipeline once; the Airflow DAG tests share one for their DagBag loads, the
# cluster tests one for their database server and one for the object store's day-by-day run.
PIPELINE_FIXTURES = {"pipeline_run", "pipeline_run_console", "run_pipeline"}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's, which reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & PIPELINE_FIXTURES:
            item.add_marker(pytest.mark.e2e)
        if "pipeline_run_console" in fixtures:
            item.add_marker(pytest.mark.xdist_group("pipeline_run"))
        elif item.get_closest_marker("airflow"):
            item.add_marker(pytest.mark.xdist_group("airflow"))
        elif item.get_closest_marker("cluster"):
            # The database server's tests on one worker, the object store's alone on the other:
            # the two longest tests of the suite then run side by side.
            item.add_marker(pytest.mark.xdist_group("cluster-mariadb" if "mariadb" in fixtures else "cluster-s3"))


# The history channels HAP's resolvers read (pipeline/resolvers.py) with the default settings.
RESOLVED_ROLES = ("Trainer_light.model", "Trainer_heavy.model", "Evaluator_light.blessing", "Evaluator_heavy.blessing",
                  "CascadeAssembler.model", "CascadeAssembler.blessing")


def role_mismatches(out_dir: str, roles=RESOLVED_ROLES) -> dict:
    """For each role whose tagged artifacts (the custom property a Kubeflow query filters on) are
    not exactly those its component output under its key (what LocalDagRunner's and Airflow's
    channels select): {role: (tagged ids, output ids)}. Empty when both selections agree."""
    from ml_metadata.proto import metadata_store_pb2

    from hap.pipeline import resolvers, run_report

    store = run_report.open_store(out_dir)
    tagged = {}
    for artifact in store.get_artifacts():
        if resolvers.ROLE in artifact.custom_properties:
            tagged.setdefault(artifact.custom_properties[resolvers.ROLE].string_value, set()).add(artifact.id)
    # LocalDagRunner groups a component's executions in a `node` context, TFX's pre-IR launcher
    # (Airflow) in one `component_run` context per run with the component's id as a property.
    contexts = {}
    for context in store.get_contexts_by_type("node"):
        contexts.setdefault(context.name.split(".", 1)[-1], []).append(context.id)
    for context in store.get_contexts_by_type("component_run"):
        contexts.setdefault(context.properties["component_id"].string_value, []).append(context.id)
    out = {}
    for role in roles:
        node, key = role.split(".")
        executions = [e.id for context in contexts.get(node, []) for e in store.get_executions_by_context(context)]
        output = {e.artifact_id for e in store.get_events_by_execution_ids(executions)
                  if e.type == metadata_store_pb2.Event.OUTPUT and e.path.steps[0].key == key} if executions else set()
        if not output or tagged.get(role, set()) != output:
            out[role] = (tagged.get(role, set()), output)
    return out
