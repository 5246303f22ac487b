"""Item popularity (evaluation/popularity.py): clicks on the training days, ties broken by
exposures, never counting the other sources or other days."""
import collections

import numpy as np

from hap.data import contract as c
from hap.data import reader
from hap.evaluation.popularity import ItemPopularity


def _row(item, source, click=0):
    return {"item_id": item, "source": source, "click": click}


def test_clicks_order_items_and_exposures_break_ties():
    rows = ([_row("a", c.EXPOSED, 1)] * 2
            + [_row("b", c.EXPOSED, 1)] + [_row("b", c.EXPOSED, 0)] * 99
            + [_row("c", c.EXPOSED, 1)]
            + [_row("d", c.EXPOSED, 0)] * 5
            # Other sources are the funnel's or the pool's choices, not the users': never counted.
            + [_row("e", c.RANKING)] * 50 + [_row("e", c.GLOBAL)] * 50)
    popularity = ItemPopularity.from_rows(rows)
    assert popularity.clicks == {"a": 2, "b": 1, "c": 1, "d": 0}
    assert popularity.exposures == {"a": 2, "b": 100, "c": 1, "d": 5}
    scores = popularity.scores(["a", "b", "c", "d", "e", "never seen"])
    # Exposures weigh 1 / (1 + 100) each: b's 100 stay below a second click.
    np.testing.assert_allclose(scores, [2 + 2 / 101, 1 + 100 / 101, 1 + 1 / 101, 5 / 101, 0, 0])
    assert list(np.argsort(-scores, kind="stable")) == [0, 1, 2, 3, 4, 5]


def test_no_exposure_scores_every_item_zero():
    assert list(ItemPopularity.from_rows([_row(7, c.GLOBAL)]).scores([7, 8])) == [0.0, 0.0]


def test_from_days_counts_only_those_days(tiny_csv):
    features = c.load_features(tiny_csv)
    rows = list(reader.read_rows(tiny_csv, features=features))
    days = sorted({r["day"] for r in rows})
    train = days[:-1]
    expected_clicks, expected_exposures = collections.Counter(), collections.Counter()
    for r in rows:
        if r["day"] in train and r["source"] == c.EXPOSED:
            expected_exposures[r["item_id"]] += 1
            expected_clicks[r["item_id"]] += r["click"]
    popularity = ItemPopularity.from_days(tiny_csv, features, train)
    assert popularity.exposures == dict(expected_exposures) and sum(expected_clicks.values()) > 0
    assert popularity.clicks == dict(expected_clicks)
    assert ItemPopularity.from_days(tiny_csv, features, []).exposures == {}
