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
import time

import tensorflow as tf
import tensorflow_transform as tft

from hap.data.sample_routing import LIGHT, MEAN_AUC, SampleRouting, routing_of
from hap.models import distribute, heavy, light, losses, preprocessing, request_records, training, transformed


@dataclasses.dataclass(frozen=True)
class TrainerSettings:
    """model: which model to train, "light" or "heavy".
    sample_routing: whose `SampleRouting` to train it with (default: its own). Training the heavy
    model with the light one's routing is the benchmark's uniform-scaling baseline: the heavy
    architecture as a one-stage pre-ranker on every sample group.
    max_epochs, patience: the epoch is chosen by validation. After each epoch the eval split's
    mean per-source AUC (over the model's contrasts) is measured; training stops once it has not
    improved for `patience` epochs, or after `max_epochs`, and the best epoch's weights are kept.
    No dataset-specific epoch count: the simulator's models peak after 1-3 epochs, sparser data
    needs more (README, "Training").
    batch_size: samples per batch on average, filled with whole requests.
    shuffle_requests: the shuffle buffer, in requests; it bounds the input's memory.
    conflict_budget: the share of training time the gradient-conflict probe may take."""

    model: str = LIGHT
    loss: str = "ghcl"
    max_epochs: int = 10
    patience: int = 2
    batch_size: int = 1024
    learning_rate: float = 2e-3
    temperature: float = losses.DEFAULT_TEMPERATURE
    seed: int = 0
    shuffle_requests: int = 10_000
    conflict_budget: float = 0.05
    sample_routing: str = ""

    def __post_init__(self):
        routing_of(self.model)
        routing_of(self.sample_routing or self.model)
        if self.loss not in losses.LOSS_NAMES:
            raise ValueError(f"loss must be one of {losses.LOSS_NAMES}, got {self.loss!r}")
        for name in ("max_epochs", "patience", "batch_size", "shuffle_requests"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")

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


# Requests in the fixed gradient-conflict probe batch (a few thousand samples at the contract's
# request sizes): enough for every source to have samples, small next to an epoch.
PROBE_REQUESTS = 64


def build_scorer(model: str, model_inputs: transformed.ModelInputs) -> tf.keras.Model:
    return light.LightModel(model_inputs) if model == LIGHT else heavy.HeavyModel(model_inputs)


def compiled_trainer(settings: TrainerSettings, model_inputs: transformed.ModelInputs,
                     strategy: tf.distribute.Strategy) -> training.RoutedTrainer:
    """The scorer of `settings.model` wrapped with its loss and optimizer, under `strategy`."""
    with strategy.scope():
        scorer = build_scorer(settings.model, model_inputs)
        extra = {} if settings.loss == "mixed_bce" else {"temperature": settings.temperature}
        model = training.RoutedTrainer(scorer, losses.make_loss(settings.loss, settings.routing, **extra))
        model.compile(optimizer=tf.keras.optimizers.Adam(settings.learning_rate))
    return model


def train(settings: TrainerSettings, model_inputs: transformed.ModelInputs, train_records: request_records.RequestRecords,
          eval_records: request_records.RequestRecords, log_dir: str, strategy: tf.distribute.Strategy | None = None):
    """Trains a scorer (with `strategy`, default: the current one) on streamed request records;
    returns it with its history: per-epoch AUCs, the chosen epoch, the gradient-conflict samples,
    and where the time went (`seconds` in all: the steps, as `conflict_cost["train_seconds"]`,
    the per-epoch evaluation `eval_seconds`, the probe)."""
    strategy = strategy or tf.distribute.get_strategy()
    tf.keras.utils.set_random_seed(settings.seed)
    routing = settings.routing
    train_records = train_records.only(routing.trains_on)
    model = compiled_trainer(settings, model_inputs, strategy)
    scorer, loss_fn = model.scorer, model.loss_fn
    replicas = strategy.num_replicas_in_sync
    requests_per_batch = train_records.requests_per_batch(distribute.per_replica_batch_size(settings.batch_size, replicas))
    auc_cb = training.PerSourceAUC(scorer, eval_records, log_dir, contrasts=routing.contrasts)
    stopping = tf.keras.callbacks.EarlyStopping(monitor=f"val_{MEAN_AUC}", mode="max", patience=settings.patience,
                                                restore_best_weights=True)
    conflict_cb = training.GradientConflict(
        scorer, loss_fn, next(iter(train_records.dataset(PROBE_REQUESTS))), log_dir,
        budget=settings.conflict_budget, negative_groups=routing.contrasts)
    start = time.perf_counter()
    model.fit(distribute.request_dataset(strategy, train_records, requests_per_batch,
                                         shuffle_requests=settings.shuffle_requests, seed=settings.seed),
              epochs=settings.max_epochs, steps_per_epoch=train_records.steps(requests_per_batch, replicas),
              # PerSourceAUC first: it puts the AUCs into the logs that EarlyStopping reads.
              callbacks=[auc_cb, stopping, tf.keras.callbacks.TensorBoard(log_dir=log_dir, update_freq=20), conflict_cb],
              verbose=2)
    seconds = time.perf_counter() - start
    best_epoch = stopping.best_epoch + 1
    with tf.summary.create_file_writer(f"{log_dir}/per_source_auc").as_default(step=best_epoch):
        tf.summary.scalar("chosen_epoch", best_epoch)
    return scorer, {"per_source_auc": auc_cb.history, "chosen_epoch": best_epoch, "epochs_run": len(auc_cb.history),
                    "seconds": seconds, "eval_seconds": auc_cb.seconds, "gradient_conflict": conflict_cb.history,
                    "conflict_cost": conflict_cb.cost}


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
    train_records = request_records.RequestRecords.from_split(fn_args.train_files, feature_spec, features)
    eval_records = request_records.RequestRecords.from_split(fn_args.eval_files, feature_spec, features)
    scorer, history = train(settings, model_inputs, train_records, eval_records, model_run_dir, strategy)
    export(scorer, tft_output, distribute.output_dir(fn_args.serving_model_dir, tf_config))
    with tf.io.gfile.GFile(os.path.join(model_run_dir, "training_history.json"), "w") as f:
        json.dump({"settings": dataclasses.asdict(settings), **history}, f, indent=1)
