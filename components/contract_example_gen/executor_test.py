import os
import shutil

import pytest
import tensorflow as tf
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs

from hap.components.contract_example_gen import component, executor
from hap.data import reader


def _read_examples(split_dir):
    files = tf.io.gfile.glob(os.path.join(split_dir, "*.gz"))
    return [tf.train.Example.FromString(r)
            for r in tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator()]


def _run(dataset_dir, out_dir, eval_days=1, range_bytes=None, window_days=None):
    examples = standard_artifacts.Examples()
    examples.uri = out_dir
    gen = component.ContractExampleGen(input_base=dataset_dir, eval_days=eval_days, range_bytes=range_bytes,
                                       window_days=window_days)
    exec_properties = {key: gen.exec_properties[key] for key in (
        standard_component_specs.INPUT_CONFIG_KEY, standard_component_specs.OUTPUT_CONFIG_KEY,
        standard_component_specs.CUSTOM_CONFIG_KEY)}
    exec_properties[standard_component_specs.INPUT_BASE_KEY] = dataset_dir
    executor.Executor().Do({}, {standard_component_specs.EXAMPLES_KEY: [examples]}, exec_properties)
    return examples


def _day(example):
    return example.features.feature["day"].int64_list.value[0]


def test_splits_by_day_into_canonical_examples(tmp_path, tiny_csv):
    examples = _run(tiny_csv, str(tmp_path / "out"))
    assert artifact_utils.decode_split_names(examples.split_names) == ["train", "eval"]
    train = _read_examples(os.path.join(examples.uri, "Split-train"))
    evaluation = _read_examples(os.path.join(examples.uri, "Split-eval"))
    rows = list(reader.read_rows(tiny_csv))
    assert len(train) + len(evaluation) == len(rows)
    assert {_day(e) for e in evaluation} == {2} and {_day(e) for e in train} == {0, 1}
    feature = evaluation[0].features.feature
    assert feature["item_id"].bytes_list.value and feature["source"].bytes_list.value
    assert all(v.decode().isdigit() for v in feature["u_click_seq"].bytes_list.value)


def _serialized(examples, split):
    return sorted(e.SerializeToString(deterministic=True)
                  for e in _read_examples(os.path.join(examples.uri, f"Split-{split}")))


def test_tiny_ranges_give_the_examples_of_whole_files(tmp_path, tiny_csv):
    path = os.path.join(tiny_csv, "samples", "day-1.csv")
    assert len(reader.file_ranges(path, 300)) > 1000
    whole = _run(tiny_csv, str(tmp_path / "whole"))
    ranged = _run(tiny_csv, str(tmp_path / "ranged"), range_bytes=300)
    for split in ("train", "eval"):
        assert _serialized(ranged, split) == _serialized(whole, split)


def test_eval_days_moves_more_days_to_eval(tmp_path, tiny_tfrecord):
    examples = _run(tiny_tfrecord, str(tmp_path / "out"), eval_days=2)
    evaluation = _read_examples(os.path.join(examples.uri, "Split-eval"))
    assert {_day(e) for e in evaluation} == {1, 2}


# At the default range size the tiny file is one range, read whole; in ranges of 300 bytes line
# 1201 is in a range far into the file, which has to count the lines before it.
@pytest.mark.parametrize("line, range_bytes", [(4, None), (1201, 300)])
def test_a_malformed_row_fails_with_its_location(tmp_path, tiny_csv, line, range_bytes):
    ds = str(tmp_path / "ds")
    shutil.copytree(tiny_csv, ds)
    path = os.path.join(ds, "samples", "day-1.csv")
    with open(path) as f:
        lines = f.readlines()
    fields = lines[line - 1].split(",")
    fields[3] = "tuesday"  # the day column
    lines[line - 1] = ",".join(fields)
    with open(path, "w") as f:
        f.writelines(lines)
    with pytest.raises(Exception, match=rf"day-1\.csv:{line}: column 'day': not an integer: 'tuesday'"):
        _run(ds, str(tmp_path / "out"), range_bytes=range_bytes)


def test_a_window_trains_on_the_days_before_the_eval_day_and_the_span_is_the_newest_day(tmp_path, tiny_csv):
    examples = _run(tiny_csv, str(tmp_path / "out"), window_days=1)
    train = _read_examples(os.path.join(examples.uri, "Split-train"))
    assert {_day(e) for e in train} == {1}
    assert examples.span == 2
    assert executor.read_days(examples.uri) == {"train": [1], "eval": [2], "outside_window": [0]}
    whole = _run(tiny_csv, str(tmp_path / "whole"))
    assert executor.read_days(whole.uri) == {"train": [0, 1], "eval": [2], "outside_window": []}


def test_no_training_day_left_is_an_error_naming_the_days(tmp_path, tiny_csv):
    with pytest.raises(ValueError, match=r"no training day: the dataset's days are \[0, 1, 2\], the last 3 evaluate"):
        _run(tiny_csv, str(tmp_path / "out"), eval_days=3)


@pytest.mark.parametrize("window", [0, -1, 1.5, True])
def test_a_window_is_a_whole_number_of_days(window):
    with pytest.raises(ValueError, match="window_days"):
        component.ContractExampleGen(input_base="/data", window_days=window)
