"""The HAP TFX pipeline: `create_pipeline()` takes every path and setting as an argument, as the
TFX template does; runners for each orchestrator only fill them in."""
from __future__ import annotations

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
from tfx.types import Channel
from tfx.types.standard_artifacts import ExampleStatistics, Model, ModelBlessing

from hap.components.anomaly_gate.component import AnomalyGate
from hap.components.cascade_assembler.component import CascadeAssembler
from hap.components.contract_example_gen import executor as example_gen_executor
from hap.components.contract_example_gen.component import ContractExampleGen
from hap.components.drift_gate.component import DriftGate
from hap.components.request_grouper.component import RequestGrouper
from hap.data import contract as c
from hap.data.sample_routing import HEAVY, LIGHT
from hap.models import preprocessing, transformed
from hap.models.trainer_module import TrainerSettings
from hap.pipeline.resolvers import (LatestArtifactOrNothingStrategy, LatestBlessedCascadeStrategy,
                                    LatestBlessedModelOfOtherDataStrategy, LatestBlessedModelOfSameTransformStrategy)
from hap.serving.cascade import CascadeSettings

PREPROCESSING_FN = "hap.models.preprocessing.preprocessing_fn"
RUN_FN = "hap.models.trainer_module.run_fn"


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
                        "and leaves it there: pass --sdk_container_image or --extra_package (README, 'Deploying "
                        "and scaling out').")
        return list(beam_pipeline_args)
    return [*beam_pipeline_args, f"--setup_file={setup_file}"]


def eval_config(auc_floors: dict, tolerance: float) -> tfma.EvalConfig:
    """Per-source AUC on the eval split, with a floor and a regression tolerance per source.

    Transform gives every sample a `contrast` feature naming the contrast groups it belongs to
    (an exposed positive belongs to all four, a negative to its source's), so the slice
    `contrast: RN` holds exactly the exposed positives and the ranking negatives. Thresholds are
    attached per slice: a threshold on the metric as a whole would also apply to slices with no
    positives, where AUC is undefined.
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
        model_specs=[tfma.ModelSpec(signature_name="transformed", label_key=transformed.LABEL)],
        slicing_specs=[tfma.SlicingSpec(feature_keys=[transformed.CONTRAST])],
        metrics_specs=[tfma.MetricsSpec(metrics=[
            tfma.MetricConfig(class_name="AUC", per_slice_thresholds=thresholds),
            tfma.MetricConfig(class_name="ExampleCount"),
        ])],
    )


DRIFT_COMPARATORS = ("infinity_norm", "jensen_shannon_divergence")


def drift_config(comparators: dict) -> distribution_validator_pb2.DistributionValidatorConfig:
    """DistributionValidator's configuration from {feature: (comparator, threshold)}, the
    comparator one of TFDV's: "infinity_norm" (L-infinity distance of the value shares, for
    categorical features) or "jensen_shannon_divergence" (for numeric ones)."""
    config = distribution_validator_pb2.DistributionValidatorConfig()
    for feature, (comparator, threshold) in sorted(comparators.items()):
        if comparator not in DRIFT_COMPARATORS:
            raise ValueError(f"drift comparator of {feature!r}: {comparator!r} is none of {DRIFT_COMPARATORS}")
        entry = config.default_slice_config.feature.add()
        entry.path.step.append(feature)
        getattr(entry.distribution_comparator, comparator).threshold = float(threshold)
    return config


def create_pipeline(
    pipeline_name: str,
    pipeline_root: str,
    data_root: str,
    schema_path: str,
    serving_model_dir: str,
    features: c.FeatureSet,
    light_trainer: dict,
    heavy_trainer: dict,
    auc_floors: dict,
    auc_tolerance: float,
    eval_days: int = 1,
    window_days: Optional[int] = None,
    warm_start: bool = False,
    hap_resolvers: bool = False,
    drift_comparators: Optional[dict] = None,
    accept_drift: bool = False,
    vocab_top_k: int = 100_000,
    model_name: str = "hap",
    cascade: CascadeSettings = CascadeSettings(),
    cascade_tolerance: float = 0.01,
    cascade_blessing_requests: int = 2000,
    metadata_connection_config=None,
    beam_pipeline_args: Optional[list[str]] = None,
    component_beam_args: Optional[dict[str, list[str]]] = None,
    beam_setup_file: Optional[str] = None,
    enable_cache: bool = True,
) -> tfx.dsl.Pipeline:
    """`window_days`: the Trainers learn from that many days before the `eval_days` newest ones
    (default: every earlier day).
    `warm_start`: each Trainer starts from the last blessed model of its kind trained on other data
    (pipeline/resolvers.py; models/trainer_module.py loads its weights).
    `hap_resolvers`: the baselines come from HAP's resolver strategies (pipeline/resolvers.py):
    each Evaluator's is the last blessed model trained on this run's Transform output, not any last
    blessed model (needed once the data changes between runs, a new day: an older model fed today's
    vocabulary indices scores other ids), and the CascadeAssembler's is found at all. Off for
    Kubeflow, whose compiler knows TFX's own strategies only.
    `drift_comparators`: {feature: (TFDV comparator, threshold)} (`drift_config`): the newest day's
    statistics are compared with the last accepted day's and a drift stops the run before Transform
    (components/drift_gate), unless `accept_drift`; empty or None: no drift check.
    `cascade_tolerance`: how far the cascade's blessing metric may fall below the last blessed
    cascade's (components/cascade_assembler), measured on at most `cascade_blessing_requests` eval
    requests (the same ones for both cascades).
    `component_beam_args`: Beam arguments added to some components' (by id, e.g.
    {"Transform": ["--direct_running_mode=multi_processing"]}) after `beam_pipeline_args`, so
    they win; an id that is not a Beam component of the pipeline is an error naming it.
    `beam_setup_file`: HAP's setup.py as the Beam workers' machines see it, named as their
    dependency unless the Beam arguments name one (with_worker_dependency)."""
    model_config = {**preprocessing.make_custom_config(features, vocab_top_k=vocab_top_k),
                    preprocessing.CODE_FINGERPRINT: code_fingerprint()}
    example_gen = ContractExampleGen(input_base=data_root, eval_days=eval_days, window_days=window_days)
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = tfx.components.ImportSchemaGen(schema_file=schema_path)
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
    # The Trainers stream whole requests; the Evaluators read Transform's per-sample examples.
    grouper = RequestGrouper(examples=transform.outputs["transformed_examples"], custom_config=model_config)
    components = [example_gen, statistics_gen, schema_gen, example_validator, gate]
    if drift_comparators:
        # Today (the eval split: the newest day) against the last day the DriftGate accepted.
        accepted = tfx.dsl.Resolver(
            strategy_class=LatestArtifactOrNothingStrategy,
            statistics=Channel(type=ExampleStatistics, producer_component_id="DriftGate",
                               output_key="accepted_statistics"),
        ).with_id("LastAcceptedStatistics")
        baseline_statistics = accepted.outputs["statistics"].as_optional()
        split = example_gen_executor.EVAL
        drift_validator = DistributionValidator(
            statistics=statistics_gen.outputs["statistics"], baseline_statistics=baseline_statistics,
            config=drift_config(drift_comparators), include_split_pairs=[(split, split)])
        drift_gate = DriftGate(anomalies=drift_validator.outputs["anomalies"],
                               statistics=statistics_gen.outputs["statistics"],
                               baseline_statistics=baseline_statistics, accept_drift=accept_drift).with_id("DriftGate")
        transform.add_upstream_node(drift_gate)
        components += [accepted, drift_validator, drift_gate]
    components += [transform, grouper]
    trained = {}

    for model, settings in ((LIGHT, light_trainer), (HEAVY, heavy_trainer)):
        trainer_config = {**model_config, **settings, "model": model}
        TrainerSettings.from_config(trainer_config)  # a bad setting fails here, not in the Trainer
        trainer_id, evaluator_id = f"Trainer_{model}", f"Evaluator_{model}"
        warm = {}
        if warm_start:
            base = tfx.dsl.Resolver(
                strategy_class=LatestBlessedModelOfOtherDataStrategy,
                model=Channel(type=Model, producer_component_id=trainer_id),
                model_blessing=Channel(type=ModelBlessing, producer_component_id=evaluator_id),
                examples=grouper.outputs["request_examples"],
            ).with_id(f"WarmStartModel_{model}")
            components.append(base)
            warm = {"base_model": base.outputs["model"]}
        trainer = tfx.components.Trainer(
            run_fn=RUN_FN,
            examples=grouper.outputs["request_examples"],
            transform_graph=transform.outputs["transform_graph"],
            schema=schema_gen.outputs["schema"],
            custom_config=trainer_config,
            **warm,
        ).with_id(trainer_id)
        same_transform = {"transform_graph": transform.outputs["transform_graph"]} if hap_resolvers else {}
        baseline = tfx.dsl.Resolver(
            strategy_class=(LatestBlessedModelOfSameTransformStrategy if hap_resolvers
                            else tfx.dsl.experimental.LatestBlessedModelStrategy),
            model=Channel(type=Model, producer_component_id=trainer.id),
            model_blessing=Channel(type=ModelBlessing, producer_component_id=evaluator_id),
            **same_transform,
        ).with_id(f"LatestBlessedModel_{model}")
        evaluator = tfx.components.Evaluator(
            examples=transform.outputs["transformed_examples"],
            model=trainer.outputs["model"],
            baseline_model=baseline.outputs["model"],
            eval_config=eval_config(auc_floors[model], auc_tolerance),
        ).with_id(evaluator_id)
        components += [trainer, baseline, evaluator]
        trained[model] = (trainer.outputs["model"], evaluator.outputs["blessing"])

    assembler_id = "CascadeAssembler"
    todays_models = {"light_model": trained[LIGHT][0], "heavy_model": trained[HEAVY][0]} if hap_resolvers else {}
    cascade_baseline = tfx.dsl.Resolver(
        strategy_class=LatestBlessedCascadeStrategy if hap_resolvers else tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=Channel(type=Model, producer_component_id=assembler_id),
        model_blessing=Channel(type=ModelBlessing, producer_component_id=assembler_id),
        **todays_models,
    ).with_id("LatestBlessedCascade")
    assembler = CascadeAssembler(
        transform_graph=transform.outputs["transform_graph"],
        light_model=trained[LIGHT][0], light_blessing=trained[LIGHT][1],
        heavy_model=trained[HEAVY][0], heavy_blessing=trained[HEAVY][1],
        custom_config=model_config, data_root=data_root, settings=cascade, model_name=model_name,
        baseline_model=cascade_baseline.outputs["model"], regression_tolerance=cascade_tolerance,
        blessing_requests=cascade_blessing_requests,
    ).with_id(assembler_id)
    # TF Serving's layout: <model base path>/<model name>/<version>/; the assembler blesses the
    # cascade only when both of its models were blessed and the cascade did not regress.
    pusher = tfx.components.Pusher(
        model=assembler.outputs["model"],
        model_blessing=assembler.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(filesystem=tfx.proto.PushDestination.Filesystem(
            base_directory=os.path.join(serving_model_dir, model_name))))
    components += [cascade_baseline, assembler, pusher]

    beam_components = {node.id: node for node in components if isinstance(node, base_beam_component.BaseBeamComponent)}
    for component_id, args in (component_beam_args or {}).items():
        if component_id not in beam_components:
            raise ValueError(f"component_beam_args: {component_id!r} is not a Beam component of the pipeline; "
                             f"those are {sorted(beam_components)}")
        beam_components[component_id].with_beam_pipeline_args(args)

    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=components,
        enable_cache=enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=with_worker_dependency(beam_pipeline_args or [], beam_setup_file),
    )
