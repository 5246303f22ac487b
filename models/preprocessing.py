"""Transform's `preprocessing_fn`: canonical examples in, the tensors of `models/transformed.py` out.

The feature set is not fixed: it travels in the Transform component's `custom_config` (see
`make_custom_config`), so one module serves every dataset that follows the contract.

Depending on its TFDV schema, a column arrives as a dense Tensor ([B] or [B, 1], a required
column parsed with a fixed shape) or as a SparseTensor [B, None] (an optional column, a sequence,
or any column of a schema without shapes, such as `schema/derive.py` writes). Every column goes
through `_dense` or `_truncated`, which accept both.
"""
from __future__ import annotations

import tensorflow as tf
import tensorflow_transform as tft

from hap.data import contract as c
from hap.data.sample_routing import HARD_GROUPS
from hap.models import transformed

DEFAULT_SETTINGS = {
    "vocab_top_k": 100_000,
    "rank_cutoff": c.RANK_CUTOFF,
    "prerank_cutoff": c.PRERANK_CUTOFF,
}
MISSING = b""


# Keys of the model configuration that Transform and both Trainers share: the features and
# preprocessing settings, and the hash of the model code that invalidates TFX's cache.
CODE_FINGERPRINT = "code_fingerprint"
MODEL_CONFIG_KEYS = ("features", *DEFAULT_SETTINGS, CODE_FINGERPRINT)


def make_custom_config(feature_set: c.FeatureSet, **settings) -> dict:
    """The Transform component's `custom_config` for `feature_set` (JSON-serialisable).

    `settings` overrides `DEFAULT_SETTINGS` (vocab_top_k, rank_cutoff, prerank_cutoff).
    """
    unknown = set(settings) - set(DEFAULT_SETTINGS)
    if unknown:
        raise TypeError(f"unknown preprocessing settings: {', '.join(sorted(unknown))}")
    return {"features": [f.to_yaml_dict() for f in feature_set.listed], **DEFAULT_SETTINGS, **settings}


def feature_set_from_config(custom_config: dict) -> c.FeatureSet:
    return c.parse_features({"version": 1, "features": custom_config.get("features")}, "custom_config")


def sample_group(source: tf.Tensor, click: tf.Tensor) -> tf.Tensor:
    """int64 index into `contract.SAMPLE_GROUPS` of string `source` and int `click`.

    A source outside the contract counts as global (GN), the easiest group.
    """
    g = transformed.GROUP_INDEX
    group = tf.fill(tf.shape(source), tf.constant(g[c.GN], tf.int64))
    for name, negative_group in c.GROUP_OF_SOURCE.items():
        group = tf.where(tf.equal(source, name), tf.constant(g[negative_group], tf.int64), group)
    exposed = tf.where(tf.cast(click, tf.bool), tf.constant(g[c.EP], tf.int64), tf.constant(g[c.EN], tf.int64))
    return tf.where(tf.equal(source, c.EXPOSED), exposed, group)


def difficulty(source, click, prerank_pos, rank_pos, expose_pos, rank_cutoff, prerank_cutoff):
    """float32 hardness in [0, 1] of a sample: the closer a candidate came to being shown, the
    harder it is to tell from a positive.

    - exposed (clicked or not): 1.0, whatever `click` and `expose_pos`: it reached the user;
    - ranking, at rank_pos r: 0.5 + 0.5 * rank_cutoff / (max(r, rank_cutoff) + 1), in (0.5, 1);
      a ranking negative just below the cut-off is nearly as hard as an exposed one;
    - preranking, at prerank_pos p: 0.25 + 0.25 * prerank_cutoff / (max(p, prerank_cutoff) + 1),
      in (0.25, 0.5);
    - global, or a source outside the contract: 0.0, unless it has a pre-ranking position
      (prerank_pos >= 0, the random item was also retrieved), then as preranking.

    A missing position (-1) is below every cut-off, so it takes the stage's highest value.
    `click` and `expose_pos` are part of the signature so callers pass the whole funnel trace;
    the rule does not use them.
    """
    del click, expose_pos
    p = tf.cast(prerank_pos, tf.float32)
    r = tf.cast(rank_pos, tf.float32)
    ranked = 0.5 + 0.5 * rank_cutoff / (tf.maximum(r, float(rank_cutoff)) + 1.0)
    preranked = 0.25 + 0.25 * prerank_cutoff / (tf.maximum(p, float(prerank_cutoff)) + 1.0)
    other = tf.where(p >= 0.0, preranked, tf.zeros_like(p))
    value = tf.where(tf.equal(source, c.PRERANKING), preranked, other)
    value = tf.where(tf.equal(source, c.RANKING), ranked, value)
    return tf.where(tf.equal(source, c.EXPOSED), tf.ones_like(p), value)


def _dense(x, default) -> tf.Tensor:
    """A one-value column as [B], `default` where missing; a SparseTensor keeps its first value."""
    if isinstance(x, tf.SparseTensor):
        batch = x.dense_shape[0]
        first = tf.sparse.slice(x, [0, 0], tf.stack([batch, tf.constant(1, tf.int64)]))
        # The slice of a batch where the column is missing everywhere is [B, 0]: reset to [B, 1].
        first = tf.SparseTensor(first.indices, first.values, tf.stack([batch, tf.constant(1, tf.int64)]))
        x = tf.sparse.to_dense(first, default_value=default)
    return tf.reshape(x, [-1])


def _tokens(x) -> tf.Tensor:
    """All values of a column, flat, for an analyzer; missing ones are simply absent."""
    return x.values if isinstance(x, tf.SparseTensor) else tf.reshape(x, [-1])


def _lookup(tokens: tf.Tensor, vocab) -> tf.Tensor:
    """Spec indices: 0 for the empty (missing) token, vocabulary index + 1, V + 1 out of vocabulary."""
    index = tft.apply_vocabulary(tokens, vocab, num_oov_buckets=1) + 1
    return tf.where(tf.equal(tokens, MISSING), tf.zeros_like(index), index)


def _truncated(x, max_len: int) -> tf.SparseTensor:
    """A sequence's first max_len tokens (the most recent) as a SparseTensor [B, max_len]."""
    if not isinstance(x, tf.SparseTensor):
        x = tf.sparse.from_dense(x)
    shape = tf.stack([x.dense_shape[0], tf.constant(max_len, tf.int64)])
    x = tf.sparse.slice(x, [0, 0], shape)
    return tf.SparseTensor(x.indices, x.values, shape)


def _sequence(x: tf.SparseTensor, max_len: int, vocab) -> tf.Tensor:
    """int64 [B, max_len] indices of a truncated sequence, 0-padded at the end."""
    index = tf.SparseTensor(x.indices, _lookup(x.values, vocab), x.dense_shape)
    return tf.reshape(tf.sparse.to_dense(index, default_value=transformed.PAD), [-1, max_len])


def _vocabularies(features, columns, top_k: int) -> dict:
    """One vocabulary per `transformed.vocabulary_name`, over every column indexing into it: a sequence's
    tokens count towards its target's vocabulary, so a history and its candidate share ids.
    Sequences come truncated: a token past max_len never reaches the model, so it earns no entry."""
    members: dict[str, list] = {}
    for f in features:
        if f.kind in (c.CATEGORICAL, c.SEQUENCE):
            members.setdefault(transformed.vocabulary_name(f), []).append(_tokens(columns[f.name]))
    return {name: tft.vocabulary(tf.concat(tokens, axis=0), top_k=top_k, vocab_filename=name)
            for name, tokens in members.items()}


def _numeric(x) -> tf.Tensor:
    """z-score by the mean and standard deviation of the present values; a missing value becomes
    the mean, so 0. Both statistics are analysed in the same phase; chaining tft.mean into
    tft.scale_to_z_score would add a second analysis phase over the whole data."""
    mean, std = tft.mean(x), tf.sqrt(tft.var(x))
    centred = _dense(x, mean) - mean
    return tf.where(std > 0, centred / tf.where(std > 0, std, 1.0), centred)


def preprocessing_fn(inputs: dict, custom_config: dict) -> dict:
    """TFX Transform entry point; `custom_config` comes from `make_custom_config`."""
    features = feature_set_from_config(custom_config).features
    settings = {**DEFAULT_SETTINGS, **custom_config}
    columns = {f.name: _truncated(inputs[f.name], f.max_len) if f.kind == c.SEQUENCE else inputs[f.name]
               for f in features}
    vocabularies = _vocabularies(features, columns, settings["vocab_top_k"])

    outputs = {}
    for f in features:
        x = columns[f.name]
        if f.kind == c.CATEGORICAL:
            outputs[f.name] = _lookup(_dense(x, MISSING), vocabularies[transformed.vocabulary_name(f)])
        elif f.kind == c.NUMERIC:
            outputs[f.name] = _numeric(x)
        else:
            outputs[f.name] = _sequence(x, f.max_len, vocabularies[transformed.vocabulary_name(f)])

    source = _dense(inputs["source"], MISSING)
    click = _dense(inputs["click"], tf.constant(0, tf.int64))
    group = sample_group(source, click)
    outputs[transformed.LABEL] = tf.cast(click, tf.float32)
    outputs[transformed.SAMPLE_GROUP] = group
    hard = tf.reduce_any(tf.stack([tf.equal(group, transformed.GROUP_INDEX[g]) for g in HARD_GROUPS]), axis=0)
    outputs[transformed.IS_HARD] = tf.cast(hard, tf.int64)
    position = {p: _dense(inputs[p], tf.constant(-1, tf.int64)) for p in c.POSITION_COLUMNS}
    outputs[transformed.DIFFICULTY] = difficulty(
        source, click, position["prerank_pos"], position["rank_pos"], position["expose_pos"],
        settings["rank_cutoff"], settings["prerank_cutoff"])
    outputs[transformed.REQUEST_KEY] = _dense(inputs["request_id"], MISSING)
    outputs[transformed.CONTRAST] = contrast(group)
    return outputs


def contrast(group: tf.Tensor) -> tf.SparseTensor:
    """The contrast groups a sample belongs to, for per-source evaluation slices: an exposed
    positive belongs to all four (it is contrasted with every negative source), a negative to its
    own source's."""
    negatives = list(c.NEGATIVE_GROUPS)
    table = tf.ragged.constant([negatives] + [[g] for g in negatives])
    return tf.gather(table, group).to_sparse()
