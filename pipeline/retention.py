"""Retention of a day-by-day output directory: delete the artifacts only older runs used.

TFX 1.16's local and Airflow orchestrators write every run's artifacts under the pipeline root
and delete none: a `garbage_collection_policy` compiles into its IR, but only its experimental
orchestrator enforces one. A daily pipeline's disk therefore grows by a run's outputs (examples,
Transform output, request records, models, evaluations) every day.

`prune(out_dir, keep_runs)` keeps every artifact that an execution of the newest `keep_runs`
successful runs read or wrote, and of every run after the oldest of them, failed ones included.
That holds what the next run's resolvers and cache can pick:

- the last blessed cascade: a successful run blessed its own or read the previous one as the
  CascadeAssembler's baseline;
- the last blessed model of each kind, where the run blessed it or warm-started from it
  (`--warm-start`), and the last accepted statistics (the drift check's baseline);
- the outputs a cached execution reuses: the newer run read them.

A run without `--warm-start` reads no older model (the Evaluators' baselines are models of the
same Transform output, a re-run of the day), so a later `--warm-start` run starts from the newest
blessed model still kept, or from scratch. A run is successful when each of its executions
completed or came from cache, so a run still in progress is not (its resolvers may not have read
their baselines yet). Every other LIVE artifact under the pipeline root is first marked
MARKED_FOR_DELETION in ML Metadata (TFX's cache and input resolution take LIVE artifacts only),
then its files are deleted, then it is marked DELETED: an interrupted prune leaves no LIVE
artifact whose files are gone. The pushed models under the serving directory are TF Serving's to
manage and are not touched.
"""
from __future__ import annotations

import dataclasses

from ml_metadata.proto import metadata_store_pb2

from hap import storage
from hap.pipeline import console

PIPELINE_ROOT = "pipeline_root"
# A pipeline run's context type: LocalDagRunner's IR-based launcher writes "pipeline_run", the
# component launcher that AirflowDagRunner uses writes "run".
RUN_CONTEXT_TYPES = ("pipeline_run", "run")
_SUCCEEDED = (metadata_store_pb2.Execution.COMPLETE, metadata_store_pb2.Execution.CACHED)
_LIVE, _MARKED, _DELETED = (metadata_store_pb2.Artifact.LIVE, metadata_store_pb2.Artifact.MARKED_FOR_DELETION,
                            metadata_store_pb2.Artifact.DELETED)


@dataclasses.dataclass(frozen=True)
class Pruned:
    runs: int                     # pipeline runs in the store
    kept_runs: tuple[str, ...]    # the kept runs' names (run ids), oldest first
    artifacts: tuple[str, ...]    # the URIs deleted (or, in a dry run, to delete)
    bytes: int

    def summary(self, out_dir: str, dry_run: bool = False) -> str:
        """What `hap prune`, `hap run --keep-runs` and the Airflow DAG's Prune task report."""
        verb = "would delete" if dry_run else "deleted"
        return (f"{out_dir}: {self.runs} pipeline runs; kept the artifacts of the last {len(self.kept_runs)} "
                f"(from {self.kept_runs[0] if self.kept_runs else '-'}); {verb} {len(self.artifacts)} artifacts, "
                f"{self.bytes / 2**20:.1f} MiB")


def _size(path: str) -> int:
    if storage.isfile(path):
        return storage.size(path)
    return sum(storage.size(storage.join(root, name)) for root, _, names in storage.walk(path) for name in names)


def _runs(store) -> list[tuple]:
    """(run context, its executions) of every pipeline run, oldest first."""
    runs = sorted((ctx for kind in RUN_CONTEXT_TYPES for ctx in store.get_contexts_by_type(kind)),
                  key=lambda ctx: (ctx.create_time_since_epoch, ctx.id))
    return [(run, store.get_executions_by_context(run.id)) for run in runs]


def check_keep_runs(keep_runs: int) -> None:
    if keep_runs < 1:
        raise ValueError(f"keep_runs must be at least 1 (the last successful run's artifacts are the next run's "
                         f"baselines), got {keep_runs}")


def kept_runs(runs: list[tuple], keep_runs: int) -> list[tuple]:
    """Of `_runs`' list, those to keep: from the `keep_runs`-th newest successful run on (every
    run, when there are fewer successful ones)."""
    check_keep_runs(keep_runs)
    successful = [i for i, (_, executions) in enumerate(runs)
                  if executions and all(e.last_known_state in _SUCCEEDED for e in executions)]
    return runs[successful[-keep_runs] if len(successful) >= keep_runs else 0:]


def prune(out_dir: str, keep_runs: int, dry_run: bool = False) -> Pruned:
    """Deletes the artifacts under `out_dir`'s pipeline root that no execution of the kept runs
    (`kept_runs`) read or wrote; `dry_run`: only says which."""
    # Imported here: it loads TFX and TensorFlow, whose start-up lines would reach the terminal
    # when `hap run` checks --keep-runs before its console takes descriptors 1 and 2.
    from hap.pipeline import run_report

    store = run_report.open_store(out_dir)
    runs = _runs(store)
    kept = kept_runs(runs, keep_runs)
    if not kept:
        # Without a run nothing counts as used: refuse rather than delete every artifact.
        raise ValueError(f"{out_dir}: its ML Metadata records no pipeline run (no context of type "
                         f"{' or '.join(RUN_CONTEXT_TYPES)}), so nothing is pruned")
    executions = [e.id for _, run_executions in kept for e in run_executions]
    used = {event.artifact_id for event in store.get_events_by_execution_ids(executions)}
    root = storage.join(storage.absolute(console.artifacts_root(out_dir)), PIPELINE_ROOT) + "/"
    doomed = [a for a in store.get_artifacts() if a.state == _LIVE and a.id not in used
              and storage.absolute(a.uri).startswith(root)]
    size = sum(_size(a.uri) for a in doomed if storage.exists(a.uri))
    if not dry_run and doomed:
        for artifact in doomed:
            artifact.state = _MARKED
        store.put_artifacts(doomed)
        for artifact in doomed:
            if storage.isdir(artifact.uri):
                storage.rmtree(artifact.uri)
            elif storage.exists(artifact.uri):
                storage.remove(artifact.uri)
            artifact.state = _DELETED
        store.put_artifacts(doomed)
    return Pruned(runs=len(runs), kept_runs=tuple(run.name for run, _ in kept),
                  artifacts=tuple(a.uri for a in doomed), bytes=size)
