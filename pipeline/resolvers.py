"""Resolver strategies of the day-by-day runs.

`LatestArtifactOrNothingStrategy`: TFX's LatestArtifactStrategy, but with nothing to resolve it
resolves nothing instead of failing: on the first day there is no accepted statistics artifact
yet, and TFX's strategy would record a FAILED resolver execution in every first run.

`LatestBlessedModelOfSameTransformStrategy`, for the Evaluators' baselines: see its docstring.

`LatestBlessedCascadeStrategy`, for the CascadeAssembler's baseline: see its docstring.

`LatestBlessedModelOfOtherDataStrategy`, for warm starts: the latest blessed model not trained
on today's data. TFX's LatestBlessedModelStrategy would do for a warm start on a new day, but not on a re-run of
a day whose model was blessed: that model would become its own day's base model, the Trainers'
inputs would change and a re-run with unchanged data would train again instead of coming from
cache. This strategy takes today's training input as a third channel and skips every model whose
Trainer read it, so a re-run resolves the same base model as the first run of the day and the
Trainers stay cached.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import ml_metadata as mlmd
from ml_metadata.proto import metadata_store_pb2
from tfx import types
from tfx.dsl.components.common import resolver
from tfx.dsl.input_resolution.strategies import latest_artifact_strategy, latest_blessed_model_strategy

MODEL, BLESSING = "model", "model_blessing"


class LatestArtifactOrNothingStrategy(latest_artifact_strategy.LatestArtifactStrategy):
    """The newest artifact of each channel, or none."""

    def resolve_artifacts(self, store: mlmd.MetadataStore,
                          input_dict: Dict[str, List[types.Artifact]]) -> Optional[Dict[str, List[types.Artifact]]]:
        return self._resolve(input_dict)


def _trained_on(store: mlmd.MetadataStore, model_id: int) -> set[int]:
    """Ids of every artifact the executions that output `model_id` read."""
    producers = {e.execution_id for e in store.get_events_by_artifact_ids([model_id])
                 if e.type == metadata_store_pb2.Event.OUTPUT}
    return {e.artifact_id for e in store.get_events_by_execution_ids(list(producers))
            if e.type == metadata_store_pb2.Event.INPUT} if producers else set()


class _LatestBlessedModelByInputs(resolver.ResolverStrategy):
    """Inputs `model` and `model_blessing` (every Model of a Trainer and every ModelBlessing of its
    Evaluator, as for TFX's LatestBlessedModelStrategy) and one more channel of today's artifacts;
    outputs the newest blessed model whose Trainer read (`READ` True) or did not read (False) one
    of today's artifacts, with its blessing, or nothing. A blessing names its model by id
    (`current_model_id`, as TFX's strategy pairs them) or, where that is 0, by URI
    (`current_model`): see LatestBlessedCascadeStrategy."""

    READ: bool

    def resolve_artifacts(self, store: mlmd.MetadataStore,
                          input_dict: Dict[str, List[types.Artifact]]) -> Optional[Dict[str, List[types.Artifact]]]:
        today_keys = set(input_dict) - {MODEL, BLESSING}
        today = {a.id for key in today_keys for a in input_dict[key]}
        result = {MODEL: [], BLESSING: [], **{key: list(input_dict[key]) for key in today_keys}}
        blessed = [b for b in input_dict.get(BLESSING, [])
                   if b.get_int_custom_property(latest_blessed_model_strategy._BLESSED) == 1]  # noqa: SLF001
        by_id = {b.get_int_custom_property(latest_blessed_model_strategy._CURRENT_MODEL_ID): b  # noqa: SLF001
                 for b in blessed}
        by_uri = {b.get_string_custom_property("current_model"): b for b in blessed}
        for model in sorted(input_dict.get(MODEL, []), key=lambda a: a.id, reverse=True):
            blessing = by_id.get(model.id) or by_uri.get(model.uri)
            if blessing is not None and bool(today & _trained_on(store, model.id)) == self.READ:
                result[MODEL], result[BLESSING] = [model], [blessing]
                break
        return result


class LatestBlessedModelOfOtherDataStrategy(_LatestBlessedModelByInputs):
    """The warm start's base model: the newest blessed model whose Trainer did not read today's
    training input (the third channel, `examples`)."""

    READ = False


class LatestBlessedModelOfSameTransformStrategy(_LatestBlessedModelByInputs):
    """The Evaluator's baseline: the newest blessed model trained on today's Transform output (the
    third channel, `transform_graph`). The Trainers' models read transformed examples, whose ids
    are indices into that day's vocabularies; a model of another day's Transform fed today's
    indices would score other ids (and crash on an index past its table: "indices[0] = 24 is not
    in [0, 24)"), so across days there is no per-model baseline, and the regression check is the
    CascadeAssembler's, on raw data, each cascade with its own Transform."""

    READ = True


class LatestBlessedCascadeStrategy(_LatestBlessedModelByInputs):
    """The CascadeAssembler's baseline: the newest blessed cascade not assembled from today's
    models (the further channels, `light_model` and `heavy_model`), so that a re-run with cached
    Trainers compares with what the first run of the day compared with and stays cached. TFX's
    LatestBlessedModelStrategy pairs a blessing with its model by `current_model_id`, which an
    Evaluator takes from its input model; the assembler blesses its own output, whose id ML
    Metadata assigns only after the executor returns, so that property is 0 there and TFX's
    strategy never found a blessed cascade ("blessed (no blessed cascade to compare with)" every
    day). Its `current_model` URI names the model too; pairing by it finds it."""

    READ = False
