"""What a finished run did, read back from ML Metadata: per-component state and wall time."""
from __future__ import annotations

import os

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx.orchestration import metadata

_STATES = {v: k for k, v in metadata_store_pb2.Execution.State.items()}


def executions(out_dir: str) -> list[dict]:
    """Every execution of the run directory's pipeline, oldest first: node id, state, seconds."""
    store = metadata_store.MetadataStore(
        metadata.sqlite_metadata_connection_config(os.path.join(out_dir, "metadata.sqlite")))
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
