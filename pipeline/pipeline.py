"""The HAP TFX pipeline: `create_pipeline(paths, settings, features)`, as the TFX template's; the
runner of each orchestrator only resolves the paths and the settings tree (hap/settings.py)."""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from typing import Optional

import tensorflow_model_analysis as tfma
from apache_beam.options.pipeline_options import PipelineOptions
from tfx import v1 as tfx
from tfx.components.distribution_validator.component import DistributionValidator
from tfx.dsl.components.base import base_beam_component
from tfx.proto import distribution_validator_pb2
from tfx.types.standard_artifacts import ExampleStatistics, HyperParameters, Model, ModelBlessing

from hap.components.anomaly_gate.component import AnomalyGate
from hap.components.cascade_assembler.component import CascadeAssembler
from hap.components.contract_example_gen import executor as example_gen_executor
from hap.components.contract_example_gen.component import ContractExampleGen
from hap.components.drift_gate.component import DriftGate
from hap.components.request_grouper.component import RequestGrouper
from hap.components.tuner.component import Tuner
from hap.data import contract as c
from hap.data.sample_routing import HEAVY, LIGHT
from hap.models import preprocessing, transformed
from hap.models.trainer_settings import TUNING
from hap.pipeline.resolvers import (LatestArtifactOrNothingStrategy, LatestBlessedCascadeStrategy,
                                    LatestBlessedModelOfOtherDataStrategy, LatestOfOtherDataStrategy, history,
                                    make_resolver, mark_roles)
from hap.settings import DriftComparator, HapSettings
from hap.tree import to_plain

PREPROCESSING_FN = "hap.models.preprocessing.preprocessing_fn"
RUN_FN = "hap.models.trainer_module.run_fn"
TUNER_FN = "hap.models.tuner_module.tuner_fn"


def code_fingerprint() -> str:
    """Hash of the model code. Transform and Trainer name their functions by dotted path, which
    TFX's cache key does not look behind; putting this hash in their custom_config makes a code
    change invalidate the cached results, as a module_file would."""
    models_dir = os.path.dirname(os.path.abspath(preprocessing.__file__))
    digest = hashlib.sha256()
    for name in sorted(os.listdir(models_dir)):
        if name.endswith(".py"):
            with open(os.path.join(models_dir, name), "rb") as f:
                digest.update(name.encode() + f.read())
    return digest.hexdigest()[:16]


# Beam options that tell TFX's Beam executors how remote workers get their Python code. When the
# arguments name none, every executor builds a source package of TFX itself in a new temporary
# directory (tfx/utils/dependency_utils.py: about 1 s and 52 MB per component run) and never
# deletes it, which fills a daily host's disk.
BEAM_DEPENDENCY_OPTIONS = ("extra_packages", "setup_file", "requirements_file", "worker_harness_container_image",
                           "sdk_container_image")


def with_worker_dependency(beam_pipeline_args: list[str], setup_file: Optional[str]) -> list[str]:
    """`beam_pipeline_args` with `--setup_file=setup_file` (HAP's setup.py, whose install_requires
    bring TFX) unless they already name a dependency or there is no setup file. Remote workers
    need HAP anyway, for Transform's preprocessing_fn and HAP's executors; the DirectRunner ignores
    the option, so local runs build nothing."""
    options = PipelineOptions(flags=beam_pipeline_args).get_all_options()
    if any(options.get(name) for name in BEAM_DEPENDENCY_OPTIONS):
        return list(beam_pipeline_args)
    if setup_file is None:
        logging.warning("The Beam arguments name no worker dependency and HAP is not installed from a source tree, "
                        "so TFX builds a 52 MB package of itself in the temp directory on every Beam component run, "
                        "and leaves it there: pass --sdk_container_image or --extra_package (docs/deploying.md, "
                        "'Beam runners').")
        return list(beam_pipeline_args)
    return [*beam_pipeline_args, f"--setup_file={setup_file}"]


def source_setup_file() -> str | None:
    """HAP's setup.py where this process imports HAP from a source tree (`make setup`'s editable
    install, the pipeline image), the Beam workers' dependency (with_worker_dependency); None for
    an install without one, whose remote runs must name their own."""
    import hap

    setup_file = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(hap.__file__))), "setup.py")
    return setup_file if os.path.isfile(setup_file) else None


def eval_config(auc_floors: dict, tolerance: float) -> tfma.EvalConfig:
    """Per-source AUC on the raw eval split, with a floor and a regression tolerance per source.

    Each model scores the raw examples through its own Transform (its `score_examples`
    signature), and its `transform_features` gives the label and a `contrast` feature naming the
    contrast groups a sample belongs to (an exposed positive belongs to all four, a negative to
    its source's), so the slice `contrast: RN` holds exactly the exposed positives and the ranking
    negatives. Thresholds are attached per slice: a threshold on the metric as a whole would also
    apply to slices with no positives, where AUC is undefined.
    """
    thresholds = []
    for group, floor in auc_floors.items():
        thresholds.append(tfma.PerSliceMetricThreshold(
            slicing_specs=[tfma.SlicingSpec(feature_values={transformed.CONTRAST: group})],
            threshold=tfma.MetricThreshold(
                value_threshold=tfma.GenericValueThreshold(lower_bound={"value": floor}),
                change_threshold=tfma.GenericChangeThreshold(
                    direction=tfma.MetricDirection.HIGHER_IS_BETTER, absolute={"value": -tolerance}))))
    # Thresholds live on the MetricConfig: MetricsSpec-level thresholds are keyed for in-graph
    # metrics and never match a post-export metric such as this AUC ("Metric not found").
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(signature_name="score_examples", preprocessing_function_names=["transform_features"],
                                    label_key=transformed.LABEL)],
        slicing_specs=[tfma.SlicingSpec(feature_keys=[transformed.CONTRAST])],
        metrics_specs=[tfma.MetricsSpec(metrics=[
            tfma.MetricConfig(class_name="AUC", per_slice_thresholds=thresholds),
            tfma.MetricConfig(class_name="ExampleCount"),
        ])],
    )


def drift_config(comparators: dict[str, DriftComparator]) -> distribution_validator_pb2.DistributionValidatorConfig:
    """DistributionValidator's configuration from {feature: DriftComparator}: TFDV's
    "infinity_norm" (L-infinity distance of the value shares, for categorical features) or
    "jensen_shannon_divergence" (for numeric ones), each with its threshold."""
    config = distribution_validator_pb2.DistributionValidatorConfig()
    for feature, spec in sorted(comparators.items()):
        entry = config.default_slice_config.feature.add()
        entry.path.step.append(feature)
        getattr(entry.distribution_comparator, spec.comparator).threshold = float(spec.threshold)
    return config


def drift_comparators_for(features: c.FeatureSet, comparators: dict[str, DriftComparator]) -> dict:
    """The comparators of the features the dataset has (a feature it lacks is skipped)."""
    present = set(features.names) | set(c.REQUIRED_COLUMNS)
    return {name: spec for name, spec in comparators.items() if name in present}


@dataclasses.dataclass(frozen=True)
class PipelinePaths:
    """Where the pipeline reads and writes, as the orchestrator's workers see it.
    schema_path: the curated TFDV schema of the dataset's feature set.
    serving_model_dir: the TF Serving model base path's parent: the Pusher writes
    <serving_model_dir>/<serving.model_name>/<version>/.
    beam_setup_file: HAP's setup.py as remote Beam workers see it (with_worker_dependency)."""

    data_root: str
    pipeline_root: str
    serving_model_dir: str
    schema_path: str
    beam_setup_file: Optional[str] = None


HAP_RESOLVERS, TFX_RESOLVERS = "hap", "tfx"
DRIFT_GATE = "DriftGate"


def create_pipeline(paths: PipelinePaths, settings: HapSettings, features: c.FeatureSet,
                    metadata_connection_config=None, resolvers: str = HAP_RESOLVERS) -> tfx.dsl.Pipeline:
    """The HAP pipeline over the dataset at `paths.data_root` with feature set `features`,
    everything else from `settings` (hap/settings.py; docs/settings.md). Front ends resolve only
    paths and settings: `beam.component_args` as given (null: none), the metadata connection from
    `settings.metadata` where the orchestrator does not keep ML Metadata itself.

    Day by day: the Trainers learn from `data.window_days` days before the `data.eval_days`
    newest ones; with `warm_start` each starts from the last blessed model of its kind trained on
    other data, which is also its Evaluator's baseline; the CascadeAssembler's is the last blessed
    cascade. With `tuning.trials`, each Trainer trains what its Tuner chose on a holdout of the
    training days (components/tuner, models/tuner_module.py), reusing the last search for
    `tuning.retune_days`. With `drift.check`, the newest day's statistics are compared with the last accepted
    day's and a drift stops the run before Transform (components/drift_gate), unless
    `drift.accept`.

    `resolvers` "hap": HAP's resolver strategies (pipeline/resolvers.py), as LocalDagRunner and
    Airflow run them; "tfx": the TFX strategies they narrow, over the same history channels, the
    form the KubeflowV2 compiler knows (pipeline/kubeflow_runner.py narrows their queries)."""
    portable = resolvers == HAP_RESOLVERS
    data_root = paths.data_root
    model_config = {**preprocessing.make_custom_config(features, vocab_top_k=settings.data.vocab_top_k),
                    preprocessing.CODE_FINGERPRINT: code_fingerprint()}
    example_gen = ContractExampleGen(input_base=data_root, eval_days=settings.data.eval_days,
                                     range_bytes=settings.data.range_bytes, window_days=settings.data.window_days)
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = tfx.components.ImportSchemaGen(schema_file=paths.schema_path)
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"])
    gate = AnomalyGate(anomalies=example_validator.outputs["anomalies"])
    transform = tfx.components.Transform(
        examples=example_gen.outputs["examples"],
        schema=schema_gen.outputs["schema"],
        preprocessing_fn=PREPROCESSING_FN,
        custom_config=model_config,
        # StatisticsGen already describes the input; Transform's own pre- and post-transform
        # statistics would double its run time for numbers nobody reads.
        disable_statistics=True)
    transform.add_upstream_node(gate)
    # The Trainers stream whole requests; the Evaluators read the raw examples (eval_config).
    grouper = RequestGrouper(examples=transform.outputs["transformed_examples"], custom_config=model_config)
    components = [example_gen, statistics_gen, schema_gen, example_validator, gate]
    drift_comparators = drift_comparators_for(features, settings.drift.comparators) if settings.drift.check else {}
    if drift_comparators:
        # Today (the eval split: the newest day) against the last day the DriftGate accepted.
        accepted = make_resolver(
            "LastAcceptedStatistics", LatestArtifactOrNothingStrategy,
            {"statistics": history(ExampleStatistics, DRIFT_GATE, "accepted_statistics")}, {}, portable)
        baseline_statistics = accepted.outputs["statistics"].as_optional()
        split = example_gen_executor.EVAL
        drift_validator = DistributionValidator(
            statistics=statistics_gen.outputs["statistics"], baseline_statistics=baseline_statistics,
            config=drift_config(drift_comparators), include_split_pairs=[(split, split)])
        drift_gate = DriftGate(anomalies=drift_validator.outputs["anomalies"],
                               statistics=statistics_gen.outputs["statistics"],
                               baseline_statistics=baseline_statistics,
                               accept_drift=settings.drift.accept).with_id(DRIFT_GATE)
        mark_roles(drift_gate, "accepted_statistics")
        transform.add_upstream_node(drift_gate)
        components += [accepted, drift_validator, drift_gate]
    components += [transform, grouper]
    trained = {}

    for model in (LIGHT, HEAVY):
        trainer_config = {**model_config, **to_plain(settings.model(model).trainer)}
        trainer_id, evaluator_id = f"Trainer_{model}", f"Evaluator_{model}"
        last_blessed = {"model": history(Model, trainer_id, "model"),
                        "model_blessing": history(ModelBlessing, evaluator_id, "blessing")}
        todays_examples = {"examples": grouper.outputs["request_examples"]}
        warm = {}
        if settings.warm_start:
            base = make_resolver(f"WarmStartModel_{model}", LatestBlessedModelOfOtherDataStrategy, last_blessed,
                                 todays_examples, portable)
            components.append(base)
            warm = {"base_model": base.outputs["model"]}
        tuned = {}
        if settings.tuning.trials:
            tuner_id = f"Tuner_{model}"
            last_tuned = make_resolver(
                f"LastTuned_{model}", LatestOfOtherDataStrategy,
                {"hyperparameters": history(HyperParameters, tuner_id, "best_hyperparameters")}, todays_examples,
                portable)
            tuner = Tuner(
                examples=grouper.outputs["request_examples"], transform_graph=transform.outputs["transform_graph"],
                schema=schema_gen.outputs["schema"], statistics=statistics_gen.outputs["statistics"], tuner_fn=TUNER_FN,
                custom_config={**trainer_config, TUNING: to_plain(settings.tuning)},
                retune_days=settings.tuning.retune_days, drift_comparators=to_plain(drift_comparators),
                previous_hyperparameters=last_tuned.outputs["hyperparameters"]).with_id(tuner_id)
            mark_roles(tuner, "best_hyperparameters")
            components += [last_tuned, tuner]
            tuned = {"hyperparameters": tuner.outputs["best_hyperparameters"]}
        trainer = tfx.components.Trainer(
            run_fn=RUN_FN,
            examples=grouper.outputs["request_examples"],
            transform_graph=transform.outputs["transform_graph"],
            schema=schema_gen.outputs["schema"],
            custom_config=trainer_config,
            **warm, **tuned,
        ).with_id(trainer_id)
        mark_roles(trainer, "model")
        baseline = make_resolver(f"LatestBlessedModel_{model}", LatestBlessedModelOfOtherDataStrategy, last_blessed,
                                 todays_examples, portable)
        evaluator = tfx.components.Evaluator(
            examples=example_gen.outputs["examples"],
            model=trainer.outputs["model"],
            baseline_model=baseline.outputs["model"],
            eval_config=eval_config(settings.model(model).auc_floors, settings.evaluator.auc_tolerance),
        ).with_id(evaluator_id)
        mark_roles(evaluator, "blessing")
        components += [trainer, baseline, evaluator]
        trained[model] = (trainer.outputs["model"], evaluator.outputs["blessing"])

    assembler_id = "CascadeAssembler"
    cascade_baseline = make_resolver(
        "LatestBlessedCascade", LatestBlessedCascadeStrategy,
        {"model": history(Model, assembler_id, "model"), "model_blessing": history(ModelBlessing, assembler_id, "blessing")},
        {"light_model": trained[LIGHT][0], "heavy_model": trained[HEAVY][0]}, portable)
    assembler = CascadeAssembler(
        transform_graph=transform.outputs["transform_graph"],
        light_model=trained[LIGHT][0], light_blessing=trained[LIGHT][1],
        heavy_model=trained[HEAVY][0], heavy_blessing=trained[HEAVY][1],
        custom_config=model_config, data_root=data_root, settings=settings,
        baseline_model=cascade_baseline.outputs["model"], examples=example_gen.outputs["examples"],
    ).with_id(assembler_id)
    mark_roles(assembler, "model", "blessing")
    # TF Serving's layout: <model base path>/<model name>/<version>/; the assembler blesses the
    # cascade only when both of its models were blessed and the cascade did not regress.
    pusher = tfx.components.Pusher(
        model=assembler.outputs["model"],
        model_blessing=assembler.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(filesystem=tfx.proto.PushDestination.Filesystem(
            base_directory=os.path.join(paths.serving_model_dir, settings.serving.model_name))))
    components += [cascade_baseline, assembler, pusher]

    beam_components = {node.id: node for node in components if isinstance(node, base_beam_component.BaseBeamComponent)}
    for component_id, args in (settings.beam.component_args or {}).items():
        if component_id not in beam_components:
            raise ValueError(f"component_beam_args: {component_id!r} is not a Beam component of the pipeline; "
                             f"those are {sorted(beam_components)}")
        beam_components[component_id].with_beam_pipeline_args(args)

    return tfx.dsl.Pipeline(
        pipeline_name=settings.pipeline_name,
        pipeline_root=paths.pipeline_root,
        components=components,
        enable_cache=settings.enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=with_worker_dependency(list(settings.beam.args), paths.beam_setup_file),
    )
