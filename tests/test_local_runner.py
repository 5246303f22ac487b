import logging
import os
import shutil
import tempfile

import pytest
from tfx.components.statistics_gen import executor as statistics_gen
from tfx.dsl.components.base import base_beam_executor

from hap import schema as default_schema
from hap.data import contract as c
from hap import settings
from hap.data import simulator
from hap.pipeline import local_runner, pipeline
from hap.schema import derive

DEFAULTS = settings.defaults()


def test_default_feature_set_uses_the_curated_schema(tmp_path):
    assert local_runner.schema_for(simulator.FEATURE_SET, str(tmp_path)) == default_schema.DEFAULT_SCHEMA
    assert not os.path.exists(tmp_path / "schema")


def test_another_feature_set_gets_a_derived_schema_written_once(tmp_path):
    features = c.parse_features({"version": 1, "features": [
        {"name": "u_hist", "role": "user", "kind": "sequence", "max_len": 5, "target": "item_id"},
        {"name": "i_price", "role": "item", "kind": "numeric"}]}, "test")
    path = local_runner.schema_for(features, str(tmp_path))
    assert path == str(tmp_path / "schema" / "schema.pbtxt")
    assert derive.load_schema(path) == derive.derive_schema(features)
    before = os.stat(path).st_mtime_ns
    assert local_runner.schema_for(features, str(tmp_path)) == path
    assert os.stat(path).st_mtime_ns == before, "an unchanged schema must not be rewritten (cache key)"


def test_progress_filter_keeps_component_lines_and_drops_chatter():
    f = local_runner._ComponentProgress()

    def record(level, msg):
        return logging.LogRecord("absl", level, __file__, 1, msg, None, None)

    assert f.filter(record(logging.INFO, "Component Transform is running."))
    assert f.filter(record(logging.INFO, "Component Transform is finished."))
    assert not f.filter(record(logging.INFO, "Generating examples."))
    assert f.filter(record(logging.WARNING, "Something the user should see"))
    assert not f.filter(record(logging.WARNING, "ArtifactQuery.property_predicate is not supported."))


def test_component_progress_survives_a_savedmodel_export(tmp_path):
    """TensorFlow saves and restores absl's verbosity around every export (as the Trainers and the
    cascade assembly do); the progress lines must still get through afterwards."""
    import tensorflow as tf

    local_runner.show_component_progress()
    module = tf.Module()
    module.v = tf.Variable(1.0)
    tf.saved_model.save(module, str(tmp_path / "model"))
    assert logging.getLogger("absl").isEnabledFor(logging.INFO)


def test_a_metadata_server_that_does_not_answer_is_one_error_naming_host_and_port(tiny_csv, tmp_path):
    import socket

    with socket.socket() as free:  # a port nothing listens on
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    tree = settings.override(DEFAULTS, {"metadata.backend": "mysql", "metadata.mysql.port": port})
    with pytest.raises(ConnectionError, match=rf"no MySQL server answers at 127.0.0.1:{port}"):
        local_runner.build(tiny_csv, str(tmp_path / "out"), tree)
    assert not os.path.exists(tmp_path / "out"), "nothing is written before the metadata store answers"


def _beam_args(pipeline) -> dict[str, list[str]]:
    return {node.id: list(node.executor_spec.beam_pipeline_args) for node in pipeline.components
            if hasattr(node.executor_spec, "beam_pipeline_args")}


def _with_setup_file(args: list[str]) -> list[str]:
    return args + [f"--setup_file={pipeline.source_setup_file()}"]


def test_small_data_keeps_every_beam_component_in_memory(tiny_csv, tmp_path):
    args = _beam_args(local_runner.build(tiny_csv, str(tmp_path)))
    assert {"ContractExampleGen", "StatisticsGen", "Transform", "RequestGrouper", "Evaluator_light"} <= set(args)
    assert all(a == _with_setup_file(DEFAULTS.beam.args) for a in args.values()), args


def test_large_data_runs_the_measured_components_multi_process(tiny_csv, tmp_path):
    data = tmp_path / "large"
    (data / c.SAMPLES_DIR).mkdir(parents=True)
    shutil.copy(os.path.join(tiny_csv, c.FEATURES_FILE), data / c.FEATURES_FILE)
    with open(data / c.SAMPLES_DIR / "day-0.csv", "wb") as f:
        f.truncate(DEFAULTS.beam.multi_process_min_bytes)  # sparse: the size is what counts
    args = _beam_args(local_runner.build(str(data), str(tmp_path / "out")))
    assert {"StatisticsGen", "Transform", "Evaluator_light", "Evaluator_heavy"} == set(
        DEFAULTS.beam.multi_process_components)
    for node, given in args.items():
        added = DEFAULTS.beam.multi_process_args if node in DEFAULTS.beam.multi_process_components else []
        assert given == _with_setup_file(DEFAULTS.beam.args) + added, node
    # Beam arguments given by the user are their choice for every component.
    chosen = ["--direct_running_mode=in_memory"]
    tree = settings.override(DEFAULTS, {"beam.args": chosen})
    args = _beam_args(local_runner.build(str(data), str(tmp_path / "out2"), tree))
    assert all(a == _with_setup_file(chosen) for a in args.values()), args


def test_the_source_tree_setup_file_is_the_beam_dependency():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert pipeline.source_setup_file() == os.path.join(repo, "setup.py")


@pytest.mark.parametrize("given, expected", [
    ([], ["--setup_file=/src/setup.py"]),
    (["--runner=FlinkRunner"], ["--runner=FlinkRunner", "--setup_file=/src/setup.py"]),
    (["--sdk_container_image=registry/hap:cpu"], ["--sdk_container_image=registry/hap:cpu"]),
    (["--extra_package=/dist/hap.tar.gz"], ["--extra_package=/dist/hap.tar.gz"]),
    (["--setup_file=/other/setup.py"], ["--setup_file=/other/setup.py"]),
    (["--requirements_file=req.txt"], ["--requirements_file=req.txt"]),
])
def test_the_setup_file_is_named_only_where_no_dependency_is(given, expected):
    assert pipeline.with_worker_dependency(given, "/src/setup.py") == expected


def test_without_a_setup_file_the_arguments_are_kept_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        assert pipeline.with_worker_dependency(["--runner=FlinkRunner"], None) == ["--runner=FlinkRunner"]
    assert "--sdk_container_image" in caplog.text


@pytest.mark.parametrize("named", [True, False])
def test_beam_executors_build_no_package_when_a_dependency_is_named(named, tmp_path, monkeypatch):
    """TFX's Beam executors build a source package of TFX in a temporary directory they never
    delete when the Beam arguments name no dependency (the unnamed case shows that they do)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    args = pipeline.with_worker_dependency(DEFAULTS.beam.args, pipeline.source_setup_file() if named else None)
    statistics_gen.Executor(base_beam_executor.BaseBeamExecutor.Context(beam_pipeline_args=args))
    built = [root for root, _, files in os.walk(tmp_path) if any(f.endswith(".tar.gz") for f in files)]
    assert (built == []) == named, built
