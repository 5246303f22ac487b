"""Building blocks shared by the light and heavy models.

Every layer here reads the tensors described in `models/transformed.py`: categorical features as int64
indices [B], numeric features as float32 [B], sequences as int64 indices [B, max_len] padded
with `transformed.PAD`.
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf

from hap.data import contract as c
from hap.models import transformed
# How an id's embedding starts: models/hparams.py.
from hap.models.hparams import EMBEDDING_INIT, EMBEDDING_INITS, check_embedding_init  # noqa: F401  (tests read them here)

# Keeps masked attention scores finite: an all-padding row then softmaxes to a uniform (later
# zeroed) distribution instead of the NaN that -inf everywhere would give.
_MASKED_SCORE = -1e9


def embedding_tables(model_inputs: transformed.ModelInputs, features, dim: int,
                     init: str = EMBEDDING_INIT) -> dict[str, tf.keras.layers.Embedding]:
    """One embedding table per vocabulary the categorical and sequence `features` index into,
    its rows initialised by `init`: "uniform" is Keras' default, U(-0.05, 0.05); "zeros" starts
    every id at the zero vector (the models' configs say why it is their default)."""
    check_embedding_init(init)
    names = sorted({transformed.vocabulary_name(f) for f in features if f.kind in (c.CATEGORICAL, c.SEQUENCE)})
    return {
        n: tf.keras.layers.Embedding(model_inputs.vocab_sizes[n], dim, embeddings_initializer=init,
                                     name=f"embedding_{n}")
        for n in names
    }


class FeatureEmbedding(tf.keras.layers.Layer):
    """Looks up the embeddings of a group of features.

    Tables are keyed by `transformed.vocabulary_name`, so a sequence and its target feature (a click
    history and item_id) read the same table. Pass `tables` (from `embedding_tables`) to share
    them with another FeatureEmbedding, as the light model's two towers do.

    `call(inputs)` reads only this group's features from `inputs` and returns a dict:
    - "categorical": {name: float32 [B, dim]} per categorical feature,
    - "sequence": {name: float32 [B, max_len, dim]} per sequence feature,
    - "sequence_mask": {name: bool [B, max_len]}, False at padding,
    - "numeric": float32 [B, n], the group's numeric features in feature-set order ([B, 0]
      when it has none, so callers can always concatenate it).
    """

    def __init__(self, model_inputs: transformed.ModelInputs, features, dim: int, tables=None, init: str = EMBEDDING_INIT,
                 **kwargs):
        super().__init__(**kwargs)
        features = tuple(features)
        if not features:
            raise ValueError("FeatureEmbedding needs at least one feature")
        self._first = features[0].name
        self.categorical = tuple(f for f in features if f.kind == c.CATEGORICAL)
        self.numeric = tuple(f for f in features if f.kind == c.NUMERIC)
        self.sequences = tuple(f for f in features if f.kind == c.SEQUENCE)
        self.tables = tables if tables is not None else embedding_tables(model_inputs, features, dim, init)

    def lookup(self, feature: c.Feature, ids: tf.Tensor) -> tf.Tensor:
        return self.tables[transformed.vocabulary_name(feature)](ids)

    def call(self, inputs):
        if self.numeric:
            numeric = tf.stack([tf.cast(inputs[f.name], tf.float32) for f in self.numeric], axis=-1)
        else:
            batch = tf.shape(inputs[self._first])[0]
            numeric = tf.zeros([batch, 0], tf.float32)
        return {
            "categorical": {f.name: self.lookup(f, inputs[f.name]) for f in self.categorical},
            "sequence": {f.name: self.lookup(f, inputs[f.name]) for f in self.sequences},
            "sequence_mask": {f.name: tf.not_equal(inputs[f.name], transformed.PAD) for f in self.sequences},
            "numeric": numeric,
        }


class MaskedMeanPool(tf.keras.layers.Layer):
    """Mean of a sequence's embeddings [B, L, d] over its non-padding positions -> [B, d].

    An all-padding sequence (an empty history) pools to zeros.
    """

    def call(self, embeddings, mask):
        weights = tf.cast(mask, embeddings.dtype)[..., tf.newaxis]
        count = tf.reduce_sum(weights, axis=1)
        return tf.reduce_sum(embeddings * weights, axis=1) / tf.maximum(count, 1.0)


# The hidden layers' initial bias. Positive, so that every ReLU starts active: a tower whose
# inputs are all zero-initialised embeddings (a feature set without numeric features) would
# otherwise start at ReLU's kink, where TensorFlow's gradient is 0, and never learn.
RELU_BIAS = 0.01


class MLP(tf.keras.layers.Layer):
    """Dense + ReLU layers of the given widths; a model adds its own linear output layer."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.dense_layers = [
            tf.keras.layers.Dense(u, activation="relu", bias_initializer=tf.keras.initializers.Constant(RELU_BIAS))
            for u in units
        ]

    def call(self, x):
        for layer in self.dense_layers:
            x = layer(x)
        return x


class TargetAttention(tf.keras.layers.Layer):
    """DIN-style attention of a candidate embedding over a sequence of embeddings.

    The score of position j is a small MLP over [q, k_j, q - k_j, q * k_j], so it can learn
    similarity measures a dot product cannot. Scores are softmaxed over the non-padding
    positions and the output is the weighted sum of the keys: a soft max-affinity of the
    candidate to the history, which mean pooling cannot express. Padded positions get weight 0
    exactly, so their embeddings never reach the output, and an all-padding sequence yields zeros.

    `hidden_units` are the widths of the scoring MLP's hidden layers.
    """

    def __init__(self, hidden_units=(32,), **kwargs):
        super().__init__(**kwargs)
        self.hidden_units = tuple(hidden_units)
        self.scorer = MLP(self.hidden_units)
        self.score = tf.keras.layers.Dense(1)

    def attention_weights(self, query, keys, mask):
        """Weights [B, L] over the sequence; zero at padding, summing to 1 otherwise."""
        q = tf.broadcast_to(query[:, tf.newaxis, :], tf.shape(keys))
        scores = tf.squeeze(self.score(self.scorer(tf.concat([q, keys, q - keys, q * keys], axis=-1))), -1)
        weights = tf.nn.softmax(tf.where(mask, scores, _MASKED_SCORE), axis=-1)
        return weights * tf.cast(mask, weights.dtype)

    def call(self, query, keys, mask):
        """query [B, d], keys [B, L, d], mask bool [B, L] (False at padding) -> [B, d]."""
        weights = self.attention_weights(query, keys, mask)
        return tf.reduce_sum(keys * weights[..., tf.newaxis], axis=1)

    def attend_shared(self, query, keys, mask):
        """`call` for B queries over one sequence they all share (a request's candidates over its
        user's history): keys [1, L, d], mask [1, L] -> [B, d], equal to `call` on the sequence
        repeated B times up to float rounding.

        The first scoring layer is linear in its input [q, k, q - k, q * k]: at position l its
        pre-activation is q (M_l) + k_l (Wk - Wd) + b, with M_l = diag(k_l) Wp + Wq + Wd, which
        depends on the position alone. So all B x L pre-activations are one matrix product of
        the queries (with a 1 appended) and the L matrices M_l (with their constant row), built
        once per request: no [B, L, 4d] concatenation and no broadcast sums (decision 0020)."""
        first, rest = ((self.scorer.dense_layers[0], self.scorer.dense_layers[1:] + [self.score])
                       if self.scorer.dense_layers else (self.score, []))
        d, units = query.shape[-1], first.units
        w_q, w_k, w_d, w_p = (first.kernel[i * d:(i + 1) * d] for i in range(4))
        key = keys[0]
        length = tf.shape(key)[0]
        per_position = key[:, :, tf.newaxis] * w_p + (w_q + w_d)                        # [L, d, units]
        constant = tf.matmul(key, w_k - w_d) + first.bias                                # [L, units]
        blocks = tf.concat([per_position, constant[:, tf.newaxis, :]], axis=1)          # [L, d + 1, units]
        blocks = tf.reshape(tf.transpose(blocks, [1, 0, 2]), [d + 1, length * units])
        queries = tf.concat([query, tf.ones_like(query[:, :1])], axis=1)                 # [B, d + 1]
        h = first.activation(tf.reshape(tf.matmul(queries, blocks), [-1, length, units]))
        for layer in rest:
            h = layer(h)
        scores = tf.squeeze(h, -1)
        weights = tf.nn.softmax(tf.where(mask, scores, _MASKED_SCORE), axis=-1) * tf.cast(mask, scores.dtype)
        return tf.matmul(weights, key)


class FeatureDictModel(tf.keras.Model):
    """A model built from a ModelInputs and a frozen hyper-parameter dataclass, fed a dict of
    tensors of which it keeps only the features it was built on.

    Filtering in `__call__`, before Keras records the input signature of the first call, lets
    training batches carry labels, sample groups and request keys while the saved model's call
    signature lists exactly the model's features.

    Subclasses are registered as Keras serializables and carry their inputs and hyper-parameters
    in `get_config`, so `tf.keras.models.load_model` rebuilds the subclass itself, with its
    extra methods (the light model's towers), rather than a generic revived model.
    `config_class` names the subclass's hyper-parameter dataclass.
    """

    config_class: type = None

    def __init__(self, model_inputs: transformed.ModelInputs, config, feature_names, **kwargs):
        super().__init__(**kwargs)
        self.model_inputs = model_inputs
        self.config = config
        self.feature_names = tuple(feature_names)

    def __call__(self, features, *args, **kwargs):
        return super().__call__({n: features[n] for n in self.feature_names}, *args, **kwargs)

    def get_config(self):
        return {
            "name": self.name,
            "features": [dataclasses.asdict(f) for f in self.model_inputs.all_features],
            "vocab_sizes": {n: int(v) for n, v in self.model_inputs.vocab_sizes.items()},
            "config": dataclasses.asdict(self.config),
        }

    @classmethod
    def from_config(cls, config):
        features = c.FeatureSet(tuple(c.Feature(**f) for f in config["features"]))
        # JSON turned the dataclass's tuples into lists.
        hparams = {k: tuple(v) if isinstance(v, list) else v for k, v in config["config"].items()}
        model_inputs = transformed.ModelInputs(features, dict(config["vocab_sizes"]))
        return cls(model_inputs, cls.config_class(**hparams), name=config["name"])
