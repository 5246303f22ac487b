"""The HAP pipeline as an Airflow DAG, built by TFX's AirflowDagRunner from the same pipeline
`hap run` runs (`local_runner.build`): same components, same output layout, ML Metadata in
`$HAP_OUT/metadata.sqlite` (or the MySQL server of the settings' `metadata`).

Airflow imports this file from its dags folder (copy or link it there) in the environment of
`make airflow-env`: Airflow 2's pins clash with the TFX set (see constraints-airflow.txt).
Airflow passes a DAG file no arguments, so the paths and settings come from the environment of
the scheduler and the workers:

    HAP_DATA    contract dataset directory (required)
    HAP_OUT     output directory (required)
    HAP_CONFIG  a settings file, the same tree as hap/defaults.yaml (docs/settings.md)
    HAP_SET     single settings, KEY=VALUE pairs split like a shell line, after HAP_CONFIG; e.g.
                'data.window_days=7 warm_start=true' (`hap config show` with the same environment
                prints the effective tree)

The DAG's schedule is the setting `airflow.schedule`, each task's retries `airflow.retries`;
with `retention.keep_runs` N a last task, Prune, deletes the artifacts that only older runs used
once every other task succeeded.

Day by day (docs/operating.md): each scheduled DagRun runs the pipeline once over HAP_DATA as
it is then; whatever appends the day's samples to HAP_DATA before the run makes it the new day.

Every component runs as one Airflow task, in the worker's process; the data-parallel ones
(ExampleGen, StatisticsGen, Transform, Evaluator) hand their work to the Beam runner that
the setting `beam.args` names, so a Dataflow, Flink or Spark runner takes them off the worker.
"""
from __future__ import annotations

import datetime
import logging
import os

from hap.pipeline import local_runner, retention  # hap first: it selects Keras 2 before TFX loads TensorFlow
from hap import storage
from hap.settings import load
from hap.pipeline.airflow_launcher import AirflowComponentLauncher

from airflow.operators.python import PythonOperator
from tfx.orchestration.airflow.airflow_dag_runner import AirflowDagRunner, AirflowPipelineConfig

# Runs start from the first schedule after deployment: no backfill of days before it.
START_DATE = datetime.datetime(2025, 1, 1)


def _required(env, name: str) -> str:
    value = env.get(name)
    if not value:
        raise RuntimeError(f"{name} is not set; the HAP Airflow DAG reads its dataset directory from "
                           "HAP_DATA and its output directory from HAP_OUT (see pipeline/airflow_dag.py)")
    return value


def prune(out_dir: str, keep_runs: int) -> str:
    """The Prune task: `hap prune` of this DagRun's output directory; what it deleted goes to the
    task's log and is its return value (Airflow's XCom)."""
    summary = retention.prune(out_dir, keep_runs).summary(out_dir)
    logging.getLogger(__name__).info(summary)
    return summary


def build_dag(env=os.environ):
    settings = load(env=env).settings
    # Airflow's task runner forks each task from the process that parsed this file.
    with storage.before_fork():
        pipeline = local_runner.build(_required(env, "HAP_DATA"), _required(env, "HAP_OUT"), settings)
    config = AirflowPipelineConfig(
        airflow_dag_config={"schedule": settings.airflow.schedule, "start_date": START_DATE, "catchup": False,
                            "default_args": {"retries": settings.airflow.retries,
                                             "retry_delay": datetime.timedelta(seconds=settings.airflow.retry_delay_s)}},
        # TFX's own launcher fails on two Trainers and on a cached model that is its own baseline.
        supported_launcher_classes=[AirflowComponentLauncher])
    dag = AirflowDagRunner(config).run(pipeline)
    keep_runs = settings.retention.keep_runs
    if keep_runs:
        last = list(dag.leaves)
        # Default trigger rule (all upstream succeeded): a failed run prunes nothing.
        PythonOperator(task_id="Prune", python_callable=prune, op_args=[_required(env, "HAP_OUT"), keep_runs],
                       dag=dag) << last
    return dag


DAG = build_dag()
