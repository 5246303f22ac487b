"""What a finished run did, read back from ML Metadata: per-component state and wall time, and
the artifacts the components produced."""
from __future__ import annotations

import json
import os

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx.orchestration import metadata

from hap.data.sample_routing import MODELS
from hap.pipeline import configs

_STATES = {v: k for k, v in metadata_store_pb2.Execution.State.items()}


def _store(out_dir: str) -> metadata_store.MetadataStore:
    path = os.path.join(out_dir, "metadata.sqlite")
    # Checked first: opening a missing SQLite store would create an empty one.
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{out_dir}: no metadata.sqlite, so not the output directory of a pipeline run")
    return metadata_store.MetadataStore(metadata.sqlite_metadata_connection_config(path))


def executions(out_dir: str) -> list[dict]:
    """Every execution of the run directory's pipeline, oldest first: node id, state, seconds."""
    store = _store(out_dir)
    contexts = {ctx.id: ctx.name for ctx in store.get_contexts_by_type("node")}
    result = []
    for execution in sorted(store.get_executions(), key=lambda e: e.id):
        nodes = [contexts[ctx.id] for ctx in store.get_contexts_by_execution(execution.id) if ctx.id in contexts]
        result.append({
            "node": nodes[0].split(".", 1)[-1] if nodes else execution.type,
            "state": _STATES[execution.last_known_state],
            "seconds": (execution.last_update_time_since_epoch - execution.create_time_since_epoch) / 1000.0,
        })
    return result


def latest_by_node(out_dir: str) -> dict[str, dict]:
    latest = {}
    for e in executions(out_dir):
        latest[e["node"]] = e
    return latest


def latest_execution_property(out_dir: str, node: str, name: str) -> str:
    """An execution property (e.g. "custom_config") of the newest execution of the component `node`."""
    store = _store(out_dir)
    context = store.get_context_by_type_and_name("node", f"{configs.PIPELINE_NAME}.{node}")
    executions = store.get_executions_by_context(context.id) if context else []
    if not executions:
        raise FileNotFoundError(f"{out_dir}: its ML Metadata records no execution of {node}")
    return max(executions, key=lambda e: e.id).custom_properties[name].string_value


def latest_artifact(out_dir: str, node: str, type_name: str) -> metadata_store_pb2.Artifact:
    """The newest (highest id) LIVE artifact of type `type_name` (e.g. "TransformGraph", "Model")
    that the component `node` (its id in the pipeline, e.g. "Transform", "Trainer_light") output
    in the run directory `out_dir`; its `uri` is where it lies. A cached execution records the
    artifact it reuses as its output too, so a run served from cache finds it as well."""
    store = _store(out_dir)
    context = store.get_context_by_type_and_name("node", f"{configs.PIPELINE_NAME}.{node}")
    execution_ids = [e.id for e in store.get_executions_by_context(context.id)] if context else []
    # Not the node context's artifacts: TFX attributes a component's inputs to it as well.
    output_ids = sorted({e.artifact_id for e in store.get_events_by_execution_ids(execution_ids)
                         if e.type == metadata_store_pb2.Event.OUTPUT}) if execution_ids else []
    artifacts = [a for a in store.get_artifacts_by_id(output_ids)
                 if a.type == type_name and a.state == metadata_store_pb2.Artifact.LIVE] if output_ids else []
    if not artifacts:
        raise FileNotFoundError(f"{out_dir}: its ML Metadata records no {type_name} output of {node}; "
                                f"is it a `hap run` output that got past {node}?")
    return max(artifacts, key=lambda a: a.id)


def training_summary(out_dir: str) -> dict[str, dict]:
    """Per model: the epoch validation chose, the epochs run, the eval AUCs at the chosen epoch
    (from the Trainer's training_history.json) and whether its Evaluator blessed it."""
    summary = {}
    for model in MODELS:
        run_dir = latest_artifact(out_dir, f"Trainer_{model}", "ModelRun").uri
        with open(os.path.join(run_dir, "training_history.json")) as f:
            history = json.load(f)
        blessing = latest_artifact(out_dir, f"Evaluator_{model}", "ModelBlessing")
        summary[model] = {"chosen_epoch": history["chosen_epoch"], "epochs_run": history["epochs_run"],
                          "auc": history["per_source_auc"][history["chosen_epoch"] - 1],
                          "blessed": bool(blessing.custom_properties["blessed"].int_value)}
    return summary
