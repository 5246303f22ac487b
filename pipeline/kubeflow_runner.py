"""Compiles the HAP pipeline for Kubeflow Pipelines 2 / Vertex AI Pipelines with TFX's
KubeflowV2DagRunner: `hap compile kubeflow --out FILE` writes the PipelineSpec to submit.

Nothing runs here. Every component runs on the cluster in the pipeline image (Dockerfile), so
every path given must be one the cluster reads (gs://, a mounted volume) and the curated schema is
named by its path inside the image. The cluster keeps ML Metadata itself, so the pipeline carries
no connection config. Trainers can run in a second, GPU image with an accelerator attached; the
data-parallel components (ExampleGen, StatisticsGen, Transform, Evaluator) take the Beam
arguments, e.g. DataflowRunner's, and run their work there.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile

from kfp.pipeline_spec import pipeline_spec_pb2
from tfx import v1 as tfx

from hap import schema as default_schema
from hap.data import contract as c
from hap.pipeline.pipeline import TFX_RESOLVERS, PipelinePaths, create_pipeline
from hap.schema import derive
from hap.settings import HapSettings, defaults

# Where the Dockerfile installs the repository, and so the curated schema, in the image.
IMAGE_ROOT = "/hap"
IMAGE_SCHEMA = f"{IMAGE_ROOT}/schema/schema.pbtxt"
IMAGE_SETUP_FILE = f"{IMAGE_ROOT}/setup.py"
FORMATS = (".json", ".yaml", ".yml")
_RESOURCES = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec


def gpu_resources(gpu_type: str, count: int) -> _RESOURCES:
    if count < 1:
        raise ValueError(f"a GPU Trainer needs at least one GPU, got {count}")
    # TFX validates type/count; newer KFP backends read resource_type/resource_count.
    return _RESOURCES(accelerator=_RESOURCES.AcceleratorConfig(
        type=gpu_type, count=count, resource_type=gpu_type, resource_count=str(count)))


def cluster_settings(settings: HapSettings) -> tuple[HapSettings, list[str]]:
    """`settings` as the cluster runs them, and a note for each change: Beam arguments from
    `kubeflow.beam_args`; the drift gate and the warm start off, since their resolver strategies
    do not compile for KubeflowV2 (docs/deploying.md, Kubeflow)."""
    notes = []
    if settings.drift.check:
        notes.append("drift.check is off in the compiled pipeline: its resolver does not compile for Kubeflow")
    if settings.warm_start:
        notes.append("warm_start is off in the compiled pipeline: its resolver does not compile for Kubeflow")
    return dataclasses.replace(settings, beam=dataclasses.replace(settings.beam, args=list(settings.kubeflow.beam_args)),
                               drift=dataclasses.replace(settings.drift, check=False), warm_start=False), notes


def build(data_root: str, pipeline_root: str, settings: HapSettings | None = None,
          serving_model_dir: str | None = None, features_path: str | None = None,
          schema_path: str | None = None, gpu: bool = False) -> tfx.dsl.Pipeline:
    """The pipeline for the cluster. The feature set is read here, at compile time, from a local
    `features_path` (default: the default feature set), since Transform and the Trainers carry
    it in their configuration; a non-default one needs the `schema_path` of its curated schema.
    With `gpu`, the Trainers ask for `kubeflow.gpus` accelerators of `kubeflow.gpu_type`."""
    settings, _ = cluster_settings(settings or defaults())
    features = _load_features(features_path or default_schema.DEFAULT_FEATURES)
    if schema_path is None:
        if features.listed != _load_features(default_schema.DEFAULT_FEATURES).listed:
            raise ValueError(f"{features_path} is not the default feature set, so its schema must be given: "
                             "derive one with `hap schema derive`, curate it, and pass a path the cluster reads")
        schema_path = IMAGE_SCHEMA
    paths = PipelinePaths(data_root=data_root, pipeline_root=pipeline_root,
                          serving_model_dir=serving_model_dir or f"{pipeline_root.rstrip('/')}/serving",
                          schema_path=schema_path, beam_setup_file=IMAGE_SETUP_FILE)
    pipeline = create_pipeline(paths, settings, features, resolvers=TFX_RESOLVERS)
    if gpu:
        resources = gpu_resources(settings.kubeflow.gpu_type, settings.kubeflow.gpus)
        for trainer in trainers(pipeline):
            trainer.with_platform_config(resources)
    return pipeline


def _load_features(path: str) -> c.FeatureSet:
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such features.yaml")
    return c.parse_features(derive.load_yaml(path), path)


def trainers(pipeline: tfx.dsl.Pipeline) -> list:
    return [node for node in pipeline.components if isinstance(node, tfx.components.Trainer)]


def compile_pipeline(pipeline: tfx.dsl.Pipeline, out_file: str, image: str,
                     gpu_image: str | None = None) -> dict:
    """Writes the PipelineSpec of `pipeline` to `out_file` (.json: a PipelineJob, .yaml: the
    PipelineSpec alone) and returns the PipelineJob as a dict. Every component runs in `image`,
    the Trainers in `gpu_image` when given. The file appears complete or not at all."""
    if not out_file.endswith(FORMATS):
        raise ValueError(f"--out must end with one of {', '.join(FORMATS)}, got {out_file}")
    # A plain string when one image serves all: TFX 1.16 warns about any map (its check is inverted).
    images = {"default_image_path": image, **{t.id: gpu_image for t in trainers(pipeline)}} if gpu_image else image
    out_file = os.path.abspath(out_file)
    os.makedirs(os.path.dirname(out_file), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(out_file), prefix=".compile-") as tmp:
        runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
            config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=images),
            output_dir=tmp, output_filename=os.path.basename(out_file))
        job = runner.run(pipeline)
        os.replace(os.path.join(tmp, os.path.basename(out_file)), out_file)
    return job
