"""`hap compile kubeflow`: the compiled spec parses as KFP's PipelineJob / PipelineSpec protos
(strictly: an unknown field fails) and holds every component of the pipeline, with the images,
accelerators and Beam arguments asked for. Expected components come from the pipeline object, so
the test follows the pipeline as it grows."""
import json
import os

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2
from tfx.dsl.components.base import executor_spec
from tfx.dsl.components.common import resolver

from hap import cli, settings
from hap.pipeline import kubeflow_runner

CPU, GPU = "registry.example.com/hap:cpu", "registry.example.com/hap:gpu"
BEAM = ["--runner=DataflowRunner", "--project=my-project", "--region=europe-west4",
        "--temp_location=gs://bucket/tmp"]
ROOTS = {"data_root": "gs://bucket/data", "pipeline_root": "gs://bucket/root"}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("kfp") / "hap.json")
    tree = settings.override(settings.defaults(), {"kubeflow.beam_args": BEAM, "kubeflow.gpu_type": "NVIDIA_L4",
                                                   "kubeflow.gpus": 2})
    pipeline = kubeflow_runner.build(**ROOTS, settings=tree, gpu=True)
    kubeflow_runner.compile_pipeline(pipeline, out, image=CPU, gpu_image=GPU)
    with open(out) as f:
        job = json_format.Parse(f.read(), pipeline_spec_pb2.PipelineJob())
    spec = json_format.ParseDict(json_format.MessageToDict(job.pipeline_spec), pipeline_spec_pb2.PipelineSpec())
    deployment = json_format.ParseDict(json_format.MessageToDict(spec.deployment_spec),
                                       pipeline_spec_pb2.PipelineDeploymentConfig())
    return {"out": out, "pipeline": pipeline, "job": job, "spec": spec, "deployment": deployment}


def _container(compiled, task_id):
    spec = compiled["spec"]
    label = spec.components[spec.root.dag.tasks[task_id].component_ref.name].executor_label
    return compiled["deployment"].executors[label].container


def _tasks_of(node, tasks):
    """Task ids of a pipeline node: a LatestBlessedModel resolver compiles to two tasks."""
    if isinstance(node, resolver.Resolver):
        return {t for t in tasks if t == node.id or t.startswith(f"{node.id}-")}
    return {node.id} & set(tasks)


def test_every_component_is_a_task_and_nothing_else(compiled):
    tasks = set(compiled["spec"].root.dag.tasks)
    nodes = compiled["pipeline"].components
    assert len(nodes) >= 12
    covered = set()
    for node in nodes:
        found = _tasks_of(node, tasks)
        assert found, f"{node.id} is missing from the compiled spec"
        covered |= found
    assert covered == tasks
    assert compiled["spec"].pipeline_info.name == "hap" and compiled["spec"].schema_version == "2.0.0"


def test_components_run_in_the_configured_images(compiled):
    trainers = {t.id for t in kubeflow_runner.trainers(compiled["pipeline"])}
    assert trainers == {"Trainer_light", "Trainer_heavy", "Tuner_light", "Tuner_heavy"}, "they train models"
    for node in compiled["pipeline"].components:
        if isinstance(node, resolver.Resolver):
            continue
        container = _container(compiled, node.id)
        assert container.image == (GPU if node.id in trainers else CPU), node.id
        accelerator = container.resources.accelerator
        assert (accelerator.type, accelerator.count) == (("NVIDIA_L4", 2) if node.id in trainers else ("", 0)), node.id


def test_the_data_parallel_components_get_the_beam_arguments(compiled):
    beam_nodes = {n.id for n in compiled["pipeline"].components
                  if isinstance(getattr(n, "executor_spec", None), executor_spec.BeamExecutorSpec)}
    assert {"ContractExampleGen", "StatisticsGen", "Transform", "RequestGrouper", "Evaluator_light",
            "Evaluator_heavy"} <= beam_nodes
    # The Dataflow workers install HAP from the image's setup.py (BEAM names no dependency).
    expected = BEAM + [f"--setup_file={kubeflow_runner.IMAGE_SETUP_FILE}"]
    for node_id in beam_nodes:
        args = list(_container(compiled, node_id).args)
        assert args[-len(expected):] == expected, (node_id, args)
    # ExampleGen's driver fingerprints the input files before the executor runs, with the same runner.
    driver = _container(compiled, "ContractExampleGen").lifecycle.pre_cache_check
    assert list(driver.args)[-len(expected):] == expected


def test_the_curated_schema_is_read_from_the_image(compiled):
    task = compiled["spec"].root.dag.tasks["ImportSchemaGen"]
    assert task.inputs.parameters["schema_file"].runtime_value.constant_value.string_value == \
        kubeflow_runner.IMAGE_SCHEMA
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(repo, "Dockerfile")) as f:
        dockerfile = f.read().splitlines()
    assert f"WORKDIR {kubeflow_runner.IMAGE_ROOT}" in dockerfile and "COPY . ." in dockerfile
    assert kubeflow_runner.IMAGE_SCHEMA == f"{kubeflow_runner.IMAGE_ROOT}/schema/schema.pbtxt"
    assert os.path.isfile(os.path.join(repo, "schema", "schema.pbtxt"))
    assert kubeflow_runner.IMAGE_SETUP_FILE == f"{kubeflow_runner.IMAGE_ROOT}/setup.py"
    assert os.path.isfile(os.path.join(repo, "setup.py"))


def test_the_output_is_written_atomically(compiled):
    assert os.listdir(os.path.dirname(compiled["out"])) == ["hap.json"]


def test_cli_writes_a_yaml_pipeline_spec(tmp_path, capsys):
    out = tmp_path / "spec" / "hap.yaml"
    assert cli.main(["compile", "kubeflow", "--out", str(out), "--image", CPU, "--data-root", ROOTS["data_root"],
                     "--pipeline-root", ROOTS["pipeline_root"], "--beam-arg=--direct_num_workers=4"]) == 0
    assert "wrote" in capsys.readouterr().out
    with open(out) as f:
        spec = json_format.ParseDict(yaml.safe_load(f), pipeline_spec_pb2.PipelineSpec())
    executors = spec.deployment_spec["executors"]
    images = {e["container"]["image"] for e in executors.values() if "container" in e}
    assert images == {CPU}
    assert "--direct_num_workers=4" in executors["Transform_executor"]["container"]["args"]


@pytest.mark.parametrize("extra, message", [
    (["--out", "hap.txt"], "must end with"),
    (["--gpus", "2"], "--gpu-image"),
    (["--gpu-image", GPU, "--gpus", "0"], "at least one GPU"),
    (["--set", "kubeflow.gpus=0"], "at least one GPU"),
    (["--set", "cascade.routing.fractoin=0.3"], "did you mean cascade.routing.fraction"),
    (["--features", "missing/features.yaml"], "no such features.yaml"),
])
def test_bad_input_is_a_clear_error(tmp_path, capsys, extra, message):
    argv = ["compile", "kubeflow", "--out", str(tmp_path / "hap.json"), "--image", CPU,
            "--data-root", ROOTS["data_root"], "--pipeline-root", ROOTS["pipeline_root"]] + extra
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "hap.json")


def test_a_foreign_feature_set_needs_its_schema(tmp_path):
    features = tmp_path / "features.yaml"
    features.write_text("version: 1\nfeatures:\n  - {name: i_price, role: item, kind: numeric}\n")
    with pytest.raises(ValueError, match="schema must be given"):
        kubeflow_runner.build(**ROOTS, features_path=str(features))
    pipeline = kubeflow_runner.build(**ROOTS, features_path=str(features), schema_path="gs://bucket/schema.pbtxt")
    assert pipeline.pipeline_info.pipeline_root == ROOTS["pipeline_root"]


def _producer_task(node_id, tasks):
    """The task that produces a node's outputs: a LatestBlessedModel resolver's model comes from
    its second task, `<id>-model-resolver`."""
    return node_id if node_id in tasks else f"{node_id}-model-resolver"


def test_every_artifact_is_read_from_the_producer_the_pipeline_wired(compiled):
    """KFP passes an artifact by (producer task, output key), not by a name: the two Trainers'
    `model` and the two Evaluators' `blessing`, which collided by name under TFX's Airflow
    launcher (pipeline/airflow_launcher.py), reach the components they were wired to."""
    tasks = compiled["spec"].root.dag.tasks
    edges = 0
    for node in compiled["pipeline"].components:
        if isinstance(node, resolver.Resolver):
            continue
        assert set(tasks[node.id].inputs.artifacts) == set(node.inputs), node.id
        for key, channel in node.inputs.items():
            source = tasks[node.id].inputs.artifacts[key].task_output_artifact
            assert (source.producer_task, source.output_artifact_key) == (
                _producer_task(channel.producer_component_id, tasks), channel.output_key), (node.id, key)
            edges += 1
    assert tasks["CascadeAssembler"].inputs.artifacts["heavy_blessing"].task_output_artifact.producer_task == \
        "Evaluator_heavy"
    assert edges >= 20


def _queries(compiled) -> dict:
    """{(executor label, output key): filter} of every compiled resolver query."""
    return {(label, key): query.filter for label, executor in compiled["deployment"].executors.items()
            for key, query in executor.resolver.output_artifact_queries.items()}


def test_each_resolver_query_selects_the_role_its_local_channel_selects(compiled):
    """KubeflowV2 compiles a resolver to queries by artifact type alone; each query also names the
    role that LocalDagRunner's channel selects by producer and output key (pipeline/resolvers.py),
    so an Evaluator's baseline is its own model's and the last accepted statistics the DriftGate's.
    tests/test_pipeline_e2e.py checks that a local run tags exactly those artifacts with it."""
    queries = _queries(compiled)
    checked = 0
    for node in compiled["pipeline"].components:
        if not isinstance(node, resolver.Resolver):
            continue
        for key, channel in node.raw_inputs.items():
            role = f'metadata.hap_role.string_value="{channel.producer_component_id}.{channel.output_key}"'
            found = [f for (label, k), f in queries.items() if k == key and label.startswith(node.id)]
            assert found and all(f.endswith(role) for f in found), (node.id, key, found)
            checked += 1
    assert checked >= 7
    blessing = {m: queries[(f"LatestBlessedModel_{m}-model-blessing-resolver_executor", "model_blessing")]
                for m in ("light", "heavy")}
    assert blessing["light"] != blessing["heavy"] and "Evaluator_light.blessing" in blessing["light"]


def test_the_compiled_pipeline_has_the_window_the_drift_gate_and_the_warm_start(tmp_path, capsys):
    argv = ["compile", "kubeflow", "--out", str(tmp_path / "hap.json"), "--image", CPU, "--data-root",
            ROOTS["data_root"], "--pipeline-root", ROOTS["pipeline_root"], "--set", "warm_start=true",
            "--set", "data.window_days=2"]
    assert cli.main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    with open(tmp_path / "hap.json") as f:
        spec = json.load(f)["pipelineSpec"]
    tasks = spec["root"]["dag"]["tasks"]
    assert {"LastAcceptedStatistics", "DistributionValidator", "DriftGate"} <= set(tasks)
    assert tasks["Transform"]["dependentTasks"] and "DriftGate" in tasks["Transform"]["dependentTasks"]
    for model in ("light", "heavy"):
        base = tasks[f"Trainer_{model}"]["inputs"]["artifacts"]["base_model"]["taskOutputArtifact"]
        assert base["producerTask"] == f"WarmStartModel_{model}-model-resolver"
    example_gen = tasks["ContractExampleGen"]["inputs"]["parameters"]["custom_config"]
    assert json.loads(example_gen["runtimeValue"]["constantValue"]["stringValue"])["custom_config"]["value"][
        "window_days"] == 2