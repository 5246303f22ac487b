"""preprocessing_fn run through tft_beam on hand-written samples, against closed-form outputs
(in the style of TFX's chicago taxi `taxi_utils_test.py`)."""
import functools

import hap  # noqa: F401  (Keras 2, before TensorFlow)
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

from hap.data import canonical
from hap.data import contract as c
from hap.models import preprocessing, transformed
from hap.schema import derive

# Seconds each: servers in subprocesses, subprocess training, or TensorFlow Transform runs.
pytestmark = pytest.mark.slow

FEATURES = c.parse_features({"version": 1, "features": [
    {"name": "u_segment", "role": "user", "kind": "categorical"},
    {"name": "i_category", "role": "item", "kind": "categorical"},
    {"name": "i_quality", "role": "item", "kind": "numeric"},
    {"name": "u_click_seq", "role": "user", "kind": "sequence", "max_len": 3, "target": "item_id"},
    {"name": "x_user_cat_ctr", "role": "cross", "kind": "numeric"},
]}, "test")

_DTYPES = {canonical.INT: tf.int64, canonical.FLOAT: tf.float32, canonical.BYTES: tf.string}


def _sample(request, user, item, source, click, positions, segment, category, quality, history, ctr,
            content_type="video"):
    """A canonical row; None is a missing value."""
    prerank, rank, expose = positions
    return {"request_id": request, "user_id": user, "item_id": item, "day": 0, "source": source,
            "click": click, "content_type": content_type, "prerank_pos": prerank, "rank_pos": rank,
            "expose_pos": expose, "u_segment": segment, "i_category": category, "i_quality": quality,
            "u_click_seq": history, "x_user_cat_ctr": ctr}


HISTORY = ["b", "c", "a", "d"]  # longer than max_len 3
# x_user_cat_ctr rises with the row number: Beam does not promise to keep the order, its
# z-score restores it.
ROWS = [
    _sample("r1", "u1", "a", c.EXPOSED, 1, (3, 1, 0), "s1", "c1", 1.0, HISTORY, 0.1),
    _sample("r1", "u1", "b", c.EXPOSED, 0, (5, 2, 1), "s1", "c1", 2.0, HISTORY, 0.2),
    _sample("r1", "u1", "c", c.RANKING, 0, (10, 199, -1), "s1", None, 3.0, HISTORY, 0.3, "article"),
    _sample("r1", "u1", "d", c.PRERANKING, 0, (399, -1, -1), "s1", "c2", None, HISTORY, 0.4, "article"),
    _sample("r2", "u2", "a", c.GLOBAL, 0, (-1, -1, -1), "s2", "c1", 5.0, [], 0.5),
    _sample("r2", "u2", "e", c.EXPOSED, 1, (0, 0, 0), "s2", None, 6.0, ["a", "z"], 0.6, "article"),
    _sample("r2", "u2", "b", c.RANKING, 0, (20, 10, -1), "s2", "c1", 7.0, ["a", "z"], 0.7),
    _sample("r3", "u3", "f", c.GLOBAL, 0, (799, -1, -1), "s3", "c2", 8.0, [], 0.8),
]
# Counts over item_id and the u_click_seq tokens kept by max_len together: a 8, b 6, c 5, z 2,
# d e f 1 (d's 4 tokens past max_len do not count); tft breaks ties by reverse lexicographic order.
ITEM_VOCAB = [b"a", b"b", b"c", b"z", b"f", b"e", b"d"]


def _mixed_spec(features):
    """Required columns parsed dense (a schema giving them shape []), the rest sparse."""
    return {col: tf.io.FixedLenFeature([], _DTYPES[t]) if col in c.REQUIRED_COLUMNS
            else tf.io.VarLenFeature(_DTYPES[t])
            for col, t in canonical.canonical_types(features).items()}


def _derived_spec(features):
    """What Transform parses with the derived schema: no shapes, so every column is sparse."""
    return schema_utils.schema_as_feature_spec(derive.derive_schema(features)).feature_spec


def _instances(rows, feature_spec):
    def value(v, parsed):
        if isinstance(parsed, tf.io.FixedLenFeature):
            return v
        return [] if v is None else v if isinstance(v, list) else [v]
    return [{col: value(row.get(col), parsed) for col, parsed in feature_spec.items()} for row in rows]


def _analyze_and_transform(rows, features, feature_spec, temp_dir, **settings):
    fn = functools.partial(preprocessing.preprocessing_fn,
                           custom_config=preprocessing.make_custom_config(features, **settings))
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(feature_spec))
    with tft_beam.Context(temp_dir=str(temp_dir), force_tf_compat_v1=False):
        (data, _), transform_fn = (
            (_instances(rows, feature_spec), metadata) | tft_beam.AnalyzeAndTransformDataset(fn))
    return data, transform_fn


def _columns(data, key=lambda r: r["x_user_cat_ctr"]):
    data = sorted(data, key=key)
    columns = {k: np.array([r[k] for r in data]) for k in data[0] if k != transformed.CONTRAST}
    columns[transformed.CONTRAST] = [tuple(v.decode() for v in r[transformed.CONTRAST]) for r in data]
    return columns


def _z(values):
    x = np.array(values, dtype=np.float64)
    return (x - x.mean()) / x.std()


@pytest.fixture(scope="module")
def tft_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tft")
    spec_ = _mixed_spec(FEATURES)
    data, transform_fn = _analyze_and_transform(ROWS, FEATURES, spec_, tmp / "work")
    transform_fn | tft_beam.WriteTransformFn(str(tmp / "transform"))
    return {"columns": _columns(data), "transform_fn": transform_fn,
            "output": tft.TFTransformOutput(str(tmp / "transform")), "feature_spec": spec_, "tmp": tmp}


def test_output_types_and_shapes_follow_the_spec(tft_run):
    int_scalar, float_scalar = tf.io.FixedLenFeature([], tf.int64), tf.io.FixedLenFeature([], tf.float32)
    assert tft_run["output"].transformed_feature_spec() == {
        "user_id": int_scalar, "item_id": int_scalar, "content_type": int_scalar,
        "u_segment": int_scalar, "i_category": int_scalar,
        "i_quality": float_scalar, "x_user_cat_ctr": float_scalar,
        "u_click_seq": tf.io.FixedLenFeature([3], tf.int64),
        transformed.LABEL: float_scalar, transformed.SAMPLE_GROUP: int_scalar, transformed.IS_HARD: int_scalar,
        transformed.DIFFICULTY: float_scalar, transformed.REQUEST_KEY: tf.io.FixedLenFeature([], tf.string),
        transformed.CONTRAST: tf.io.VarLenFeature(tf.string),
    }


def test_categorical_indices_most_frequent_first_missing_zero(tft_run):
    col = tft_run["columns"]
    np.testing.assert_array_equal(col["user_id"], [1, 1, 1, 1, 2, 2, 2, 3])
    np.testing.assert_array_equal(col["u_segment"], [1, 1, 1, 1, 2, 2, 2, 3])
    np.testing.assert_array_equal(col["content_type"], [1, 1, 2, 2, 1, 2, 1, 1])
    np.testing.assert_array_equal(col["i_category"], [1, 1, 0, 2, 1, 0, 1, 2])


def test_sequence_shares_the_item_vocabulary(tft_run):
    col, out = tft_run["columns"], tft_run["output"]
    assert out.vocabulary_by_name(transformed.vocabulary_name(FEATURES["item_id"])) == ITEM_VOCAB
    index = {token.decode(): i + 1 for i, token in enumerate(ITEM_VOCAB)}
    np.testing.assert_array_equal(col["item_id"], [index[r["item_id"]] for r in ROWS])
    # Truncated to the 3 most recent tokens, 0-padded at the end.
    recent, az = [index["b"], index["c"], index["a"]], [index["a"], index["z"], 0]
    np.testing.assert_array_equal(col["u_click_seq"], [recent] * 4 + [[0, 0, 0], az, az, [0, 0, 0]])
    model = transformed.ModelInputs.from_transform_output(FEATURES, out)
    assert model.vocab_sizes == {"vocab_item_id": 9, "vocab_user_id": 5, "vocab_content_type": 4,
                                 "vocab_u_segment": 5, "vocab_i_category": 4}
    assert transformed.vocabulary_name(FEATURES["u_click_seq"]) == transformed.vocabulary_name(FEATURES["item_id"])


def test_numeric_z_score_by_present_values_missing_to_zero(tft_run):
    col = tft_run["columns"]
    present = np.array([1.0, 2.0, 3.0, 5.0, 6.0, 7.0, 8.0])
    expected = (np.array([1.0, 2.0, 3.0, present.mean(), 5.0, 6.0, 7.0, 8.0]) - present.mean()) / present.std()
    np.testing.assert_allclose(col["i_quality"], expected, rtol=1e-5, atol=1e-6)
    assert col["i_quality"][3] == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose(col["x_user_cat_ctr"], _z([r["x_user_cat_ctr"] for r in ROWS]), rtol=1e-5)


def test_training_only_outputs(tft_run):
    col = tft_run["columns"]
    np.testing.assert_array_equal(col[transformed.LABEL], [1, 0, 0, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(col[transformed.SAMPLE_GROUP], [0, 1, 2, 3, 4, 0, 2, 4])  # EP EN RN PRN GN EP RN GN
    np.testing.assert_array_equal(col[transformed.IS_HARD], [0, 1, 1, 0, 0, 0, 1, 0])
    np.testing.assert_array_equal(col[transformed.REQUEST_KEY], [b"r1"] * 4 + [b"r2"] * 3 + [b"r3"])
    np.testing.assert_allclose(col[transformed.DIFFICULTY],
                               [1.0, 1.0, 0.625, 0.375, 0.0, 1.0, 0.5 + 25 / 51, 0.3125], rtol=1e-6)
    everything = ("EN", "RN", "PRN", "GN")
    assert col[transformed.CONTRAST] == [everything, ("EN",), ("RN",), ("PRN",), ("GN",), everything, ("RN",), ("GN",)]


def test_unseen_values_are_out_of_vocabulary(tft_run):
    new = _sample("r9", "u-new", "item-new", c.EXPOSED, 0, (1, 1, 1), "s-new", "c-new", None,
                  ["item-new", "a"], 0.3, "podcast")
    spec_ = tft_run["feature_spec"]
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(spec_))
    with tft_beam.Context(temp_dir=str(tft_run["tmp"] / "new"), force_tf_compat_v1=False):
        data, _ = (((_instances([new], spec_), metadata), tft_run["transform_fn"])
                   | tft_beam.TransformDataset())
    (row,) = data
    # V + 1 for every vocabulary: item 7, user 3, content type 2, segment 3, category 2.
    assert (row["item_id"], row["user_id"], row["content_type"], row["u_segment"], row["i_category"]) == (
        8, 4, 3, 4, 3)
    np.testing.assert_array_equal(row["u_click_seq"], [8, 1, 0])
    assert row["i_quality"] == pytest.approx(0.0, abs=1e-6)


def test_serving_needs_only_the_raw_features(tft_run):
    # Fed without source, click or positions, Transform prunes the training-only outputs.
    names = FEATURES.names
    types = canonical.canonical_types(FEATURES)
    serialized = [canonical.to_example({k: v for k, v in row.items() if k in names}, types).SerializeToString()
                  for row in ROWS]
    parsed = tf.io.parse_example(serialized, {n: tft_run["feature_spec"][n] for n in names})
    served = tft_run["output"].transform_features_layer()(parsed)
    assert set(served) == set(names)
    for name in names:
        np.testing.assert_allclose(served[name].numpy(), tft_run["columns"][name], rtol=1e-6, err_msg=name)


def test_every_input_sparse_gives_the_same_outputs(tft_run, tmp_path):
    data, _ = _analyze_and_transform(ROWS, FEATURES, _derived_spec(FEATURES), tmp_path)
    sparse = _columns(data)
    assert set(sparse) == set(tft_run["columns"])
    for name, values in tft_run["columns"].items():
        if name == transformed.CONTRAST:
            assert sparse[name] == values
        elif values.dtype.kind == "f":
            np.testing.assert_allclose(sparse[name], values, rtol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(sparse[name], values, err_msg=name)


def test_no_sequence_and_string_ids(tmp_path):
    features = c.parse_features(
        {"version": 1, "features": [{"name": "i_author", "role": "item", "kind": "categorical"}]}, "test")
    rows = [{"request_id": f"req-{i // 2}", "user_id": user, "item_id": item, "day": 1, "source": source,
             "click": click, "content_type": "article", "prerank_pos": pos, "rank_pos": -1,
             "expose_pos": -1, "i_author": author}
            for i, (user, item, source, click, pos, author) in enumerate([
                ("alice", "how-to-α", c.EXPOSED, 1, 0, "ann"),
                ("alice", "news/42", c.PRERANKING, 0, 250, None),
                ("bob", "how-to-α", c.GLOBAL, 0, -1, "ann"),
                ("bob", "recipe 7", c.EXPOSED, 0, 3, "cy"),
            ])]
    data, transform_fn = _analyze_and_transform(rows, features, _derived_spec(features), tmp_path,
                                                prerank_cutoff=99)
    col = _columns(data, key=lambda r: (r[transformed.DIFFICULTY], r[transformed.LABEL]))  # GN, PRN, EN, EP
    assert set(col) == set(features.names) | {transformed.LABEL, transformed.SAMPLE_GROUP, transformed.IS_HARD,
                                                transformed.DIFFICULTY, transformed.REQUEST_KEY, transformed.CONTRAST}
    np.testing.assert_array_equal(col["i_author"], [1, 0, 2, 1])
    np.testing.assert_allclose(col[transformed.DIFFICULTY][:2], [0.0, 0.25 + 0.25 * 99 / 251])
    output = str(tmp_path / "transform")
    transform_fn | tft_beam.WriteTransformFn(output)
    vocab = tft.TFTransformOutput(output).vocabulary_by_name("vocab_item_id")
    assert vocab == ["how-to-α".encode(), b"recipe 7", b"news/42"]


def test_difficulty_rule():
    source = tf.constant([c.EXPOSED, c.EXPOSED, c.RANKING, c.RANKING, c.RANKING, c.PRERANKING,
                          c.PRERANKING, c.GLOBAL, c.GLOBAL, "unknown"])
    click = tf.constant([1, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    prerank = tf.constant([0, 0, 3, 3, 3, 399, 7, -1, 799, -1])
    rank = tf.constant([0, 0, 199, 50, -1, -1, -1, -1, -1, -1])
    expose = tf.constant([0, 9, -1, -1, -1, -1, -1, -1, -1, -1])
    got = preprocessing.difficulty(source, click, prerank, rank, expose, rank_cutoff=50, prerank_cutoff=200)
    np.testing.assert_allclose(got.numpy(), [
        1.0, 1.0,
        0.625, 0.5 + 25 / 51, 0.5 + 25 / 51,  # at the cut-off, or unknown: the stage's highest value
        0.375, 0.25 + 50 / 201,
        0.0, 0.3125,  # a retrieved random item counts as preranking
        0.0,
    ], rtol=1e-6)
    assert got.dtype == tf.float32


def test_sample_group_of_every_source():
    groups = preprocessing.sample_group(
        tf.constant([c.EXPOSED, c.EXPOSED, c.RANKING, c.PRERANKING, c.GLOBAL, "unknown", ""]),
        tf.constant([1, 0, 0, 0, 0, 0, 0], tf.int64))
    assert groups.dtype == tf.int64
    assert [c.SAMPLE_GROUPS[g] for g in groups.numpy()] == [c.EP, c.EN, c.RN, c.PRN, c.GN, c.GN, c.GN]


def test_custom_config_round_trip():
    config = preprocessing.make_custom_config(FEATURES, vocab_top_k=10)
    assert config["features"][3] == {"name": "u_click_seq", "role": "user", "kind": "sequence",
                                     "max_len": 3, "target": "item_id"}
    assert (config["vocab_top_k"], config["rank_cutoff"], config["prerank_cutoff"]) == (10, 50, 200)
    assert preprocessing.feature_set_from_config(config).features == FEATURES.features
    with pytest.raises(TypeError, match="rank_cut"):
        preprocessing.make_custom_config(FEATURES, rank_cut=5)


def test_dense_and_sparse_columns_read_alike(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("a\nb\n")
    history = tf.constant([["b", "x", "a", "a"], ["a", "", "", ""]])
    expected = [[2, 3, 1], [1, 0, 0]]  # "x" out of vocabulary, "" padding
    for x in (history, tf.sparse.from_dense(history)):
        np.testing.assert_array_equal(preprocessing._sequence(preprocessing._truncated(x, 3), 3, str(vocab)),
                                      expected)
    # A batch where an optional column is missing everywhere arrives as a [B, 0] SparseTensor.
    nothing = tf.SparseTensor(tf.zeros([0, 2], tf.int64), tf.constant([], tf.string), [2, 0])
    np.testing.assert_array_equal(preprocessing._sequence(preprocessing._truncated(nothing, 3), 3, str(vocab)),
                                  [[0, 0, 0]] * 2)
    np.testing.assert_array_equal(preprocessing._dense(nothing, b""), [b"", b""])
    np.testing.assert_array_equal(preprocessing._dense(tf.constant([[1.5], [2.5]]), 0.0), [1.5, 2.5])
