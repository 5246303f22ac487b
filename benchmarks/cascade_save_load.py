"""What saving the cascade's Keras models as Keras objects costs: the CascadeModule of a run's
newest Transform graph and models saved and loaded twice, with the Keras models tracked as
Keras objects (as before decision 0019) and as their variables only (serving/cascade.py), in
alternation in one process, and the signatures' outputs of both compared on the data's largest
requests.

    .venv/bin/python benchmarks/cascade_save_load.py --run demo/run --data demo/data [--repeats 3]

Writes results/cascade_save_load.json: median seconds to save and to load, SavedModel size,
and the largest output difference.
"""
from __future__ import annotations

import argparse
import collections
import os
import shutil
import statistics
import tempfile
import time

import hap  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from tfx.utils import path_utils

from hap.data import contract as c
from hap.data import reader
from hap.models import heavy, light  # noqa: F401  (registers the Keras classes)
from hap.pipeline import run_report
from hap.serving import cascade
from hap.serving import request as rq
from results import command_line, table, write_result


class KerasTrackedCascade(cascade.CascadeModule):
    """The cascade as it was saved before decision 0019: its Keras models tracked as such."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        models = (self.light, self.heavy)
        # Deleted first: assigning an attribute its own value does not track it.
        del self.light_variables, self.heavy_variables, self.light, self.heavy
        self.light, self.heavy = models


def _size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def _requests(data_dir: str, features: c.FeatureSet, count: int = 3) -> list[dict]:
    by_request = collections.defaultdict(list)
    for row in reader.read_rows(data_dir, features=features):
        by_request[row["request_id"]].append(row)
    layout = rq.RequestLayout(features)
    return [{k: tf.constant(v, dtype=tf.string if v.dtype == object else None) for k, v in layout.from_rows(rows).items()}
            for rows in sorted(by_request.values(), key=len, reverse=True)[:count]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    features = c.load_features(args.data)
    tft_output = tft.TFTransformOutput(run_report.latest_artifact(args.run, "Transform", "TransformGraph").uri)
    models = [tf.keras.models.load_model(path_utils.serving_model_path(
        run_report.latest_artifact(args.run, f"Trainer_{m}", "Model").uri), compile=False) for m in ("light", "heavy")]
    kinds = {"Keras models tracked (before)": KerasTrackedCascade, "variables only (serving/cascade.py)": cascade.CascadeModule}
    seconds = {kind: {"save": [], "load": []} for kind in kinds}
    loaded, sizes = {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            for kind, cls in kinds.items():
                module = cls(*models, tft_output.transform_features_layer(), tft_output.raw_feature_spec(), features,
                             cascade.CascadeSettings())
                path = os.path.join(scratch, f"{cls.__name__}-{repeat}")
                start = time.perf_counter()
                module.save(path)
                seconds[kind]["save"].append(time.perf_counter() - start)
                start = time.perf_counter()
                loaded[kind] = tf.saved_model.load(path)
                seconds[kind]["load"].append(time.perf_counter() - start)
                sizes[kind] = _size(path)
                shutil.rmtree(path)
                print(f"repeat {repeat + 1}: {kind}: save {seconds[kind]['save'][-1]:.1f} s, "
                      f"load {seconds[kind]['load'][-1]:.1f} s", flush=True)
        before, after = (loaded[k] for k in kinds)
        difference = 0.0
        for request in _requests(args.data, features):
            for signature in ("cascade", "light", "heavy"):
                a, b = before.signatures[signature](**request), after.signatures[signature](**request)
                difference = max(difference, *(float(np.max(np.abs(a[k].numpy().astype(np.float64)
                                                                   - b[k].numpy().astype(np.float64)))) for k in a))
    rows = [[kind, round(statistics.median(s["save"]), 2), round(statistics.median(s["load"]), 2),
             round(sizes[kind] / 2**20, 1)] for kind, s in seconds.items()]
    base, lean = rows
    rows.append(["ratio (before / after)", round(base[1] / lean[1], 2), round(base[2] / lean[2], 2),
                 round(base[3] / lean[3], 2)])
    write_result("cascade_save_load", command_line(),
                 table(["cascade SavedModel", "save s (median)", "load s (median)", "size MiB"], rows),
                 notes=f"{args.repeats} repeats in alternation; largest difference of the cascade, light and heavy "
                       f"signatures' outputs on the 3 largest requests: {difference:.1e}")
    for row in rows:
        print(" | ".join(map(str, row)))


if __name__ == "__main__":
    main()
