"""What building request records costs: one request at a time against a batch at a time.

    .venv/bin/python benchmarks/record_building.py --run RUN [--samples 60000]

On the first `--samples` transformed eval examples of a finished `hap run` (its Transform
output), grouped by request as the RequestGrouper's GroupByKey groups them: the seconds to build
their request records with `request_records.request_record`, one request at a time (what the
RequestGrouper did before), and with `request_records.request_records` on batches of 64, 256
and 1024 requests, each checked equal to the first. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import time

import hap  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf

from hap.components.request_grouper import executor
from hap.models import preprocessing, request_records
from hap.pipeline import run_report
from results import command_line, table, write_result

BATCHES = (64, 256, 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a finished `hap run` output directory")
    parser.add_argument("--samples", type=int, default=60_000, help="transformed eval examples read")
    args = parser.parse_args()
    examples = run_report.latest_artifact(args.run, "Transform", "Examples").uri
    config = json.loads(run_report.latest_execution_property(args.run, "Trainer_light", "custom_config"))
    context = request_records.context_names(preprocessing.feature_set_from_config(config))
    files = tf.io.gfile.glob(os.path.join(examples, "Split-eval", "*"))
    by_request = collections.defaultdict(list)
    for record in itertools.islice(tf.data.TFRecordDataset(files, "GZIP"), args.samples):
        serialized = record.numpy()
        by_request[executor._request_key(serialized)].append(serialized)
    requests = list(by_request.items())

    start = time.perf_counter()
    one_by_one = [request_records.request_record(key, examples, context) for key, examples in requests]
    rows = [("one request at a time", time.perf_counter() - start)]
    for size in BATCHES:
        start = time.perf_counter()
        batched = [record for i in range(0, len(requests), size)
                   for record in request_records.request_records(requests[i:i + size], context)]
        rows.append((f"batches of {size} requests", time.perf_counter() - start))
        if batched != one_by_one:
            raise AssertionError(f"batches of {size} requests built other records than one request at a time")
    samples = sum(len(examples) for _, examples in requests)
    print(f"{samples} samples of {len(requests)} requests ({args.run})\n")
    print("| records built | seconds | us per sample |\n|---|---|---|")
    cells = [[name, f"{seconds:.2f}", f"{1e6 * seconds / samples:.1f}"] for name, seconds in rows]
    for row in cells:
        print("| " + " | ".join(row) + " |")
    write_result("record_building", command_line(), table(["records built", "seconds", "us per sample"], cells),
                 notes=f"{samples} samples of {len(requests)} requests ({args.run})")


if __name__ == "__main__":
    main()
