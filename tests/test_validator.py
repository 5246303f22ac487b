import csv
import os
import shutil

import pytest

from hap import cli
from hap.data import contract as c
from hap.data import validator


@pytest.fixture
def dataset(tmp_path, tiny_csv):
    out = str(tmp_path / "ds")
    shutil.copytree(tiny_csv, out)
    return out


def _day0(dataset):
    return os.path.join(dataset, "samples", "day-0.csv")


def _edit_csv(path, edit):
    """Applies edit(header, rows) to a CSV file in place."""
    with open(path, newline="") as f:
        data = list(csv.reader(f))
    header, rows = data[0], data[1:]
    edit(header, rows)
    with open(path, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([header] + rows)


def _drop_column(path, column):
    def edit(header, rows):
        i = header.index(column)
        for r in [header] + rows:
            del r[i]
    _edit_csv(path, edit)


def _set(path, line, column, value):
    """Sets one field; `line` is the 1-based file line (the header is line 1)."""
    def edit(header, rows):
        rows[line - 2][header.index(column)] = value
    _edit_csv(path, edit)


def _first_line(path, predicate):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        for row in reader:
            if predicate(row):
                return reader.line_num
    raise AssertionError("no such row")


def _errors(dataset):
    report = validator.validate(dataset)
    assert not report.ok
    return report.errors


def test_simulated_data_is_clean_in_both_formats(tiny_csv, tiny_tfrecord):
    for ds in (tiny_csv, tiny_tfrecord):
        report = validator.validate(ds)
        assert report.ok, report.errors
        assert report.files == 4 and report.rows > 1000


def test_cli_exit_codes(dataset, capsys):
    assert cli.main(["data", "validate", dataset]) == 0
    _set(_day0(dataset), 2, "source", "rank")
    assert cli.main(["data", "validate", dataset]) == 1
    out = capsys.readouterr().out
    assert "INVALID" in out and "unknown source 'rank'" in out


def test_missing_required_column(dataset):
    _drop_column(_day0(dataset), "rank_pos")
    assert f"{_day0(dataset)}: missing required column 'rank_pos'" in _errors(dataset)


def test_unknown_source(dataset):
    _set(_day0(dataset), 5, "source", "retrieval")
    assert any(e.startswith(f"{_day0(dataset)}:5: column 'source': unknown source 'retrieval'")
               for e in _errors(dataset))


def test_click_on_a_non_exposed_sample(dataset):
    line = _first_line(_day0(dataset), lambda r: r["source"] == "ranking")
    _set(_day0(dataset), line, "click", "1")
    assert any(e.startswith(f"{_day0(dataset)}:{line}: column 'click': click = 1 on a ranking sample")
               for e in _errors(dataset))


@pytest.mark.parametrize("source,column,value,message", [
    ("exposed", "expose_pos", "-1", "an exposed sample needs expose_pos >= 0"),
    ("ranking", "rank_pos", "3", "rank_pos must be >= 50, got 3"),
    ("ranking", "expose_pos", "2", "expose_pos must be -1, got 2"),
    ("preranking", "prerank_pos", "17", "prerank_pos must be >= 200, got 17"),
    ("preranking", "rank_pos", "60", "never reached ranking: rank_pos must be -1, got 60"),
    ("global", "prerank_pos", "-3", "positions are >= -1"),
])
def test_impossible_positions_for_a_source(dataset, source, column, value, message):
    line = _first_line(_day0(dataset), lambda r: r["source"] == source)
    _set(_day0(dataset), line, column, value)
    errors = _errors(dataset)
    assert any(e.startswith(f"{_day0(dataset)}:{line}: column '{column}'") and message in e for e in errors), errors


def test_malformed_sequence(dataset):
    line = _first_line(_day0(dataset), lambda r: r["u_click_seq"] != "")
    _set(_day0(dataset), line, "u_click_seq", "12,13,14")
    assert any(e.startswith(f"{_day0(dataset)}:{line}: column 'u_click_seq': malformed sequence")
               for e in _errors(dataset))


def test_feature_missing_from_the_data(dataset):
    _drop_column(_day0(dataset), "i_title_len")
    assert (f"{_day0(dataset)}: feature 'i_title_len' is in features.yaml but not in the data"
            in _errors(dataset))


def test_feature_missing_from_features_yaml(dataset):
    path = os.path.join(dataset, c.FEATURES_FILE)
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text.replace("  - {name: i_tag_cluster, role: item, kind: categorical}\n", ""))
    errors = _errors(dataset)
    assert any("column 'i_tag_cluster' is in the data but not in features.yaml" in e for e in errors)


@pytest.mark.parametrize("text,message", [
    ("version: 1\nfeatures: [\n", "not valid YAML"),
    ("- just a list\n", "expected a mapping"),
    ("version: 2\nfeatures:\n  - {name: a, role: user, kind: numeric}\n", "'version' must be 1"),
    ("version: 1\nfeatures:\n  - {name: a, role: viewer, kind: numeric}\n", "features[0] (a): role must be one of"),
    ("version: 1\nfeatures:\n  - {name: a, role: user, kind: text}\n", "kind must be one of"),
    ("version: 1\nfeatures:\n  - {name: s, role: user, kind: sequence}\n", "needs a positive integer 'max_len'"),
    ("version: 1\nfeatures:\n  - {name: s, role: user, kind: sequence, max_len: 5, target: nope}\n",
     "target 'nope' is not a feature"),
    ("version: 1\nfeatures:\n  - {name: a, role: user, kind: numeric}\n  - {name: a, role: item, kind: numeric}\n",
     "duplicate feature name"),
    ("version: 1\nfeatures:\n  - {name: click, role: item, kind: numeric}\n", "'click' is a contract column"),
])
def test_bad_features_yaml(dataset, text, message):
    with open(os.path.join(dataset, c.FEATURES_FILE), "w") as f:
        f.write(text)
    errors = _errors(dataset)
    assert any(e.startswith(os.path.join(dataset, c.FEATURES_FILE)) and message in e for e in errors), errors


def test_missing_features_yaml_and_samples(tmp_path):
    errors = _errors(str(tmp_path))
    assert any("features.yaml: missing" in e for e in errors)
    assert any("samples: missing directory" in e for e in errors)


def test_bad_values_in_tfrecord_are_located(tmp_path, tiny_tfrecord):
    import tensorflow as tf

    out = str(tmp_path / "ds")
    shutil.copytree(tiny_tfrecord, out)
    path = os.path.join(out, "samples", "day-1.tfrecord.gz")
    records = [tf.train.Example.FromString(r) for r in
               tf.data.TFRecordDataset(path, compression_type="GZIP").as_numpy_iterator()]
    records[2].features.feature["source"].bytes_list.value[0] = b"organic"
    del records[4].features.feature["request_id"]
    records[6].features.feature["u_click_seq"].Clear()
    records[6].features.feature["u_click_seq"].float_list.value.append(1.5)
    records[7].features.feature["x_surprise"].float_list.value.append(1.0)
    with tf.io.TFRecordWriter(path, options="GZIP") as w:
        for r in records:
            w.write(r.SerializeToString())
    errors = _errors(out)
    assert any(e.startswith(f"{path}: record 3: column 'source': unknown source 'organic'") for e in errors)
    assert f"{path}: record 5: missing required column 'request_id'" in errors
    assert any(e.startswith(f"{path}: record 7: column 'u_click_seq': malformed sequence") for e in errors)
    assert any(e.startswith(f"{path}: feature 'x_surprise' is in the data but not in features.yaml") for e in errors)


def test_every_problem_is_counted_and_repeats_are_capped(dataset):
    def edit(header, rows):
        for r in rows:
            r[header.index("source")] = "bogus"
    _edit_csv(_day0(dataset), edit)
    report = validator.Validator(max_per_check=3).validate(dataset)
    shown = [e for e in report.errors if "unknown source 'bogus'" in e]
    assert len(shown) == 3
    with open(_day0(dataset)) as f:
        rows = sum(1 for _ in f) - 1
    assert len(shown) + sum(report.suppressed.values()) == rows
    assert f"{rows} errors ({rows - 3} more not shown)" in report.summary()


def test_a_truncated_tfrecord_file_is_reported(tmp_path, tiny_tfrecord):
    import gzip

    out = str(tmp_path / "ds")
    shutil.copytree(tiny_tfrecord, out)
    path = os.path.join(out, "samples", "day-0.tfrecord.gz")
    with gzip.open(path, "rb") as f:
        data = f.read()
    with gzip.open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    assert any(e.startswith(f"{path}: unreadable after record ") for e in _errors(out))


@pytest.mark.parametrize("value, message", [("inf", "not a finite number"),
                                            ("1e30", "beyond the contract's bound |x| <= 1e+18")])
def test_non_finite_and_absurd_numerics_are_located(dataset, value, message):
    column = next(f.name for f in c.load_features(dataset).features if f.kind == c.NUMERIC)
    _set(_day0(dataset), 2, column, value)
    errors = _errors(dataset)
    assert any(e.startswith(f"{_day0(dataset)}:2: column '{column}'") and message in e for e in errors), errors
