"""pipeline/airflow_dag.py under Airflow: it loads in Airflow's DagBag, as the scheduler loads it
(no import errors, one task per pipeline component, wired as the pipeline is, with the Beam
arguments given), and one settings file builds the same pipeline for every orchestrator. Two
daily DagRuns of it under the CeleryExecutor (a window of days, warm starts, the drift check, a
day appended before the second, a worker killed) are tests/test_cluster.py's.

Airflow 2's pins clash with the TFX set, so it lives in its own environment, .venv-airflow
(`make airflow-env`, constraints-airflow.txt); Airflow runs there, in subprocesses. CI builds that
environment (.ci/run); where it has not been built, these tests are skipped."""
import json
import os
import subprocess

import pytest
from google.protobuf import json_format, message

from hap import settings
from hap.pipeline import local_runner

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AIRFLOW_PYTHON = os.path.join(REPO, ".venv-airflow", "bin", "python")
DAG_FILE = os.path.join(REPO, "pipeline", "airflow_dag.py")
BEAM = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]

pytestmark = [pytest.mark.airflow, pytest.mark.skipif(
    not os.path.exists(AIRFLOW_PYTHON),
    reason="no .venv-airflow: Airflow 2 needs its own environment (`make airflow-env`), its pins clash with TFX's")]

# Airflow's import is most of a DagBag load's time, so one process loads the DAG file once per
# environment (argv[2], a JSON list of HAP_ settings): the DAG reads its settings when it is built.
LOAD_DAGBAGS = """
import json, os, sys
from airflow.models import DagBag
results = []
for settings in json.loads(sys.argv[2]):
    for key in [k for k in os.environ if k.startswith("HAP_")]:
        del os.environ[key]
    os.environ.update(settings)
    bag = DagBag(dag_folder=sys.argv[1], include_examples=False)
    results.append({
        "errors": {path: str(error) for path, error in bag.import_errors.items()},
        "dags": {dag_id: {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks} for dag_id, dag in bag.dags.items()},
        "beam_args": {dag_id: {t.task_id: t.python_callable.keywords["beam_pipeline_args"] for t in dag.tasks
                               if hasattr(t.python_callable, "keywords")}
                      for dag_id, dag in bag.dags.items()},
        "exec_properties": {dag_id: {t.task_id: {k: str(v) for k, v in
                                                 t.python_callable.keywords["component"].exec_properties.items()}
                                     for t in dag.tasks if hasattr(t.python_callable, "keywords")}
                            for dag_id, dag in bag.dags.items()},
    })
print(json.dumps(results))
"""


RUN_STATES = """
import json
from airflow.models import DagRun
print(json.dumps({run.run_id: {"state": run.state, "tasks": {ti.task_id: ti.state for ti in run.get_task_instances()}}
                  for run in DagRun.find(dag_id="hap")}))
"""


def _airflow_env(tmp_path, **hap_env):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HAP_", "AIRFLOW"))}
    env.update(AIRFLOW_HOME=str(tmp_path / "airflow_home"), AIRFLOW__CORE__LOAD_EXAMPLES="False", **hap_env)
    return env


def _python(env, code, *args, timeout=600):
    done = subprocess.run([AIRFLOW_PYTHON, "-c", code, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


BAD_SETTINGS = [
    ("HAP_SET", "light.auc_floors.XN=0.5", "'XN'"),
    ("HAP_SET", "light.trainer.max_epochs=0", "max_epochs must be an integer >= 1, got 0"),
    ("HAP_SET", "retention.keep_run=2", "unknown setting 'retention.keep_run'; did you mean retention.keep_runs"),
    ("HAP_CONFIG", "/no/such/settings.yaml", "settings file /no/such/settings.yaml: no such file"),
]
# One settings file for every orchestrator (test_one_settings_file_builds_the_same_pipeline...).
SETTINGS_FILE = {"beam": {"args": BEAM}, "retention": {"keep_runs": 2}, "data": {"window_days": 3},
                 "cascade": {"routing": {"fraction": 0.3}}, "light": {"trainer": {"loss": "mixed_bce"}},
                 "warm_start": True}


@pytest.fixture(scope="module")
def dagbags(tiny_csv, tmp_path_factory):
    """What Airflow's DagBag made of the DAG file in each environment: `every_component` (the
    settings of SETTINGS_FILE through HAP_CONFIG), `missing` (none) and each of BAD_SETTINGS by
    its index; the run folder named; and the settings file."""
    tmp = tmp_path_factory.mktemp("dagbags")
    out = str(tmp / "run")
    config = tmp / "settings.yaml"
    config.write_text(json.dumps(SETTINGS_FILE))  # JSON is YAML
    good = dict(HAP_DATA=tiny_csv, HAP_OUT=out)
    cases = {"every_component": {**good, "HAP_CONFIG": str(config)}, "missing": {},
             **{str(i): {**good, setting: value} for i, (setting, value, _) in enumerate(BAD_SETTINGS)}}
    results = _python(_airflow_env(tmp), LOAD_DAGBAGS, DAG_FILE, json.dumps(list(cases.values())))
    return dict(zip(cases, results)), out, str(config)


def test_airflow_loads_the_dag_with_every_component(dagbags, tiny_csv):
    results, out, config = dagbags
    result = results["every_component"]
    assert result["errors"] == {}
    components = local_runner.build(tiny_csv, out, settings.load(config).settings).components
    expected = {node.id: sorted(up.id for up in node.upstream_nodes) for node in components}
    assert len(expected) >= 12
    # retention.keep_runs adds a last task, after every component that nothing else waits for.
    expected["Prune"] = sorted(node.id for node in components if not node.downstream_nodes)
    assert "Pusher" in expected["Prune"]
    assert result["dags"] == {"hap": expected}
    # The Beam workers' dependency is the DAG's source tree (pipeline.with_worker_dependency).
    assert set(map(tuple, result["beam_args"]["hap"].values())) == {(*BEAM, f"--setup_file={REPO}/setup.py")}


def test_missing_settings_are_a_clear_import_error(dagbags):
    result = dagbags[0]["missing"]
    assert result["dags"] == {}
    (error,) = result["errors"].values()
    assert "HAP_DATA is not set" in error


@pytest.mark.parametrize("case", range(len(BAD_SETTINGS)))
def test_bad_settings_are_a_clear_import_error(case, dagbags):
    setting, _, message = BAD_SETTINGS[case]
    result = dagbags[0][str(case)]
    assert result["dags"] == {}
    (error,) = result["errors"].values()
    assert setting in error and message in error


def _kubeflow_tasks(config: str, data_root: str, tmp_path) -> dict:
    """The PipelineJob's tasks as `hap compile kubeflow --config` writes them, by task id."""
    from hap import cli

    out = tmp_path / "hap.json"
    assert cli.main(["compile", "kubeflow", "--out", str(out), "--image", "registry.example.com/hap:cpu",
                     "--data-root", data_root, "--pipeline-root", str(tmp_path / "root"), "--config", config]) == 0
    return json.loads(out.read_text())["pipelineSpec"]["root"]["dag"]["tasks"]


def _constant(parameter: dict) -> str:
    value = parameter["runtimeValue"]["constantValue"]
    (kind,) = value
    return str(value[kind]) if kind == "stringValue" else str(int(value[kind]))


def _as_compiled(value) -> str:
    """An execution property as KFP carries it: a proto message as JSON, a bool as 0 or 1."""
    if isinstance(value, message.Message):
        return json_format.MessageToJson(value)
    return str(int(value)) if isinstance(value, bool) else str(value)


def _canonical(text: str) -> str:
    try:
        return json.dumps(json.loads(text), sort_keys=True)
    except ValueError:
        return text


# Fields each front end resolves for its orchestrator (pipeline/kubeflow_runner.cluster_settings,
# local_runner.resolved): the Beam arguments, and ExampleGen's paths and the Pusher's destination.
RUNNER_SPECIFIC = {"beam"}


def _without_runner_fields(properties: dict) -> dict:
    if "hap_settings" not in properties:
        return properties
    tree = {k: v for k, v in json.loads(properties["hap_settings"]).items() if k not in RUNNER_SPECIFIC}
    return {**properties, "hap_settings": tree}


def test_one_settings_file_builds_the_same_pipeline_for_every_orchestrator(dagbags, tiny_csv, tmp_path):
    """`hap run --config F`, the Airflow DAG with HAP_CONFIG=F and `hap compile kubeflow --config
    F`: the same components, wired the same, with the same execution properties."""
    from hap import cli

    results, out, config = dagbags
    args = cli.build_parser().parse_args(["run", "--data", tiny_csv, "--out", out, "--config", config])
    local = local_runner.build(tiny_csv, out, cli._settings(args).settings)
    airflow = results["every_component"]
    nodes = {node.id: node for node in local.components}
    local_properties = {node_id: {k: str(v) for k, v in node.exec_properties.items()} for node_id, node in nodes.items()}

    assert set(airflow["exec_properties"]["hap"]) == set(nodes)
    assert airflow["exec_properties"]["hap"] == local_properties
    assert {k: v for k, v in airflow["dags"]["hap"].items() if k != "Prune"} == {
        node_id: sorted(up.id for up in node.upstream_nodes) for node_id, node in nodes.items()}

    tasks = _kubeflow_tasks(config, tiny_csv, tmp_path)
    resolvers = {node_id for node_id, node in nodes.items() if node_id.startswith(("LatestBlessed", "LastAccepted", "LastTuned",
                                                                                   "WarmStart"))}
    assert {t for t in tasks if t not in resolvers and not t.startswith(tuple(resolvers))} == set(nodes) - resolvers
    assert all(any(t.startswith(r) for t in tasks) for r in resolvers)
    for node_id in set(nodes) - resolvers:
        compiled = {k: _canonical(_constant(v)) for k, v in tasks[node_id].get("inputs", {}).get("parameters", {}).items()
                    if "runtimeValue" in v}
        given = {k: _canonical(_as_compiled(nodes[node_id].exec_properties[k])) for k, v in local_properties[node_id].items()
                 if k in compiled and v != "None"}
        # Paths are the orchestrator's (the cluster's pipeline root); every setting is the same.
        paths = {"input_base", "data_root", "push_destination", "schema_file"}
        assert {k for k in local_properties[node_id] if local_properties[node_id][k] != "None"} - paths <= set(compiled), \
            node_id
        assert _without_runner_fields({k: v for k, v in compiled.items() if k in given and k not in paths}) == \
            _without_runner_fields({k: v for k, v in given.items() if k not in paths}), node_id
    assert json.loads(local_properties["CascadeAssembler"]["settings"])["routing"]["fraction"] == 0.3
