"""Executor of the Tuner: TFX's Tuner executor's search, or the previous hyper-parameters where
they still hold (`reuse_decision`).

`best_hyperparameters` holds TFX's `best_hyperparameters.txt` (KerasTuner's config, the one file
the Trainer reads there). Its properties: `trials`, every completed trial of the search best
first ({"trial_id", "score", "values", "chosen", "settings"}, JSON), so a reused choice keeps the search it came from
(the run's summary names the runner-up and the margin from it); `tuned_day` (the newest day of the
run that searched); `noise` (the holdout's, models/tuner_module.py `holdout_noise`); `statistics` (the URI of that run's StatisticsGen output); `search` (a hash of the
Tuner's custom_config: settings, search space, features and model code); `reused` and `reason`.
`tuner_results` holds TFX's `tuner_results.json` of that search.

Drift is measured here, not taken from the DriftGate: today's eval-day statistics against those
of the day that searched, with the pipeline's drift comparators (TFDV, as DistributionValidator
compares). A slow drift that no single day's gate notices still brings a new search, and a re-run
of a day reads the same cached statistics, so the Tuner and the Trainers stay cached (the
DriftGate's output is a new artifact on every run).
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, List

from keras_tuner.engine import trial as trial_module
from tfx import types
from tfx.components.tuner import executor as tuner_executor
from tfx.types import artifact_utils, standard_component_specs as specs
from tfx.utils import io_utils

from hap.components.contract_example_gen.executor import EVAL

RETUNE_DAYS, DRIFT_COMPARATORS = "retune_days", "drift_comparators"
TRIALS, NOISE, TUNED_DAY, STATISTICS, SEARCH, REUSED, REASON = (
    "trials", "noise", "tuned_day", "statistics", "search", "reused", "reason")
RESULTS_FILE = "tuner_results.json"


def search_key(custom_config: str) -> str:
    return hashlib.sha256(custom_config.encode()).hexdigest()[:16]


def reuse_decision(previous: types.Artifact | None, today: int, retune_days: int, search: str,
                   drifted: list[str]) -> tuple[bool, str]:
    """Whether to reuse `previous` (the last best_hyperparameters, or None) on day `today`, given
    the features `drifted` since its search, and why."""
    if retune_days == 0:
        return False, "tuning.retune_days is 0: every run searches"
    if previous is None:
        return False, "no earlier search"
    tuned_day = previous.get_int_custom_property(TUNED_DAY)
    if previous.get_string_custom_property(SEARCH) != search:
        return False, (f"the settings, search space, features or model code changed since the search of day "
                       f"{tuned_day}")
    age = today - tuned_day
    if not 0 <= age < retune_days:
        return False, f"the last search, of day {tuned_day}, is {age} days from today's (tuning.retune_days {retune_days})"
    if drifted:
        return False, f"{', '.join(drifted)} drifted since the search of day {tuned_day}"
    return True, f"the search of day {tuned_day}, {age} day(s) old (tuning.retune_days {retune_days})"


def drifted_features(schema_uri: str, statistics_uri: str, tuned_statistics_uri: str, comparators: dict) -> list[str]:
    """The features whose eval-day statistics moved past their comparator's threshold
    ({feature: {"comparator", "threshold"}}, the settings' drift.comparators) between the day
    that searched and today."""
    import tensorflow_data_validation as tfdv

    if not comparators or not tuned_statistics_uri:
        return []
    schema = io_utils.SchemaReader().read(os.path.join(schema_uri, "schema.pbtxt"))
    for name, spec in comparators.items():
        getattr(tfdv.get_feature(schema, name).drift_comparator, spec["comparator"]).threshold = spec["threshold"]

    def load(uri: str):
        return tfdv.load_stats_binary(os.path.join(uri, f"Split-{EVAL}", "FeatureStats.pb"))

    found = tfdv.validate_statistics(load(statistics_uri), schema, previous_statistics=load(tuned_statistics_uri))
    return sorted(name for name in found.anomaly_info if name in comparators)


def completed_trials(tuner) -> list[dict]:
    """Every completed trial of a search, best first; the one the Trainer trains (the tuner's
    `get_best_hyperparameters`) marked `chosen`, the Trainer's own settings `settings`."""
    chosen = tuner.get_best_hyperparameters()[0].values
    settings_id = getattr(tuner.oracle, "settings_trial_id", None)
    return [{"trial_id": t.trial_id, "score": t.score, "values": t.hyperparameters.values,
             "chosen": t.hyperparameters.values == chosen, "settings": t.trial_id == settings_id}
            for t in tuner.oracle.get_best_trials(len(tuner.oracle.trials))
            if t.status == trial_module.TrialStatus.COMPLETED]


def read_trials(best_hyperparameters: types.Artifact) -> list[dict]:
    return json.loads(best_hyperparameters.get_string_custom_property(TRIALS) or "[]")


class Executor(tuner_executor.Executor):

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        best = artifact_utils.get_single_instance(output_dict[specs.BEST_HYPERPARAMETERS_KEY])
        results = artifact_utils.get_single_instance(output_dict[specs.TUNER_RESULTS_KEY])
        # StatisticsGen's output carries ExampleGen's span, the newest day; Transform's does not.
        statistics_artifact = artifact_utils.get_single_instance(input_dict[STATISTICS])
        today, statistics = statistics_artifact.span, statistics_artifact.uri
        previous = (input_dict.get("previous_hyperparameters") or [None])[0]
        drifted = drifted_features(artifact_utils.get_single_uri(input_dict[specs.SCHEMA_KEY]), statistics,
                                   previous.get_string_custom_property(STATISTICS) if previous else "",
                                   json.loads(exec_properties[DRIFT_COMPARATORS]))
        search = search_key(exec_properties[specs.CUSTOM_CONFIG_KEY])
        reuse, reason = reuse_decision(previous, today, exec_properties[RETUNE_DAYS], search, drifted)
        if reuse:
            io_utils.copy_dir(previous.uri, best.uri)
            tuned_day, trials = previous.get_int_custom_property(TUNED_DAY), read_trials(previous)
            best.set_float_custom_property(NOISE, previous.get_float_custom_property(NOISE))
            statistics = previous.get_string_custom_property(STATISTICS)
        else:
            tuner = tuner_executor.search(input_dict, exec_properties, self._get_tmp_dir())
            failed = [t for t in tuner.oracle.trials.values() if t.status != trial_module.TrialStatus.COMPLETED]
            if len(failed) == len(tuner.oracle.trials):
                # KerasTuner records a failed trial and goes on; with none completed there is no choice.
                raise RuntimeError(f"every trial of the search failed; the first: {failed[0].message}"
                                   if failed else "the search ran no trial")
            tuner_executor.write_best_hyperparameters(tuner, output_dict)
            tuned_day, trials = today, completed_trials(tuner)
            best.set_float_custom_property(NOISE, getattr(tuner, "noise", 0.0))
        # TFX's format (a row per trial), which a search has written already and a reuse copies.
        io_utils.write_string_file(os.path.join(results.uri, RESULTS_FILE), json.dumps(
            [{"trial_id": t["trial_id"], "score": t["score"], **t["values"]} for t in trials]))
        best.set_string_custom_property(TRIALS, json.dumps(trials))
        best.set_int_custom_property(TUNED_DAY, tuned_day)
        best.set_string_custom_property(STATISTICS, statistics)
        best.set_string_custom_property(SEARCH, search)
        best.set_int_custom_property(REUSED, int(reuse))
        best.set_string_custom_property(REASON, ("reused " if reuse else "searched: ") + reason)
