"""pipeline/airflow_dag.py loads in Airflow's DagBag, as the scheduler loads it: no import errors,
one task per pipeline component, wired as the pipeline is, with the Beam arguments given.

Airflow 2's pins clash with the TFX set, so it lives in its own environment, .venv-airflow
(`make airflow-env`, constraints-airflow.txt); the DagBag runs there, in a subprocess. Where that
environment has not been built (CI builds only .venv), the test is skipped."""
import json
import os
import subprocess

import pytest

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


def _dagbag(tmp_path, **hap_env):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAP_")}
    env.update(AIRFLOW_HOME=str(tmp_path / "airflow_home"), AIRFLOW__CORE__LOAD_EXAMPLES="False", **hap_env)
    done = subprocess.run([AIRFLOW_PYTHON, "-c", LOAD_DAGBAG, DAG_FILE], env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


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
