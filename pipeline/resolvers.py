"""Resolver strategies of the day-by-day runs, and how every orchestrator expresses them.

`LatestArtifactOrNothingStrategy`: TFX's LatestArtifactStrategy, but with nothing to resolve it
resolves nothing instead of failing: on the first day there is no accepted statistics artifact
yet, and TFX's strategy would record a FAILED resolver execution in every first run.

`LatestBlessedModelOfOtherDataStrategy`, for warm starts and the Evaluators' baselines: the
latest blessed model not trained on today's data. TFX's LatestBlessedModelStrategy would do on a
new day, but not on a re-run of a day whose model was blessed: that model would become its own
day's base model and baseline, the Trainers' and Evaluators' inputs would change and a re-run with
unchanged data would train and evaluate again instead of coming from cache. This strategy takes
today's training input as a further channel and skips every model whose Trainer read it, so a
re-run resolves what the first run of the day resolved and stays cached.

`LatestBlessedCascadeStrategy`, for the CascadeAssembler's baseline: see its docstring.

`LatestOfOtherDataStrategy`, for a Tuner's last hyper-parameters: the same narrowing for any
artifact, blessed or not.

Kubeflow Pipelines runs no Python resolver: TFX's KubeflowV2 compiler turns TFX's own two
strategies into ML Metadata queries by artifact type, and drops the channels' producers. So every
artifact a resolver reads from the pipeline's history carries its role, `<component id>.<output
key>`, as a custom property (`mark_roles`), each HAP strategy names the TFX strategy it narrows
(`TFX_STRATEGY`), and pipeline/kubeflow_runner.py adds the role to the compiled queries: the
same selection, by the same property, on every orchestrator (docs/decisions/0015-resolvers-on-
every-orchestrator.md).
"""
from __future__ import annotations

from typing import Dict, List, Optional

import ml_metadata as mlmd
from ml_metadata.proto import metadata_store_pb2
from tfx import types
from tfx.components.evaluator import constants as evaluator_constants
from tfx.dsl.components.common import resolver
from tfx.types import Channel
from tfx.dsl.input_resolution.strategies import latest_artifact_strategy, latest_blessed_model_strategy

MODEL, BLESSING = "model", "model_blessing"
# The custom property naming which component output an artifact is.
ROLE = "hap_role"


def role(component_id: str, output_key: str) -> str:
    return f"{component_id}.{output_key}"


def mark_roles(component, *output_keys: str) -> None:
    """Tags the artifacts `component` outputs under `output_keys` with their role (ROLE). Call it
    after the component's final `with_id`."""
    for key in output_keys:
        component.outputs[key].additional_custom_properties[ROLE] = role(component.id, key)


def history(artifact_type: type, component_id: str, output_key: str) -> Channel:
    """Every artifact `component_id` has output under `output_key` in the pipeline's history."""
    return Channel(type=artifact_type, producer_component_id=component_id, output_key=output_key)


def history_role(channel: Channel) -> str:
    return role(channel.producer_component_id, channel.output_key)


def make_resolver(resolver_id: str, strategy: type, history_channels: dict, today_channels: dict,
                  portable: bool) -> resolver.Resolver:
    """A Resolver of `strategy` over `history_channels` (made by `history`), narrowed by this
    run's `today_channels`; with `portable` False, the TFX strategy it narrows over the history
    alone, the form the KubeflowV2 compiler knows (the roles are added to its queries there)."""
    if portable:
        return resolver.Resolver(strategy_class=strategy, **history_channels, **today_channels).with_id(resolver_id)
    return resolver.Resolver(strategy_class=strategy.TFX_STRATEGY, **history_channels).with_id(resolver_id)


class LatestArtifactOrNothingStrategy(latest_artifact_strategy.LatestArtifactStrategy):
    """The newest artifact of each channel, or none."""

    TFX_STRATEGY = latest_artifact_strategy.LatestArtifactStrategy

    def resolve_artifacts(self, store: mlmd.MetadataStore,
                          input_dict: Dict[str, List[types.Artifact]]) -> Optional[Dict[str, List[types.Artifact]]]:
        return self._resolve(input_dict)


def _trained_on(store: mlmd.MetadataStore, model_id: int) -> set[int]:
    """Ids of every artifact the executions that output `model_id` read."""
    producers = {e.execution_id for e in store.get_events_by_artifact_ids([model_id])
                 if e.type == metadata_store_pb2.Event.OUTPUT}
    return {e.artifact_id for e in store.get_events_by_execution_ids(list(producers))
            if e.type == metadata_store_pb2.Event.INPUT} if producers else set()


class LatestBlessedModelOfOtherDataStrategy(resolver.ResolverStrategy):
    """A warm start's base model and an Evaluator's baseline. Inputs `model` and `model_blessing`
    (every Model of a Trainer and every ModelBlessing of its Evaluator, as for TFX's
    LatestBlessedModelStrategy) and further channels of today's artifacts (the Trainer's
    `examples`); outputs the newest blessed model whose Trainer read none of today's artifacts,
    with its blessing, or nothing. Models carry their own Transform (models/trainer_module.py), so
    one trained on another day's vocabularies is scored as it would serve. A blessing names its
    model by id (`current_model_id`, as TFX's strategy pairs them) or, where that is 0, by URI
    (`current_model`): see LatestBlessedCascadeStrategy."""

    TFX_STRATEGY = latest_blessed_model_strategy.LatestBlessedModelStrategy

    def resolve_artifacts(self, store: mlmd.MetadataStore,
                          input_dict: Dict[str, List[types.Artifact]]) -> Optional[Dict[str, List[types.Artifact]]]:
        today_keys = set(input_dict) - {MODEL, BLESSING}
        today = {a.id for key in today_keys for a in input_dict[key]}
        result = {MODEL: [], BLESSING: [], **{key: list(input_dict[key]) for key in today_keys}}
        blessed = [b for b in input_dict.get(BLESSING, [])
                   if b.get_int_custom_property(evaluator_constants.ARTIFACT_PROPERTY_BLESSED_KEY)
                   == evaluator_constants.BLESSED_VALUE]
        by_id = {b.get_int_custom_property(evaluator_constants.ARTIFACT_PROPERTY_CURRENT_MODEL_ID_KEY): b
                 for b in blessed}
        by_uri = {b.get_string_custom_property(evaluator_constants.ARTIFACT_PROPERTY_CURRENT_MODEL_URI_KEY): b for b in blessed}
        for model in sorted(input_dict.get(MODEL, []), key=lambda a: a.id, reverse=True):
            blessing = by_id.get(model.id) or by_uri.get(model.uri)
            if blessing is not None and not today & _trained_on(store, model.id):
                result[MODEL], result[BLESSING] = [model], [blessing]
                break
        return result


class LatestBlessedCascadeStrategy(LatestBlessedModelOfOtherDataStrategy):
    """The CascadeAssembler's baseline: the newest blessed cascade not assembled from today's
    models (the further channels, `light_model` and `heavy_model`), so that a re-run with cached
    Trainers compares with what the first run of the day compared with and stays cached. TFX's
    LatestBlessedModelStrategy pairs a blessing with its model by `current_model_id`, which an
    Evaluator takes from its input model; the assembler blesses its own output, whose id ML
    Metadata assigns only after the executor returns, so that property is 0 there and TFX's
    strategy never found a blessed cascade ("blessed (no blessed cascade to compare with)" every
    day). Its `current_model` URI names the model too; pairing by it finds it."""


TODAY = "examples"


class LatestOfOtherDataStrategy(resolver.ResolverStrategy):
    """A Tuner's last hyper-parameters: inputs `examples` (today's training input) and history
    channels; outputs, per history channel, its newest artifact whose producer read none of
    today's artifacts, or nothing, so that a re-run of a day resolves what its first run resolved
    and stays cached (LatestBlessedModelOfOtherDataStrategy's reason)."""

    TFX_STRATEGY = latest_artifact_strategy.LatestArtifactStrategy

    def resolve_artifacts(self, store: mlmd.MetadataStore,
                          input_dict: Dict[str, List[types.Artifact]]) -> Optional[Dict[str, List[types.Artifact]]]:
        today = {a.id for a in input_dict.get(TODAY, [])}
        result = {TODAY: list(input_dict.get(TODAY, []))}
        for key in set(input_dict) - {TODAY}:
            newest = sorted(input_dict[key], key=lambda a: a.id, reverse=True)
            result[key] = next(([a] for a in newest if not today & _trained_on(store, a.id)), [])
        return result
