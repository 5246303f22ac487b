import os

import pytest
import tensorflow as tf
import tensorflow_data_validation as tfdv

from hap import cli
from hap.data import canonical, contract, reader, simulator
from hap.schema import DEFAULT_FEATURES, DEFAULT_SCHEMA, derive


def _stats(dataset_dir, tmp_path, mutate=None):
    """TFDV statistics of the canonical examples of a dataset's samples."""
    features = contract.load_features(dataset_dir)
    types = canonical.canonical_types(features)
    path = str(tmp_path / "canonical.tfrecord")
    with tf.io.TFRecordWriter(path) as w:
        for i, row in enumerate(reader.read_rows(dataset_dir, features=features)):
            if mutate:
                mutate(i, row)
            w.write(canonical.to_example(row, types).SerializeToString())
    # An explicit output path: TFDV's default is a temporary directory it never removes.
    return tfdv.generate_statistics_from_tfrecord(path, output_path=str(tmp_path / "stats.tfrecord"))


def _anomalous_features(stats, schema):
    return set(tfdv.validate_statistics(stats, schema).anomaly_info)


@pytest.fixture(scope="module")
def tiny_stats(tiny_csv, tmp_path_factory):
    return _stats(tiny_csv, tmp_path_factory.mktemp("stats"))


def test_default_features_yaml_is_what_the_simulator_writes(tiny_csv):
    with open(DEFAULT_FEATURES) as a, open(os.path.join(tiny_csv, contract.FEATURES_FILE)) as b:
        assert a.read() == b.read()


def test_curated_schema_tightens_the_derived_one():
    curated = {f.name: f for f in derive.load_schema(DEFAULT_SCHEMA).feature}
    derived = derive.derive_schema(simulator.FEATURE_SET)
    assert set(curated) == {f.name for f in derived.feature}
    for f in derived.feature:
        cur = curated[f.name]
        assert cur.type == f.type, f.name
        assert cur.presence.min_fraction >= f.presence.min_fraction, f.name
        assert cur.value_count.min == f.value_count.min, f.name
        if f.value_count.max:
            assert cur.value_count.max == f.value_count.max, f.name
        if f.HasField("int_domain"):
            assert cur.int_domain.min >= f.int_domain.min, f.name
        if f.HasField("string_domain"):
            assert set(cur.string_domain.value) <= set(f.string_domain.value), f.name
    assert list(curated["content_type"].string_domain.value) == list(simulator.CONTENT_TYPES)
    assert curated["u_click_seq"].value_count.max == 50


def test_simulated_data_has_no_anomalies(tiny_stats):
    assert _anomalous_features(tiny_stats, derive.load_schema(DEFAULT_SCHEMA)) == set()
    assert _anomalous_features(tiny_stats, derive.derive_schema(simulator.FEATURE_SET)) == set()


def test_schema_catches_bad_domains_and_ranges(tiny_csv, tmp_path):
    def mutate(i, row):
        if i == 3:
            row["source"] = "organic"
            row["content_type"] = "podcast"
            row["expose_pos"] = -7
            row["i_hist_ctr"] = 1.5
            row["u_click_seq"] = ["1"] * 51
    stats = _stats(tiny_csv, tmp_path, mutate)
    curated = _anomalous_features(stats, derive.load_schema(DEFAULT_SCHEMA))
    assert {"source", "content_type", "expose_pos", "i_hist_ctr", "u_click_seq"} <= curated
    derived = _anomalous_features(stats, derive.derive_schema(simulator.FEATURE_SET))
    assert {"source", "expose_pos"} <= derived and "content_type" not in derived


def test_cli_derives_a_schema_for_another_feature_set(tmp_path):
    path = tmp_path / "features.yaml"
    path.write_text("version: 1\nfeatures:\n"
                    "  - {name: u_hist, role: user, kind: sequence, max_len: 20, target: item_id}\n"
                    "  - {name: i_price, role: item, kind: numeric}\n")
    out = str(tmp_path / "schema.pbtxt")
    assert cli.main(["schema", "derive", "--features", str(path), "--out", out]) == 0
    features = {f.name: f for f in derive.load_schema(out).feature}
    assert set(features) == set(contract.REQUIRED_COLUMNS) | set(contract.LABEL_COLUMNS) | {"u_hist", "i_price"}
    assert features["u_hist"].type == derive.schema_pb2.BYTES and features["u_hist"].value_count.min == 0
    assert features["i_price"].float_domain.disallow_nan
    assert features["request_id"].presence.min_fraction == 1.0
