"""Runs the HAP pipeline with TFX's LocalDagRunner; ML Metadata lives in SQLite under the
output directory, so a re-run with unchanged inputs is served from cache.

Layout of an output directory:
    OUT/metadata.sqlite          ML Metadata
    OUT/pipeline_root/...        every component's artifacts (Trainer_light/model_run/... holds
                                 the TensorBoard logs)
    OUT/schema/schema.pbtxt      the schema derived for a dataset whose features.yaml is not the
                                 default one
    OUT/serving/hap/<version>/   the cascade SavedModel, pushed when both models were blessed
                                 (a TF Serving model base path: OUT/serving)
    OUT/logs/run.log             what `hap run` did not show on the console: every library's
                                 warnings and log lines, TensorFlow's C++ log (pipeline/console.py)
"""
from __future__ import annotations

import logging
import os

import absl.logging
from tfx import v1 as tfx

from hap import schema as default_schema
from hap.data import contract as c
from hap.pipeline import configs, console as run_console
from hap.pipeline.console import tensorboard_logdirs  # noqa: F401  (the run layout's, here too)
from hap.pipeline.pipeline import create_pipeline
from hap.schema import derive


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


def _component_beam_args(data_root: str, beam_pipeline_args, component_beam_args) -> dict:
    """The given per-component arguments; by default the measured choice for the data's size,
    unless Beam arguments were given: they are the user's choice for every component."""
    if component_beam_args is not None:
        return component_beam_args
    if beam_pipeline_args:
        return {}
    samples = os.path.join(data_root, c.SAMPLES_DIR)
    return configs.component_beam_args(sum(os.path.getsize(os.path.join(samples, name)) for name in os.listdir(samples)))


def drift_comparators_for(features: c.FeatureSet, comparators: dict | None = None) -> dict:
    """`comparators` (default configs.DRIFT_COMPARATORS) on the features the dataset has."""
    present = set(features.names) | set(c.REQUIRED_COLUMNS)
    return {name: spec for name, spec in (configs.DRIFT_COMPARATORS if comparators is None else comparators).items()
            if name in present}


def build(data_root: str, out_dir: str, light_trainer: dict | None = None, heavy_trainer: dict | None = None,
          auc_floors: dict | None = None, beam_pipeline_args: list[str] | None = None,
          component_beam_args: dict | None = None, enable_cache: bool = True,
          eval_days: int = configs.EVAL_DAYS, window_days: int | None = configs.WINDOW_DAYS,
          warm_start: bool = False, drift_comparators: dict | None = None, accept_drift: bool = False,
          auc_tolerance: float = configs.AUC_TOLERANCE,
          cascade_tolerance: float = configs.CASCADE_TOLERANCE) -> tfx.dsl.Pipeline:
    """The pipeline over a dataset on this machine's file system, with the layout above; the
    Airflow DAG (pipeline/airflow_dag.py) runs the same one. Day by day (README, "Day by day"):
    `window_days` of training before the eval day, `warm_start` from the last blessed models, the
    drift check with `drift_comparators` (default configs.DRIFT_COMPARATORS, {}: none) and
    `accept_drift` (see create_pipeline)."""
    data_root, out_dir = os.path.abspath(data_root), os.path.abspath(out_dir)
    features = c.load_features(data_root)
    os.makedirs(out_dir, exist_ok=True)
    return create_pipeline(
        pipeline_name=configs.PIPELINE_NAME,
        pipeline_root=os.path.join(out_dir, "pipeline_root"),
        data_root=data_root,
        schema_path=schema_for(features, out_dir),
        serving_model_dir=os.path.join(out_dir, "serving"),
        features=features,
        light_trainer={**configs.LIGHT_TRAINER, **(light_trainer or {})},
        heavy_trainer={**configs.HEAVY_TRAINER, **(heavy_trainer or {})},
        auc_floors=auc_floors or configs.auc_floors_with({}),
        auc_tolerance=auc_tolerance,
        eval_days=eval_days,
        window_days=window_days,
        warm_start=warm_start,
        hap_resolvers=True,
        cascade_tolerance=cascade_tolerance,
        cascade_blessing_requests=configs.CASCADE_BLESSING_REQUESTS,
        drift_comparators=drift_comparators_for(features, drift_comparators),
        accept_drift=accept_drift,
        vocab_top_k=configs.VOCAB_TOP_K,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            os.path.join(out_dir, "metadata.sqlite")),
        beam_pipeline_args=beam_pipeline_args or configs.BEAM_PIPELINE_ARGS,
        component_beam_args=_component_beam_args(data_root, beam_pipeline_args, component_beam_args),
        beam_setup_file=configs.source_setup_file(),
        enable_cache=enable_cache,
    )


def run(data_root: str, out_dir: str, console: run_console.Console | None = None, **settings) -> None:
    """Runs `build(data_root, out_dir, **settings)` in this process. With a `console`
    (pipeline/console.py), one line per component goes to it; without, LocalDagRunner's own
    start and finish lines go through Python's logging."""
    pipeline = build(data_root, out_dir, **settings)
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
