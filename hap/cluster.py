"""The one-host rehearsal of a cluster's shared services, on loopback: ML Metadata in a MariaDB
server (Debian's `mariadb-server`; MySQL's protocol, which ML Metadata speaks), and an object
store that speaks S3 (moto's server, from PyPI into .venv-s3 by `make s3-env`).

    python -m hap.cluster up [--state-dir .cluster] [--config FILE]   # `make cluster-up`
    python -m hap.cluster down [--state-dir .cluster]                 # `make cluster-down`

`up` creates MariaDB's data directory on first use, starts `mariadbd` bound to 127.0.0.1, creates
the database and the user of the settings' `metadata.mysql` (password: the variable it names,
default HAP_MYSQL_PASSWORD); starts the S3 server on 127.0.0.1:S3_PORT (default 9000) with the
bucket HAP_BUCKET (default `hap`); and prints the environment and `--set` options that point
`hap run` at both. Tests start their own servers the same way (tests/test_cluster.py).
docs/deploying.md says what changes on a real cluster.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

from hap.settings import MySQLSettings

PID_FILE, LOG_FILE, SOCKET_FILE, DATA_DIR = "mariadb.pid", "mariadb.log", "mariadb.sock", "mariadb"
S3_PID_FILE, S3_LOG_FILE = "s3.pid", "s3.log"
# The rehearsal's S3 credentials: the server accepts any, a real store its own.
S3_KEY, S3_SECRET, S3_REGION = "hap-rehearsal", "hap-rehearsal-secret", "us-east-1"


class ClusterError(RuntimeError):
    """A service that could not be installed, started or reached; the message says which."""


def _binary(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    if path is None:
        raise ClusterError(f"{name} is not installed: `apt-get install mariadb-server` (Debian) brings it")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


@dataclasses.dataclass
class MariaDB:
    state_dir: str
    settings: MySQLSettings
    password: str
    process: subprocess.Popen | None = None

    @property
    def socket_path(self) -> str:
        return os.path.join(self.state_dir, SOCKET_FILE)

    def sql(self, statement: str) -> None:
        """Runs `statement` as the server's root user, over its socket."""
        done = subprocess.run([_binary("mariadb"), f"--socket={self.socket_path}", "-u", "root", "-e", statement],
                              capture_output=True, text=True, timeout=60)
        if done.returncode:
            raise ClusterError(f"MariaDB at {self.socket_path}: {done.stderr.strip()}")


def _user_args() -> list[str]:
    # As root (CI, a container), the server runs as root too, so that any data directory will do.
    return ["--user=root"] if os.geteuid() == 0 else []


def start_mariadb(state_dir: str, settings: MySQLSettings, password: str, timeout: float = 60.0) -> MariaDB:
    """A MariaDB server on `settings.host`:`settings.port` with its data under `state_dir`, and
    the database and user of `settings`; stopped by `stop_mariadb`."""
    os.makedirs(state_dir, exist_ok=True)
    server = MariaDB(os.path.abspath(state_dir), settings, password)
    data = os.path.join(server.state_dir, DATA_DIR)
    if _answers(settings.host, settings.port):
        raise ClusterError(f"something already listens on {settings.host}:{settings.port}; "
                           "stop it or choose another metadata.mysql.port")
    if not os.path.isdir(data):
        done = subprocess.run([_binary("mariadb-install-db"), *_user_args(), f"--datadir={data}",
                               "--auth-root-authentication-method=socket", "--skip-test-db"],
                              capture_output=True, text=True, timeout=300)
        if done.returncode:
            shutil.rmtree(data, ignore_errors=True)
            raise ClusterError(f"mariadb-install-db failed for {data}: {done.stderr.strip()[-2000:]}")
    log = open(os.path.join(server.state_dir, LOG_FILE), "a", encoding="utf-8")
    server.process = subprocess.Popen(
        [_binary("mariadbd"), *_user_args(), f"--datadir={data}", f"--socket={server.socket_path}",
         f"--port={settings.port}", f"--bind-address={settings.host}", f"--pid-file={os.path.join(server.state_dir, PID_FILE)}",
         "--skip-name-resolve"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + timeout
    while not (_answers(settings.host, settings.port) and os.path.exists(server.socket_path)):
        if server.process.poll() is not None or time.time() > deadline:
            stop_mariadb(server)
            raise ClusterError(f"mariadbd did not start on {settings.host}:{settings.port}; its log: "
                               f"{os.path.join(server.state_dir, LOG_FILE)}")
        time.sleep(0.2)
    quoted = password.replace("\\", "\\\\").replace("'", "\\'")
    server.sql(f"CREATE DATABASE IF NOT EXISTS `{settings.database}`; "
               f"CREATE USER IF NOT EXISTS '{settings.user}'@'%' IDENTIFIED BY '{quoted}'; "
               f"GRANT ALL ON `{settings.database}`.* TO '{settings.user}'@'%'; FLUSH PRIVILEGES;")
    return server


@dataclasses.dataclass
class S3Server:
    state_dir: str
    host: str
    port: int
    process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def environment(self) -> dict[str, str]:
        """What TensorFlow's and Beam's S3 clients read (hap/storage.py)."""
        return {"S3_ENDPOINT": self.endpoint, "AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET,
                "AWS_REGION": S3_REGION}

    def create_bucket(self, bucket: str) -> str:
        import boto3

        client = boto3.client("s3", endpoint_url=self.endpoint, region_name=S3_REGION, aws_access_key_id=S3_KEY,
                              aws_secret_access_key=S3_SECRET)
        if bucket not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
            client.create_bucket(Bucket=bucket)
        return f"s3://{bucket}"


def s3_server_binary() -> str:
    """moto's server: HAP_S3_SERVER, else .venv-s3's (`make s3-env`), else one on PATH."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for path in (os.environ.get("HAP_S3_SERVER"), os.path.join(repo, ".venv-s3", "bin", "moto_server"),
                 shutil.which("moto_server")):
        if path and os.access(path, os.X_OK):
            return path
    raise ClusterError("no S3 server: `make s3-env` installs moto's into .venv-s3 (or set HAP_S3_SERVER)")


def start_s3(state_dir: str, host: str = "127.0.0.1", port: int = 9000, timeout: float = 60.0) -> S3Server:
    """An S3-compatible server on `host`:`port`, its log under `state_dir`; stopped by `stop_s3`.
    It keeps objects in memory: stopping it empties the store."""
    os.makedirs(state_dir, exist_ok=True)
    if _answers(host, port):
        raise ClusterError(f"something already listens on {host}:{port}; stop it or choose another S3 port")
    server = S3Server(os.path.abspath(state_dir), host, port)
    log = open(os.path.join(server.state_dir, S3_LOG_FILE), "a", encoding="utf-8")
    server.process = subprocess.Popen([s3_server_binary(), "-H", host, "-p", str(port)], stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
    with open(os.path.join(server.state_dir, S3_PID_FILE), "w", encoding="utf-8") as f:
        f.write(str(server.process.pid))
    deadline = time.time() + timeout
    while not _answers(host, port):
        if server.process.poll() is not None or time.time() > deadline:
            _stop_pid(server.process.pid, server.process)
            raise ClusterError(f"the S3 server did not start on {host}:{port}; its log: "
                               f"{os.path.join(server.state_dir, S3_LOG_FILE)}")
        time.sleep(0.2)
    return server


def stop_s3(server: S3Server | None = None, state_dir: str | None = None) -> bool:
    pid_file = os.path.join(state_dir or server.state_dir, S3_PID_FILE)
    pid = server.process.pid if server and server.process else _read_pid(pid_file)
    stopped = pid is not None and _stop_pid(pid, server.process if server else None)
    if os.path.exists(pid_file):
        os.remove(pid_file)
    return stopped


def _read_pid(pid_file: str) -> int | None:
    if not os.path.exists(pid_file):
        return None
    with open(pid_file, encoding="utf-8") as f:
        return int(f.read().strip() or 0) or None


def _stop_pid(pid: int, process: subprocess.Popen | None, timeout: float = 60.0) -> bool:
    """SIGTERM, then SIGKILL after `timeout`; False when `pid` was not running."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process is not None and process.poll() is not None:
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    return True


def stop_mariadb(server: MariaDB | None = None, state_dir: str | None = None, timeout: float = 60.0) -> bool:
    """Stops the server started here (or the one whose pid file is in `state_dir`); False when
    none was running."""
    pid = server.process.pid if server and server.process else _read_pid(os.path.join(state_dir or server.state_dir,
                                                                                     PID_FILE))
    return pid is not None and _stop_pid(pid, server.process if server else None, timeout)


def main(argv: list[str] | None = None) -> int:
    from hap import settings as hap_settings

    parser = argparse.ArgumentParser(prog="python -m hap.cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--state-dir", default=".cluster", help="the servers' data, logs and pid files")
    parser.add_argument("--config", help="a settings file (its metadata.mysql: host, port, database, user)")
    args = parser.parse_args(argv)
    mysql = hap_settings.load(args.config).settings.metadata.mysql
    if args.action == "down":
        print("MariaDB stopped" if stop_mariadb(state_dir=args.state_dir) else "no MariaDB was running")
        print("S3 server stopped" if stop_s3(state_dir=args.state_dir) else "no S3 server was running")
        return 0
    password = os.environ.get(mysql.password_env)
    if not password:
        print(f"set {mysql.password_env} to the password ML Metadata's user is to have", file=sys.stderr)
        return 2
    try:
        start_mariadb(args.state_dir, mysql, password)
        s3 = start_s3(args.state_dir, port=int(os.environ.get("S3_PORT", "9000")))
        bucket = s3.create_bucket(os.environ.get("HAP_BUCKET", "hap"))
    except ClusterError as e:
        print(f"hap cluster: {e}", file=sys.stderr)
        return 1
    print(f"MariaDB on {mysql.host}:{mysql.port}, database {mysql.database!r}, user {mysql.user!r}; data in "
          f"{args.state_dir}.")
    print(f"S3 on {s3.endpoint}, bucket {bucket} (in memory: `down` empties it).")
    print("Point a run at both:")
    for name, value in s3.environment().items():
        print(f"  export {name}={value}")
    print(f"  hap run --data DATA --out OUT --set metadata.backend=mysql --set storage.artifacts_root={bucket}/run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
