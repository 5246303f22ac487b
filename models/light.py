"""The light pre-ranking model: a TFRS-style two tower network with a small head.

The user tower reads user and context features only, so a request computes it once; the item
tower reads item features only, so item embeddings can be precomputed for the whole pool. The
head scores a (user, item) pair from the two embeddings alone. Cross-role features and attention
from the candidate to the history would tie the towers together per candidate, which is what
the heavy model is for, so the light model uses neither: it mean-pools every sequence.
"""
from __future__ import annotations

import tensorflow as tf

from hap.models import layers
from hap.models import transformed
from hap.models.hparams import LightConfig




class Tower(tf.keras.layers.Layer):
    """Embeds one feature group, mean-pools its sequences, and maps the concatenation to D dims.

    The last layer is linear so the embedding is not confined to the positive orthant, where
    the head's u * v term could not express a negative affinity.
    """

    def __init__(self, model_inputs: transformed.ModelInputs, features, tables, config: LightConfig, **kwargs):
        super().__init__(**kwargs)
        self.embed = layers.FeatureEmbedding(model_inputs, features, config.embedding_dim, tables=tables)
        self.pools = {f.name: layers.MaskedMeanPool(name=f"pool_{f.name}") for f in self.embed.sequences}
        self.mlp = layers.MLP(config.tower_units)
        self.project = tf.keras.layers.Dense(config.output_dim)

    def call(self, inputs):
        e = self.embed(inputs)
        parts = [e["categorical"][f.name] for f in self.embed.categorical]
        parts += [self.pools[f.name](e["sequence"][f.name], e["sequence_mask"][f.name]) for f in self.embed.sequences]
        parts.append(e["numeric"])
        return self.project(self.mlp(tf.concat(parts, axis=-1)))


@tf.keras.utils.register_keras_serializable(package="hap")
class LightModel(layers.FeatureDictModel):
    """Two tower pre-ranking model; `call(features)` returns click logits, float32 [B].

    `features` is a dict of the tensors described in `models/transformed.py`; keys the model does not
    use (training-only outputs, cross features) are ignored.
    """

    config_class = LightConfig

    def __init__(self, model_inputs: transformed.ModelInputs, config: LightConfig = LightConfig(), **kwargs):
        user_side, item_side = model_inputs.user_side, model_inputs.item_side
        super().__init__(model_inputs, config, [f.name for f in user_side + item_side], **kwargs)
        self.user_names = tuple(f.name for f in user_side)
        self.item_names = tuple(f.name for f in item_side)
        # One table per vocabulary across both towers: the user's click history and the
        # candidate's item_id then live in one space.
        tables = layers.embedding_tables(model_inputs, user_side + item_side, config.embedding_dim, config.embedding_init)
        self.user_tower = Tower(model_inputs, user_side, tables, config, name="user_tower")
        self.item_tower = Tower(model_inputs, item_side, tables, config, name="item_tower")
        self.head = layers.MLP(config.head_units, name="head")
        self.logit = tf.keras.layers.Dense(1, name="logit")
        # The learned difficulty router (serving/routing.py's `learned` policy), trained by
        # models/difficulty_router.py; `call` builds it, so every saved light model carries it.
        self.router = tf.keras.layers.Dense(1, name="router")

    def user_embedding(self, features) -> tf.Tensor:
        """u [B, D], from user and context features only."""
        return self.user_tower({n: features[n] for n in self.user_names})

    def item_embedding(self, features) -> tf.Tensor:
        """v [B, D], from item features only."""
        return self.item_tower({n: features[n] for n in self.item_names})

    def score_from_embeddings(self, u, v) -> tf.Tensor:
        """Logits [B] of pairs (u[i], v[i]); u may be [1, D] to score one user against B items."""
        u = tf.broadcast_to(u, tf.shape(v))
        return tf.squeeze(self.logit(self.head(tf.concat([u, v, u * v], axis=-1))), axis=-1)

    def router_logits_from_embeddings(self, u, v) -> tf.Tensor:
        """The router's logits [B] that each pair is a hard candidate: a linear head over the
        same [u, v, u * v] as the scoring head, behind a stop-gradient, so training it never
        moves the towers and the light scores stay what the light loss made them."""
        u = tf.broadcast_to(u, tf.shape(v))
        return tf.squeeze(self.router(tf.stop_gradient(tf.concat([u, v, u * v], axis=-1))), axis=-1)

    def router_logits(self, features) -> tf.Tensor:
        return self.router_logits_from_embeddings(self.user_embedding(features), self.item_embedding(features))

    def call(self, features, training=None):
        u, v = self.user_embedding(features), self.item_embedding(features)
        if not self.router.built:
            # Built with the model's other layers, under its name (light_model/router/...): built
            # in __init__, outside any call, its weights would be named "kernel" and "bias" alone.
            self.router_logits_from_embeddings(u, v)
        return self.score_from_embeddings(u, v)
