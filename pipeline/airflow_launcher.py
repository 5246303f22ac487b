"""The component launcher the Airflow DAG runs HAP's components with: TFX's in-process launcher,
with the two ML Metadata records it gets wrong written as LocalDagRunner writes them.

TFX's AirflowDagRunner launches components through the pre-IR launcher (tfx.orchestration.
launcher, its drivers and tfx.orchestration.metadata), which LocalDagRunner and Kubeflow no longer
use. Run for real, HAP's DAG failed twice there:

1. **Artifact names.** The pre-IR driver names every output artifact `<output key>:<run id>`
   (BaseDriver._prepare_output_artifacts; tensorflow/tfx#4977). ML Metadata keeps artifact names
   unique per artifact type, so two components of one run with the same output key and type
   collide: the two Trainers' `model`, the two Evaluators' `blessing` and `evaluation`. The first
   run failed at Trainer_heavy with `AlreadyExistsError ... UNIQUE constraint failed:
   Artifact.type_id, Artifact.name`. Here artifacts get LocalDagRunner's name,
   `<pipeline>:<run id>:<component id>:<output key>:<index>`. Nothing reads the old name:
   downstream components find their inputs by producer execution and output key (the event).
2. **One input event per artifact.** When a day's data is unchanged, the Trainer is served from
   cache and its model is also the last blessed one, so the Evaluator gets one artifact as both
   `model` and `baseline_model`. The pre-IR metadata layer writes one INPUT event per key, and ML
   Metadata allows one event per (artifact, execution, type): the next day's run failed at
   Evaluator_heavy with `AlreadyExistsError: Given event already exists`. Here, as in the portable
   layer (execution_lib._create_artifact_and_event_pairs), an artifact used under several keys
   gets one event whose path lists each (key, index).
3. **Today's inputs of a Resolver.** The pre-IR resolver driver (resolver._ResolverDriver) gives a
   Resolver every artifact of each input channel in the whole pipeline's history, also for a
   channel wired from a component of this run. HAP's strategies (pipeline/resolvers.py) take
   today's artifacts on such a channel (`examples`, `transform_graph`, `light_model`, ...) to
   tell today's models from earlier days', as LocalDagRunner gives them: only this run's. Given
   every day's, the second day's DagRun warm-started nothing (every model had read "today's"
   examples) and failed at Evaluator_heavy, whose baseline was yesterday's model fed today's
   vocabulary indices (`indices[0] = 1200 is not in [0, 1200)`). Here a channel wired from a
   component (an OutputChannel) resolves to what that component output in this run, as every
   other component's inputs do (BaseDriver.resolve_input_artifacts); a channel that names only a
   producer and a type (the history of models and blessings) keeps the whole pipeline's.

4. **Output artifacts' custom properties.** The pre-IR driver drops an output channel's
   `additional_custom_properties`, which LocalDagRunner's and KubeflowV2's compilers record on
   each artifact. HAP's resolvers select by the role they carry (pipeline/resolvers.py), so here
   each output artifact gets them as the portable layer gives them (outputs_utils).

5. **Empty artifacts on an object store.** The pre-IR driver checks that every input artifact's
   URI exists (BaseDriver.verify_input_artifacts). An object store has no directories, only
   objects under a prefix, so an artifact its component left empty does not "exist": under the
   CeleryExecutor with artifacts on S3 the first DagRun failed at DriftGate with `Artifact uri
   s3://.../DistributionValidator/anomalies/6 is missing` (no baseline yet, so no anomalies
   file). The portable layer makes no such check; here a URI on an object store only has to be
   set, as an artifact ML Metadata published.

6. **A task's retry.** When a try fails after the driver registered its execution (a worker
   killed mid-task, under the CeleryExecutor), TFX's metadata layer gives the next try the same
   execution (one per component and run) and puts its input events again, which ML Metadata
   refuses: the retry failed at once with `AlreadyExistsError: Given event already exists`, and
   so did every later one; past that, it registered its outputs again under the names the
   failed try had registered. Here a retry adds only the input events the execution lacks, takes
   over the output artifacts the failed try registered, and empties the directories it may have
   half-written (an output URI names its execution, so only an earlier try wrote there) before
   the executor runs.

All six are fixed in the launcher, where these records are made, rather than by renaming components
or output keys: the keys are the standard Trainer's and Evaluator's own, and any pipeline with two
components of one kind, a baseline equal to its candidate, or a Resolver reading an upstream
component's output, meets the same failures.
"""
from __future__ import annotations

import posixpath
from typing import Any

from ml_metadata.proto import metadata_store_pb2
from tfx import types
from tfx.dsl.components.common import resolver
from tfx.orchestration import data_types, metadata
from tfx.orchestration.launcher import in_process_component_launcher

from hap import storage


def artifact_name(component_info: data_types.ComponentInfo, output_key: str, index: int) -> str:
    pipeline = component_info.pipeline_info
    return f"{pipeline.pipeline_name}:{pipeline.run_id}:{component_info.component_id}:{output_key}:{index}"


class _ComponentScopedNames:
    """Mixed in before a component's own driver class, so that whatever it prepares (ExampleGen's
    span-aware driver, the base one) is renamed before it is registered."""

    def _prepare_output_artifacts(self, *args: Any, **kwargs: Any) -> dict[str, list[types.Artifact]]:
        outputs = super()._prepare_output_artifacts(*args, **kwargs)
        component_info, output_dict = kwargs["component_info"], kwargs["output_dict"]
        for key, artifacts in outputs.items():
            properties = getattr(output_dict[key], "additional_custom_properties", {})
            for index, artifact in enumerate(artifacts):
                artifact.name = artifact_name(component_info, key, index)
                earlier = self._metadata_handle.store.get_artifact_by_type_and_name(artifact.type_name, artifact.name)
                if earlier is not None:  # registered by an earlier try of this execution
                    artifact.id = earlier.id
                    _empty_earlier_try(artifact)
                for name, value in properties.items():
                    _set_custom_property(artifact, name, value)
        return outputs


def _set_custom_property(artifact: types.Artifact, name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"custom property {name}={value!r}: only str, int and float are recorded")
    setter = {str: artifact.set_string_custom_property, int: artifact.set_int_custom_property,
              float: artifact.set_float_custom_property}[type(value)]
    setter(name, value)


def _empty_earlier_try(artifact: types.Artifact) -> None:
    """Empties the output directory an earlier try of the execution may have half-written."""
    directory = posixpath.dirname(artifact.uri) if isinstance(artifact, types.ValueArtifact) else artifact.uri
    if storage.isdir(directory) and storage.listdir(directory):
        storage.rmtree(directory)
        storage.makedirs(directory)


def with_component_scoped_names(driver_class: type) -> type:
    return type(f"ComponentScoped{driver_class.__name__}", (_ComponentScopedNames, driver_class), {})


class _EmptyObjectStoreInputs:
    """Mixed in before a component's own driver class: an input on an object store needs a URI,
    not an object under it (see above)."""

    def verify_input_artifacts(self, artifacts_dict: dict[str, list[types.Artifact]]) -> None:
        local = {}
        for key, artifacts in artifacts_dict.items():
            if any(not artifact.uri for artifact in artifacts):
                raise RuntimeError(f"input {key} has an artifact without a URI")
            local[key] = [artifact for artifact in artifacts if not storage.is_remote(artifact.uri)]
        super().verify_input_artifacts(local)


def with_empty_object_store_inputs(driver_class: type) -> type:
    return type(f"ObjectStore{driver_class.__name__}", (_EmptyObjectStoreInputs, driver_class), {})


class _TodayFromThisRun:
    """Mixed in before resolver._ResolverDriver: an input channel wired from a component of the
    pipeline (an OutputChannel) resolves to that component's output in this run (see above)."""

    def _build_input_dict(self, pipeline_info: data_types.PipelineInfo,
                          input_channels: dict[str, types.BaseChannel]) -> dict[str, list[types.Artifact]]:
        today = {key: c for key, c in input_channels.items() if isinstance(c, types.OutputChannel)}
        result = super()._build_input_dict(
            pipeline_info, {key: c for key, c in input_channels.items() if key not in today})
        for key, channel in today.items():
            result[key] = self._metadata_handle.search_artifacts(
                artifact_name=channel.output_key, pipeline_info=pipeline_info,
                producer_component_id=channel.producer_component_id)
        return result


def with_todays_inputs_from_this_run(driver_class: type) -> type:
    return type(f"ThisRun{driver_class.__name__}", (_TodayFromThisRun, driver_class), {})


class OneEventPerArtifact(metadata.Metadata):
    """The pre-IR metadata handle, writing one event per artifact and event type, and a retry's
    input events once (see above)."""

    def register_execution(self, pipeline_info: data_types.PipelineInfo, component_info: data_types.ComponentInfo,
                           contexts: list, exec_properties: dict | None = None,
                           input_artifacts: dict[str, list[types.Artifact]] | None = None):
        context = self.get_component_run_context(component_info)
        if context is not None and input_artifacts:
            recorded = {e.artifact_id for execution in self.store.get_executions_by_context(context.id)
                        for e in self.store.get_events_by_execution_ids([execution.id])
                        if e.type == metadata_store_pb2.Event.INPUT}
            input_artifacts = {key: [a for a in artifacts if a.id not in recorded]
                               for key, artifacts in input_artifacts.items()}
        return super().register_execution(pipeline_info, component_info, contexts, exec_properties, input_artifacts)

    def _artifact_and_event_pairs(self, *args: Any, **kwargs: Any) -> list[tuple]:
        merged, event_of = [], {}
        for pair in super()._artifact_and_event_pairs(*args, **kwargs):
            artifact = pair[0]
            if len(pair) == 2 and artifact.id and artifact.id in event_of:
                event_of[artifact.id].path.steps.extend(pair[1].path.steps)
                continue
            if len(pair) == 2 and artifact.id:
                event_of[artifact.id] = pair[1]
            merged.append(pair)
        return merged


class AirflowComponentLauncher(in_process_component_launcher.InProcessComponentLauncher):
    """InProcessComponentLauncher with per-component artifact names, one event per artifact, a
    Resolver's inputs from upstream components taken from this run, and empty inputs on an
    object store."""

    def __init__(self, component, *args: Any, **kwargs: Any):
        super().__init__(component, *args, **kwargs)
        self._driver_class = with_empty_object_store_inputs(with_component_scoped_names(self._driver_class))
        if isinstance(component, resolver.Resolver):
            self._driver_class = with_todays_inputs_from_this_run(self._driver_class)
        # The handle comes from AirflowDagRunner's operator; only its connection config is kept.
        self._metadata_connection = OneEventPerArtifact(self._metadata_connection._connection_config)
