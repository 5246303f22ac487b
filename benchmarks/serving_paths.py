"""Two serving paths before and after decision 0020, side by side in one process, on requests of
N candidates from the data's funnel (benchmarks/serving_latency.py's requests):

- the heavy model in the cascade: each routed candidate beside a copy of its user's row
  (before), or one request's candidates over its user's histories embedded and attended over
  once (`HeavyModel.logits_for_one_request`, after). Both cascades are assembled from the same
  run's Transform graph and models and saved; their outputs are compared and the `cascade` and
  `heavy` signatures timed in alternation;
- a Predict of `hap serve` without its network: each input converted to a tensor in Python and
  each output back (before), or the request's serialized inputs through one call of the
  signature behind parse_tensor and serialize_tensor (`LoadedVersion.run`, after), each beside
  the signature called on ready tensors.

    .venv/bin/python benchmarks/serving_paths.py --run demo/run --data demo/data [--requests 100]

Writes results/serving_paths.json (or results/NAME.json with --name).
"""
from __future__ import annotations

import os
import statistics
import tempfile

import hap  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from tfx.utils import path_utils

from hap.data import contract as c
from hap.models import heavy, light  # noqa: F401  (registers the Keras classes)
from hap.pipeline import run_report
from hap.serving import cascade, server
from hap.serving import request as rq
from results import command_line, table, write_result
from serving_latency import build_requests, request_arguments, time_calls


class PerRowHeavyCascade(cascade.CascadeModule):
    """The cascade before decision 0020: the heavy model scores each routed candidate beside a
    copy of the request's user row."""

    def _heavy_logits(self, user, items, rows):
        features = {k: tf.gather(v, tf.zeros_like(rows)) for k, v in user.items()}
        features.update({k: tf.gather(v, rows) for k, v in items.items()})
        return self.heavy(features, training=False)


def convert_in_python(fn, proto_inputs) -> dict:
    """The request path before decision 0020: every input through numpy to a tensor."""
    checked = server._check_inputs(fn, proto_inputs)
    specs = fn.structured_input_signature[1]
    outputs = fn(**{name: tf.constant(tf.make_ndarray(proto), dtype=specs[name].dtype)
                    for name, proto in checked.items()})
    return {key: tf.make_tensor_proto(np.asarray(value.numpy())).SerializeToString() for key, value in outputs.items()}


def main() -> None:
    parser = request_arguments(__doc__, requests=100)
    parser.add_argument("--name", default="serving_paths", help="the result file's name under results/")
    args = parser.parse_args()
    features = c.load_features(args.data)
    tft_output = tft.TFTransformOutput(run_report.latest_artifact(args.run, "Transform", "TransformGraph").uri)
    models = [tf.keras.models.load_model(path_utils.serving_model_path(
        run_report.latest_artifact(args.run, f"Trainer_{m}", "Model").uri), compile=False) for m in ("light", "heavy")]
    requests = build_requests(args.data, features, args.n, count=20)
    tensors = [{name: tf.constant(v, dtype=tf.string if v.dtype == object else None) for name, v in r.items()}
               for r in requests]
    protos = [rq.predict_request("hap", "cascade", r).inputs for r in requests]
    index = list(range(len(requests)))

    with tempfile.TemporaryDirectory() as scratch:
        # Saved as versions 1 and 2 of a model base path, so that `hap serve`'s own loader reads "after".
        for version, cls in ((1, PerRowHeavyCascade), (2, cascade.CascadeModule)):
            cls(*models, tft_output.transform_features_layer(), tft_output.raw_feature_spec(), features,
                cascade.CascadeSettings()).save(os.path.join(scratch, str(version)))
        before = tf.saved_model.load(os.path.join(scratch, "1"))
        served = server.LoadedVersion.load(scratch, 2)
        after = served.model
        difference, same_order = 0.0, 0
        for t in tensors:
            a, b = before.signatures["cascade"](**t), after.signatures["cascade"](**t)
            difference = max(difference, *(float(np.max(np.abs(a[k].numpy().astype(np.float64)
                                                               - b[k].numpy().astype(np.float64)))) for k in a))
            same_order += int(np.array_equal(a["top_indices"].numpy(), b["top_indices"].numpy()))

        fn = after.signatures["cascade"]

        rows = {
            ("cascade signature", "before: heavy per row"): lambda i: before.signatures["cascade"](**tensors[i]),
            ("cascade signature", "after: heavy per request"): lambda i: fn(**tensors[i]),
            ("heavy signature, all N", "before: heavy per row"): lambda i: before.signatures["heavy"](**tensors[i]),
            ("heavy signature, all N", "after: heavy per request"): lambda i: after.signatures["heavy"](**tensors[i]),
            ("Predict without the network", "before: conversions in Python"): lambda i: convert_in_python(fn, protos[i]),
            ("Predict without the network", "after: one call"):
                lambda i: served.run("cascade", server._check_inputs(fn, protos[i])),
        }
        p50 = {key: [] for key in rows}
        for round_ in range(args.rounds):
            for key, call in rows.items():
                p50[key].append(time_calls(call, index, args.requests)["p50_ms"])
            print(f"round {round_ + 1}: " + "; ".join(f"{' / '.join(k)} {v[-1]:.2f} ms" for k, v in p50.items()),
                  flush=True)
    out = []
    for (what, path), values in p50.items():
        out.append([what, path, round(statistics.median(values), 2)])
    for i in range(0, len(out), 2):
        out.append([out[i][0], "before / after", round(out[i][2] / out[i + 1][2], 2)])
    write_result(args.name, command_line(),
                 table(["what is timed", "path", "p50 ms (median of rounds)"], out),
                 notes=f"N = {args.n} candidates from the funnel, routing as the cascade's default settings; "
                       f"{args.rounds} rounds in alternation of {args.requests} requests each; largest "
                       f"difference of the two cascades' outputs on {len(tensors)} requests: {difference:.1e}, identical top_indices on "
                       f"{same_order} of {len(tensors)}")
    for row in out:
        print(" | ".join(map(str, row)))


if __name__ == "__main__":
    main()
