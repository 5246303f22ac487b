"""What Transform hands to the models: the names, dtypes and shapes of its outputs.

This module is the interface between `models/preprocessing.py` (which produces these tensors)
and the light and heavy models (which consume them). Every model input keeps its raw feature's
name:

- categorical feature (including user_id, item_id, content_type): int64 [B], an index into the
  feature's vocabulary table: 0 = missing, 1..V = vocabulary entries (most frequent first),
  V + 1 = out of vocabulary. Its embedding table has `vocab_size` = V + 2 rows.
- numeric feature: float32 [B], z-scored over the training data; a missing value becomes 0.0
  (the mean).
- sequence feature: int64 [B, max_len], indices into the vocabulary of its `target` feature (a
  history of item ids shares item_id's table, so the heavy model can attend from the candidate
  to the history), most recent first, padded with 0. Without a target it has its own vocabulary.

Training-only outputs, computed from the contract columns that serving never sees (source,
click, positions); Transform prunes them from a serving graph fed only model inputs:

- `label`: float32 [B], the click.
- `sample_group`: int64 [B], index into `contract.SAMPLE_GROUPS` (0 EP, 1 EN, 2 RN, 3 PRN, 4 GN).
- `is_hard`: int64 [B], 1 for the hard groups (`sample_routing.HARD_GROUPS`: EN and RN).
- `difficulty`: float32 [B] in [0, 1], from the stage positions (see preprocessing.difficulty).
- `request_key`: string [B], the raw request_id, to keep requests whole in batches.
- `contrast`: string [B, None], the contrast groups of a sample (EP: EN, RN, PRN, GN; a negative:
  its own group), so an evaluation slice `contrast: RN` holds the positives and the RN samples.
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf

from hap.data import contract as c

LABEL = "label"
SAMPLE_GROUP = "sample_group"
IS_HARD = "is_hard"
DIFFICULTY = "difficulty"
REQUEST_KEY = "request_key"
CONTRAST = "contrast"

GROUP_INDEX = {g: i for i, g in enumerate(c.SAMPLE_GROUPS)}
PAD = 0


def dense_contrast(contrast: tf.SparseTensor) -> tf.Tensor:
    """`contrast` as a dense string [B, G], each row padded with its own first group: a signature
    returns dense tensors only, and a repeated group is one slice to TFMA, where an empty padding
    string would make a slice of its own."""
    dense = tf.sparse.to_dense(contrast, default_value="")
    return tf.where(tf.equal(dense, ""), dense[:, :1], dense)


def tensor_specs(features, batch: int | None = None) -> dict:
    """TensorSpecs of the model inputs of `features`, as described above."""
    specs = {}
    for f in features:
        if f.kind == c.NUMERIC:
            specs[f.name] = tf.TensorSpec([batch], tf.float32)
        elif f.kind == c.CATEGORICAL:
            specs[f.name] = tf.TensorSpec([batch], tf.int64)
        else:
            specs[f.name] = tf.TensorSpec([batch, f.max_len], tf.int64)
    return specs


def vocabulary_name(feature: c.Feature) -> str:
    """The vocabulary a categorical or sequence feature indexes into."""
    if feature.kind == c.SEQUENCE and feature.target:
        return f"vocab_{feature.target}"
    return f"vocab_{feature.name}"


@dataclasses.dataclass(frozen=True)
class ModelInputs:
    """The feature set and vocabulary sizes a model is built from.

    `vocab_sizes` maps a vocabulary name (see `vocabulary_name`) to its table size V + 2.
    """

    features: c.FeatureSet
    vocab_sizes: dict

    def select(self, roles: tuple[str, ...], kinds: tuple[str, ...] = c.KINDS) -> tuple[c.Feature, ...]:
        return tuple(f for f in self.features.features if f.role in roles and f.kind in kinds)

    @property
    def user_side(self) -> tuple[c.Feature, ...]:
        """What the light model's user tower may use: user and context features."""
        return self.select((c.USER, c.CONTEXT))

    @property
    def item_side(self) -> tuple[c.Feature, ...]:
        """What the light model's item tower may use: item features only."""
        return self.select((c.ITEM,))

    @property
    def all_features(self) -> tuple[c.Feature, ...]:
        return self.features.features

    @classmethod
    def from_transform_output(cls, features: c.FeatureSet, tft_output) -> "ModelInputs":
        names = {vocabulary_name(f) for f in features.features if f.kind in (c.CATEGORICAL, c.SEQUENCE)}
        return cls(features, {n: tft_output.vocabulary_size_by_name(n) + 2 for n in sorted(names)})
