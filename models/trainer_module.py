"""The TFX Trainer's module: `run_fn` trains the light or the heavy model.

The Trainer's `custom_config` says which model to train and how (`TrainerSettings`); the feature
set travels in it too, so the same module serves any contract dataset. Which samples the model
trains on, and how its loss reads them, comes from its `SampleRouting`
(data/sample_routing.py). The exported Keras SavedModel carries its own Transform, so the
Evaluator (TFMA) scores the raw examples through each model's own vocabularies: a baseline trained
on another day's data is scored as it would serve (docs/decisions/0014-baselines-on-raw-examples.md).
Its signatures, what TFMA reads:
- `score_examples`: serialized raw tf.Examples -> {"score"};
- `transform_features`: serialized raw tf.Examples -> the label and the contrast groups, TFMA's
  preprocessing function for the label and the per-source slices.
Serving goes through the cascade SavedModel (serving/cascade.py), which rebuilds the Keras model.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time

import tensorflow as tf
import tensorflow_transform as tft

from hap.data import contract as c
from hap.data.sample_routing import LIGHT, MEAN_AUC
from hap.models.trainer_settings import TrainerSettings, model_hparams  # noqa: F401  (this module's API too)
from hap.models import (difficulty_router, distribute, heavy, light, losses, preprocessing, request_records, training,
                        transformed)


# Requests in the fixed gradient-conflict probe batch (a few thousand samples at the contract's
# request sizes): enough for every source to have samples, small next to an epoch.
PROBE_REQUESTS = 64


def model_class(model: str) -> type:
    return light.LightModel if model == LIGHT else heavy.HeavyModel


def build_scorer(model: str, model_inputs: transformed.ModelInputs, model_config: dict | None = None) -> tf.keras.Model:
    return model_class(model)(model_inputs, model_hparams(model, model_config or {}))


def compiled_trainer(settings: TrainerSettings, model_inputs: transformed.ModelInputs,
                     strategy: tf.distribute.Strategy) -> training.RoutedTrainer:
    """The scorer of `settings.model` wrapped with its loss and optimizer, under `strategy`."""
    with strategy.scope():
        scorer = build_scorer(settings.model, model_inputs, settings.model_config)
        if settings.model == LIGHT:
            scorer.router.trainable = False  # its own fit follows the model's (difficulty_router)
        extra = {} if settings.loss == "mixed_bce" else {"temperature": settings.temperature}
        model = training.RoutedTrainer(scorer, losses.make_loss(settings.loss, settings.routing, **extra))
        # Under several replicas the loss gathers the replicas' batches of unequal sizes
        # (training.gather_replicas), which TensorFlow's collectives refuse inside Keras'
        # multi-step loop ("Shape mismatch in the collective instance"): one step per call there.
        steps = settings.steps_per_execution if strategy.num_replicas_in_sync == 1 else 1
        model.compile(optimizer=tf.keras.optimizers.Adam(settings.learning_rate), steps_per_execution=steps)
    return model


def validation_requests(eval_records: request_records.RequestRecords, settings: TrainerSettings) -> int:
    """How many eval requests the per-epoch validation reads: those holding about
    `settings.eval_positives` exposed positives at the split's rate, at most `settings.eval_requests`."""
    positives = eval_records.samples_by_group[c.EP]
    wanted = math.ceil(settings.eval_positives * eval_records.requests / positives) if positives else eval_records.requests
    return max(1, min(eval_records.requests, settings.eval_requests, wanted))


def train(settings: TrainerSettings, model_inputs: transformed.ModelInputs, train_records: request_records.RequestRecords,
          eval_records: request_records.RequestRecords, log_dir: str, strategy: tf.distribute.Strategy | None = None, warm_start=None,
          fit_router: bool = True):
    """Trains a scorer (with `strategy`, default: the current one) on streamed request records;
    returns it with its history: per-epoch AUCs, the chosen epoch, the gradient-conflict samples,
    and where the time went (`seconds` in all: the steps, as `conflict_cost["train_seconds"]`,
    the per-epoch evaluation `eval_seconds`, the probe). `fit_router`: fit the light model's
    difficulty router after it (a Tuner's trials do not need it)."""
    strategy = strategy or tf.distribute.get_strategy()
    tf.keras.utils.set_random_seed(settings.seed)
    routing = settings.routing
    train_records = train_records.only(routing.trains_on)
    model = compiled_trainer(settings, model_inputs, strategy)
    warm = warm_start(model.scorer) if warm_start else {}  # run_fn's base model, copied in
    scorer, loss_fn = model.scorer, model.loss_fn
    replicas = strategy.num_replicas_in_sync
    requests_per_batch = train_records.requests_per_batch(distribute.per_replica_batch_size(settings.batch_size, replicas))
    validation = dataclasses.replace(eval_records, requests=validation_requests(eval_records, settings))
    auc_cb = training.PerSourceAUC(scorer, validation, log_dir, contrasts=routing.contrasts)
    stopping = tf.keras.callbacks.EarlyStopping(monitor=f"val_{MEAN_AUC}", mode="max", patience=settings.patience,
                                                restore_best_weights=True)
    probe = next(iter(train_records.dataset(PROBE_REQUESTS)))
    model.create_step_variables(probe)
    conflict_cb = training.GradientConflict(
        scorer, loss_fn, probe, log_dir,
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
    # After early stopping restored the best weights: the router reads the towers as pushed.
    router = difficulty_router.train_router(scorer, train_records, requests_per_batch, settings.router_requests,
                                            log_dir, strategy=strategy) if settings.model == LIGHT and fit_router else {}
    return scorer, {"per_source_auc": auc_cb.history, "chosen_epoch": best_epoch, "epochs_run": len(auc_cb.history),
                    "seconds": seconds, "eval_seconds": auc_cb.seconds, "gradient_conflict": conflict_cb.history,
                    "conflict_cost": conflict_cb.cost, **warm, **router}


def export(scorer: tf.keras.Model, tft_output, export_dir: str) -> None:
    raw_spec = tft_output.raw_feature_spec()
    # Tracked by the model, so the SavedModel holds Transform's graph and vocabularies.
    scorer.tft_layer = tft_output.transform_features_layer()
    examples = [tf.TensorSpec([None], tf.string, name="examples")]

    def transform(serialized):
        return scorer.tft_layer(tf.io.parse_example(serialized, raw_spec))

    @tf.function(input_signature=examples, autograph=False)
    def score_examples(serialized):
        return {"score": tf.sigmoid(scorer(transform(serialized), training=False))}

    @tf.function(input_signature=examples, autograph=False)
    def transform_features(serialized):
        features = transform(serialized)
        return {transformed.LABEL: features[transformed.LABEL],
                transformed.CONTRAST: transformed.dense_contrast(features[transformed.CONTRAST])}

    # Keras' own save (not tf.saved_model.save) also writes the model's config, so the cascade
    # assembler can rebuild the model class with its methods (the light model's towers). Both
    # models are registered Keras classes rebuilt from that config, so the per-layer call traces
    # Keras would add (save_traces) are not needed: they were most of an export's time.
    scorer.save(export_dir, save_format="tf", save_traces=False,
                signatures={"score_examples": score_examples.get_concrete_function(),
                            "transform_features": transform_features.get_concrete_function()})


def run_fn(fn_args) -> None:
    """TFX Trainer entry point."""
    tf_config = distribute.tf_config_from_environment()
    strategy = distribute.strategy_for(tf_config)  # first: before any other TensorFlow op
    with distribute.output_dir(fn_args.model_run_dir, tf_config) as model_run_dir, \
            distribute.output_dir(fn_args.serving_model_dir, tf_config) as serving_dir:
        _train_and_export(fn_args, strategy, model_run_dir, serving_dir)


def _train_and_export(fn_args, strategy, model_run_dir: str, serving_dir: str) -> None:
    settings = TrainerSettings.from_config(fn_args.custom_config)
    # The Tuner's choice (models/tuner_module.py), where the pipeline has a Tuner.
    tuned = (getattr(fn_args, "hyperparameters", None) or {}).get("values", {})
    settings = settings.with_hyperparameters(tuned)
    features = preprocessing.feature_set_from_config(fn_args.custom_config)
    tft_output = tft.TFTransformOutput(fn_args.transform_output)
    model_inputs = transformed.ModelInputs.from_transform_output(features, tft_output)
    feature_spec = tft_output.transformed_feature_spec()
    train_records = request_records.RequestRecords.from_split(fn_args.train_files, feature_spec, features)
    eval_records = request_records.RequestRecords.from_split(fn_args.eval_files, feature_spec, features)
    vocabularies = {name: tft_output.vocabulary_by_name(name) for name in model_inputs.vocab_sizes}
    base_model = getattr(fn_args, "base_model", None)
    warm = (lambda scorer: warm_start_from(scorer, base_model, vocabularies, train_records, strategy)) if base_model else None
    scorer, history = train(settings, model_inputs, train_records, eval_records, model_run_dir, strategy, warm_start=warm)
    export(scorer, tft_output, serving_dir)
    save_vocabularies(tft_output, vocabularies, serving_dir)
    with tf.io.gfile.GFile(os.path.join(model_run_dir, "training_history.json"), "w") as f:
        json.dump({"settings": dataclasses.asdict(settings), "hyperparameters": tuned, "warm_started_from": None,
                   **history}, f, indent=1)


# ---------------------------------------------------------------------------------------------
# Warm start: day after day, each Trainer starts from the last blessed model of its kind (TFX's
# `base_model`, resolved in pipeline/pipeline.py) instead of from random weights.
#
# Transform computes its vocabularies again on every day's window, so an id's row in an embedding
# table moves between days and tables grow. Each model therefore keeps the vocabularies it was
# trained with beside its SavedModel (assets.extra/vocabularies/, which TF Serving and Keras
# ignore), and a warm start copies rows by token: an id both models know keeps its learned row,
# a new id starts from the old model's out-of-vocabulary row (how the old model saw it), the
# missing and OOV rows carry over. Every other weight is copied as it is. A base model of another
# architecture, other hyper-parameters or features, or without its vocabularies, is not used:
# training starts from scratch and training_history.json says why.

VOCABULARIES_DIR = os.path.join("assets.extra", "vocabularies")


def save_vocabularies(tft_output, vocabularies: dict, serving_dir: str) -> None:
    target = os.path.join(serving_dir, VOCABULARIES_DIR)
    tf.io.gfile.makedirs(target)
    for name in vocabularies:
        tf.io.gfile.copy(tft_output.vocabulary_file_by_name(name), os.path.join(target, name), overwrite=True)


def _read_vocabulary(path: str) -> list[bytes]:
    with tf.io.gfile.GFile(path, "rb") as f:
        return [line.rstrip(b"\n") for line in f]


def _weight_key(variable) -> str:
    """A weight's path inside its model, without the model's name and Keras' numbering of layer
    names (dense_4), which differ between two instances of one model in one process."""
    parts = variable.name.split("/")[1:]
    return "/".join(part.rsplit("_", 1)[0] if part.rsplit("_", 1)[-1].isdigit() else part for part in parts)


def remap_embedding(new: "np.ndarray", base: "np.ndarray", new_vocab: list, base_vocab: list) -> tuple:
    """The new table (rows: 0 missing, 1..V vocabulary, V+1 OOV; models/transformed.py) with the
    base table's rows by token; returns it and how many tokens kept a learned row."""
    import numpy as np

    out = np.array(new, copy=True)
    out[0], out[-1] = base[0], base[-1]
    base_row = {token: i + 1 for i, token in enumerate(base_vocab)}
    kept = 0
    for i, token in enumerate(new_vocab):
        row = base_row.get(token)
        out[i + 1] = base[row] if row is not None else base[-1]
        kept += row is not None
    return out, kept


def warm_start_from(scorer, base_dir: str, vocabularies: dict, train_records, strategy) -> dict:
    """Loads the weights of the Keras SavedModel `base_dir` into `scorer` (built here on a batch of
    `train_records`), embedding rows by token; returns what training_history.json records."""
    import logging

    base_dir = str(base_dir)
    try:
        base = tf.keras.models.load_model(base_dir, compile=False)
    except (OSError, ValueError, TypeError) as e:
        return _cold(base_dir, f"cannot load it: {e}")
    base_vocab_dir = os.path.join(base_dir, VOCABULARIES_DIR)
    if type(base) is not type(scorer):
        return _cold(base_dir, f"it is a {type(base).__name__}, not a {type(scorer).__name__}")
    if base.config != scorer.config or base.feature_names != scorer.feature_names:
        return _cold(base_dir, "its hyper-parameters or features differ")
    if not all(tf.io.gfile.exists(os.path.join(base_vocab_dir, name)) for name in vocabularies):
        return _cold(base_dir, f"it has no {VOCABULARIES_DIR}/ of every vocabulary (trained before warm starts?)")
    with strategy.scope():
        scorer(next(iter(train_records.dataset(1))), training=False)  # creates the variables
    new_weights, base_weights = scorer.weights, base.weights
    if [_weight_key(v) for v in new_weights] != [_weight_key(v) for v in base_weights]:
        return _cold(base_dir, "its weights are not the new model's")
    tables = {f"embedding_{name}": name for name in vocabularies}
    values, rows = [], {}
    for new, old in zip(new_weights, base_weights):
        table = tables.get(new.name.split("/")[-2]) if new.name.count("/") > 1 else None
        if table is not None:
            value, kept = remap_embedding(new.numpy(), old.numpy(), vocabularies[table],
                                          _read_vocabulary(os.path.join(base_vocab_dir, table)))
            rows[table] = {"tokens": len(vocabularies[table]), "kept": kept}
        elif tuple(new.shape) == tuple(old.shape):
            value = old.numpy()
        else:
            return _cold(base_dir, f"weight {_weight_key(new)} has shape {tuple(old.shape)} there, "
                                   f"{tuple(new.shape)} here")
        values.append(value)
    for new, value in zip(new_weights, values):
        new.assign(value)
    logging.info("warm start: %d weights of %s loaded into %s", len(values), base_dir, scorer.name)
    return {"warm_started_from": base_dir, "warm_start": {"weights": len(values), "embedding_rows": rows}}


def _cold(base_dir: str, why: str) -> dict:
    import logging

    logging.warning("warm start from %s skipped: %s; training starts from random weights", base_dir, why)
    return {"warm_started_from": None, "warm_start": {"skipped": f"{base_dir}: {why}"}}
