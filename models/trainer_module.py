"""The TFX Trainer's module: `run_fn` trains the light or the heavy model.

The Trainer's `custom_config` says which model to train and how (`TrainerSettings`); the feature
set travels in it too, so the same module serves any contract dataset. Which samples the model
trains on, and how its loss reads them, comes from its `SampleRouting`
(data/sample_routing.py). The exported Keras SavedModel has one signature, `transformed`:
serialized transformed tf.Examples -> {"score"}, what the Evaluator (TFMA) reads, so evaluation
slices on Transform's routing features without re-running Transform. Serving goes through the
cascade SavedModel (serving/cascade.py), which rebuilds the Keras model and adds Transform.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from hap.data.sample_routing import LIGHT, SampleRouting, routing_of
from hap.models import distribute, heavy, light, losses, preprocessing, request_batches, training, transformed


@dataclasses.dataclass(frozen=True)
class TrainerSettings:
    """model: which model to train, "light" or "heavy".
    sample_routing: whose `SampleRouting` to train it with (default: its own). Training the heavy
    model with the light one's routing is the benchmark's uniform-scaling baseline: the heavy
    architecture as a one-stage pre-ranker on every sample group."""

    model: str = LIGHT
    loss: str = "ghcl"
    epochs: int = 1
    batch_size: int = 1024          # samples per batch, filled with whole requests
    learning_rate: float = 2e-3
    temperature: float = losses.DEFAULT_TEMPERATURE
    seed: int = 0
    conflict_every_n_steps: int = 10
    sample_routing: str = ""

    def __post_init__(self):
        routing_of(self.model)
        routing_of(self.sample_routing or self.model)
        if self.loss not in losses.LOSS_NAMES:
            raise ValueError(f"loss must be one of {losses.LOSS_NAMES}, got {self.loss!r}")

    @property
    def routing(self) -> SampleRouting:
        return routing_of(self.sample_routing or self.model)

    @classmethod
    def from_config(cls, custom_config: dict) -> "TrainerSettings":
        """The settings in a Trainer's custom_config; a key that is neither a setting nor part of
        the model configuration (preprocessing.MODEL_CONFIG_KEYS) is an error naming it, so a typo
        such as {"epoch": 3} cannot be dropped silently."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(custom_config) - fields - set(preprocessing.MODEL_CONFIG_KEYS))
        if unknown:
            raise ValueError(f"unknown trainer setting(s) {unknown}; the settings are {sorted(fields)}")
        return cls(**{k: v for k, v in custom_config.items() if k in fields})


def build_scorer(model: str, model_inputs: transformed.ModelInputs) -> tf.keras.Model:
    return light.LightModel(model_inputs) if model == LIGHT else heavy.HeavyModel(model_inputs)


def _keep_groups(arrays: dict[str, np.ndarray], groups: tuple[str, ...]) -> dict[str, np.ndarray]:
    wanted = [transformed.GROUP_INDEX[g] for g in groups]
    keep = np.isin(arrays[transformed.SAMPLE_GROUP], wanted)
    return {k: v[keep] for k, v in arrays.items()}


def _probe(arrays: dict[str, np.ndarray], requests: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    """A fixed batch of whole requests for the gradient-conflict signal."""
    batcher = request_batches.RequestBatcher(arrays, batch_size=1, seed=seed)
    chosen = np.concatenate(batcher.requests[: min(requests, batcher.num_requests)])
    return {k: v[chosen] for k, v in arrays.items()}


def train(settings: TrainerSettings, model_inputs: transformed.ModelInputs, train_arrays, eval_arrays, log_dir: str,
          strategy: tf.distribute.Strategy | None = None):
    """Trains a scorer (with `strategy`, default: the current one); returns it with the
    per-epoch AUCs and gradient-conflict history."""
    strategy = strategy or tf.distribute.get_strategy()
    tf.keras.utils.set_random_seed(settings.seed)
    routing = settings.routing
    train_arrays = _keep_groups(train_arrays, routing.trains_on)
    with strategy.scope():
        scorer = build_scorer(settings.model, model_inputs)
        extra = {} if settings.loss == "mixed_bce" else {"temperature": settings.temperature}
        loss_fn = losses.make_loss(settings.loss, routing, **extra)
        model = training.RoutedTrainer(scorer, loss_fn)
        model.compile(optimizer=tf.keras.optimizers.Adam(settings.learning_rate))
    batch_size = distribute.per_replica_batch_size(settings.batch_size, strategy.num_replicas_in_sync)
    batcher = request_batches.RequestBatcher(train_arrays, batch_size, seed=settings.seed)
    auc_cb = training.PerSourceAUC(scorer, eval_arrays, log_dir)
    conflict_cb = training.GradientConflict(
        scorer, loss_fn, _probe(train_arrays, seed=settings.seed), log_dir,
        every_n_steps=settings.conflict_every_n_steps,
        negative_groups=routing.contrasts)
    model.fit(distribute.request_dataset(strategy, batcher, settings.epochs), epochs=settings.epochs,
              steps_per_epoch=batcher.steps_per_epoch(strategy.num_replicas_in_sync),
              callbacks=[tf.keras.callbacks.TensorBoard(log_dir=log_dir, update_freq=20), auc_cb, conflict_cb],
              verbose=2)
    return scorer, {"per_source_auc": auc_cb.history, "gradient_conflict": conflict_cb.history}


def export(scorer: tf.keras.Model, tft_output, export_dir: str) -> None:
    transformed_spec = tft_output.transformed_feature_spec()

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_transformed(serialized):
        logit = scorer(tf.io.parse_example(serialized, transformed_spec), training=False)
        return {"score": tf.sigmoid(logit)}

    # Keras' own save (not tf.saved_model.save) also writes the model's config, so the cascade
    # assembler can rebuild the model class with its methods (the light model's towers).
    scorer.save(export_dir, save_format="tf", signatures={"transformed": serve_transformed.get_concrete_function()})


def run_fn(fn_args) -> None:
    """TFX Trainer entry point."""
    tf_config = distribute.tf_config_from_environment()
    strategy = distribute.strategy_for(tf_config)  # first: before any other TensorFlow op
    model_run_dir = distribute.output_dir(fn_args.model_run_dir, tf_config)
    settings = TrainerSettings.from_config(fn_args.custom_config)
    features = preprocessing.feature_set_from_config(fn_args.custom_config)
    tft_output = tft.TFTransformOutput(fn_args.transform_output)
    model_inputs = transformed.ModelInputs.from_transform_output(features, tft_output)
    feature_spec = tft_output.transformed_feature_spec()
    train_arrays = request_batches.load_split(fn_args.train_files, feature_spec)
    eval_arrays = request_batches.load_split(fn_args.eval_files, feature_spec)
    scorer, history = train(settings, model_inputs, train_arrays, eval_arrays, model_run_dir, strategy)
    export(scorer, tft_output, distribute.output_dir(fn_args.serving_model_dir, tf_config))
    with tf.io.gfile.GFile(os.path.join(model_run_dir, "training_history.json"), "w") as f:
        json.dump({"settings": dataclasses.asdict(settings), **history}, f, indent=1)
