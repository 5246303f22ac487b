"""End to end: the whole pipeline with LocalDagRunner on tiny data."""
import csv
import os
import shutil

import pytest
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx.orchestration import metadata

from hap.data import simulator
from hap.pipeline import local_runner

TINY_RUN = simulator.SimulationConfig(requests=150, funnel_requests=0, seed=3)
QUICK = {"epochs": 1, "batch_size": 512}
EVERY_COMPONENT = {"ContractExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator", "AnomalyGate",
                   "Transform", "Trainer_light", "Trainer_heavy", "Evaluator_light", "Evaluator_heavy",
                   "Pusher_light", "Pusher_heavy"}


def _executions(out_dir):
    store = metadata_store.MetadataStore(metadata.sqlite_metadata_connection_config(
        os.path.join(out_dir, "metadata.sqlite")))
    result = {}
    for execution in sorted(store.get_executions(), key=lambda e: e.id):
        node = execution.custom_properties["__tfx_node_id__"].string_value if \
            "__tfx_node_id__" in execution.custom_properties else None
        node = node or execution.properties.get("component_id", metadata_store_pb2.Value()).string_value
        result.setdefault(node, []).append(execution.last_known_state)
    return result


def _run(data, out, floors=0.0):
    local_runner.run(data, out, light_trainer=QUICK, heavy_trainer=QUICK,
                     auc_floors={"light": dict.fromkeys(("EN", "RN", "PRN", "GN"), floors),
                                 "heavy": dict.fromkeys(("EN", "RN"), floors)})


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("e2e") / "data")
    simulator.simulate(out, TINY_RUN, progress=False)
    return out


def test_pipeline_runs_every_component_then_serves_a_rerun_from_cache(tiny_data, tmp_path):
    out = str(tmp_path / "run")
    _run(tiny_data, out)
    first = _executions(out)
    assert EVERY_COMPONENT <= set(first), set(first)
    assert all(states == [metadata_store_pb2.Execution.COMPLETE] for node, states in first.items()
               if node in EVERY_COMPONENT), first
    for role in ("light", "heavy"):
        pushed = os.path.join(out, "serving", role)
        assert os.listdir(pushed), f"blessed {role} model was not pushed"
        logs = local_runner.tensorboard_logdirs(out)[role]
        assert any("gradient_conflict" in d for d, _, _ in os.walk(logs))
        assert any("per_source_auc" in d for d, _, _ in os.walk(logs))

    _run(tiny_data, out)
    second = _executions(out)
    for node in EVERY_COMPONENT:
        assert second[node][-1] == metadata_store_pb2.Execution.CACHED, (node, second[node])


def test_anomalous_data_stops_the_run_before_training(tiny_data, tmp_path):
    bad = str(tmp_path / "bad")
    shutil.copytree(tiny_data, bad)
    path = os.path.join(bad, "samples", "day-0.csv")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    column = rows[0].index("content_type")
    for row in rows[1:40]:
        row[column] = "podcast"
    with open(path, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    out = str(tmp_path / "run")
    with pytest.raises(Exception, match=r"feature 'content_type'"):
        _run(bad, out)
    ran = _executions(out)
    assert "ExampleValidator" in ran
    assert not {"Transform", "Trainer_light", "Trainer_heavy"} & set(ran)
