"""The Tuner's reuse of the last search (executor.py); its search runs in the session's `hap run`
(conftest.TUNED_RUN)."""
import json
import os

import pytest
from tfx.types import standard_artifacts, standard_component_specs as specs

from hap.components.tuner import executor

SEARCH = executor.search_key('{"loss": "ghcl"}')
TRIALS = [{"trial_id": "1", "score": 0.71, "values": {"loss": "mixed_bce"}},
          {"trial_id": "0", "score": 0.70, "values": {"loss": "ghcl"}}]


def _tuned(tmp_path, day: int, search: str = SEARCH) -> standard_artifacts.HyperParameters:
    artifact = standard_artifacts.HyperParameters()
    artifact.uri = str(tmp_path / f"tuned_on_{day}")
    os.makedirs(artifact.uri)
    with open(os.path.join(artifact.uri, "best_hyperparameters.txt"), "w") as f:
        f.write(json.dumps({"values": TRIALS[0]["values"]}))
    artifact.set_int_custom_property(executor.TUNED_DAY, day)
    artifact.set_string_custom_property(executor.SEARCH, search)
    artifact.set_string_custom_property(executor.TRIALS, json.dumps(TRIALS))
    return artifact


@pytest.mark.parametrize("day, retune_days, search, drift, reuse, why", [
    (12, 7, SEARCH, [], True, "the search of day 10, 2 day(s) old"),
    (16, 7, SEARCH, [], True, "6 day(s) old"),
    (17, 7, SEARCH, [], False, "is 7 days from today's"),
    (9, 7, SEARCH, [], False, "is -1 days from today's"),  # an older day re-run: its own search
    (10, 0, SEARCH, [], False, "retune_days is 0"),
    (12, 7, "other", [], False, "changed since the search of day 10"),
    (12, 7, SEARCH, ["c_network", "click"], False, "c_network, click drifted since the search of day 10"),
])
def test_the_last_search_is_reused_until_it_is_too_old_or_what_it_tuned_changed(tmp_path, day, retune_days, search,
                                                                                  drift, reuse, why):
    decided = executor.reuse_decision(_tuned(tmp_path, 10), day, retune_days, search, drift)
    assert decided[0] is reuse and why in decided[1]


def test_a_first_run_searches():
    assert executor.reuse_decision(None, 3, 7, SEARCH, []) == (False, "no earlier search")


def _statistics(tmp_path, name: str, networks: list[str]) -> str:
    """A StatisticsGen output whose eval split has these c_network values; its schema beside it."""
    import pandas as pd
    import tensorflow_data_validation as tfdv

    stats = tfdv.generate_statistics_from_dataframe(pd.DataFrame({"c_network": networks}))
    uri = tmp_path / name
    os.makedirs(uri / "Split-eval")
    (uri / "Split-eval" / "FeatureStats.pb").write_bytes(stats.SerializeToString())
    if not (tmp_path / "schema" / "schema.pbtxt").exists():
        os.makedirs(tmp_path / "schema")
        tfdv.write_schema_text(tfdv.infer_schema(stats), str(tmp_path / "schema" / "schema.pbtxt"))
    return str(uri)


def test_drift_is_measured_against_the_statistics_of_the_day_that_searched(tmp_path):
    tuned = _statistics(tmp_path, "tuned", ["wifi"] * 50 + ["4g"] * 50)
    today = _statistics(tmp_path, "today", ["wifi"] * 90 + ["4g"] * 10)  # L-infinity distance 0.4
    schema = str(tmp_path / "schema")
    at = {threshold: executor.drifted_features(schema, today, tuned, {"c_network": {
        "comparator": "infinity_norm", "threshold": threshold}}) for threshold in (0.39, 0.41)}
    assert at == {0.39: ["c_network"], 0.41: []}
    assert executor.drifted_features(schema, today, tuned, {}) == []
    assert executor.drifted_features(schema, today, "", {"c_network": {"comparator": "infinity_norm",
                                                                       "threshold": 0.1}}) == []


def test_a_reused_search_is_copied_with_its_trials_and_says_so(tmp_path):
    examples = standard_artifacts.Examples()
    best, results = standard_artifacts.HyperParameters(), standard_artifacts.TunerResults()
    best.uri, results.uri = str(tmp_path / "best"), str(tmp_path / "results")
    os.makedirs(best.uri), os.makedirs(results.uri)
    previous = _tuned(tmp_path, 10)
    statistics, schema = standard_artifacts.ExampleStatistics(), standard_artifacts.Schema()
    statistics.uri = _statistics(tmp_path, "today", ["wifi"] * 52 + ["4g"] * 48)
    statistics.span = 12
    schema.uri = str(tmp_path / "schema")
    previous.set_string_custom_property(executor.STATISTICS, _statistics(tmp_path, "tuned", ["wifi", "4g"] * 50))
    executor.Executor().Do(
        {specs.EXAMPLES_KEY: [examples], "previous_hyperparameters": [previous], executor.STATISTICS: [statistics],
         specs.SCHEMA_KEY: [schema]},
        {specs.BEST_HYPERPARAMETERS_KEY: [best], specs.TUNER_RESULTS_KEY: [results]},
        {specs.CUSTOM_CONFIG_KEY: '{"loss": "ghcl"}', executor.RETUNE_DAYS: 7,
         executor.DRIFT_COMPARATORS: '{"c_network": {"comparator": "infinity_norm", "threshold": 0.1}}'})
    with open(os.path.join(best.uri, "best_hyperparameters.txt")) as f:
        assert json.load(f) == {"values": {"loss": "mixed_bce"}}
    assert executor.read_trials(best) == TRIALS
    assert best.get_int_custom_property(executor.TUNED_DAY) == 10
    assert best.get_string_custom_property(executor.STATISTICS) == str(tmp_path / "tuned"), "the search's own"
    assert best.get_int_custom_property(executor.REUSED) == 1
    assert best.get_string_custom_property(executor.REASON).startswith("reused the search of day 10")
    with open(os.path.join(results.uri, executor.RESULTS_FILE)) as f:
        assert json.load(f) == [{"trial_id": "1", "score": 0.71, "loss": "mixed_bce"},
                                {"trial_id": "0", "score": 0.70, "loss": "ghcl"}]
