"""Day by day: a simulated dataset grows by a day, and `hap run --window-days --warm-start` trains
on the recent days from the last blessed models, pushes a new version, and stops before Transform
on a day that drifted, naming the feature."""
import csv
import json
import os

import numpy as np
import pytest

from conftest import E2E, quick_settings
from hap.data import contract as c
from hap.data import simulator, validator
from hap.data.sample_routing import MODELS

SMALL = simulator.SimulationConfig(requests=60, funnel_requests=0, seed=11)


def _rows(data, day):
    with open(os.path.join(data, c.SAMPLES_DIR, f"day-{day}.csv"), newline="") as f:
        return list(csv.DictReader(f))


def test_an_appended_day_continues_the_feed(tmp_path):
    data = str(tmp_path / "data")
    simulator.simulate(data, SMALL, progress=False)
    counts = simulator.append_day(data, progress=False)
    assert counts == {"day": 3, "requests": SMALL.requests // SMALL.days, "samples": len(_rows(data, 3))}
    assert validator.validate(data).ok
    earlier = [r for day in range(3) for r in _rows(data, day)]
    new = _rows(data, 3)
    assert {r["day"] for r in new} == {"3"}
    assert not {r["request_id"] for r in new} & {r["request_id"] for r in earlier}
    # The same users, with the histories their earlier clicks left: a user's first history on the
    # new day starts with the item they clicked first in their last request with a click.
    newest_click = {}  # user -> ((request, -position), item): their last request's first click
    for r in earlier:
        key = (int(r["request_id"]), -int(r["expose_pos"]))
        if r["click"] == "1" and key > newest_click.get(r["user_id"], ((0, 0), None))[0]:
            newest_click[r["user_id"]] = (key, r["item_id"])
    first_history = {}
    for r in sorted(new, key=lambda r: int(r["request_id"])):
        first_history.setdefault(r["user_id"], r["u_click_seq"].split())
    checked = [user for user in first_history if user in newest_click]
    assert checked
    for user in checked:
        assert first_history[user][0] == newest_click[user][1], user

    # Deterministic: the same dataset grows by the same day.
    again = str(tmp_path / "again")
    simulator.simulate(again, SMALL, progress=False)
    simulator.append_day(again, progress=False)
    assert _rows(again, 3) == new

    # A drifted day: every request over the network fewest users have; recorded for the replay.
    simulator.append_day(data, simulator.DayDrift(network=1.0), progress=False)
    networks = {day: {r["c_network"] for r in _rows(data, day)} for day in (3, 4)}
    assert len(networks[4]) == 1 and networks[4] < networks[3]
    record = simulator.read_record(data)
    assert [d["day"] for d in record["appended_days"]] == [3, 4]
    assert record["appended_days"][1]["drift"] == {"network": 1.0, "click": 0.0}


def test_append_day_needs_a_simulated_dataset_and_drift_needs_append_day(tmp_path, capsys):
    from hap import cli

    assert cli.main(["data", "simulate", "--out", str(tmp_path / "none"), "--append-day", "--quiet"]) == 2
    assert "simulation.json" in capsys.readouterr().err
    assert cli.main(["data", "simulate", "--out", str(tmp_path / "d"), "--drift", "0.5", "--quiet"]) == 2
    assert "--append-day" in capsys.readouterr().err
    with pytest.raises(ValueError, match="network drift"):
        simulator.DayDrift(network=1.5)


def test_a_warm_start_keeps_learned_rows_by_token():
    from hap.models import trainer_module

    base = np.arange(10.0).reshape(5, 2)  # rows: missing, a, b, c, OOV
    table, kept = trainer_module.remap_embedding(np.zeros((5, 2)), base, [b"c", b"d", b"a"], [b"a", b"b", b"c"])
    # missing keeps its row, c and a keep theirs, the new d starts as the old model saw it (OOV).
    np.testing.assert_array_equal(table, base[[0, 3, 4, 1, 4]])
    assert kept == 2


def _history(out, model):
    from hap.pipeline import run_report

    with open(os.path.join(run_report.latest_artifact(out, f"Trainer_{model}", "ModelRun").uri,
                           "training_history.json")) as f:
        return json.load(f)


def _pushed(out):
    path = os.path.join(out, "serving", "hap")
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


@pytest.mark.e2e
def test_day_after_day_warm_starts_pushes_and_stops_on_drift(tmp_path):
    from hap.components.contract_example_gen import executor
    from hap.pipeline import local_runner, run_report

    data, out = str(tmp_path / "data"), str(tmp_path / "run")
    simulator.simulate(data, E2E, progress=False)
    # Any model and cascade are good enough for the second day here: the test is about the
    # sequence, and two epochs on 50 requests a day make their AUCs a coin's toss.
    settings = quick_settings(0.0, **{"data.window_days": 2, "warm_start": True, "cascade.tolerance": 1.0,
                                      "evaluator.auc_tolerance": 1.0})

    local_runner.run(data, out, settings)
    assert all(_history(out, m)["warm_started_from"] is None for m in MODELS)
    first = {m: run_report.latest_artifact(out, f"Trainer_{m}", "Model").uri for m in MODELS}
    assert len(_pushed(out)) == 1

    simulator.append_day(data, progress=False)
    local_runner.run(data, out, settings)
    examples = run_report.latest_artifact(out, "ContractExampleGen", "Examples")
    assert executor.read_days(examples.uri) == {"train": [1, 2], "eval": [3], "outside_window": [0]}
    for model in MODELS:
        history = _history(out, model)
        assert history["warm_started_from"] == os.path.join(first[model], "Format-Serving"), model
        assert sum(r["kept"] for r in history["warm_start"]["embedding_rows"].values()) > 0
        # Yesterday's model, scored through its own Transform, is today's baseline.
        baseline = run_report.latest_inputs(out, f"Evaluator_{model}")["baseline_model"]
        assert [a.uri for a in baseline] == [first[model]], model
    assert len(_pushed(out)) == 2, "the second day's cascade was not pushed"
    summary = "\n".join(run_report.summary_lines(out))
    assert "data: trained on days 1-2, evaluated on day 3 (day 0 outside the window)" in summary
    assert "drift check: day 3 against day 2 (the last accepted): within every threshold" in summary
    assert summary.count("  warm-started from ") == 2
    assert "against the last blessed cascade's" in summary, summary

    transforms = sum(e["node"] == "Transform" for e in run_report.executions(out))
    simulator.append_day(data, simulator.DayDrift(network=0.8), progress=False)
    with pytest.raises(Exception, match=r"day 4\) moved too far from the last accepted day's, day 3(.|\n)*"
                                        r"feature 'c_network': High Linfty distance"):
        local_runner.run(data, out, settings)
    assert run_report.latest_by_node(out)["DriftGate"]["state"] == "FAILED"
    # A drifted day is not accepted: the newest accepted statistics, what the next run is checked
    # against (LastAcceptedStatistics), are still day 3's.
    accepted = run_report.latest_artifact(out, "DriftGate", "ExampleStatistics")
    assert accepted.properties["span"].int_value == 3
    assert sum(e["node"] == "Transform" for e in run_report.executions(out)) == transforms
    assert len(_pushed(out)) == 2
