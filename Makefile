# Two commands for a new user: `make demo` (set up, then run the main job on the default data)
# and `make test` (set up, then run the test suite). `make setup` alone builds .venv once; it is
# a no-op while constraints.txt and setup.py are unchanged.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo

AIRFLOW_VENV := .venv-airflow
S3_VENV := .venv-s3

.PHONY: setup demo test test-quick airflow-env s3-env cluster-up cluster-run cluster-down clean

setup: $(VENV)/.installed

$(VENV)/.installed: constraints.txt setup.py pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade 'pip==24.2'
	$(BIN)/pip install --progress-bar off --ignore-requires-python -c constraints.txt -e '.[dev,s3]'
	touch $@

# Airflow 2's pins clash with the TFX set (constraints-airflow.txt says which), so it gets an
# environment of its own; tests/test_airflow_dag.py runs the DAG under Airflow where it exists
# (CI builds it before `make test`) and skips otherwise.
airflow-env: $(AIRFLOW_VENV)/.installed

$(AIRFLOW_VENV)/.installed: constraints-airflow.txt setup.py pyproject.toml
	test -x $(AIRFLOW_VENV)/bin/python || $(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/pip install --quiet --upgrade 'pip==24.2'
	$(AIRFLOW_VENV)/bin/pip install --progress-bar off --ignore-requires-python -c constraints-airflow.txt -e '.[airflow,celery,s3,dev]'
	touch $@

# The S3-compatible server of the cluster rehearsal (moto's; hap/cluster.py), a separate process
# in an environment of its own; tests/test_cluster.py skips its object store tests without it (CI builds it).
s3-env: $(S3_VENV)/.installed

$(S3_VENV)/.installed: constraints-s3.txt
	test -x $(S3_VENV)/bin/python || $(PYTHON) -m venv $(S3_VENV)
	$(S3_VENV)/bin/pip install --quiet --upgrade 'pip==24.2'
	$(S3_VENV)/bin/pip install --progress-bar off -c constraints-s3.txt 'moto[server]'
	touch $@

demo: setup
	$(BIN)/hap demo --out $(DEMO_DIR)

# Two pytest workers, one per core: most tests keep one core busy. The tests that read the
# session's pipeline run stay on one worker (conftest.py), which runs the pipeline once.
PYTEST_WORKERS ?= 2

test: setup
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup

# The edit-test loop: everything but the marked tests (pytest.ini), within 3 minutes.
test-quick: setup
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) -m "not slow and not e2e and not airflow and not cluster"

# The one-host rehearsal of a cluster, on loopback (hap/cluster.py, docs/deploying.md): ML
# Metadata in MariaDB (Debian's mariadb-server; its password is $HAP_MYSQL_PASSWORD), data and
# artifacts on an S3 server, Airflow with the CeleryExecutor (PostgreSQL, Redis, a scheduler and
# two workers). `cluster-up` starts it all, `cluster-run` runs one DagRun and follows it,
# `cluster-down` stops it all.
CLUSTER_DIR ?= .cluster

cluster-up: setup s3-env airflow-env
	$(BIN)/python -m hap.cluster up --state-dir $(CLUSTER_DIR)

cluster-run: setup
	$(BIN)/python -m hap.cluster run --state-dir $(CLUSTER_DIR)

cluster-down: setup
	$(BIN)/python -m hap.cluster down --state-dir $(CLUSTER_DIR)

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
