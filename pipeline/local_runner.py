"""Runs the HAP pipeline with TFX's LocalDagRunner; ML Metadata lives in SQLite under the
output directory, so a re-run with unchanged inputs is served from cache.

Layout of an output directory:
    OUT/metadata.sqlite          ML Metadata (or OUT/metadata.json: the MySQL server that holds it,
                                 with `metadata.backend: mysql`)
    OUT/pipeline_root/...        every component's artifacts (Trainer_light/model_run/... holds
                                 the TensorBoard logs); under `storage.artifacts_root` when set
                                 (a directory or an object store URI), with serving/ beside it
    OUT/schema/schema.pbtxt      the schema derived for a dataset whose features.yaml is not the
                                 default one
    OUT/serving/hap/<version>/   the cascade SavedModel, pushed when both models were blessed
                                 (a TF Serving model base path: OUT/serving)
    OUT/logs/run.log             what `hap run` did not show on the console: every library's
                                 warnings and log lines, TensorFlow's C++ log (pipeline/console.py)
"""
from __future__ import annotations

import dataclasses
import logging
import os

import absl.logging
from tfx import v1 as tfx

from hap import schema as default_schema
from hap import storage
from hap.data import contract as c
from hap.pipeline import console as run_console
from hap.pipeline import run_report
from hap.pipeline.console import tensorboard_logdirs  # noqa: F401  (the run layout's, here too)
from hap.pipeline.pipeline import PipelinePaths, create_pipeline, source_setup_file
from hap.schema import derive
from hap.settings import HapSettings, defaults


def schema_for(features: c.FeatureSet, out_dir: str) -> str:
    """The curated schema for the default feature set, else one derived from features.yaml."""
    if features.listed == c.load_features(default_schema.DEFAULT_DIR).listed:
        return default_schema.DEFAULT_SCHEMA
    path = os.path.join(out_dir, "schema", "schema.pbtxt")
    derived = derive.derive_schema(features)
    # Rewriting an identical file would change its fingerprint and defeat the cache.
    if not os.path.exists(path) or derive.load_schema(path) != derived:
        derive.write_schema(derived, path)
    return path


# Warnings TFX 1.16 prints on every run that say nothing about the user's pipeline: the Resolver's
# producer filter, Transform's output artifact, Beam's combiner internals.
_HARMLESS = ("ArtifactQuery.property_predicate is not supported",
             "Examples artifact does not have payload_format custom property")


class _ComponentProgress(logging.Filter):
    """Lets LocalDagRunner's per-component start/finish lines through, and no other INFO chatter."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.levelno > logging.INFO:
            return not message.startswith(_HARMLESS)
        return message.startswith("Component ") and message.endswith(("is running.", "is finished."))


def show_component_progress() -> None:
    absl_logger = logging.getLogger("absl")
    if not any(isinstance(f, _ComponentProgress) for f in absl_logger.filters):
        absl_logger.addFilter(_ComponentProgress())
    # Through absl's verbosity flag, not the logger's level: TensorFlow saves and restores that
    # flag around every SavedModel export, which would reset a level set on the logger alone.
    absl.logging.set_verbosity(absl.logging.INFO)
    logging.getLogger("apache_beam.transforms.core").setLevel(logging.ERROR)


def sample_bytes(data_root: str) -> int:
    samples = storage.join(data_root, c.SAMPLES_DIR)
    return sum(storage.size(storage.join(samples, name)) for name in storage.listdir(samples))


def metadata_connection(settings: HapSettings, out_dir: str):
    """ML Metadata's connection: SQLite in OUT/metadata.sqlite, or the MySQL server of
    `metadata.mysql` after checking that it answers and takes the login (a refused or unreachable
    server is one error naming host and port, before any component runs)."""
    if settings.metadata.backend == "sqlite":
        return tfx.orchestration.metadata.sqlite_metadata_connection_config(os.path.join(out_dir, "metadata.sqlite"))
    return run_report.mysql_connection(settings.metadata.mysql)


def resolved(settings: HapSettings, data_root: str) -> HapSettings:
    """`settings` with what the local front ends choose for the data: per-component Beam
    arguments by its size (BeamSettings.component_args_for), and Beam's S3 options where the
    data or the artifacts are on S3 (hap/storage.py)."""
    s3_args = storage.beam_args([data_root, settings.storage.artifacts_root or ""])
    beam = dataclasses.replace(settings.beam, args=[*settings.beam.args, *s3_args],
                               component_args=settings.beam.component_args_for(sample_bytes(data_root)))
    return dataclasses.replace(settings, beam=beam)


def build(data_root: str, out_dir: str, settings: HapSettings | None = None) -> tfx.dsl.Pipeline:
    """The pipeline over a dataset on this machine's file system, with the layout above and
    `settings` (default: hap/defaults.yaml); the Airflow DAG (pipeline/airflow_dag.py) runs the
    same one."""
    data_root, out_dir = storage.absolute(data_root), os.path.abspath(out_dir)
    settings = settings or defaults()
    artifacts_root = storage.absolute(settings.storage.artifacts_root or out_dir)
    # Before anything is written: a store that cannot be reached is one error naming its URI.
    storage.check_reachable(data_root)
    storage.check_reachable(artifacts_root)
    settings = resolved(settings, data_root)
    features = c.load_features(data_root)
    connection = metadata_connection(settings, out_dir)
    os.makedirs(out_dir, exist_ok=True)
    if settings.metadata.backend == "mysql":
        run_report.record_metadata_server(out_dir, settings.metadata.mysql)
    run_console.record_artifacts_root(out_dir, artifacts_root)
    paths = PipelinePaths(data_root=data_root, pipeline_root=storage.join(artifacts_root, "pipeline_root"),
                          serving_model_dir=storage.join(artifacts_root, "serving"),
                          schema_path=schema_for(features, out_dir), beam_setup_file=source_setup_file())
    return create_pipeline(paths, settings, features, metadata_connection_config=connection)


def run(data_root: str, out_dir: str, settings: HapSettings | None = None,
        console: run_console.Console | None = None) -> None:
    """Runs `build(data_root, out_dir, settings)` in this process. With a `console`
    (pipeline/console.py), one line per component goes to it; without, LocalDagRunner's own
    start and finish lines go through Python's logging."""
    pipeline = build(data_root, out_dir, settings)
    if console is None:
        show_component_progress()
        tfx.orchestration.LocalDagRunner().run(pipeline)
        return
    # The progress filter would hide the launcher's record of a cache hit from the console.
    absl_logger = logging.getLogger("absl")
    filters = [f for f in absl_logger.filters if isinstance(f, _ComponentProgress)]
    for f in filters:
        absl_logger.removeFilter(f)
    logging.getLogger("apache_beam.transforms.core").setLevel(logging.ERROR)
    try:
        with run_console.follow_components(console, len(pipeline.components)):
            tfx.orchestration.LocalDagRunner().run(pipeline)
    finally:
        for f in filters:
            absl_logger.addFilter(f)
