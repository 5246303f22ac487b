"""The HAP pipeline as an Airflow DAG, built by TFX's AirflowDagRunner from the same pipeline
`hap run` runs (`local_runner.build`): same components, same output layout, ML Metadata in
`$HAP_OUT/metadata.sqlite`.

Airflow imports this file from its dags folder (copy or link it there) in the environment of
`make airflow-env`: Airflow 2's pins clash with the TFX set (see constraints-airflow.txt).
Airflow passes a DAG file no arguments, so the settings come from the environment of the
scheduler and the workers:

    HAP_DATA       contract dataset directory (required)
    HAP_OUT        output directory (required)
    HAP_BEAM_ARGS  Beam pipeline arguments, split like a shell line
                   (default: configs.BEAM_PIPELINE_ARGS)
    HAP_SCHEDULE   the DAG's schedule, a cron expression or preset (default: @daily)
    HAP_AUC_FLOORS JSON replacing some of the Evaluators' per-source AUC floors, e.g.
                   '{"light": {"EN": 0.5}}' (default: data/sample_routing.py)
    HAP_WINDOW_DAYS  days of training before the newest day, as `hap run --window-days`
                   (default: every earlier day)
    HAP_WARM_START   1: each Trainer starts from the last blessed model, as `hap run --warm-start`
    HAP_MAX_EPOCHS   most training epochs of both models, as `hap run --max-epochs` (default:
                   models/trainer_module.TrainerSettings; the epoch is chosen by validation)
    HAP_ACCEPT_DRIFT 1: the newest day's drift is real, as `hap run --accept-drift` (for one
                   DagRun: `airflow dags test` with it set, not the scheduler's environment)
    HAP_KEEP_RUNS    N: a last task, Prune, deletes the artifacts that only older runs used once
                   every other task succeeded, as `hap run --keep-runs N` (default: no pruning;
                   README, "Retention")
    HAP_CASCADE_TOLERANCE  how far the cascade's blessing metric may fall below the last blessed
                   cascade's (default: configs.CASCADE_TOLERANCE); on a few dozen requests a day
                   that metric is noise, and the tests set it to 1

Day by day (README, "Day by day"): each scheduled DagRun runs the pipeline once over HAP_DATA as
it is then; whatever appends the day's samples to HAP_DATA before the run makes it the new day.

Every component runs as one Airflow task, in the worker's process; the data-parallel ones
(ExampleGen, StatisticsGen, Transform, Evaluator) hand their work to the Beam runner that
HAP_BEAM_ARGS names, so a Dataflow, Flink or Spark runner takes them off the worker.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import shlex

from hap.pipeline import configs, local_runner, retention  # hap first: it selects Keras 2 before TFX loads TensorFlow
from hap.pipeline.airflow_launcher import AirflowComponentLauncher

from airflow.operators.python import PythonOperator
from tfx.orchestration.airflow.airflow_dag_runner import AirflowDagRunner, AirflowPipelineConfig

DEFAULT_SCHEDULE = "@daily"
# Runs start from the first schedule after deployment: no backfill of days before it.
START_DATE = datetime.datetime(2025, 1, 1)


def _required(env, name: str) -> str:
    value = env.get(name)
    if not value:
        raise RuntimeError(f"{name} is not set; the HAP Airflow DAG reads its dataset directory from "
                           "HAP_DATA and its output directory from HAP_OUT (see pipeline/airflow_dag.py)")
    return value


def _auc_floors(env) -> dict:
    try:
        return configs.auc_floors_with(json.loads(env.get("HAP_AUC_FLOORS", "{}")))
    except ValueError as e:  # json.JSONDecodeError is one too
        raise RuntimeError(f"HAP_AUC_FLOORS: {e}") from e


def _flag(env, name: str) -> bool:
    value = env.get(name, "").strip().lower()
    if value not in ("", "0", "1", "true", "false"):
        raise RuntimeError(f"{name} must be 1 or 0, got {env[name]!r}")
    return value in ("1", "true")


def _at_least_one(env, name: str, unit: str) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise RuntimeError(f"{name} must be a whole number of {unit} >= 1, got {raw!r}")
    return int(raw)


def _window_days(env) -> int | None:
    days = _at_least_one(env, "HAP_WINDOW_DAYS", "days")
    return configs.WINDOW_DAYS if days is None else days


def _trainer(env) -> dict:
    epochs = _at_least_one(env, "HAP_MAX_EPOCHS", "epochs")
    return {"max_epochs": epochs} if epochs else {}


def prune(out_dir: str, keep_runs: int) -> str:
    """The Prune task: `hap prune` of this DagRun's output directory; what it deleted goes to the
    task's log and is its return value (Airflow's XCom)."""
    summary = retention.prune(out_dir, keep_runs).summary(out_dir)
    logging.getLogger(__name__).info(summary)
    return summary


def _tolerance(env, name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise RuntimeError(f"{name} must be a number >= 0, got {raw!r}")
    return value


def build_dag(env=os.environ):
    trainer = _trainer(env)
    pipeline = local_runner.build(
        _required(env, "HAP_DATA"), _required(env, "HAP_OUT"), light_trainer=trainer, heavy_trainer=trainer,
        beam_pipeline_args=shlex.split(env.get("HAP_BEAM_ARGS", "")) or configs.BEAM_PIPELINE_ARGS,
        auc_floors=_auc_floors(env), window_days=_window_days(env), warm_start=_flag(env, "HAP_WARM_START"),
        accept_drift=_flag(env, "HAP_ACCEPT_DRIFT"),
        cascade_tolerance=_tolerance(env, "HAP_CASCADE_TOLERANCE", configs.CASCADE_TOLERANCE))
    config = AirflowPipelineConfig(
        airflow_dag_config={"schedule": env.get("HAP_SCHEDULE", DEFAULT_SCHEDULE), "start_date": START_DATE,
                            "catchup": False},
        # TFX's own launcher fails on two Trainers and on a cached model that is its own baseline.
        supported_launcher_classes=[AirflowComponentLauncher])
    dag = AirflowDagRunner(config).run(pipeline)
    keep_runs = _at_least_one(env, "HAP_KEEP_RUNS", "runs")
    if keep_runs:
        last = list(dag.leaves)
        # Default trigger rule (all upstream succeeded): a failed run prunes nothing.
        PythonOperator(task_id="Prune", python_callable=prune, op_args=[_required(env, "HAP_OUT"), keep_runs],
                       dag=dag) << last
    return dag


DAG = build_dag()
