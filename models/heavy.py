"""The heavy pre-ranking model: every feature, target attention and DCN-v2 feature crosses.

It re-scores the candidates the light model finds hard, so it may spend per-candidate work the
two towers cannot: cross-role features (user x item statistics), attention from the candidate
to the user's histories, and explicit crosses between all feature embeddings.
"""
from __future__ import annotations

import tensorflow as tf
import tensorflow_recommenders as tfrs

from hap.models import layers
from hap.models import transformed
from hap.models.hparams import HeavyConfig




@tf.keras.utils.register_keras_serializable(package="hap")
class HeavyModel(layers.FeatureDictModel):
    """Cross-feature pre-ranking model; `call(features)` returns click logits, float32 [B].

    Every categorical feature is embedded; a sequence with a `target` is summarised by target
    attention of the candidate's target embedding over it (the two share a table), a sequence
    without one is mean-pooled; numeric features join as they are. Extra keys in `features` are
    ignored.
    """

    config_class = HeavyConfig

    def __init__(self, model_inputs: transformed.ModelInputs, config: HeavyConfig = HeavyConfig(), **kwargs):
        features = model_inputs.all_features
        super().__init__(model_inputs, config, [f.name for f in features], **kwargs)
        self.embed = layers.FeatureEmbedding(model_inputs, features, config.embedding_dim, init=config.embedding_init)
        self.attention = {
            f.name: layers.TargetAttention(config.attention_units, name=f"attention_{f.name}")
            for f in self.embed.sequences if f.target
        }
        self.pools = {
            f.name: layers.MaskedMeanPool(name=f"pool_{f.name}") for f in self.embed.sequences if not f.target
        }
        self.crosses = [
            tfrs.layers.dcn.Cross(projection_dim=config.cross_projection_dim, name=f"cross_{i}")
            for i in range(config.cross_layers)
        ]
        self.deep = layers.MLP(config.deep_units, name="deep")
        self.logit = tf.keras.layers.Dense(1, name="logit")

    def call(self, features, training=None):
        return self._logits(features)

    def logits_for_one_request(self, user: dict, candidates: dict) -> tf.Tensor:
        """Logits [K] of one request's K candidates: `user` holds its user and context features,
        one row, `candidates` the item and cross features, K rows. Equal to `call` on the user's
        row beside each candidate up to float rounding; the user's histories that candidates
        attend over are embedded once per request and attended over without repeating them per
        candidate (TargetAttention.attend_shared, decision 0020). The rest of the user's row, a
        few ids and numbers, is repeated."""
        with tf.name_scope(self.name):  # the profile (benchmarks/serving_profile.py) finds its ops by it
            return self._logits_for_one_request(user, candidates)

    def _logits_for_one_request(self, user: dict, candidates: dict) -> tf.Tensor:
        rows = tf.shape(next(iter(candidates.values())))[0]
        attended = frozenset(f.name for f in self.embed.sequences if f.target and f.name in user)
        features = {**candidates, **{name: value if name in attended else tf.repeat(value, rows, axis=0)
                                     for name, value in user.items()}}
        return self._logits(features, attended)

    def _logits(self, features, attended: frozenset = frozenset()) -> tf.Tensor:
        """Logits of `features`' rows; the sequences named in `attended` have one row, which every
        row attends over."""
        e = self.embed(features)
        parts = [e["categorical"][f.name] for f in self.embed.categorical]
        for f in self.embed.sequences:
            seq, mask = e["sequence"][f.name], e["sequence_mask"][f.name]
            if f.name in attended:
                parts.append(self.attention[f.name].attend_shared(e["categorical"][f.target], seq, mask))
            elif f.target:
                parts.append(self.attention[f.name](e["categorical"][f.target], seq, mask))
            else:
                parts.append(self.pools[f.name](seq, mask))
        parts.append(e["numeric"])
        x0 = tf.concat(parts, axis=-1)
        x = x0
        for cross in self.crosses:
            x = cross(x0, x)
        return tf.squeeze(self.logit(self.deep(x)), axis=-1)
