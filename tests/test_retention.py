"""pipeline/retention.py on a hand-built ML Metadata store: which runs are kept, which artifacts
go, and that nothing outside the pipeline root or already deleted is touched."""
import os

import pytest
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2 as pb
from tfx.orchestration import metadata

from hap import cli
from hap.pipeline import retention


def _store(out):
    return metadata_store.MetadataStore(metadata.sqlite_metadata_connection_config(str(out / "metadata.sqlite")))


def _artifact(store, type_id, path, size, state=pb.Artifact.LIVE):
    os.makedirs(path)
    with open(os.path.join(path, "data"), "wb") as f:
        f.write(b"x" * size)
    artifact = pb.Artifact(type_id=type_id, uri=str(path), state=state)
    [artifact.id] = store.put_artifacts([artifact])
    return artifact


@pytest.fixture(params=retention.RUN_CONTEXT_TYPES)
def out(tmp_path, request):
    """Four runs: `old` (successful) wrote `first` and `shared`; `newer` (successful) read
    `shared` and wrote `second`; `failed` read `second` and wrote `partial`; `running` is still in
    progress. `elsewhere` (outside the pipeline root) and `gone` (already DELETED) were written by
    `old` too. Runs are contexts of LocalDagRunner's type or of Airflow's."""
    store = _store(tmp_path)
    root = tmp_path / retention.PIPELINE_ROOT
    type_id = store.put_artifact_type(pb.ArtifactType(name="Examples"))
    execution_type = store.put_execution_type(pb.ExecutionType(name="Component"))
    run_type = store.put_context_type(pb.ContextType(name=request.param))
    artifacts = {name: _artifact(store, type_id, root / name, size) for name, size in
                 (("first", 1000), ("shared", 10), ("second", 20), ("partial", 30))}
    artifacts["elsewhere"] = _artifact(store, type_id, tmp_path / "elsewhere", 40)
    artifacts["gone"] = _artifact(store, type_id, root / "gone", 50, state=pb.Artifact.DELETED)
    for run, state, inputs, outputs in (
            ("old", pb.Execution.COMPLETE, [], ["first", "shared", "elsewhere", "gone"]),
            ("newer", pb.Execution.COMPLETE, ["shared"], ["second"]),
            ("failed", pb.Execution.FAILED, ["second"], ["partial"]),
            ("running", pb.Execution.RUNNING, [], [])):
        [context_id] = store.put_contexts([pb.Context(type_id=run_type, name=run)])
        # put_execution writes the artifacts given too: they go in whole.
        events = [(artifacts[a], pb.Event(type=pb.Event.INPUT)) for a in inputs] + \
                 [(artifacts[a], pb.Event(type=pb.Event.OUTPUT)) for a in outputs]
        store.put_execution(pb.Execution(type_id=execution_type, last_known_state=state), events,
                            [pb.Context(id=context_id, type_id=run_type, name=run)])
    return tmp_path, {name: artifact.id for name, artifact in artifacts.items()}


def _states(out_dir, ids):
    by_id = {a.id: a.state for a in _store(out_dir).get_artifacts_by_id(list(ids.values()))}
    return {name: by_id[i] for name, i in ids.items()}


def test_only_what_the_kept_runs_did_not_use_is_deleted(out):
    out_dir, ids = out
    pruned = retention.prune(str(out_dir), keep_runs=1)
    # The last successful run is `newer`: it and the runs after it are kept.
    assert pruned.runs == 4 and pruned.kept_runs == ("newer", "failed", "running")
    assert pruned.artifacts == (str(out_dir / retention.PIPELINE_ROOT / "first"),) and pruned.bytes == 1000
    assert not os.path.exists(pruned.artifacts[0])
    states = _states(out_dir, ids)
    assert states.pop("first") == pb.Artifact.DELETED and states.pop("gone") == pb.Artifact.DELETED
    assert set(states.values()) == {pb.Artifact.LIVE}
    for name in ("shared", "second", "partial", "gone"):
        assert os.path.exists(out_dir / retention.PIPELINE_ROOT / name), name
    assert os.path.exists(out_dir / "elsewhere")
    assert retention.prune(str(out_dir), keep_runs=1).artifacts == (), "a second prune finds nothing more"


def test_a_dry_run_deletes_nothing_and_enough_kept_runs_keep_everything(out, capsys):
    out_dir, ids = out
    assert cli.main(["prune", "--out", str(out_dir), "--keep-runs", "1", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "4 pipeline runs; kept the artifacts of the last 3" in printed and "would delete 1 artifacts" in printed
    assert os.path.exists(out_dir / retention.PIPELINE_ROOT / "first")
    assert _states(out_dir, ids)["first"] == pb.Artifact.LIVE
    assert retention.prune(str(out_dir), keep_runs=2).kept_runs == ("old", "newer", "failed", "running")
    assert retention.prune(str(out_dir), keep_runs=5).artifacts == ()


def test_keeping_no_run_is_refused(out):
    with pytest.raises(ValueError, match="keep_runs must be at least 1"):
        retention.prune(str(out[0]), keep_runs=0)
    assert cli.main(["prune", "--out", str(out[0] / "nowhere"), "--keep-runs", "1"]) == 2


def test_a_store_without_runs_is_refused_not_emptied(tmp_path):
    store = _store(tmp_path)
    type_id = store.put_artifact_type(pb.ArtifactType(name="Examples"))
    _artifact(store, type_id, tmp_path / retention.PIPELINE_ROOT / "orphan", 10)
    with pytest.raises(ValueError, match="records no pipeline run"):
        retention.prune(str(tmp_path), keep_runs=1)
    assert os.path.exists(tmp_path / retention.PIPELINE_ROOT / "orphan")


@pytest.mark.parametrize("succeeded", [True, False])
def test_hap_run_keep_runs_prunes_after_a_successful_run_only(out, monkeypatch, capfd, succeeded):
    """`hap run --keep-runs N` is `hap prune` after the run, when the run succeeded; the pipeline
    is replaced by its outcome (the store above stands for what the runs left)."""
    from hap.pipeline import run_report

    out_dir, ids = out
    monkeypatch.setattr(cli, "_pipeline", lambda *args: succeeded)
    monkeypatch.setattr(run_report, "summary_lines", lambda run_dir: [])
    monkeypatch.setattr(run_report, "next_commands", lambda *args: [])
    code = cli.main(["run", "--data", str(out_dir / "data"), "--out", str(out_dir), "--keep-runs", "1"])
    assert code == (0 if succeeded else 1)
    assert os.path.exists(out_dir / retention.PIPELINE_ROOT / "first") != succeeded
    assert _states(out_dir, ids)["first"] == (pb.Artifact.DELETED if succeeded else pb.Artifact.LIVE)
    assert ("deleted 1 artifacts" in capfd.readouterr().out) == succeeded  # the console writes to the terminal


def test_hap_run_keep_runs_0_is_refused_before_the_pipeline(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_pipeline", lambda *args: pytest.fail("the pipeline ran"))
    assert cli.main(["run", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--keep-runs", "0"]) == 2
    assert "--keep-runs must be a whole number >= 1, got 0" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "run")
