"""TFX Trainer entry point (`run_fn`) for the light and the heavy model.

The Trainer's `custom_config` says which model to train and how (see `TrainerSettings`); the
feature set travels in it too, so the same module serves any contract dataset. The exported
SavedModel carries the Transform graph and two signatures:

- `serving_default`: serialized raw canonical tf.Examples -> {"score", "logit"}; Transform runs
  in the graph, so clients send raw feature values.
- `transformed`: serialized transformed tf.Examples -> {"score"}; what the Evaluator (TFMA) reads,
  so evaluation slices on Transform's routing features without re-running Transform.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from hap.data import contract as c
from hap.models import distribute, heavy, light, losses, preprocessing, request_batches, spec, training

LIGHT, HEAVY = "light", "heavy"
# What each model trains on: the heavy model only ever re-scores hard candidates.
TRAINING_GROUPS = {LIGHT: c.SAMPLE_GROUPS, HEAVY: (c.EP, c.EN, c.RN)}
# `TrainerSettings.training_groups`: the role's groups above, or every group. "all" exists for the
# benchmark's uniform-scaling baseline, the heavy model trained as a one-stage pre-ranker.
ROLE_GROUPS, ALL_GROUPS = "default", "all"


@dataclasses.dataclass(frozen=True)
class TrainerSettings:
    role: str = LIGHT
    loss: str = "ghcl"
    epochs: int = 1
    batch_size: int = 1024          # samples per batch, filled with whole requests
    learning_rate: float = 2e-3
    temperature: float = losses.DEFAULT_TEMPERATURE
    seed: int = 0
    conflict_every_n_steps: int = 10
    training_groups: str = ROLE_GROUPS

    def __post_init__(self):
        if self.role not in (LIGHT, HEAVY):
            raise ValueError(f"role must be light or heavy, got {self.role!r}")
        if self.loss not in losses.LOSS_NAMES:
            raise ValueError(f"loss must be one of {losses.LOSS_NAMES}, got {self.loss!r}")
        if self.training_groups not in (ROLE_GROUPS, ALL_GROUPS):
            raise ValueError(f"training_groups must be {ROLE_GROUPS!r} or {ALL_GROUPS!r}, "
                             f"got {self.training_groups!r}")

    @property
    def groups(self) -> tuple[str, ...]:
        """The sample groups this model trains on."""
        return c.SAMPLE_GROUPS if self.training_groups == ALL_GROUPS else TRAINING_GROUPS[self.role]

    @property
    def loss_selection(self) -> str:
        """The `losses.make_loss` role whose sample selection matches `groups`: on every group
        that is the light role's (all four negative sources), whichever model is trained."""
        return LIGHT if self.training_groups == ALL_GROUPS else self.role


def settings_from_config(custom_config: dict) -> TrainerSettings:
    fields = {f.name for f in dataclasses.fields(TrainerSettings)}
    return TrainerSettings(**{k: v for k, v in custom_config.items() if k in fields})


def build_scorer(role: str, model_spec: spec.ModelSpec) -> tf.keras.Model:
    return light.LightModel(model_spec) if role == LIGHT else heavy.HeavyModel(model_spec)


def _keep_groups(arrays: dict[str, np.ndarray], groups: tuple[str, ...]) -> dict[str, np.ndarray]:
    wanted = [spec.GROUP_INDEX[g] for g in groups]
    keep = np.isin(arrays[spec.SAMPLE_GROUP], wanted)
    return {k: v[keep] for k, v in arrays.items()}


def _probe(arrays: dict[str, np.ndarray], requests: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    """A fixed batch of whole requests for the gradient-conflict signal."""
    batcher = request_batches.RequestBatcher(arrays, batch_size=1, seed=seed)
    chosen = np.concatenate(batcher.requests[: min(requests, batcher.num_requests)])
    return {k: v[chosen] for k, v in arrays.items()}


def train(settings: TrainerSettings, model_spec: spec.ModelSpec, train_arrays, eval_arrays, log_dir: str,
          strategy: tf.distribute.Strategy | None = None):
    """Trains a scorer (with `strategy`, default: the current one); returns it with the
    per-epoch AUCs and gradient-conflict history."""
    strategy = strategy or tf.distribute.get_strategy()
    tf.keras.utils.set_random_seed(settings.seed)
    train_arrays = _keep_groups(train_arrays, settings.groups)
    with strategy.scope():
        scorer = build_scorer(settings.role, model_spec)
        extra = {} if settings.loss == "mixed_bce" else {"temperature": settings.temperature}
        loss_fn = losses.make_loss(settings.loss, settings.loss_selection, **extra)
        model = training.RoutedTrainer(scorer, loss_fn)
        model.compile(optimizer=tf.keras.optimizers.Adam(settings.learning_rate))
    batch_size = distribute.per_replica_batch_size(settings.batch_size, strategy.num_replicas_in_sync)
    batcher = request_batches.RequestBatcher(train_arrays, batch_size, seed=settings.seed)
    auc_cb = training.PerSourceAUC(scorer, eval_arrays, log_dir)
    conflict_cb = training.GradientConflict(
        scorer, loss_fn, _probe(train_arrays, seed=settings.seed), log_dir,
        every_n_steps=settings.conflict_every_n_steps,
        negative_groups=tuple(g for g in settings.groups if g != c.EP))
    model.fit(distribute.request_dataset(strategy, batcher, settings.epochs), epochs=settings.epochs,
              steps_per_epoch=batcher.steps_per_epoch(strategy.num_replicas_in_sync),
              callbacks=[tf.keras.callbacks.TensorBoard(log_dir=log_dir, update_freq=20), auc_cb, conflict_cb],
              verbose=2)
    return scorer, {"per_source_auc": auc_cb.history, "gradient_conflict": conflict_cb.history}


def export(scorer: tf.keras.Model, tft_output, features: c.FeatureSet, export_dir: str) -> None:
    scorer.tft_layer = tft_output.transform_features_layer()
    raw_spec = {k: v for k, v in tft_output.raw_feature_spec().items() if k in features.names}
    transformed_spec = tft_output.transformed_feature_spec()

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_raw(serialized):
        transformed = scorer.tft_layer(tf.io.parse_example(serialized, raw_spec))
        logit = scorer(transformed, training=False)
        return {"score": tf.sigmoid(logit), "logit": logit}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_transformed(serialized):
        logit = scorer(tf.io.parse_example(serialized, transformed_spec), training=False)
        return {"score": tf.sigmoid(logit)}

    # Keras' own save (not tf.saved_model.save) also writes the model's config, so the cascade
    # assembler can rebuild the model class with its methods (the light model's towers).
    scorer.save(export_dir, save_format="tf", signatures={
        "serving_default": serve_raw.get_concrete_function(),
        "transformed": serve_transformed.get_concrete_function(),
    })


def run_fn(fn_args) -> None:
    """TFX Trainer entry point."""
    tf_config = distribute.tf_config_from_environment()
    strategy = distribute.strategy_for(tf_config)  # first: before any other TensorFlow op
    model_run_dir = distribute.output_dir(fn_args.model_run_dir, tf_config)
    settings = settings_from_config(fn_args.custom_config)
    features = preprocessing.feature_set_from_config(fn_args.custom_config)
    tft_output = tft.TFTransformOutput(fn_args.transform_output)
    model_spec = spec.ModelSpec.from_transform_output(features, tft_output)
    feature_spec = tft_output.transformed_feature_spec()
    train_arrays = request_batches.load_split(fn_args.train_files, feature_spec)
    eval_arrays = request_batches.load_split(fn_args.eval_files, feature_spec)
    scorer, history = train(settings, model_spec, train_arrays, eval_arrays, model_run_dir, strategy)
    export(scorer, tft_output, features, distribute.output_dir(fn_args.serving_model_dir, tf_config))
    with tf.io.gfile.GFile(os.path.join(model_run_dir, "training_history.json"), "w") as f:
        json.dump({"settings": dataclasses.asdict(settings), **history}, f, indent=1)
