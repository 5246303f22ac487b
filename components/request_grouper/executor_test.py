import json
import os
import sys

import numpy as np
import pytest
import tensorflow as tf
from tfx import types
from tfx.types import artifact_utils, standard_artifacts

from hap.components.request_grouper import component, executor
from hap.data import contract as c
from hap.models import preprocessing, request_records, transformed

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests"))
import synthetic_requests  # noqa: E402


def _transformed_examples(tmp_path, arrays_by_split) -> standard_artifacts.Examples:
    """Transform's output layout: Split-<name>/*.gz of serialized per-sample tf.Examples."""
    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path / "transformed")
    for split, arrays in arrays_by_split.items():
        split_dir = os.path.join(examples.uri, f"Split-{split}")
        os.makedirs(split_dir)
        n = len(arrays[transformed.REQUEST_KEY])
        with tf.io.TFRecordWriter(os.path.join(split_dir, "part-0.gz"), "GZIP") as writer:
            for row in range(n):
                writer.write(synthetic_requests.example(arrays, row))
    examples.split_names = artifact_utils.encode_split_names(list(arrays_by_split))
    return examples


def _group(tmp_path, arrays_by_split) -> standard_artifacts.Examples:
    output = standard_artifacts.Examples()
    output.uri = str(tmp_path / "grouped")
    os.makedirs(output.uri)
    grouper = component.RequestGrouper(examples=types.Channel(type=standard_artifacts.Examples),
                                       custom_config=preprocessing.make_custom_config(synthetic_requests.FEATURES))
    executor.Executor().Do({"examples": [_transformed_examples(tmp_path, arrays_by_split)]},
                           {"request_examples": [output]}, dict(grouper.exec_properties))
    return output


def test_every_request_becomes_one_whole_record(tmp_path):
    splits = {"train": synthetic_requests.synthetic_arrays(25, seed=0),
              "eval": synthetic_requests.synthetic_arrays(8, seed=1)}
    output = _group(tmp_path, splits)
    assert artifact_utils.decode_split_names(output.split_names) == ["train", "eval"]
    with open(os.path.join(output.uri, request_records.STATS_FILE)) as f:
        stats = json.load(f)
    assert stats.pop(request_records.FORMAT) == request_records.RECORD_FORMAT
    for split, arrays in splits.items():
        groups = arrays[transformed.SAMPLE_GROUP]
        assert stats[split] == {request_records.REQUESTS: len(set(arrays[transformed.REQUEST_KEY].tolist())),
                                request_records.SAMPLES: {g: int((groups == i).sum()) for i, g in enumerate(c.SAMPLE_GROUPS)}}
        records = request_records.RequestRecords.from_split(
            os.path.join(output.uri, f"Split-{split}", "*"), synthetic_requests.feature_spec(), synthetic_requests.FEATURES)
        got = records.columns(tuple(arrays))
        # The same rows, request by request: sort both by (request, item, label) and compare every column.
        def order(a):
            return np.lexsort((a["item_id"], a[transformed.LABEL], a[transformed.REQUEST_KEY].astype(str)))
        want_order, got_order = order(arrays), order(got)
        for name, values in arrays.items():
            np.testing.assert_array_equal(got[name][got_order], values[want_order], err_msg=name)
        # Whole requests: each batch of one request holds exactly that request's samples.
        sizes = dict(zip(*np.unique(arrays[transformed.REQUEST_KEY], return_counts=True)))
        for batch in records.dataset(1):
            keys = batch[transformed.REQUEST_KEY].numpy()
            assert len(set(keys)) == 1 and len(keys) == sizes[keys[0]]


def test_the_record_format_is_part_of_the_cache_key():
    """TFX's cache key holds the execution properties: records of another format are not reused."""
    grouper = component.RequestGrouper(examples=types.Channel(type=standard_artifacts.Examples), custom_config={})
    assert grouper.exec_properties[request_records.FORMAT] == request_records.RECORD_FORMAT


def test_a_user_feature_that_varies_within_a_request_names_request_and_feature(tmp_path):
    arrays = synthetic_requests.synthetic_arrays(5, seed=2)
    rows = np.flatnonzero(arrays[transformed.REQUEST_KEY] == b"r3")
    arrays["u_age_bucket"] = arrays["u_age_bucket"].copy()
    arrays["u_age_bucket"][rows[-1]] += 1
    with pytest.raises(Exception, match=r"request b'r3': feature 'u_age_bucket' differs between its samples"):
        _group(tmp_path, {"train": arrays})


def test_records_are_written_in_a_random_order_over_shards(tmp_path, monkeypatch):
    monkeypatch.setattr(executor, "RECORDS_PER_SHARD", 10)
    arrays = synthetic_requests.synthetic_arrays(45, seed=3)  # 45 requests: ceil(45 / 10) = 5 shards
    output = _group(tmp_path, {"train": arrays})
    split_dir = os.path.join(output.uri, "Split-train")
    files = sorted(os.listdir(split_dir))
    assert files == [f"requests-{i:05d}-of-00005.gz" for i in range(5)]
    records = request_records.RequestRecords.from_split(os.path.join(split_dir, "*"), synthetic_requests.feature_spec(),
                                                        synthetic_requests.FEATURES)
    keys = records.columns((transformed.REQUEST_KEY,))[transformed.REQUEST_KEY]
    in_file_order = list(dict.fromkeys(keys.tolist()))
    assert sorted(in_file_order) == sorted(set(arrays[transformed.REQUEST_KEY].tolist()))
    # The input is in request order; the files are not, and every shard holds some requests.
    assert in_file_order != list(dict.fromkeys(arrays[transformed.REQUEST_KEY].tolist()))
    assert all(os.path.getsize(os.path.join(split_dir, f)) > 0 for f in files)
    assert executor.num_shards(0) == 1 and executor.num_shards(10) == 1 and executor.num_shards(11) == 2
