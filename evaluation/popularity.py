"""Item popularity: the non-personalised baseline that a cascade must beat where there is no
blessed cascade to compare with (a first run on new data), scored on the same requests with the
same metric (components/cascade_assembler, decision 0018).

An item's popularity is its clicks on the training days, ties broken by its exposures there:
every candidate of a request gets a score from the days the models trained on, never from the
day it is evaluated on. An item never exposed on those days scores 0, below every exposed one.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Iterable

import numpy as np

from hap.data import contract as c
from hap.data import reader


@dataclasses.dataclass(frozen=True)
class ItemPopularity:
    clicks: dict
    exposures: dict

    @property
    def _tie_scale(self) -> float:
        # Exposures only order items of equal clicks: divided by more than the most exposures,
        # they add less than one click.
        return 1.0 / (1.0 + max(self.exposures.values(), default=0))

    def scores(self, item_ids: Iterable) -> np.ndarray:
        scale = self._tie_scale
        return np.array([self.clicks.get(i, 0) + scale * self.exposures.get(i, 0) for i in item_ids], np.float64)

    @classmethod
    def from_rows(cls, rows: Iterable[dict]) -> ItemPopularity:
        """From typed rows with item_id, source and click (the logged samples of the training days)."""
        clicks, exposures = collections.Counter(), collections.Counter()
        for row in rows:
            if row["source"] == c.EXPOSED:
                exposures[row["item_id"]] += 1
                clicks[row["item_id"]] += int(row["click"] == 1)
        return cls(dict(clicks), dict(exposures))

    @classmethod
    def from_days(cls, data_dir: str, features: c.FeatureSet, days: Iterable[int]) -> ItemPopularity:
        """From samples/ of `data_dir`, the rows of `days` only; of each row only item_id, source
        and click are parsed."""
        days = set(days)
        kinds = features.column_kinds()
        columns = ("item_id", "source", "click")

        def rows():
            for _, day, raw in reader.keyed_rows(data_dir, c.SAMPLES_DIR, kinds):
                if day in days:
                    yield {name: reader.parse_value(kinds[name], raw.values[name]) for name in columns}

        return cls.from_rows(rows())
