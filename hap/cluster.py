"""The one-host rehearsal of a cluster, on loopback: ML Metadata in a MariaDB server (Debian's
`mariadb-server`; MySQL's protocol, which ML Metadata speaks); an object store that speaks S3
(moto's server, from PyPI into .venv-s3 by `make s3-env`); and Airflow as a cluster runs it, with
the CeleryExecutor: its own database in PostgreSQL, a Redis broker, the scheduler and two Celery
workers, each a process of its own (.venv-airflow, `make airflow-env`).

    python -m hap.cluster up [--state-dir .cluster] [--config FILE] [--data DIR]   # `make cluster-up`
    python -m hap.cluster run [--state-dir .cluster] [--date YYYY-MM-DD]           # `make cluster-run`
    python -m hap.cluster down [--state-dir .cluster]                               # `make cluster-down`

`up` starts MariaDB with the database and the user of the settings' `metadata.mysql` (password:
the variable it names, default HAP_MYSQL_PASSWORD), the S3 server on 127.0.0.1:S3_PORT (default
9000) with the bucket HAP_BUCKET (default `hap`), uploads the dataset there, starts PostgreSQL and
Redis (POSTGRES_PORT 5433, REDIS_PORT 6380) and Airflow, whose DAG reads the dataset from the
bucket, keeps every artifact and pushed cascade there and ML Metadata in MariaDB, and runs its
Beam components on the multi-process DirectRunner, two processes. `run` triggers a DagRun and
follows it task by task; `down` stops everything. Tests start the same servers
(tests/test_cluster.py). docs/deploying.md says what changes on a real cluster.
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

from hap.settings import MySQLSettings

PID_FILE, LOG_FILE, SOCKET_FILE, DATA_DIR = "mariadb.pid", "mariadb.log", "mariadb.sock", "mariadb"
S3_PID_FILE, S3_LOG_FILE = "s3.pid", "s3.log"
# Airflow's own database and Celery's broker, and the Airflow processes (named in state_dir's
# `<name>.pid` and `<name>.log`).
POSTGRES_DIR, POSTGRES_USER, AIRFLOW_HOME = "postgres", "airflow", "airflow"
SCHEDULER, WORKER = "airflow-scheduler", "airflow-worker"
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

    def client(self):
        """A boto3 S3 client of this server."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=S3_REGION, aws_access_key_id=S3_KEY,
                            aws_secret_access_key=S3_SECRET)

    def create_bucket(self, bucket: str) -> str:
        client = self.client()
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


def _spawn(state_dir: str, name: str, argv: list[str], env: dict | None = None, **popen) -> subprocess.Popen:
    """Starts `argv` in a session of its own, its output in `<name>.log`, its pid in `<name>.pid`."""
    log = open(os.path.join(state_dir, f"{name}.log"), "a", encoding="utf-8")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, **popen)
    with open(os.path.join(state_dir, f"{name}.pid"), "w", encoding="utf-8") as f:
        f.write(str(process.pid))
    return process


def _wait_for(host: str, port: int, process: subprocess.Popen, what: str, log: str, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while not _answers(host, port):
        if process.poll() is not None or time.time() > deadline:
            _stop_pid(process.pid, process)
            raise ClusterError(f"{what} did not start on {host}:{port}; its log: {log}")
        time.sleep(0.2)


def stop_named(state_dir: str, name: str) -> bool:
    """Stops the process whose pid `_spawn` wrote to `<name>.pid`, with everything it started;
    False when none was running."""
    pid_file = os.path.join(state_dir, f"{name}.pid")
    pid = _read_pid(pid_file)
    stopped = pid is not None and _stop_group(pid)
    if os.path.exists(pid_file):
        os.remove(pid_file)
    return stopped


def _stop_group(pid: int, timeout: float = 60.0) -> bool:
    # A Celery worker's pool and task processes, and Airflow's task runners, are its descendants;
    # some start process groups of their own, so the whole tree is signalled, not one group.
    tree = [pid, *_descendants(pid)]
    if not _alive(pid):
        return False
    for each in tree:
        _signal(each, signal.SIGTERM)
    deadline = time.time() + timeout
    while any(_alive(each) for each in tree) and time.time() < deadline:
        time.sleep(0.2)
    for each in tree:
        _signal(each, signal.SIGKILL)
    return True


def kill_tree(pid: int) -> list[int]:
    """SIGKILL to `pid` and every process it started, at once, as when its machine dies; the
    pids killed."""
    tree = [pid, *_descendants(pid)]
    for each in tree:
        _signal(each, signal.SIGKILL)
    return tree


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def postgres_binary(name: str) -> str:
    for root in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.access(os.path.join(root, name), os.X_OK):
            return os.path.join(root, name)
    raise ClusterError(f"PostgreSQL's {name} is not installed: `apt-get install postgresql` (Debian) brings it")


def _as_postgres() -> dict:
    # PostgreSQL refuses to run as root; as root (CI, a container) it runs as Debian's postgres user.
    return {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}


def start_postgres(state_dir: str, port: int, password: str, host: str = "127.0.0.1", timeout: float = 60.0) -> str:
    """PostgreSQL on `host`:`port` for Airflow's own database, its data under `state_dir`, TCP
    only, with a database and a password user both named `airflow`; returns the SQLAlchemy URL.
    Stopped by `stop_named(state_dir, POSTGRES_DIR)`."""
    state_dir = os.path.abspath(state_dir)
    data = os.path.join(state_dir, POSTGRES_DIR)
    if _answers(host, port):
        raise ClusterError(f"something already listens on {host}:{port}; stop it or choose another port")
    owner = _as_postgres()
    created = not os.path.isdir(data)
    if created:
        os.makedirs(data, mode=0o700)
        os.chmod(state_dir, 0o755)
        password_file = os.path.join(state_dir, "postgres-initial-password")
        with open(os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as f:
            f.write(password)
        if owner:
            for path in (data, password_file):
                shutil.chown(path, **owner)
        done = subprocess.run([postgres_binary("initdb"), "-D", data, "-U", POSTGRES_USER, f"--pwfile={password_file}",
                               "--auth=scram-sha-256"], capture_output=True, text=True, timeout=300, **owner)
        os.remove(password_file)
        if done.returncode:
            shutil.rmtree(data, ignore_errors=True)
            raise ClusterError(f"initdb failed for {data}: {done.stderr.strip()[-2000:]}")
    process = _spawn(state_dir, POSTGRES_DIR, [postgres_binary("postgres"), "-D", data, "-p", str(port),
                                               "-c", f"listen_addresses={host}", "-c", "unix_socket_directories="],
                     **owner)
    _wait_for(host, port, process, "PostgreSQL", os.path.join(state_dir, f"{POSTGRES_DIR}.log"), timeout)
    if created:
        done = subprocess.run([postgres_binary("psql"), "-h", host, "-p", str(port), "-U", POSTGRES_USER, "-d",
                               "postgres", "-c", f"CREATE DATABASE {POSTGRES_USER}"],
                              env={**os.environ, "PGPASSWORD": password}, capture_output=True, text=True, timeout=60)
        if done.returncode:
            raise ClusterError(f"PostgreSQL at {host}:{port}: {done.stderr.strip()}")
    return f"postgresql+psycopg2://{POSTGRES_USER}:{password}@{host}:{port}/{POSTGRES_USER}"


def redis_binary() -> str:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.access(binary, os.X_OK):
        raise ClusterError("redis-server is not installed: `apt-get install redis-server` (Debian) brings it")
    return binary


def start_redis(state_dir: str, port: int, host: str = "127.0.0.1", timeout: float = 60.0) -> str:
    """Redis on `host`:`port` as Celery's broker, nothing persisted; returns the broker URL.
    Stopped by `stop_named(state_dir, "redis")`."""
    binary = redis_binary()
    if _answers(host, port):
        raise ClusterError(f"something already listens on {host}:{port}; stop it or choose another port")
    state_dir = os.path.abspath(state_dir)
    process = _spawn(state_dir, "redis", [binary, "--bind", host, "--port", str(port), "--save", "",
                                          "--appendonly", "no", "--dir", state_dir])
    _wait_for(host, port, process, "Redis", os.path.join(state_dir, "redis.log"), timeout)
    return f"redis://{host}:{port}/0"


def airflow_binary() -> str:
    """The `airflow` command of .venv-airflow (`make airflow-env`), or HAP_AIRFLOW."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.environ.get("HAP_AIRFLOW") or os.path.join(repo, ".venv-airflow", "bin", "airflow")
    if not os.access(path, os.X_OK):
        raise ClusterError("no Airflow: `make airflow-env` installs it into .venv-airflow (or set HAP_AIRFLOW)")
    return path


def airflow_worker_name() -> str:
    """Airflow's `hostname_callable` in the rehearsal: the worker's name (HAP_AIRFLOW_WORKER), so
    that task instances say which of two workers on one host ran them; elsewhere the host's."""
    return os.environ.get("HAP_AIRFLOW_WORKER") or socket.getfqdn()


def airflow_environment(state_dir: str, database_url: str, broker_url: str, hap_env: dict[str, str],
                        zombie_threshold_s: int = 300, zombie_detection_interval_s: int = 60) -> dict[str, str]:
    """The environment of Airflow's scheduler and Celery workers: Airflow's own settings, and
    `hap_env` (HAP_DATA, HAP_OUT, HAP_SET or HAP_CONFIG, HAP_MYSQL_PASSWORD, the S3 client's).
    A task whose worker stops heartbeating is failed, and so retried, `zombie_threshold_s` after
    its last heartbeat, at the next zombie check (every `zombie_detection_interval_s`).

    The interval must exceed the time the DAG processor takes to handle a zombie, which parses
    the DAG file (HAP's imports TFX: seconds, more on a busy host; Airflow logs each parse's time
    under logs/scheduler/). Until it is handled the task stays `running`, each check finds it
    again, and Airflow 2.10 fails it once per finding, each taking one retry from the tries that
    follow (apache/airflow#31212): with checks every 5 s, a killed task on a busy host used up its
    retries without running again."""
    home = os.path.join(os.path.abspath(state_dir), AIRFLOW_HOME)
    dags = os.path.join(home, "dags")
    os.makedirs(dags, exist_ok=True)
    import hap.pipeline

    shutil.copy(os.path.join(os.path.dirname(hap.pipeline.__file__), "airflow_dag.py"), dags)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "HAP_"))}
    env.update({
        "AIRFLOW_HOME": home,
        "AIRFLOW__CORE__DAGS_FOLDER": dags,
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "hap.cluster.airflow_worker_name",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database_url,
        "AIRFLOW__CELERY__BROKER_URL": broker_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + database_url.replace("+psycopg2", ""),
        # Each task forks from its worker; importing TFX first (pipeline/celery_config.py) saves
        # every task that import.
        "AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS": "hap.pipeline.celery_config.CELERY_CONFIG",
        "AIRFLOW__SCHEDULER__SCHEDULER_ZOMBIE_TASK_THRESHOLD": str(zombie_threshold_s),
        "AIRFLOW__SCHEDULER__ZOMBIE_DETECTION_INTERVAL": str(zombie_detection_interval_s),
        # The DAG file imports TFX: on a busy host its parse outlasts Airflow's 30 s and 50 s limits.
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "180",
        "AIRFLOW__CORE__DAG_FILE_PROCESSOR_TIMEOUT": "240",
        # The DAG file changes only with a deployment: parse it at start, not every 30 s.
        "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "3600",
        "AIRFLOW__SCHEDULER__PARSING_PROCESSES": "1",
        **hap_env,
    })
    return env


def start_airflow(state_dir: str, env: dict[str, str], workers: int = 2, timeout: float = 600.0) -> list[str]:
    """Migrates Airflow's database, then starts the scheduler and `workers` Celery workers of one
    task each (named worker1, worker2, ...), each a process of its own; returns the workers'
    names. Stopped by `stop_airflow`."""
    state_dir = os.path.abspath(state_dir)
    with open(os.path.join(state_dir, "airflow.env.json"), "w", encoding="utf-8") as f:
        json.dump(env, f)
    airflow = airflow_binary()
    done = subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        raise ClusterError(f"airflow db migrate failed: {done.stderr.strip()[-2000:]}")
    # The DAG is parsed and registered before anything runs, so that its import errors are this
    # call's and a DagRun can be triggered as soon as it returns. (The command's own status is no
    # guide: a process that reached s3:// aborts at exit, hap/storage.py.)
    done = subprocess.run([airflow, "dags", "reserialize"], env=env, capture_output=True, text=True, timeout=timeout)
    errors = airflow_sql(env, "SELECT stacktrace FROM import_error")
    if errors or not airflow_sql(env, "SELECT dag_id FROM dag WHERE dag_id = 'hap'"):
        raise ClusterError("Airflow could not load the DAG: "
                           f"{(errors[0][0] if errors else done.stderr.strip())[-3000:]}")
    _spawn(state_dir, SCHEDULER, [airflow, "scheduler"], env)
    names = [f"worker{i}" for i in range(1, workers + 1)]
    for name in names:
        # The logs stay in AIRFLOW_HOME, which both workers share here, so neither serves them.
        _spawn(state_dir, f"{WORKER}-{name}", [airflow, "celery", "worker", "--concurrency", "1", "--skip-serve-logs",
                                                "--celery-hostname", f"{name}@%h"],
               {**env, "HAP_AIRFLOW_WORKER": name})
    return names


def worker_pid(state_dir: str, name: str) -> int | None:
    return _read_pid(os.path.join(state_dir, f"{WORKER}-{name}.pid"))


def stop_airflow(state_dir: str) -> list[str]:
    """Stops the scheduler and every worker started in `state_dir`; the names of those stopped."""
    if not os.path.isdir(state_dir):
        return []
    names = [SCHEDULER] + sorted(n[:-4] for n in os.listdir(state_dir) if n.startswith(WORKER) and n.endswith(".pid"))
    return [name for name in names if stop_named(state_dir, name)]


def airflow_sql(env: dict[str, str], query: str) -> list[list[str]]:
    """Rows of `query` on Airflow's database (its PostgreSQL): the task instances' states and
    workers are read here without starting Airflow's CLI."""
    from urllib.parse import urlsplit

    url = urlsplit(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    done = subprocess.run([postgres_binary("psql"), "-h", url.hostname, "-p", str(url.port), "-U", url.username,
                           "-d", url.path.lstrip("/"), "-At", "-F", "\t", "-c", query],
                          env={**os.environ, "PGPASSWORD": url.password}, capture_output=True, text=True, timeout=60)
    if done.returncode:
        raise ClusterError(f"Airflow's database: {done.stderr.strip()}")
    return [line.split("\t") for line in done.stdout.splitlines() if line]


def trigger(env: dict[str, str], logical_date: str, dag_id: str = "hap") -> str:
    """Triggers a DagRun of `dag_id` for `logical_date` (YYYY-MM-DD); returns its run id."""
    run_id = f"manual__{logical_date}"
    done = subprocess.run([airflow_binary(), "dags", "trigger", dag_id, "--exec-date", logical_date, "--run-id",
                           run_id], env=env, capture_output=True, text=True, timeout=300)
    if done.returncode:
        raise ClusterError(f"airflow dags trigger failed: {done.stderr.strip()[-2000:]}")
    return run_id


def task_instances(env: dict[str, str], run_id: str, dag_id: str = "hap") -> dict[str, dict]:
    """Each task of the DagRun `run_id`: its state, try number and the worker that ran it."""
    rows = airflow_sql(env, "SELECT task_id, coalesce(state, ''), try_number, coalesce(hostname, '') FROM "
                            f"task_instance WHERE dag_id = '{dag_id}' AND run_id = '{run_id}'")
    return {task: {"state": state, "try_number": int(tries), "worker": worker} for task, state, tries, worker in rows}


def wait_for_run(env: dict[str, str], run_id: str, timeout: float, dag_id: str = "hap",
                 progress=None) -> str:
    """The DagRun's final state (success or failed), polled from Airflow's database;
    `progress(tasks)` is called on every change of its task instances."""
    deadline, last = time.time() + timeout, None
    while time.time() < deadline:
        rows = airflow_sql(env, f"SELECT state FROM dag_run WHERE dag_id = '{dag_id}' AND run_id = '{run_id}'")
        tasks = task_instances(env, run_id, dag_id)
        if progress and tasks != last:
            progress(tasks)
        last = tasks
        if rows and rows[0][0] in ("success", "failed"):
            return rows[0][0]
        time.sleep(2)
    raise ClusterError(f"DagRun {run_id} did not finish within {timeout:.0f} s; its tasks: {last}")


REHEARSAL_BEAM_ARGS = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]


def _upload(s3: S3Server, directory: str, uri: str) -> None:
    bucket, prefix = uri[len("s3://"):].split("/", 1)
    client = s3.client()
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            client.upload_file(path, bucket, f"{prefix}/{os.path.relpath(path, directory)}")


def up(state_dir: str, config: str | None, data: str | None, workers: int = 2) -> dict[str, str]:
    """Starts every service of the rehearsal and uploads the dataset (`data`, else the
    simulator's default one) to the bucket; returns Airflow's environment."""
    from hap import settings as hap_settings

    state_dir = os.path.abspath(state_dir)
    os.makedirs(state_dir, exist_ok=True)
    mysql = hap_settings.load(config).settings.metadata.mysql
    password = os.environ.get(mysql.password_env)
    if not password:
        raise ClusterError(f"set {mysql.password_env} to the password ML Metadata's user is to have")
    start_mariadb(state_dir, mysql, password)
    print(f"MariaDB (ML Metadata) on {mysql.host}:{mysql.port}, database {mysql.database!r}, user {mysql.user!r}")
    s3 = start_s3(state_dir, port=int(os.environ.get("S3_PORT", "9000")))
    bucket = s3.create_bucket(os.environ.get("HAP_BUCKET", "hap"))
    print(f"S3 on {s3.endpoint}, bucket {bucket} (in memory: `down` empties it)")
    if data is None:
        from hap.data import simulator

        data = os.path.join(state_dir, "data")
        if not os.path.isdir(data):
            simulator.simulate(data, simulator.SimulationConfig(), progress=False)
    _upload(s3, data, f"{bucket}/data")
    print(f"dataset {data} uploaded to {bucket}/data")
    database = start_postgres(state_dir, int(os.environ.get("POSTGRES_PORT", "5433")), password)
    print(f"PostgreSQL (Airflow's database) on 127.0.0.1:{os.environ.get('POSTGRES_PORT', '5433')}")
    broker = start_redis(state_dir, int(os.environ.get("REDIS_PORT", "6380")))
    print(f"Redis (Celery's broker) at {broker}")
    hap_set = " ".join(["metadata.backend=mysql", f"storage.artifacts_root={bucket}/hap", "airflow.schedule=null",
                        shlex.quote(f"beam.args={json.dumps(REHEARSAL_BEAM_ARGS)}")])
    hap_env = {"HAP_DATA": f"{bucket}/data", "HAP_OUT": os.path.join(state_dir, "out"), "HAP_SET": hap_set,
               mysql.password_env: password, **s3.environment()}
    if config:
        hap_env["HAP_CONFIG"] = os.path.abspath(config)
    env = airflow_environment(state_dir, database, broker, hap_env)
    names = start_airflow(state_dir, env, workers)
    print(f"Airflow: scheduler and Celery workers {', '.join(names)}; logs in {state_dir}")
    return env


def run(state_dir: str, logical_date: str, timeout: float = 3600.0) -> bool:
    """Triggers one DagRun of the rehearsal for `logical_date`, shows each task as it changes,
    and says what was pushed; True when the DagRun succeeded."""
    with open(os.path.join(state_dir, "airflow.env.json"), encoding="utf-8") as f:
        env = json.load(f)
    run_id = trigger(env, logical_date)
    print(f"DagRun {run_id} triggered")
    shown: dict[str, tuple] = {}

    def show(tasks):
        for task, t in sorted(tasks.items()):
            now = (t["state"], t["worker"], t["try_number"])
            if t["state"] and shown.get(task) != now:
                shown[task] = now
                where = f" on {t['worker']}" if t["worker"] else ""
                again = f" (try {t['try_number']})" if t["try_number"] > 1 else ""
                print(f"  {task}: {t['state']}{where}{again}", flush=True)

    state = wait_for_run(env, run_id, timeout, progress=show)
    from hap import settings as hap_settings

    base = f"{hap_settings.load(env=env).settings.storage.artifacts_root}/serving/hap"
    print(f"DagRun {run_id}: {state}; cascades pushed under {base} (`hap serve {base}` with the S3 variables "
          "that `up` printed serves the newest)")
    return state == "success"


def down(state_dir: str) -> None:
    for name in stop_airflow(state_dir):
        print(f"{name} stopped")
    for name, stop in (("Redis", lambda: stop_named(state_dir, "redis")),
                       ("PostgreSQL", lambda: stop_named(state_dir, POSTGRES_DIR)),
                       ("the S3 server", lambda: stop_s3(state_dir=state_dir)),
                       ("MariaDB", lambda: stop_mariadb(state_dir=state_dir))):
        print(f"{name} stopped" if stop() else f"no {name} was running")


def main(argv: list[str] | None = None) -> int:
    import datetime

    parser = argparse.ArgumentParser(prog="python -m hap.cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["up", "run", "down"])
    parser.add_argument("--state-dir", default=".cluster", help="the servers' data, logs and pid files")
    parser.add_argument("--config", help="a settings file (its metadata.mysql: host, port, database, user)")
    parser.add_argument("--data", help="up: the contract dataset to upload (default: the simulator's)")
    parser.add_argument("--date", default=datetime.date.today().isoformat(), help="run: the DagRun's logical date")
    args = parser.parse_args(argv)
    try:
        if args.action == "up":
            env = up(args.state_dir, args.config, args.data)
            print("Point `hap` at the store:")
            for name in ("S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"):
                print(f"  export {name}={env[name]}")
            return 0
        if args.action == "run":
            return 0 if run(args.state_dir, args.date) else 1
        down(args.state_dir)
        return 0
    except ClusterError as e:
        print(f"hap cluster: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
