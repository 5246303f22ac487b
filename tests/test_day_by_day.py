"""Day by day: a simulated dataset grows by a day, the same feed continued, or a drifted one; a
warm start keeps the learned embedding rows by token. The runs day after day (`hap run` with a
window of days and warm starts, a drifted day stopped before Transform) are
tests/test_cluster.py's, on the object store, and the Airflow DagRuns' there."""
import csv
import os

import numpy as np
import pytest

from hap.data import contract as c
from hap.data import simulator, validator

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
