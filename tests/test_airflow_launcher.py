"""The launcher of the Airflow DAG (pipeline/airflow_launcher.py) against TFX's own, on ML
Metadata in SQLite, without Airflow: two components of one run with the same output key and type
(HAP's two Trainers' `model`), and one artifact given to a component under two keys (a cached
model that is also the last blessed baseline). TFX's in-process launcher fails on each; ours
records them as LocalDagRunner does, and downstream components read what they were wired to.
A Resolver's input wired from a component of the run gets that run's output only, as under
LocalDagRunner; TFX's launcher gives it every run's. A task retried after a failed try (a
worker killed) completes here; under TFX's launcher every retry fails."""
import os

import pytest
from ml_metadata import errors as mlmd_errors
from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx
from tfx.orchestration import data_types, metadata
from tfx.orchestration.launcher import in_process_component_launcher

from hap.pipeline.airflow_launcher import AirflowComponentLauncher

Model = tfx.types.standard_artifacts.Model
TFX_LAUNCHER = in_process_component_launcher.InProcessComponentLauncher


@tfx.dsl.components.component
def WriteModel(model: tfx.dsl.components.OutputArtifact[Model], tag: tfx.dsl.components.Parameter[str]):
    with open(os.path.join(model.uri, "tag"), "w") as f:
        f.write(tag)


@tfx.dsl.components.component
def CompareModels(model: tfx.dsl.components.InputArtifact[Model],
                  baseline_model: tfx.dsl.components.InputArtifact[Model],
                  blessing: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.ModelBlessing]):
    for key, artifact in (("model", model), ("baseline", baseline_model)):
        with open(os.path.join(artifact.uri, "tag")) as f:
            blessing.set_string_custom_property(key, f.read())


def _launch(launcher_class, component, tmp_path, run_id):
    launcher = launcher_class.create(
        component=component,
        pipeline_info=data_types.PipelineInfo("hap", str(tmp_path / "root"), run_id=run_id),
        driver_args=data_types.DriverArgs(enable_cache=True),
        metadata_connection=metadata.Metadata(
            tfx.orchestration.metadata.sqlite_metadata_connection_config(str(tmp_path / "metadata.sqlite"))),
        beam_pipeline_args=[], additional_pipeline_args={})
    return launcher.launch()


def _day(day):
    """Two Trainer-like components with one output key, and an Evaluator-like one comparing the
    heavy one's model with itself, as a cached model that is its own baseline is compared."""
    light = WriteModel(tag=f"light {day}").with_id("Trainer_light")
    heavy = WriteModel(tag=f"heavy {day}").with_id("Trainer_heavy")
    evaluator = CompareModels(model=heavy.outputs["model"],
                              baseline_model=heavy.outputs["model"]).with_id("Evaluator_heavy")
    return light, heavy, evaluator


def test_tfx_own_launcher_collides_on_a_shared_output_key(tmp_path):
    light, heavy, _ = _day("day1")
    _launch(TFX_LAUNCHER, light, tmp_path, "day1")
    with pytest.raises(mlmd_errors.AlreadyExistsError, match="UNIQUE constraint failed: Artifact.type_id, Artifact.name"):
        _launch(TFX_LAUNCHER, heavy, tmp_path, "day1")


def test_tfx_own_launcher_fails_on_one_artifact_under_two_keys(tmp_path):
    _, heavy, evaluator = _day("day1")
    _launch(AirflowComponentLauncher, heavy, tmp_path, "day1")
    with pytest.raises(Exception) as failure:
        _launch(TFX_LAUNCHER, evaluator, tmp_path, "day1")
    # TFX catches ML Metadata's error and then fails an assertion of its own while handling it.
    cause = failure.value
    while cause is not None and not isinstance(cause, mlmd_errors.AlreadyExistsError):
        cause = cause.__context__
    assert cause is not None and "Given event already exists" in str(cause)


def test_two_days_run_and_each_artifact_is_recorded_once(tmp_path):
    names = set()
    for day in ("day1", "day2"):
        for component in _day(day):
            info = _launch(AirflowComponentLauncher, component, tmp_path, day)
            names |= {a.name for artifacts in info.output_dict.values() for a in artifacts}
        (blessing,) = info.output_dict["blessing"]
        assert (blessing.get_string_custom_property("model"),
                blessing.get_string_custom_property("baseline")) == (f"heavy {day}", f"heavy {day}")
        (model,) = info.input_dict["model"]
        with metadata.Metadata(tfx.orchestration.metadata.sqlite_metadata_connection_config(
                str(tmp_path / "metadata.sqlite"))) as m:
            (event,) = [e for e in m.store.get_events_by_execution_ids([info.execution_id])
                        if e.type == metadata_store_pb2.Event.INPUT]
        assert event.artifact_id == model.id
        assert [getattr(s, s.WhichOneof("value")) for s in event.path.steps] == ["model", 0, "baseline_model", 0]
    assert names == {f"hap:{day}:{component}:{key}:0" for day in ("day1", "day2")
                     for component, key in (("Trainer_light", "model"), ("Trainer_heavy", "model"),
                                            ("Evaluator_heavy", "blessing"))}


class EveryInput(tfx.dsl.experimental.ResolverStrategy):
    """Resolves to its inputs as the driver found them."""

    def resolve_artifacts(self, store, input_dict):
        return input_dict


def _resolver_inputs(launcher_class, tmp_path, history=True):
    """Each day's Trainer_light, then a Resolver given its model as today's input (wired from the
    component, as HAP's `examples`, `transform_graph`, `light_model`) and as history (a producer
    and a type, as HAP's `model`): the tags of what the second day's Resolver got. (TFX's launcher
    cannot take the history too: one artifact under two keys, see above.)"""
    for day in ("day1", "day2"):
        light, _, _ = _day(day)
        _launch(AirflowComponentLauncher, light, tmp_path, day)
        inputs = {"today": light.outputs["model"]}
        if history:
            inputs["history"] = tfx.dsl.Channel(type=Model, producer_component_id="Trainer_light")
        node = tfx.dsl.Resolver(strategy_class=EveryInput, **inputs).with_id("Resolver")
        info = _launch(launcher_class, node, tmp_path, day)
    tags = {}
    for key, artifacts in info.output_dict.items():
        tags[key] = []
        for artifact in artifacts:
            with open(os.path.join(artifact.uri, "tag")) as f:
                tags[key].append(f.read())
    return {key: sorted(value) for key, value in tags.items()}


def test_a_resolver_gets_todays_input_from_this_run_only(tmp_path):
    assert _resolver_inputs(AirflowComponentLauncher, tmp_path) == {
        "today": ["light day2"], "history": ["light day1", "light day2"]}


def test_tfx_own_launcher_gives_a_resolver_every_days_input(tmp_path):
    assert _resolver_inputs(TFX_LAUNCHER, tmp_path, history=False) == {"today": ["light day1", "light day2"]}


@tfx.dsl.components.component
def CopyModel(model: tfx.dsl.components.InputArtifact[Model], copy: tfx.dsl.components.OutputArtifact[Model],
              fail_flag: tfx.dsl.components.Parameter[str]):
    """Fails after writing part of its output while `fail_flag` exists, as a task whose worker is killed."""
    if os.path.exists(fail_flag):
        with open(os.path.join(copy.uri, "half-written"), "w") as f:
            f.write("x")
        os.remove(fail_flag)
        raise RuntimeError("the worker died")
    with open(os.path.join(model.uri, "tag")) as src, open(os.path.join(copy.uri, "tag"), "w") as dst:
        dst.write(src.read())


def _retried(launcher_class, tmp_path):
    """Trainer_light, then CopyModel failing its first try and launched again in the same run."""
    flag = tmp_path / "fail-once"
    flag.write_text("")
    light = WriteModel(tag="light").with_id("Trainer_light")
    copy = CopyModel(model=light.outputs["model"], fail_flag=str(flag)).with_id("Copy")
    _launch(launcher_class, light, tmp_path, "run1")
    with pytest.raises(RuntimeError, match="the worker died"):
        _launch(launcher_class, copy, tmp_path, "run1")
    return copy


def test_tfx_own_launcher_fails_every_retry_of_a_task(tmp_path):
    copy = _retried(TFX_LAUNCHER, tmp_path)
    with pytest.raises(mlmd_errors.AlreadyExistsError, match="Given event already exists"):
        _launch(TFX_LAUNCHER, copy, tmp_path, "run1")


def test_a_retry_completes_the_same_execution_in_an_emptied_output(tmp_path):
    copy = _retried(AirflowComponentLauncher, tmp_path)
    _launch(AirflowComponentLauncher, copy, tmp_path, "run1")
    store = metadata.Metadata(tfx.orchestration.metadata.sqlite_metadata_connection_config(
        str(tmp_path / "metadata.sqlite"))).__enter__().store
    (execution,) = [e for e in store.get_executions() if "Copy" in e.properties["component_id"].string_value]
    assert execution.last_known_state == metadata_store_pb2.Execution.COMPLETE
    events = store.get_events_by_execution_ids([execution.id])
    assert sorted((e.type, e.path.steps[0].key) for e in events) == [
        (metadata_store_pb2.Event.INPUT, "model"), (metadata_store_pb2.Event.OUTPUT, "copy")]
    (output,) = store.get_artifacts_by_id([e.artifact_id for e in events if e.type == metadata_store_pb2.Event.OUTPUT])
    assert output.state == metadata_store_pb2.Artifact.LIVE
    assert sorted(os.listdir(output.uri)) == ["tag"], "the failed try's file is gone"
    with open(os.path.join(output.uri, "tag")) as f:
        assert f.read() == "light"
