import logging
import os
import shutil

import pytest

from hap import schema as default_schema
from hap.data import contract as c
from hap.data.sample_routing import SAMPLE_ROUTING
from hap.data import simulator
from hap.pipeline import configs, local_runner
from hap.schema import derive


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


def test_auc_floors_with_replaces_only_the_floors_given():
    floors = configs.auc_floors_with({"light": {"EN": 0.5}, "heavy": {"RN": 1}})
    assert floors["light"] == {**SAMPLE_ROUTING["light"].auc_floors, "EN": 0.5}
    assert floors["heavy"] == {**SAMPLE_ROUTING["heavy"].auc_floors, "RN": 1.0}
    assert SAMPLE_ROUTING["light"].auc_floors["EN"] != 0.5, "the defaults themselves are left alone"


@pytest.mark.parametrize("overrides, message", [
    ({"medium": {"EN": 0.5}}, "unknown model 'medium'"),
    ({"heavy": {"EP": 0.5}}, "heavy has no floor for 'EP'"),
    ({"light": {"EN": 1.5}}, r"light.EN must be a number in \[0, 1\]"),
    ({"light": {"EN": "0.5"}}, "light.EN must be a number"),
    ({"light": 0.5}, "light needs a mapping"),
    ([0.5], "expected a mapping"),
])
def test_auc_floors_with_names_what_is_wrong(overrides, message):
    with pytest.raises(ValueError, match=message):
        configs.auc_floors_with(overrides)


def _beam_args(pipeline) -> dict[str, list[str]]:
    return {node.id: list(node.executor_spec.beam_pipeline_args) for node in pipeline.components
            if hasattr(node.executor_spec, "beam_pipeline_args")}


def test_small_data_keeps_every_beam_component_in_memory(tiny_csv, tmp_path):
    args = _beam_args(local_runner.build(tiny_csv, str(tmp_path)))
    assert {"ContractExampleGen", "StatisticsGen", "Transform", "RequestGrouper", "Evaluator_light"} <= set(args)
    assert all(a == configs.BEAM_PIPELINE_ARGS for a in args.values()), args


def test_large_data_runs_the_measured_components_multi_process(tiny_csv, tmp_path):
    data = tmp_path / "large"
    (data / c.SAMPLES_DIR).mkdir(parents=True)
    shutil.copy(os.path.join(tiny_csv, c.FEATURES_FILE), data / c.FEATURES_FILE)
    with open(data / c.SAMPLES_DIR / "day-0.csv", "wb") as f:
        f.truncate(configs.MULTI_PROCESS_MIN_BYTES)  # sparse: the size is what counts
    args = _beam_args(local_runner.build(str(data), str(tmp_path / "out")))
    for node, given in args.items():
        added = configs.MULTI_PROCESS_ARGS if node in configs.MULTI_PROCESS_COMPONENTS else []
        assert given == configs.BEAM_PIPELINE_ARGS + added, node
    # Beam arguments given by the user are their choice for every component.
    chosen = ["--direct_running_mode=in_memory"]
    args = _beam_args(local_runner.build(str(data), str(tmp_path / "out2"), beam_pipeline_args=chosen))
    assert all(a == chosen for a in args.values()), args
