"""The one-host rehearsal of a cluster, with real servers on loopback started the way
`make cluster-up` starts them (hap/cluster.py): ML Metadata in MariaDB, and an S3 server (moto's)
that TensorFlow's S3 file system (tensorflow-io) and Beam's (boto3) reach through hap/storage.py.
`hap run` reads its dataset from the store and writes every artifact and the pushed cascade
there, with ML Metadata in the database server; `hap serve` serves the store's base path and
swaps in a new version pushed there; a refused login and a bucket that does not exist are each one
error before any component runs.

Every process that touches s3:// here is a `hap` subprocess: tensorflow-io aborts the process
that used its S3 client at exit (hap/storage.py), which `hap` steps around and pytest would not.
CI installs Debian's mariadb-server and builds .venv-s3 (.ci/run); where either is missing the
tests that need it are skipped."""
import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest
import yaml

from conftest import quick_keys
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


def _client(server):
    import boto3

    return boto3.client("s3", endpoint_url=server.endpoint, region_name=cluster.S3_REGION,
                        aws_access_key_id=cluster.S3_KEY, aws_secret_access_key=cluster.S3_SECRET)


def _upload(server, directory: str, prefix: str) -> str:
    client = _client(server)
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            client.upload_file(path, BUCKET, f"{prefix}/{os.path.relpath(path, directory)}")
    return f"s3://{BUCKET}/{prefix}"


def _keys(server, prefix: str) -> list[str]:
    pages = _client(server).get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def _hap(server, *args: str, timeout: float = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **server.environment(), **(env or {})}
    return subprocess.run([sys.executable, "-m", "hap.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _s3_sets(**more) -> list[str]:
    keys = {**quick_keys(0.0), **more}
    return [arg for key, value in keys.items() for arg in ("--set", f"{key}={json.dumps(value)}")]


# Five features: an object store answers each request in milliseconds, and Transform writes a
# file per vocabulary, so a small feature set keeps the run short.
SMALL_FEATURES = """version: 1
features:
  - {name: u_click_seq, role: user, kind: sequence, max_len: 20, target: item_id}
  - {name: c_hour, role: context, kind: categorical}
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
def s3_run(mariadb, s3, tiny_csv, tmp_path_factory):
    """One `hap run` as a cluster runs it: ML Metadata in MariaDB, the dataset, every artifact and
    the pushed cascade on the S3 server."""
    data = _upload(s3, _with_small_features(tiny_csv, str(tmp_path_factory.mktemp("small") / "data")), "data")
    out = str(tmp_path_factory.mktemp("s3run") / "run")
    done = _hap(s3, "run", "--data", data, "--out", out, *_s3_sets(**{
        "storage.artifacts_root": f"s3://{BUCKET}/hap", "metadata.backend": "mysql",
        "metadata.mysql.port": mariadb.settings.port}), env={"HAP_MYSQL_PASSWORD": PASSWORD})
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    return out, done.stdout


def test_hap_run_keeps_ml_metadata_in_the_database_server_and_artifacts_on_the_object_store(mariadb, s3, s3_run,
                                                                                             monkeypatch):
    from ml_metadata.metadata_store import metadata_store

    from hap.pipeline import run_report

    monkeypatch.setenv("HAP_MYSQL_PASSWORD", PASSWORD)
    out, stdout = s3_run
    pushed = [k for k in _keys(s3, "hap/serving/hap/") if k.endswith("/saved_model.pb")]
    assert len(pushed) == 1, _keys(s3, "hap/serving/")
    assert f"s3://{BUCKET}/hap/serving/hap/" in stdout
    assert not os.path.exists(os.path.join(out, "pipeline_root")) and not os.path.exists(os.path.join(out, "serving"))
    assert not os.path.exists(os.path.join(out, run_report.SQLITE_FILE))
    with open(os.path.join(out, run_report.SERVER_FILE)) as f:
        recorded = json.load(f)
    assert recorded["port"] == mariadb.settings.port and PASSWORD not in json.dumps(recorded)
    store = metadata_store.MetadataStore(run_report.mysql_connection(mariadb.settings))
    assert {"hap.Trainer_light", "hap.Trainer_heavy", "hap.CascadeAssembler", "hap.Pusher"} <= {
        ctx.name for ctx in store.get_contexts_by_type("node")}
    uris = [a.uri for a in store.get_artifacts() if a.uri]
    assert uris and all(uri.startswith(f"s3://{BUCKET}/") for uri in uris), [u for u in uris if not u.startswith("s3")]
    # The run directory leads the readers to the server: the summary, retention, the benchmark.
    assert {e["state"] for e in run_report.executions(out) if e["node"].startswith("Trainer")} == {"COMPLETE"}
    assert run_report.latest_artifact(out, "Trainer_light", "Model").uri.startswith(f"s3://{BUCKET}/hap/")


def test_a_bucket_that_does_not_exist_is_one_error_before_any_component(s3, tmp_path):
    out = str(tmp_path / "run")
    done = _hap(s3, "run", "--data", f"s3://{BUCKET}/data", "--out", out,
                *_s3_sets(**{"storage.artifacts_root": "s3://no-such-bucket/hap"}))
    assert done.returncode != 0
    assert "s3://no-such-bucket/hap: the bucket s3://no-such-bucket/ does not exist" in done.stderr, done.stderr[-3000:]
    assert not os.path.exists(os.path.join(out, "metadata.sqlite")), "no component runs before the store answers"


def test_hap_serve_follows_a_base_path_on_the_object_store(s3, s3_run):
    import grpc
    from tensorflow_serving.apis import get_model_status_pb2, model_pb2, model_service_pb2_grpc

    (version_key,) = [k for k in _keys(s3, "hap/serving/hap/") if k.endswith("/saved_model.pb")]
    version = int(version_key.split("/")[-2])
    port = cluster.free_port()
    env = {**os.environ, **s3.environment()}
    process = subprocess.Popen([sys.executable, "-m", "hap.cli", "serve", f"s3://{BUCKET}/hap/serving/hap",
                                "--port", str(port), "--file_system_poll_wait_seconds", "1"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stub = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))

    def available(timeout: float = 180.0) -> list[int]:
        deadline = time.time() + timeout
        while time.time() < deadline and process.poll() is None:
            try:
                status = stub.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(
                    model_spec=model_pb2.ModelSpec(name="hap")), timeout=5)
                found = [s.version for s in status.model_version_status
                         if s.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE]
                if found:
                    return found
            except grpc.RpcError:
                pass
            time.sleep(0.5)
        return []

    try:
        assert available() == [version], process.stderr.read()[-3000:] if process.poll() is not None else ""
        # A new version pushed to the store, the graph last as TFX's Pusher writes it: swapped in.
        client = _client(s3)
        keys = [k for k in _keys(s3, f"hap/serving/hap/{version}/")]
        for key in sorted(keys, key=lambda k: k.endswith("saved_model.pb")):
            client.copy_object(Bucket=BUCKET, Key=key.replace(f"/{version}/", f"/{version + 1}/"),
                               CopySource={"Bucket": BUCKET, "Key": key})
        deadline = time.time() + 120
        while time.time() < deadline and available(10) != [version + 1]:
            time.sleep(0.5)
        assert available(10) == [version + 1]
    finally:
        process.terminate()
        process.wait(timeout=60)
