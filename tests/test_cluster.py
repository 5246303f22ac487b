"""ML Metadata in a database server, as a cluster keeps it: a real MariaDB on loopback, started the
way `make cluster-up` starts it (hap/cluster.py). `hap run` records every execution there and
nothing in SQLite; the commands that read a run directory afterwards find the server from it; a
server that does not take the login is one clear error before any component runs.

CI installs Debian's mariadb-server (.ci/run); where it is missing these tests are skipped."""
import json
import os
import shutil
import tempfile

import pytest

from conftest import quick_keys
from hap import cli, cluster, settings

pytestmark = [pytest.mark.cluster, pytest.mark.skipif(
    shutil.which("mariadbd") is None and not os.path.exists("/usr/sbin/mariadbd"),
    reason="no MariaDB server: `apt-get install mariadb-server` (CI installs it)")]

PASSWORD = "hap-test-password"


@pytest.fixture(scope="module")
def mariadb():
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


def test_hap_run_keeps_ml_metadata_in_the_database_server(mariadb, tiny_csv, tmp_path, monkeypatch):
    from ml_metadata.metadata_store import metadata_store

    from hap.pipeline import run_report

    monkeypatch.setenv("HAP_MYSQL_PASSWORD", PASSWORD)
    out = tmp_path / "run"
    assert cli.main(["run", "--data", tiny_csv, "--out", str(out), *_sets(mariadb)]) == 0
    assert not (out / run_report.SQLITE_FILE).exists()
    recorded = json.loads((out / run_report.SERVER_FILE).read_text())
    assert recorded["port"] == mariadb.settings.port and PASSWORD not in json.dumps(recorded)
    store = metadata_store.MetadataStore(run_report.mysql_connection(mariadb.settings))
    nodes = {ctx.name for ctx in store.get_contexts_by_type("node")}
    assert {"hap.Trainer_light", "hap.Trainer_heavy", "hap.CascadeAssembler", "hap.Pusher"} <= nodes
    # The run directory leads the readers to the server: the summary, retention, the benchmark.
    assert {e["state"] for e in run_report.executions(str(out)) if e["node"].startswith("Trainer")} == {"COMPLETE"}
    assert run_report.latest_artifact(str(out), "Trainer_light", "Model").uri.startswith(str(out))


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
