"""The Celery configuration of HAP's Airflow workers (`[celery] celery_config_options`, set by
hap/cluster.py and docs/deploying.md): Airflow's own, after importing what every HAP task imports.

A Celery worker imports this module once; each task then runs in a process forked from it, so
TensorFlow and TFX are loaded already when the task parses the DAG file, instead of being
imported again by every task (decision 0016 has the cost)."""
from hap.pipeline import local_runner  # noqa: F401  (hap first: it selects Keras 2 before TFX loads TensorFlow)
from tfx.orchestration.airflow import airflow_dag_runner  # noqa: F401

from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG

CELERY_CONFIG = DEFAULT_CELERY_CONFIG
