"""Request records (models/request_records.py): whole requests, sized batches, shards and shuffles."""
import collections
import json
import itertools

import numpy as np
import tensorflow as tf
import pytest

from hap.data import contract as c
from hap.models import request_records, transformed
import synthetic_requests
from synthetic_requests import FEATURES, synthetic_arrays, write_records


@pytest.fixture(scope="module")
def arrays():
    return synthetic_arrays(40, seed=5)


@pytest.fixture(scope="module")
def records(arrays, tmp_path_factory):
    return write_records(str(tmp_path_factory.mktemp("records")), arrays, num_files=4)


def _sizes(arrays):
    return collections.Counter(arrays[transformed.REQUEST_KEY].tolist())


def _batches(dataset, count=None):
    it = dataset.as_numpy_iterator()
    return list(it if count is None else itertools.islice(it, count))


def test_a_pass_holds_every_request_once_and_whole(records, arrays):
    sizes = _sizes(arrays)
    seen = []
    for batch in _batches(records.dataset(3)):
        keys = collections.Counter(batch[transformed.REQUEST_KEY].tolist())
        assert len(keys) <= 3
        assert all(n == sizes[k] for k, n in keys.items()), "a request split or duplicated in a batch"
        seen.extend(keys)
    assert sorted(seen) == sorted(sizes)


def test_context_features_are_every_candidates_again(records, arrays):
    """The user features stored once per request come back on each of its candidates."""
    got = records.columns((transformed.REQUEST_KEY, "u_click_seq", "c_hour"))
    want = {k: (s, h) for k, s, h in zip(arrays[transformed.REQUEST_KEY], arrays["u_click_seq"], arrays["c_hour"])}
    for key, seq, hour in zip(got[transformed.REQUEST_KEY], got["u_click_seq"], got["c_hour"]):
        np.testing.assert_array_equal(seq, want[key][0])
        assert hour == want[key][1]


def test_derived_columns_come_from_the_same_pass_in_the_same_order(records):
    """A function of each batch (here twice a feature, as a model's logits would be) lines up
    with the features read in that pass."""
    got = records.columns(("c_hour",), 3, derived={"twice": lambda batch: 2 * batch["c_hour"]})
    assert len(got["twice"]) == records.samples
    np.testing.assert_array_equal(got["twice"], 2 * got["c_hour"])
    np.testing.assert_array_equal(got["c_hour"], records.columns(("c_hour",), 5)["c_hour"])


def test_batches_hold_batch_size_samples_on_average(records, arrays):
    mean_size = len(arrays[transformed.LABEL]) / len(_sizes(arrays))
    assert records.mean_request_size == pytest.approx(mean_size)
    assert records.requests_per_batch(100) == round(100 / mean_size)
    assert records.requests_per_batch(1) == 1
    assert records.steps(7) == -(-40 // 7) and records.steps(7, num_replicas=2) == -(-40 // 14)
    with pytest.raises(ValueError, match="batch_size"):
        records.requests_per_batch(0)


def test_only_keeps_the_routed_groups_in_the_graph(records, arrays):
    hard = records.only((c.EP, c.EN, c.RN))
    groups = np.concatenate([b[transformed.SAMPLE_GROUP] for b in _batches(hard.dataset(5))])
    wanted = [transformed.GROUP_INDEX[g] for g in (c.EP, c.EN, c.RN)]
    assert sorted(groups) == sorted(g for g in arrays[transformed.SAMPLE_GROUP] if g in wanted)
    assert hard.samples == len(groups) < records.samples


@pytest.mark.parametrize("num_shards", [2, 3, 8])  # by files (4 files), and by records when they do not divide evenly
def test_shards_split_the_requests_between_input_pipelines(records, arrays, num_shards):
    keys = [b[transformed.REQUEST_KEY] for shard in range(num_shards)
            for b in _batches(records.dataset(2, num_shards=num_shards, shard=shard))]
    per_request = collections.Counter(np.concatenate(keys).tolist())
    assert per_request == _sizes(arrays), "every request in exactly one shard, whole"


def test_shuffled_passes_differ_and_never_repeat_a_request_within_a_batch(records, arrays):
    steps = records.steps(6)
    batches = _batches(records.dataset(6, shuffle_requests=100, seed=1, repeat=True), 2 * steps)
    orders = [[k for b in batches[i * steps:(i + 1) * steps] for k in dict.fromkeys(b[transformed.REQUEST_KEY].tolist())]
              for i in range(2)]
    assert sorted(orders[0]) == sorted(orders[1]) == sorted(_sizes(arrays))
    assert orders[0] != orders[1], "each pass reshuffles"
    sizes = _sizes(arrays)
    for batch in batches:
        keys = collections.Counter(batch[transformed.REQUEST_KEY].tolist())
        assert all(n == sizes[k] for k, n in keys.items())
    again = _batches(records.dataset(6, shuffle_requests=100, seed=1, repeat=True), steps)
    assert [b[transformed.REQUEST_KEY].tolist() for b in again] == [b[transformed.REQUEST_KEY].tolist() for b in batches[:steps]]


def _example(**features) -> bytes:
    def feature(values):
        if isinstance(values[0], bytes):
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
        if isinstance(values[0], float):
            return tf.train.Feature(float_list=tf.train.FloatList(value=values))
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
    return tf.train.Example(features=tf.train.Features(
        feature={name: feature(values) for name, values in features.items()})).SerializeToString()


def test_a_record_holds_context_once_and_candidate_columns_in_order(tmp_path):
    """Two candidates with a 3-valued item feature: one record, context once, columns in
    candidate order; parsed back to one row per candidate, context repeated."""
    samples = [_example(request_key=[b"r"], u=[7], tags=[1, 2, 3], score=[0.5], sample_group=[0]),
               _example(request_key=[b"r"], u=[7], tags=[4, 5, 6], score=[0.25], sample_group=[3])]
    record = request_records.request_record(b"r", samples, ("request_key", "u"))
    columns = record.features.feature
    assert list(columns["u"].int64_list.value) == [7]
    assert list(columns["tags"].int64_list.value) == [1, 2, 3, 4, 5, 6]
    assert list(columns["score"].float_list.value) == [0.5, 0.25]
    assert request_records.group_counts(record) == {**dict.fromkeys(c.SAMPLE_GROUPS, 0), c.EP: 1, c.PRN: 1}
    spec = {"request_key": tf.io.FixedLenFeature([], tf.string), "u": tf.io.FixedLenFeature([], tf.int64),
            "tags": tf.io.FixedLenFeature([3], tf.int64), "score": tf.io.FixedLenFeature([], tf.float32),
            transformed.SAMPLE_GROUP: tf.io.FixedLenFeature([], tf.int64)}
    records = request_records.RequestRecords((), 1, {}, spec, ("request_key", "u"))
    parsed = records.parse(tf.constant([record.SerializeToString()] * 2))
    np.testing.assert_array_equal(parsed["tags"], [[1, 2, 3], [4, 5, 6]] * 2)
    np.testing.assert_array_equal(parsed["u"], [7, 7, 7, 7])
    np.testing.assert_array_equal(parsed["score"], [0.5, 0.25] * 2)


def _one_at_a_time(requests, context):
    return [request_records.request_record(key, examples, context) for key, examples in requests]


BUILDERS = {"one at a time": _one_at_a_time, "batched": request_records.request_records}


@pytest.mark.parametrize("build", BUILDERS.values(), ids=BUILDERS.keys())
@pytest.mark.parametrize("second", [dict(tags=[4, 5]), dict(), dict(tags=[4.0, 5.0, 6.0])])
def test_a_candidate_feature_of_another_shape_names_request_and_feature(second, build):
    good = [_example(request_key=[b"r1"], tags=[1, 2, 3], sample_group=[0])] * 2
    samples = [_example(request_key=[b"r9"], tags=[1, 2, 3], sample_group=[0]),
               _example(request_key=[b"r9"], sample_group=[1], **second)]
    with pytest.raises(ValueError, match=r"request b'r9': feature 'tags' has \d values of type \w+ in one sample and 3 of type int64_list in another"):
        build([(b"r1", good), (b"r9", samples)], ("request_key",))


@pytest.mark.parametrize("build", BUILDERS.values(), ids=BUILDERS.keys())
def test_a_context_feature_that_differs_within_a_request_names_request_and_feature(build):
    requests = [(b"r1", [_example(request_key=[b"r1"], u=[1, 2], s=[0.5], sample_group=[0])] * 3),
                (b"r2", [_example(request_key=[b"r2"], u=[3, 4], s=[0.5], sample_group=[0]),
                         _example(request_key=[b"r2"], u=[3, 5], s=[0.5], sample_group=[1])])]
    with pytest.raises(ValueError, match=r"request b'r2': feature 'u' differs between its samples"):
        build(requests, ("request_key", "u"))


def test_a_batch_of_requests_gives_the_records_of_one_request_at_a_time(arrays, monkeypatch):
    """Requests of 3 to 11 samples with sequences, ids, numbers and bytes: equal records, built
    without falling back to one request at a time."""
    by_request = collections.defaultdict(list)
    for row, key in enumerate(arrays[transformed.REQUEST_KEY]):
        by_request[key].append(synthetic_requests.example(arrays, row))
    requests = list(by_request.items())
    context = request_records.context_names(FEATURES)
    expected = _one_at_a_time(requests, context)
    monkeypatch.setattr(request_records, "request_record", None)
    assert request_records.request_records(requests, context) == expected
    assert request_records.request_records(requests[3:4], context) == expected[3:4]


def test_records_of_another_format_are_refused_naming_the_file(tmp_path, arrays):
    records = write_records(str(tmp_path), arrays)
    stats_path = tmp_path / request_records.STATS_FILE
    stats = json.loads(stats_path.read_text())
    del stats[request_records.FORMAT]  # as a RequestGrouper before the format was recorded wrote it
    stats_path.write_text(json.dumps(stats))
    with pytest.raises(ValueError, match=f"{stats_path}: the records are of format 'ExampleListWithContext'"):
        request_records.RequestRecords.from_split(str(tmp_path / "Split-train" / "*"), records.feature_spec, FEATURES)


def test_the_parser_is_traced_once_however_many_passes_map_it(records):
    for _ in range(3):
        _batches(records.dataset(3), count=1)
    assert records.parse.experimental_get_tracing_count() == 1


def test_requests_with_other_features_are_built_one_at_a_time():
    # The second request lacks `tags`: one request at a time leaves it out of that record.
    requests = [(b"r1", [_example(request_key=[b"r1"], tags=[1, 2], sample_group=[0])] * 2),
                (b"r2", [_example(request_key=[b"r2"], sample_group=[0])] * 2)]
    records = request_records.request_records(requests, ("request_key",))
    assert records == _one_at_a_time(requests, ("request_key",))
    assert "tags" not in records[1].features.feature and list(records[0].features.feature["tags"].int64_list.value) == [1, 2, 1, 2]


def test_a_holdout_split_parts_the_requests_the_same_way_on_every_pass(records, arrays):
    fit, holdout = records.split_holdout(0.3)

    def requests(side, **shuffle):
        return collections.Counter(np.concatenate([b[transformed.REQUEST_KEY]
                                                   for b in _batches(side.dataset(2, **shuffle))]).tolist())

    in_fit, in_holdout = requests(fit, shuffle_requests=50, seed=1), requests(holdout, shuffle_requests=50, seed=2)
    assert in_fit + in_holdout == _sizes(arrays), "every request on one side, whole"
    assert not set(in_fit) & set(in_holdout)
    assert requests(holdout) == in_holdout, "another pass, in another order, holds the same requests"
    assert 0 < len(in_holdout) < len(in_fit)
    assert (fit.requests, holdout.requests) == (len(in_fit), len(in_holdout))
    with pytest.raises(ValueError, match="holdout share"):
        holdout.split_holdout(0.5)
