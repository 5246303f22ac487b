"""The one-host rehearsal of a cluster, with real servers on loopback started the way
`make cluster-up` starts them (hap/cluster.py): ML Metadata in MariaDB, an S3 server (moto's)
that TensorFlow's S3 file system (tensorflow-io) and Beam's (boto3) reach through hap/storage.py,
and Airflow with the CeleryExecutor (its database in PostgreSQL, a Redis broker, a scheduler and
two workers). Two daily DagRuns keep ML Metadata in MariaDB and every artifact on the store,
survive a worker killed mid-task, and push two versions that `hap serve` follows on the store;
`hap run` (ML Metadata in SQLite) reads its dataset from the store and writes every artifact and
the pushed cascades there, day by day: a window of days, warm starts, a drifted day stopped; a
refused login and a bucket that does not exist are each one error before any component runs.

Every process that touches s3:// here is a `hap` subprocess or an Airflow process: tensorflow-io
aborts the process that used its S3 client at exit (hap/storage.py), which `hap` steps around and
pytest would not; this module reads the store with boto3. CI installs Debian's mariadb-server,
redis-server and postgresql and builds .venv-s3 and .venv-airflow (.ci/run); where one is missing
the tests that need it are skipped."""
import csv
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

import pytest
import yaml

from conftest import RESOLVED_ROLES, quick_keys, role_mismatches
from hap import cli, cluster, settings

pytestmark = [pytest.mark.cluster]

PASSWORD = "hap-test-password"


@pytest.fixture(scope="module")
def mariadb():
    if shutil.which("mariadbd") is None and not os.path.exists("/usr/sbin/mariadbd"):
        pytest.skip("no MariaDB server: `apt-get install mariadb-server` (CI installs it)")
    # Not under pytest's tmp_path: the server's socket path must stay short.
    state = tempfile.mkdtemp(prefix="hap-mariadb-")
    mysql = settings.load(sets=[f"metadata.mysql.port={cluster.free_port()}"], env={}).settings.metadata.mysql
    server = cluster.start_mariadb(state, mysql, PASSWORD)
    yield server
    assert cluster.stop_mariadb(server)
    shutil.rmtree(state, ignore_errors=True)


def _sets(server, **more) -> list[str]:
    keys = {**quick_keys(0.0), "metadata.backend": "mysql", "metadata.mysql.port": server.settings.port, **more}
    return [arg for key, value in keys.items() for arg in ("--set", f"{key}={json.dumps(value)}")]


def test_a_login_the_server_refuses_is_one_error_before_any_component(mariadb, tiny_csv, tmp_path, monkeypatch,
                                                                        capsys):
    monkeypatch.setenv("HAP_MYSQL_PASSWORD", "wrong")
    out = tmp_path / "run"
    assert cli.main(["run", "--data", tiny_csv, "--out", str(out), *_sets(mariadb)]) == 2
    err = capsys.readouterr().err
    assert f"the MySQL server at 127.0.0.1:{mariadb.settings.port} refused user 'hap'" in err
    assert "$HAP_MYSQL_PASSWORD" in err
    assert not (out / "pipeline_root").exists() and not (out / "metadata.sqlite").exists(), \
        "no component runs before ML Metadata answers"


BUCKET = "hap-test"


def _missing() -> str | None:
    try:
        cluster.s3_server_binary()
    except cluster.ClusterError as e:
        return str(e)
    for module in ("boto3", "tensorflow_io"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (`make setup` installs it)"
    return None


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    reason = _missing()
    if reason:
        pytest.skip(reason)
    server = cluster.start_s3(str(tmp_path_factory.mktemp("s3")), port=cluster.free_port())
    server.create_bucket(BUCKET)
    yield server
    assert cluster.stop_s3(server)


def _upload(server, directory: str, prefix: str) -> str:
    client = server.client()
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            client.upload_file(path, BUCKET, f"{prefix}/{os.path.relpath(path, directory)}")
    return f"s3://{BUCKET}/{prefix}"


def _keys(server, prefix: str) -> list[str]:
    pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def _hap(server, *args: str, timeout: float = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **server.environment(), **(env or {})}
    return subprocess.run([sys.executable, "-m", "hap.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _s3_sets(**more) -> list[str]:
    keys = {**quick_keys(0.0), **more}
    return [arg for key, value in keys.items() for arg in ("--set", f"{key}={json.dumps(value)}")]


# Six features: an object store answers each request in milliseconds, and Transform writes a
# file per vocabulary, so a small feature set keeps the run short (c_network is the drift check's).
SMALL_FEATURES = """version: 1
features:
  - {name: u_click_seq, role: user, kind: sequence, max_len: 20, target: item_id}
  - {name: c_hour, role: context, kind: categorical}
  - {name: c_network, role: context, kind: categorical}
  - {name: i_category, role: item, kind: categorical}
  - {name: i_age_hours, role: item, kind: numeric}
  - {name: x_user_cat_ctr, role: cross, kind: numeric}
"""


def _with_small_features(dataset: str, out: str) -> str:
    """`dataset` (CSV) with only SMALL_FEATURES' columns besides the contract's."""
    from hap.data import contract as c

    names = {f["name"] for f in yaml.safe_load(SMALL_FEATURES)["features"]}
    keep = names | set(c.REQUIRED_COLUMNS) | set(c.LABEL_COLUMNS) | {c.ORACLE_COLUMN}
    for part in (c.SAMPLES_DIR, c.FUNNEL_DIR):
        if not os.path.isdir(os.path.join(dataset, part)):
            continue
        os.makedirs(os.path.join(out, part))
        for name in os.listdir(os.path.join(dataset, part)):
            with open(os.path.join(dataset, part, name), newline="") as f:
                rows = list(csv.DictReader(f))
            columns = [k for k in rows[0] if k in keep]
            with open(os.path.join(out, part, name), "w", newline="") as f:
                writer = csv.DictWriter(f, columns, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)
    with open(os.path.join(out, c.FEATURES_FILE), "w") as f:
        f.write(SMALL_FEATURES)
    return out


@pytest.fixture(scope="module")
def s3_days(s3, e2e_data, tmp_path_factory):
    """`hap run` day by day, as README "Day by day" runs it, with the dataset, every artifact and
    the pushed cascades on the S3 server and ML Metadata in SQLite: a first day, a day appended
    (a window of 2 days, warm starts), then a drifted day. Returns the run directory and each
    run's finished process."""
    from hap.data import simulator

    full = str(tmp_path_factory.mktemp("days") / "data")
    shutil.copytree(e2e_data, full)
    out = str(tmp_path_factory.mktemp("days") / "run")
    # Any model and cascade are good enough for the second day here: the test is about the
    # sequence, and two epochs on 50 requests a day make their AUCs a coin's toss.
    # One trial (the settings') of one epoch: the first day searches, the second reuses its search.
    sets = _s3_sets(**{"storage.artifacts_root": f"s3://{BUCKET}/days", "data.window_days": 2, "warm_start": True,
                       "cascade.tolerance": 1.0, "evaluator.auc_tolerance": 1.0, "tuning.trials": 1,
                       "tuning.max_epochs": 1})
    runs = []
    for drift in (None, simulator.DayDrift(), simulator.DayDrift(network=0.8)):
        if drift is not None:
            simulator.append_day(full, drift, progress=False)
        data = _upload(s3, _with_small_features(full, tempfile.mkdtemp(prefix="hap-days-")), "days/data")
        runs.append(_hap(s3, "run", "--data", data, "--out", out, *sets))
        assert (runs[-1].returncode == 0) == (len(runs) < 3), (runs[-1].stdout + runs[-1].stderr)[-5000:]
        runs[-1].pushed = _versions(s3, "days/serving/hap/")
    return out, runs


def test_day_by_day_on_the_object_store_warm_starts_pushes_and_stops_on_drift(s3, s3_days):
    from hap.data.sample_routing import MODELS
    from hap.pipeline import run_report

    out, (first, second, drifted) = s3_days
    assert [len(run.pushed) for run in (first, second, drifted)] == [1, 2, 2]
    for model in MODELS:
        assert re.search(rf"^{model}: .*\n  tuned: .*; 1 trial; searched: no earlier search\)$", first.stdout, re.M), \
            first.stdout
        assert re.search(rf"^{model}: .*\n  tuned: .*; 1 trial; reused the search of day 2, 1 day\(s\) old "
                         rf"\(tuning.retune_days 7\)\)$", second.stdout, re.M), second.stdout
    assert f"s3://{BUCKET}/days/serving/hap/" in first.stdout
    # Everything but the run directory's own records is on the store.
    assert not os.path.exists(os.path.join(out, "pipeline_root")) and not os.path.exists(os.path.join(out, "serving"))
    store = run_report.open_store(out)
    assert {"hap.Trainer_light", "hap.Trainer_heavy", "hap.CascadeAssembler", "hap.Pusher"} <= {
        ctx.name for ctx in store.get_contexts_by_type("node")}
    uris = [a.uri for a in store.get_artifacts() if a.uri]
    assert uris and all(uri.startswith(f"s3://{BUCKET}/days/") for uri in uris), \
        [u for u in uris if not u.startswith("s3")]

    # The second day trained on days 1-2 from the first day's models, which its Evaluators
    # scored (through their own Transform) as the baselines.
    def by_day(type_name: str, component: str) -> list[str]:
        return [a.uri for a in sorted(store.get_artifacts_by_type(type_name), key=lambda a: a.id)
                if a.uri.startswith(f"s3://{BUCKET}/days/pipeline_root/{component}/")]

    models = {m: by_day("Model", f"Trainer_{m}") for m in MODELS}
    assert all(len(uris) == 2 for uris in models.values()), models
    examples = by_day("Examples", "ContractExampleGen")
    assert len(examples) == 3
    assert json.loads(_object(s3, f"{examples[1]}/days.json")) == {"train": [1, 2], "eval": [3],
                                                                   "outside_window": [0]}
    for model in MODELS:
        day1, day2 = (json.loads(_object(s3, f"{uri}/training_history.json"))
                      for uri in by_day("ModelRun", f"Trainer_{model}"))
        assert day1["warm_started_from"] is None
        assert day2["warm_started_from"] == f"{models[model][0]}/Format-Serving", model
        assert sum(r["kept"] for r in day2["warm_start"]["embedding_rows"].values()) > 0
        baseline = run_report.latest_inputs(out, f"Evaluator_{model}")["baseline_model"]
        assert [a.uri for a in baseline] == models[model][:1], model
    assert "data: trained on days 1-2, evaluated on day 3 (day 0 outside the window)" in second.stdout
    assert "drift check: day 3 against day 2 (the last accepted): within every threshold" in second.stdout
    assert second.stdout.count("  warm-started from ") == 2
    assert "against the last blessed cascade's" in second.stdout, second.stdout

    # The drifted day stops before Transform, naming the feature, and is not accepted: the
    # statistics the next day is checked against are still day 3's.
    assert re.search(r"day 4\) moved too far from the last accepted day's, day 3(.|\n)*"
                     r"feature 'c_network': High Linfty distance", drifted.stdout + drifted.stderr)
    assert run_report.latest_by_node(out)["DriftGate"]["state"] == "FAILED"
    assert run_report.latest_artifact(out, "DriftGate", "ExampleStatistics").properties["span"].int_value == 3
    assert sum(e["node"] == "Transform" for e in run_report.executions(out)) == 2


def test_before_a_fork_the_store_is_read_through_beam_and_never_written(s3, tmp_path, monkeypatch):
    """What a pipeline's definition reads under Airflow (storage.before_fork), in this process:
    Beam's S3 client, unlike tensorflow-io's, leaves nothing that aborts it at exit."""
    from hap import storage

    (tmp_path / "data" / "samples").mkdir(parents=True)
    (tmp_path / "data" / "features.yaml").write_text("version: 1\n")
    (tmp_path / "data" / "samples" / "day-0.csv").write_text("a,b\n1,2\n")
    data = _upload(s3, str(tmp_path / "data"), "fork/data")
    for name, value in s3.environment().items():
        monkeypatch.setenv(name, value)
    # As in a process that never loaded tensorflow-io (another test of this worker may have):
    # a read that took TensorFlow's route would fail asking for it.
    monkeypatch.setitem(sys.modules, "tensorflow_io", None)
    monkeypatch.setattr(storage, "_S3_USED", False)
    with storage.before_fork():
        assert storage.listdir(data) == ["features.yaml", "samples"]
        assert storage.isdir(f"{data}/samples") and not storage.isdir(f"{data}/features.yaml")
        assert storage.exists(f"{data}/features.yaml") and not storage.exists(f"{data}/nothing")
        assert storage.read_text(f"{data}/features.yaml") == "version: 1\n"
        assert storage.size(f"{data}/samples/day-0.csv") == len("a,b\n1,2\n")
        with pytest.raises(storage.StorageError, match="nothing remote is written before a fork"):
            storage.write_text(f"{data}/new.txt", "x")
    with pytest.raises(storage.StorageError, match="needs tensorflow-io"):
        storage.exists(f"{data}/features.yaml")


def test_a_bucket_that_does_not_exist_is_one_error_before_any_component(s3, tmp_path):
    out = str(tmp_path / "run")
    done = _hap(s3, "run", "--data", f"s3://{BUCKET}/data", "--out", out,
                *_s3_sets(**{"storage.artifacts_root": "s3://no-such-bucket/hap"}))
    assert done.returncode != 0
    assert "s3://no-such-bucket/hap: the bucket s3://no-such-bucket/ does not exist" in done.stderr, done.stderr[-3000:]
    assert not os.path.exists(os.path.join(out, "metadata.sqlite")), "no component runs before the store answers"


def _airflow_missing() -> str | None:
    try:
        cluster.airflow_binary()
        cluster.redis_binary()
        cluster.postgres_binary("initdb")
    except cluster.ClusterError as e:
        return str(e)
    return None


@pytest.fixture(scope="module")
def celery(mariadb, s3, e2e_data, tmp_path_factory):
    """Airflow as a cluster runs it, on loopback: its database in PostgreSQL, a Redis broker, the
    scheduler and two Celery workers, each a process of its own; ML Metadata in MariaDB; the
    dataset, every artifact and the pushed cascades on the S3 server. A worker that stops
    heartbeating is declared dead 10-40 s later and its task retried at once (the 30 s between
    zombie checks: hap/cluster.py's airflow_environment says why they must outlast a parse)."""
    reason = _missing() or _airflow_missing()
    if reason:
        pytest.skip(reason)
    state = tempfile.mkdtemp(prefix="hap-airflow-")  # PostgreSQL's user must reach it: not under pytest's
    full = str(tmp_path_factory.mktemp("celery") / "data")
    shutil.copytree(e2e_data, full)
    data = _upload(s3, _with_small_features(full, str(tmp_path_factory.mktemp("celery") / "small")), "celery/data")
    keys = {**quick_keys(0.0), "metadata.backend": "mysql", "metadata.mysql.port": mariadb.settings.port,
            "storage.artifacts_root": f"s3://{BUCKET}/celery", "airflow.schedule": None, "airflow.retry_delay_s": 0,
            "data.window_days": 2, "warm_start": True, "retention.keep_runs": 1,
            # Any model and cascade are good enough on the second day: on 50 requests a day their
            # AUCs are a coin's toss.
            "cascade.tolerance": 1, "evaluator.auc_tolerance": 1}
    hap_set = " ".join(shlex.quote(f"{key}={json.dumps(value)}") for key, value in keys.items())
    env = cluster.airflow_environment(
        state, cluster.start_postgres(state, cluster.free_port(), "airflow-test-password"),
        cluster.start_redis(state, cluster.free_port()),
        {"HAP_DATA": data, "HAP_OUT": os.path.join(state, "out"), "HAP_SET": hap_set,
         "HAP_MYSQL_PASSWORD": PASSWORD, **s3.environment()}, zombie_threshold_s=10,
        zombie_detection_interval_s=30)
    try:
        workers = cluster.start_airflow(state, env)
        yield state, env, workers, full
    finally:
        cluster.stop_airflow(state)
        cluster.stop_named(state, "redis")
        cluster.stop_named(state, cluster.POSTGRES_DIR)
        shutil.rmtree(state, ignore_errors=True)


def _serve(s3, base: str):
    """`hap serve` on `base`, and a function giving the versions it has available."""
    import grpc
    from tensorflow_serving.apis import get_model_status_pb2, model_pb2, model_service_pb2_grpc

    port = cluster.free_port()
    process = subprocess.Popen([sys.executable, "-m", "hap.cli", "serve", base, "--port", str(port),
                                "--file_system_poll_wait_seconds", "1"], env={**os.environ, **s3.environment()},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stub = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))

    def available(until: list[int], timeout: float = 180.0) -> list[int]:
        """The available versions once they are `until`, or when `timeout` ran out."""
        deadline, found = time.time() + timeout, []
        while time.time() < deadline and process.poll() is None:
            try:
                status = stub.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(
                    model_spec=model_pb2.ModelSpec(name="hap")), timeout=5)
                found = [s.version for s in status.model_version_status
                         if s.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE]
                if found == until:
                    break
            except grpc.RpcError:
                pass
            time.sleep(0.5)
        return found

    return process, available


def test_two_daily_dagruns_on_celery_workers_survive_a_killed_worker(celery, s3, mariadb, monkeypatch):
    """Two daily DagRuns, a day appended to the store's dataset and ML Metadata's MariaDB
    restarted between them, as README "Day by day" runs `hap run`, with a window of 2 days and
    warm starts. In the second, the worker that
    runs Trainer_light is killed with every process it started, as when its machine dies:
    Airflow fails the task when its heartbeat stops, retries it on the other worker, and the
    DagRun succeeds, pushing once. `hap serve`, started on the store's serving path after the
    first day, swaps to the second day's version."""
    from ml_metadata.metadata_store import metadata_store

    from hap.data import simulator
    from hap.data.sample_routing import MODELS
    from hap.pipeline import run_report

    state, env, workers, full = celery
    base = f"s3://{BUCKET}/celery/serving/hap"
    days = ("2026-11-30", "2026-12-01")
    runs = {days[0]: cluster.trigger(env, days[0])}
    assert cluster.wait_for_run(env, runs[days[0]], timeout=900) == "success", _why(env, runs[days[0]])
    (first,) = _versions(s3, "celery/serving/hap/")
    server, available = _serve(s3, base)
    try:
        assert available([first]) == [first], server.stderr.read()[-3000:] if server.poll() is not None else ""
        simulator.append_day(full, progress=False)
        _upload(s3, _with_small_features(full, tempfile.mkdtemp(prefix="hap-day2-")), "celery/data")
        # ML Metadata's server restarted between two tasks (the days' DagRuns): each task opens
        # its own connection, so the next one finds the server back and the day goes on.
        assert cluster.stop_mariadb(mariadb)
        mariadb.process = cluster.start_mariadb(mariadb.state_dir, mariadb.settings, PASSWORD).process
        runs[days[1]] = cluster.trigger(env, days[1])
        killed = {}

        def kill_trainer_worker(tasks):
            trainer = tasks.get("Trainer_light", {})
            if not killed and trainer.get("state") == "running" and trainer.get("worker") in workers:
                killed["worker"] = trainer["worker"]
                killed["pids"] = cluster.kill_tree(cluster.worker_pid(state, trainer["worker"]))

        assert cluster.wait_for_run(env, runs[days[1]], timeout=1200, progress=kill_trainer_worker) == "success", \
            _why(env, runs[days[1]])
        versions = _versions(s3, "celery/serving/hap/")
        assert available(versions[-1:]) == versions[-1:]
    finally:
        server.terminate()
        server.wait(timeout=60)

    # Every task succeeded, each once in the first DagRun; both workers ran tasks.
    tasks = {day: cluster.task_instances(env, run_id) for day, run_id in runs.items()}
    assert {"WarmStartModel_light", "DriftGate", "Prune"} <= set(tasks[days[1]])
    assert all(t["state"] == "success" for day in days for t in tasks[day].values()), tasks
    assert {t["worker"] for day in days for t in tasks[day].values()} == set(workers)
    assert all(t["try_number"] == 1 for t in tasks[days[0]].values())
    # The killed task ran again on the other worker; no other task of the day was tried twice.
    assert killed, "Trainer_light was never seen running"
    retried = {task: t for task, t in tasks[days[1]].items() if t["try_number"] > 1}
    assert set(retried) == {"Trainer_light"}, retried
    assert retried["Trainer_light"]["worker"] != killed["worker"]
    # One version pushed a day, nothing twice.
    assert len(versions) == 2 and versions[0] == first

    monkeypatch.setenv("HAP_MYSQL_PASSWORD", PASSWORD)
    out = env["HAP_OUT"]
    store = metadata_store.MetadataStore(run_report.mysql_connection(mariadb.settings))
    uris = [a.uri for a in store.get_artifacts() if a.uri]
    assert uris and all(uri.startswith(f"s3://{BUCKET}/celery/") for uri in uris), \
        [u for u in uris if not u.startswith("s3://")]
    # The killed try published nothing: each Trainer_light model in ML Metadata is a complete
    # SavedModel, one a day.
    models = [a for a in store.get_artifacts_by_type("Model")
              if a.custom_properties["hap_role"].string_value == "Trainer_light.model"]
    assert len(models) == 2
    for model in models:
        assert f"{model.uri[len(f's3://{BUCKET}/'):]}/Format-Serving/saved_model.pb" in _keys(s3, model.uri[len(
            f"s3://{BUCKET}/"):])
    # The second day trained on days 1-2 from the first day's blessed models, and checked day 3's
    # drift against day 2.
    for model in MODELS:
        history = json.loads(_object(s3, f"{_newest(store, f'Trainer_{model}', 'model_run')}/training_history.json"))
        assert history["warm_started_from"].startswith(f"s3://{BUCKET}/celery/pipeline_root/Trainer_{model}/model/")
        assert history["warm_started_from"].endswith("/Format-Serving"), history["warm_started_from"]
    examples = _newest(store, "ContractExampleGen", "examples")
    assert json.loads(_object(s3, f"{examples}/days.json")) == {"train": [1, 2], "eval": [3], "outside_window": [0]}
    anomalies = _newest(store, "DistributionValidator", "anomalies")
    assert any("/SplitPair-eval_eval/" in key for key in _keys(s3, anomalies[len(f"s3://{BUCKET}/"):]))
    # The artifacts the resolvers read carry the role a compiled Kubeflow query selects them by.
    assert role_mismatches(out, RESOLVED_ROLES + ("DriftGate.accepted_statistics",)) == {}


def _why(env: dict, run_id: str) -> str:
    """The DagRun's tasks that did not succeed, each with the end of every try's log and what the
    scheduler said of it (a try failed by the scheduler, as a zombie or from the queue, has no log
    of its own)."""
    lines = []
    scheduler_log = os.path.join(os.path.dirname(env["AIRFLOW_HOME"]), f"{cluster.SCHEDULER}.log")
    for task, t in sorted(cluster.task_instances(env, run_id).items()):
        if t["state"] == "success":
            continue
        lines.append(f"{task}: {t}")
        for attempt in range(1, t["try_number"] + 1):
            log = os.path.join(env["AIRFLOW_HOME"], "logs", "dag_id=hap", f"run_id={run_id}", f"task_id={task}",
                               f"attempt={attempt}.log")
            if os.path.exists(log):
                with open(log) as f:
                    lines += [f"  try {attempt}: {line.rstrip()}" for line in f if "Warning" not in line][-15:]
        if t["try_number"] and os.path.exists(scheduler_log):
            with open(scheduler_log) as f:
                lines += [f"  scheduler: {line.rstrip()[:400]}" for line in f
                          if f"'{task}'" in line and run_id in line and "Sending" not in line][-10:]
    return "\n".join(lines)


def _newest(store, component: str, key: str) -> str:
    """The URI of `component`'s newest `key` artifact in ML Metadata."""
    prefix = f"s3://{BUCKET}/celery/pipeline_root/{component}/{key}/"
    return max((a for a in store.get_artifacts() if a.uri.startswith(prefix)), key=lambda a: a.id).uri


def _versions(s3, prefix: str) -> list[int]:
    return sorted({int(k[len(prefix):].split("/")[0]) for k in _keys(s3, prefix) if k.endswith("/saved_model.pb")})


def _object(s3, uri: str) -> str:
    key = uri[len(f"s3://{BUCKET}/"):]
    return s3.client().get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()
