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
from tfx.components.evaluator import constants as evaluator_constants
from tfx.dsl.components.common import resolver
from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

from hap import schema as default_schema
from hap.data import contract as c
from hap.components.tuner.component import Tuner
from hap.pipeline import resolvers
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


def cluster_settings(settings: HapSettings) -> HapSettings:
    """`settings` as the cluster runs them: the Beam arguments are `kubeflow.beam_args`."""
    return dataclasses.replace(settings, beam=dataclasses.replace(settings.beam, args=list(settings.kubeflow.beam_args)))


def build(data_root: str, pipeline_root: str, settings: HapSettings | None = None,
          serving_model_dir: str | None = None, features_path: str | None = None,
          schema_path: str | None = None, gpu: bool = False) -> tfx.dsl.Pipeline:
    """The pipeline for the cluster. The feature set is read here, at compile time, from a local
    `features_path` (default: the default feature set), since Transform and the Trainers carry
    it in their configuration; a non-default one needs the `schema_path` of its curated schema.
    With `gpu`, the Trainers and Tuners (`trainers`) ask for `kubeflow.gpus` accelerators of `kubeflow.gpu_type`."""
    settings = cluster_settings(settings or defaults())
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
    """The components that train models, the Trainers and their Tuners: they run in the GPU image."""
    return [node for node in pipeline.components if isinstance(node, (tfx.components.Trainer, Tuner))]


def compile_pipeline(pipeline: tfx.dsl.Pipeline, out_file: str, image: str,
                     gpu_image: str | None = None) -> dict:
    """Writes the PipelineSpec of `pipeline` to `out_file` (.json: a PipelineJob, .yaml: the
    PipelineSpec alone) and returns the PipelineJob as a dict. Every component runs in `image`,
    the Trainers and Tuners in `gpu_image` when given. The file appears complete or not at all."""
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
        job = runner.run(pipeline, write_out=False)
        narrow_resolver_queries(job, pipeline)
        staged = os.path.join(tmp, os.path.basename(out_file))
        # TFX's own writer, so the file is what runner.run would write, with the queries narrowed.
        kubeflow_v2_dag_runner._write_pipeline_spec_to_file(  # noqa: SLF001
            job, f"HAP's pipeline, compiled by TFX {tfx.__version__}", staged)
        os.replace(staged, out_file)
    return job


# TFX's query pairs a blessing with its model by `current_model_id`, which a cascade's blessing
# cannot know (pipeline/resolvers.py, LatestBlessedCascadeStrategy); every blessing, the
# Evaluators' too, also names its model by URI, so the queries pair by that.
_MODEL_BY_ID = 'name="{{$.inputs.artifacts[\'input\'].metadata[\'%s\']}}"' % (
    evaluator_constants.ARTIFACT_PROPERTY_CURRENT_MODEL_ID_KEY)
_MODEL_BY_URI = 'uri="{{$.inputs.artifacts[\'input\'].metadata[\'%s\']}}"' % (
    evaluator_constants.ARTIFACT_PROPERTY_CURRENT_MODEL_URI_KEY)


def narrow_resolver_queries(job: dict, pipeline: tfx.dsl.Pipeline) -> None:
    """Adds to each compiled resolver query the role of the channel it resolves (the custom
    property every such artifact carries, pipeline/resolvers.py), which the KubeflowV2 compiler
    leaves out: without it a query takes the newest artifact of the type from any component."""
    executors = job["pipelineSpec"]["deploymentSpec"]["executors"]
    for node in pipeline.components:
        if not isinstance(node, resolver.Resolver):
            continue
        labels = [label for label in executors if label == f"{node.id}_executor" or label.startswith(f"{node.id}-")]
        for key, channel in node.raw_inputs.items():
            role = resolvers.history_role(channel)
            for label in labels:
                query = executors[label].get("resolver", {}).get("outputArtifactQueries", {}).get(key)
                if query is None:
                    continue
                query["filter"] = (query["filter"].replace(_MODEL_BY_ID, _MODEL_BY_URI)
                                   + f' AND metadata.{resolvers.ROLE}.string_value="{role}"')
