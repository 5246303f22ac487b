"""The cascade SavedModel: Transform, the light model on every candidate, the heavy model on the
hardest, in one graph with one request per call.

Signatures (inputs as in `serving/request.py`):

- `cascade` (also `serving_default`): runs Transform and the light user tower once for the
  request, the light item tower and head on all N candidates, and the heavy model on the
  candidates that the settings' routing policy (serving/routing.py) routes. Returns
  `scores` float32 [N]: the final ranking key that the policy combines, (N - rank) / N (an
  order, not a probability);
  `top_indices` int32 [min(k_out, N)]: candidate indices by descending score;
  `light_scores` float32 [N]: light click probabilities;
  `heavy_scores` float32 [N]: heavy click probabilities of routed candidates, 0 elsewhere;
  `routed` bool [N].
- `light`, `heavy`: {"scores": [N]} of one model on every candidate.
- `item_embeddings`: the item features alone -> {"embeddings": [N, D]}, the light item tower,
  for serving systems that precompute and cache item embeddings.
- `score_examples`: serialized raw tf.Examples, one per candidate, each with every feature ->
  {"light_scores", "heavy_scores"} (for TFMA and TF Serving warm-up).
- `transform_features`: serialized raw tf.Examples -> the transformed model features.

A malformed call (N = 0, N over `max_candidates`, a user feature with more than one row, item
features of different lengths) fails with InvalidArgumentError, which TF Serving answers as
INVALID_ARGUMENT.

`assets.extra/hap_cascade.json` records the settings, the feature set and the FLOPs per part.
"""
from __future__ import annotations

import tensorflow as tf

from hap.data import contract as c
from hap.serving import request as rq
from hap.serving import routing
from hap.serving.policy import CascadeSettings  # noqa: F401  (this module's API too)


# The signatures by what they take: a request, the item features alone, or serialized tf.Examples.
REQUEST_SIGNATURES = ("serving_default", "cascade", "light", "heavy")
ITEM_SIGNATURES = ("item_embeddings",)
EXAMPLE_SIGNATURES = ("score_examples", "transform_features")

# Written beside the warm-up requests: the settings, the feature set and the per-part FLOPs
# (serving/flops.py) of the assembled model, for benchmarks and evaluation.
INFO_FILE = "hap_cascade.json"


def _present(x: tf.Tensor, kind: str) -> tf.Tensor:
    if kind == c.NUMERIC:
        return tf.logical_not(tf.math.is_nan(x))
    return tf.not_equal(x, rq.MISSING_TOKEN)


def to_raw_features(request: dict, features: c.FeatureSet, raw_spec: dict) -> dict:
    """Dense request tensors as the Transform graph takes them from parsed tf.Examples: a
    VarLenFeature becomes a SparseTensor without the missing values, a FixedLenFeature stays
    dense."""
    out = {}
    for name, x in request.items():
        feature_spec = raw_spec[name]
        if isinstance(feature_spec, tf.io.FixedLenFeature):
            out[name] = tf.reshape(x, [-1] + list(feature_spec.shape))
            continue
        dense = x if features[name].kind == c.SEQUENCE else x[:, tf.newaxis]
        indices = tf.where(_present(dense, features[name].kind))
        out[name] = tf.SparseTensor(indices, tf.gather_nd(dense, indices), tf.shape(dense, out_type=tf.int64))
    return out


def _counted_rows(x: tf.Tensor) -> tf.Tensor:
    """Rows of a string [B] tensor, counted from its values. The signature declares user features
    [1], which makes tf.shape a constant 1 in the graph, and neither a restored function nor TF
    Serving checks fed shapes against the signature: only the data tells."""
    return tf.shape(tf.where(tf.strings.length(x) >= 0))[0]


class CascadeModule(tf.Module):
    """The combined model; `light` and `heavy` are the Trainer's Keras models (rebuilt with
    `tf.keras.models.load_model`), `tft_layer` the Transform graph's serving layer."""

    def __init__(self, light, heavy, tft_layer, raw_spec: dict, features: c.FeatureSet,
                 settings: CascadeSettings = CascadeSettings()):
        super().__init__(name="hap_cascade")
        # The Keras models are saved as their variables, not as Keras objects: a Keras model in
        # a SavedModel brings a traced function of every layer, which no signature calls and
        # every load restores (decision 0019).
        self.light, self.heavy = self._no_dependency(light), self._no_dependency(heavy)
        self.light_variables, self.heavy_variables = (list(m.variables) if m is not None else [] for m in (light, heavy))
        self.tft_layer = tft_layer
        self._raw_spec = {n: raw_spec[n] for n in features.names}
        self._features = features
        self._settings = settings
        self._layout = rq.RequestLayout(features)
        self._request_names = tuple(f.name for f in self._layout.request_features)
        self._candidate_names = tuple(f.name for f in self._layout.candidate_features)
        self._request_categoricals = tuple(f.name for f in self._layout.request_features if f.kind == c.CATEGORICAL)
        self._numerics = tuple(f.name for f in features.features if f.kind == c.NUMERIC)

    # -- graph pieces --------------------------------------------------------------------------

    def _transform(self, request: dict) -> dict:
        return self.tft_layer(to_raw_features(request, self._features, self._raw_spec))

    def _checked_size(self, request: dict) -> tf.Tensor:
        """N, after asserting the request's shapes; the asserts run before any model does."""
        first = self._candidate_names[0]
        n = tf.shape(request[first])[0]
        checks = [
            tf.debugging.assert_greater(n, 0, message="the request has no candidates (N = 0)"),
            tf.debugging.assert_less_equal(
                n, self._settings.max_candidates,
                message=f"too many candidates: N must be at most {self._settings.max_candidates}"),
        ]
        for name in self._request_categoricals:
            checks.append(tf.debugging.assert_equal(
                _counted_rows(request[name]), 1,
                message=f"{name}: a user or context feature has one row per request (is server-side "
                        "batching merging requests?)"))
        for name in self._candidate_names[1:]:
            checks.append(tf.debugging.assert_equal(
                tf.shape(request[name])[0], n, message=f"{name}: every item and cross feature needs N = "
                                                        f"len({first}) rows"))
        with tf.control_dependencies(checks + self._finite_checks(request)):
            return tf.identity(n)

    def _finite_checks(self, request: dict) -> list:
        """An infinite numeric, or a finite one beyond the contract's bound |x| <= 1e18, is
        refused, as the data contract refuses it in a dataset (NaN is the request's missing
        value): z-scored, it would saturate every score it reaches, ranking the candidates by
        nothing (a user's) or putting one first (a candidate's)."""
        return [tf.debugging.assert_equal(
                    tf.reduce_any(tf.abs(request[name]) > c.MAX_ABS_NUMERIC), False,
                    message=f"{name}: a numeric value is infinite or beyond |x| <= {c.MAX_ABS_NUMERIC:.0e}; send a "
                            "finite number within it, or NaN for a missing value")
                for name in self._numerics if name in request]

    def _split(self, request: dict):
        n = self._checked_size(request)
        with tf.control_dependencies([n]):
            user = self._transform({k: request[k] for k in self._request_names})
            items = self._transform({k: request[k] for k in self._candidate_names})
        return n, user, items

    def _heavy_logits(self, user: dict, items: dict, rows: tf.Tensor) -> tf.Tensor:
        """Heavy logits of the candidates at `rows`, the request's user row beside each."""
        return self.heavy.logits_for_one_request(user, {k: tf.gather(v, rows) for k, v in items.items()})

    def _light_logits(self, user: dict, items: dict, with_router: bool = False):
        """The light logits [N], and the difficulty router's [N] (None unless `with_router`)."""
        u, v = self.light.user_embedding(user), self.light.item_embedding(items)
        router = self.light.router_logits_from_embeddings(u, v) if with_router else None
        return self.light.score_from_embeddings(u, v), router

    # -- signatures ----------------------------------------------------------------------------

    def cascade(self, request: dict) -> dict:
        n, user, items = self._split(request)
        policy = self._settings.routing
        light_logits, router_logits = self._light_logits(user, items, with_router=policy.kind == routing.LEARNED)
        # Logits, not probabilities: float32 sigmoids of large logits tie where the logits do not.
        routed = routing.routed_mask(policy, light_logits, router_logits)
        rows = tf.cast(tf.where(routed)[:, 0], tf.int32)
        heavy_logits = tf.scatter_nd(rows[:, tf.newaxis], self._heavy_logits(user, items, rows), [n])
        scores = routing.combine(policy, light_logits, heavy_logits, routed)
        top = tf.math.top_k(scores, tf.minimum(self._settings.k_out, n)).indices
        return {"scores": scores, "top_indices": top, "light_scores": tf.sigmoid(light_logits),
                "heavy_scores": tf.where(routed, tf.sigmoid(heavy_logits), 0.0), "routed": routed}

    def light_logits(self, request: dict) -> dict:
        """The light model's logits and its difficulty router's (`router_logits`)."""
        _, user, items = self._split(request)
        logits, router = self._light_logits(user, items, with_router=True)
        return {"logits": logits, "router_logits": router}

    def heavy_logits(self, request: dict) -> dict:
        n, user, items = self._split(request)
        return {"logits": self._heavy_logits(user, items, tf.range(n))}

    def light_scores(self, request: dict) -> dict:
        return {"scores": tf.sigmoid(self.light_logits(request)["logits"])}

    def heavy_scores(self, request: dict) -> dict:
        return {"scores": tf.sigmoid(self.heavy_logits(request)["logits"])}

    def item_embeddings(self, items: dict) -> dict:
        with tf.control_dependencies(self._finite_checks(items)):
            return {"embeddings": self.light.item_embedding(self._transform(items))}

    def _parse(self, serialized: tf.Tensor) -> dict:
        return self.tft_layer(tf.io.parse_example(serialized, self._raw_spec))

    def score_examples(self, serialized: tf.Tensor) -> dict:
        transformed = self._parse(serialized)
        return {"light_scores": tf.sigmoid(self.light(transformed, training=False)),
                "heavy_scores": tf.sigmoid(self.heavy(transformed, training=False))}

    def transform_features(self, serialized: tf.Tensor) -> dict:
        return self._parse(serialized)

    def signatures(self) -> dict:
        request = self._layout.signature()
        items = self._layout.signature(roles=(c.ITEM,))
        examples = [tf.TensorSpec([None], tf.string, name="examples")]

        def concrete(method, spec):
            # Without AutoGraph, as every graph function of the models (models/training.py).
            return tf.function(method, input_signature=spec, autograph=False).get_concrete_function()

        cascade = concrete(self.cascade, [request])
        return {
            "serving_default": cascade,
            "cascade": cascade,
            "light": concrete(self.light_scores, [request]),
            "heavy": concrete(self.heavy_scores, [request]),
            "item_embeddings": concrete(self.item_embeddings, [items]),
            "score_examples": concrete(self.score_examples, examples),
            "transform_features": concrete(self.transform_features, examples),
        }

    def save(self, export_dir: str) -> None:
        tf.saved_model.save(self, export_dir, signatures=self.signatures())
