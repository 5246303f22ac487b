"""pipeline/airflow_dag.py under Airflow: it loads in Airflow's DagBag, as the scheduler loads it
(no import errors, one task per pipeline component, wired as the pipeline is, with the Beam
arguments given), and two daily DagRuns of it run every task to success and push a cascade.

Airflow 2's pins clash with the TFX set, so it lives in its own environment, .venv-airflow
(`make airflow-env`, constraints-airflow.txt); Airflow runs there, in subprocesses. CI builds that
environment (.ci/run); where it has not been built, these tests are skipped."""
import json
import os
import shutil
import subprocess

import pytest

from conftest import floors_at
from hap.pipeline import local_runner

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AIRFLOW_PYTHON = os.path.join(REPO, ".venv-airflow", "bin", "python")
DAG_FILE = os.path.join(REPO, "pipeline", "airflow_dag.py")
BEAM = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]

pytestmark = pytest.mark.skipif(
    not os.path.exists(AIRFLOW_PYTHON),
    reason="no .venv-airflow: Airflow 2 needs its own environment (`make airflow-env`), its pins clash with TFX's")

LOAD_DAGBAG = """
import json, sys
from airflow.models import DagBag
bag = DagBag(dag_folder=sys.argv[1], include_examples=False)
print(json.dumps({
    "errors": {path: str(error) for path, error in bag.import_errors.items()},
    "dags": {dag_id: {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks} for dag_id, dag in bag.dags.items()},
    "beam_args": {dag_id: {t.task_id: t.python_callable.keywords["beam_pipeline_args"] for t in dag.tasks}
                  for dag_id, dag in bag.dags.items()},
}))
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


def _dagbag(tmp_path, **hap_env):
    return _python(_airflow_env(tmp_path, **hap_env), LOAD_DAGBAG, DAG_FILE)


def test_airflow_loads_the_dag_with_every_component(tiny_csv, tmp_path):
    out = str(tmp_path / "run")
    result = _dagbag(tmp_path, HAP_DATA=tiny_csv, HAP_OUT=out, HAP_BEAM_ARGS=" ".join(BEAM))
    assert result["errors"] == {}
    expected = {node.id: sorted(up.id for up in node.upstream_nodes)
                for node in local_runner.build(tiny_csv, out).components}
    assert len(expected) >= 12
    assert result["dags"] == {"hap": expected}
    assert set(map(tuple, result["beam_args"]["hap"].values())) == {tuple(BEAM)}


def test_missing_settings_are_a_clear_import_error(tmp_path):
    result = _dagbag(tmp_path)
    assert result["dags"] == {}
    (error,) = result["errors"].values()
    assert "HAP_DATA is not set" in error


def test_two_daily_dag_runs_succeed_and_push_the_cascade(e2e_data, tmp_path):
    """`airflow dags test` runs a DagRun in one process, task by task, as the scheduler would.
    The second day reads the same data: its Trainers are served from cache, so each Evaluator
    gets one model as candidate and as blessed baseline, which TFX's own launcher failed on."""
    out, dags = tmp_path / "out", tmp_path / "dags"
    dags.mkdir()
    shutil.copy(DAG_FILE, dags)
    env = _airflow_env(tmp_path, HAP_DATA=e2e_data, HAP_OUT=str(out), HAP_AUC_FLOORS=json.dumps(floors_at(0.0)),
                       AIRFLOW__CORE__DAGS_FOLDER=str(dags))
    airflow = os.path.join(os.path.dirname(AIRFLOW_PYTHON), "airflow")
    subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, check=True, timeout=600)
    pushed = []
    for day in ("2026-11-30", "2026-12-01"):
        done = subprocess.run([airflow, "dags", "test", "hap", day], env=env, capture_output=True, text=True,
                              timeout=900, check=False)
        assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
        base = out / "serving" / "hap"
        pushed.append(sorted(os.listdir(base)))
        assert all((base / version / "saved_model.pb").is_file() for version in pushed[-1])

    runs = _python(env, RUN_STATES)
    every_task = {node.id: "success" for node in local_runner.build(e2e_data, str(tmp_path / "unused")).components}
    assert runs == {f"manual__{day}T00:00:00+00:00": {"state": "success", "tasks": every_task}
                    for day in ("2026-11-30", "2026-12-01")}
    # Each day blessed and pushed a cascade of its own: the second keeps the first version.
    assert len(pushed[0]) == 1 and len(pushed[1]) == 2 and pushed[1][0] == pushed[0][0]


def test_bad_auc_floors_are_a_clear_import_error(tiny_csv, tmp_path):
    result = _dagbag(tmp_path, HAP_DATA=tiny_csv, HAP_OUT=str(tmp_path / "run"),
                     HAP_AUC_FLOORS='{"light": {"XN": 0.5}}')
    (error,) = result["errors"].values()
    assert "HAP_AUC_FLOORS" in error and "'XN'" in error
