"""How often a table of precomputed light item embeddings, one entry per item id, could answer a
candidate: the entry holds the item's features as they were when it was computed, so a candidate
whose item features differ (an item's age, a rolling click rate) must run the item tower anyway.

    .venv/bin/python benchmarks/item_cache_hits.py --data demo/data [--data OTHER ...]

For each dataset and day of samples/ (and of funnel/, where present): the items whose features
change within the day, the share of the day's rows a table could answer at best (each item's most
frequent feature values), and the share of the next day's rows a table built from this day would
answer. Writes results/item_cache_hits.json (decision 0020).
"""
from __future__ import annotations

import argparse
import collections
import os

from hap.data import contract as c
from hap.data import reader
from results import command_line, table, write_result


def item_tuples(data_dir: str, part: str, features: c.FeatureSet) -> dict[int, dict]:
    """Per day: {item id: Counter of its item-feature values as the rows carry them}."""
    names = [f.name for f in features.features if f.role == c.ITEM]
    days = collections.defaultdict(lambda: collections.defaultdict(collections.Counter))
    for row in reader.read_rows(data_dir, part, features):
        days[row["day"]][row["item_id"]][tuple(repr(row.get(n)) for n in names)] += 1
    return days


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", action="append", required=True, help="a contract dataset (repeatable)")
    args = parser.parse_args()
    rows = []
    for data_dir in args.data:
        features = c.load_features(data_dir)
        for part in (c.SAMPLES_DIR, c.FUNNEL_DIR):
            if not os.path.isdir(os.path.join(data_dir, part)):
                continue
            days = item_tuples(data_dir, part, features)
            for day in sorted(days):
                items = days[day]
                total = sum(sum(counts.values()) for counts in items.values())
                table_of_day = {item: counts.most_common(1)[0][0] for item, counts in items.items()}
                following = days.get(day + 1)
                next_day = ""
                if following:
                    hits = sum(n for item, counts in following.items() for values, n in counts.items()
                               if table_of_day.get(item) == values)
                    next_day = round(hits / sum(sum(cn.values()) for cn in following.values()), 4)
                rows.append([data_dir, part, day, total, len(items),
                             sum(len(counts) > 1 for counts in items.values()),
                             round(sum(counts.most_common(1)[0][1] for counts in items.values()) / total, 4),
                             next_day])
                print(" | ".join(map(str, rows[-1])), flush=True)
    write_result("item_cache_hits", command_line(),
                 table(["dataset", "part", "day", "rows", "items", "items whose features change within the day",
                        "best share answered, same day", "share answered the next day"], rows))


if __name__ == "__main__":
    main()
