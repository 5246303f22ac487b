"""A Trainer's settings (`TrainerSettings`) and its Tuner's (`TuningSettings`), without
TensorFlow: the settings tree (hap/settings.py) builds and checks them before TensorFlow loads;
models/trainer_module.py trains with them, models/tuner_module.py tunes them."""
from __future__ import annotations

import dataclasses
import json

from hap.data.sample_routing import HEAVY, LIGHT, MODELS, SampleRouting, routing_of
from hap.models.hparams import HeavyConfig, LightConfig
from hap.models.loss_names import LOSS_NAMES
from hap.tree import defaults_from

CONFIG_CLASSES = {LIGHT: LightConfig, HEAVY: HeavyConfig}
# The hyper-parameters a Tuner chooses, by the names its trials and results file use.
LOSS, TEMPERATURE, LEARNING_RATE, EMBEDDING_DIM, MODEL_CONFIG = (
    "loss", "temperature", "learning_rate", "embedding_dim", "model_config")
HYPERPARAMETERS = (LOSS, TEMPERATURE, LEARNING_RATE, EMBEDDING_DIM, MODEL_CONFIG)
# The key of a Tuner's custom_config that holds the `tuning` subtree (models/tuner_module.py).
TUNING = "tuning"
# The losses that have no temperature.
POINTWISE_LOSSES = ("mixed_bce",)


@dataclasses.dataclass(frozen=True)
@defaults_from("light.trainer")
class TrainerSettings:
    """One Trainer's settings: the `light.trainer` / `heavy.trainer` subtree of the settings tree,
    whose keys docs/settings.md describes and hap/defaults.yaml sets.

    model: which model to train, "light" or "heavy".
    sample_routing: the `SampleRouting` to train it with, a model's name or one of
    `sample_routing.ALTERNATIVE_ROUTING` (default: its own), e.g. "hard_only", the paper's
    heavy model, which `hap benchmark` compares with the pipeline's.
    max_epochs, patience: the epoch is chosen by validation. After each epoch the eval split's
    mean per-source AUC (over the model's contrasts) is measured; training stops once it has not
    improved for `patience` epochs, or after `max_epochs`, and the best epoch's weights are kept
    (docs/decisions/0003-epochs-by-validation.md).
    batch_size: samples per batch on average, filled with whole requests.
    shuffle_requests: the shuffle buffer, in requests; it bounds the input's memory. It refills at
    the start of every pass (a batch never spans two passes), overlapping the pass before's last
    batches in the Trainer's endless input; a fresh input's first batch waits for it, so it is
    kept small (docs/decisions/0007-shuffle-buffer.md). The grouper writes the records in the
    order of a hash of the request key, so a small buffer still mixes days.
    conflict_budget: the share of training time the gradient-conflict probe may take.
    eval_positives, eval_requests: the per-epoch validation reads the first eval requests in the
    records' order (which the grouper makes random), as many as hold about `eval_positives`
    exposed positives at the split's rate, and at most `eval_requests` (`validation_requests`).
    An AUC's precision is set by its positives, so clicks decide how much validation is enough;
    the cap bounds the cost where clicks are rare (docs/decisions/0004-validation-size.md). The
    Evaluators still judge the model on the whole eval split.
    router_requests: the light model's difficulty router (models/difficulty_router.py) is fit
    after it on at most this many training requests.
    steps_per_execution: training steps Keras runs per call of its compiled train function: a
    pre-ranking step is small, so the Python work between calls would otherwise cost about as
    much as the step (docs/decisions/0009-steps-per-execution.md). Callbacks' batch hooks then
    run once per call; epoch-level work (validation, early stopping) is unchanged. Under several
    replicas it is 1 (see `compiled_trainer`).
    model_config: hyper-parameters of the model's config dataclass (`light.LightConfig`,
    `heavy.HeavyConfig`) that differ from its defaults: the pipeline's heavy model is the
    architecture narrowed (docs/decisions/0001-second-stage.md)."""

    model: str
    loss: str
    max_epochs: int
    patience: int
    batch_size: int
    learning_rate: float
    temperature: float
    seed: int
    shuffle_requests: int
    conflict_budget: float
    eval_positives: int
    eval_requests: int
    router_requests: int
    steps_per_execution: int
    sample_routing: str
    model_config: dict

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; the models are {MODELS}")
        model_hparams(self.model, self.model_config)  # a bad hyper-parameter fails here, naming it
        routing_of(self.sample_routing or self.model)
        if self.loss not in LOSS_NAMES:
            raise ValueError(f"loss must be one of {LOSS_NAMES}, got {self.loss!r}")
        for name in ("max_epochs", "patience", "batch_size", "shuffle_requests", "eval_positives", "eval_requests",
                     "router_requests", "steps_per_execution"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")

    def with_hyperparameters(self, values: dict) -> "TrainerSettings":
        """These settings with a Tuner's chosen `values` (models/tuner_module.py names them
        `HYPERPARAMETERS`); a hyper-parameter it did not choose (the temperature of mixed_bce)
        keeps its setting."""
        unknown = sorted(set(values) - set(HYPERPARAMETERS))
        if unknown:
            raise ValueError(f"unknown hyper-parameter(s) {unknown}; a Tuner chooses {list(HYPERPARAMETERS)}")
        model_config = json.loads(values[MODEL_CONFIG]) if MODEL_CONFIG in values else dict(self.model_config)
        if EMBEDDING_DIM in values:
            model_config[EMBEDDING_DIM] = values[EMBEDDING_DIM]
        chosen = {name: values[name] for name in (LOSS, TEMPERATURE, LEARNING_RATE) if name in values}
        return dataclasses.replace(self, **chosen, model_config=model_config)

    @property
    def routing(self) -> SampleRouting:
        return routing_of(self.sample_routing or self.model)

    @classmethod
    def from_config(cls, custom_config: dict) -> "TrainerSettings":
        """The settings in a Trainer's custom_config; a key that is neither a setting nor part of
        the model configuration (preprocessing.MODEL_CONFIG_KEYS) is an error naming it, so a typo
        such as {"epoch": 3} cannot be dropped silently."""
        from hap.models import preprocessing  # TensorFlow Transform: the Trainer has loaded it

        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(custom_config) - fields - set(preprocessing.MODEL_CONFIG_KEYS))
        if unknown:
            raise ValueError(f"unknown trainer setting(s) {unknown}; the settings are {sorted(fields)}")
        return cls(**{k: v for k, v in custom_config.items() if k in fields})


def model_hparams(model: str, model_config: dict):
    """The model's config dataclass with `model_config`'s values (JSON lists become tuples)."""
    config_class = CONFIG_CLASSES[model]
    unknown = sorted(set(model_config) - {f.name for f in dataclasses.fields(config_class)})
    if unknown:
        raise ValueError(f"unknown {model} model hyper-parameter(s) {unknown}; see {config_class.__name__}")
    return config_class(**{k: tuple(v) if isinstance(v, list) else v for k, v in model_config.items()})


@dataclasses.dataclass(frozen=True)
@defaults_from("tuning.space")
class TuningSpace:
    """The values a Tuner chooses each hyper-parameter among (the Trainer's own value is added
    where it is missing). heavy_model_configs: the heavy model's architectures besides its
    Trainer's `model_config`; the light model's is its Trainer's."""

    loss: list[str]
    temperature: list[float]
    learning_rate: list[float]
    embedding_dim: list[int]
    heavy_model_configs: list[dict]

    def __post_init__(self):
        for name in (LOSS, TEMPERATURE, LEARNING_RATE, EMBEDDING_DIM):
            if not getattr(self, name):
                raise ValueError(f"{name} needs at least one value")
        bad = [loss for loss in self.loss if loss not in LOSS_NAMES]
        if bad:
            raise ValueError(f"unknown loss(es) {bad}; the losses are {LOSS_NAMES}")
        for name in (TEMPERATURE, LEARNING_RATE, EMBEDDING_DIM):
            if min(getattr(self, name)) <= 0:
                raise ValueError(f"{name} values must be > 0, got {getattr(self, name)!r}")
        for config in self.heavy_model_configs:
            model_hparams(HEAVY, config)


@dataclasses.dataclass(frozen=True)
@defaults_from("tuning")
class TuningSettings:
    """trials: trials of each Trainer's Tuner, the first being its own settings; 0: no Tuner.
    holdout_share: the share of training requests the trials are scored on (never the eval days).
    max_epochs: most epochs of one trial. retune_days: a run reuses the last tuned
    hyper-parameters until they are this many days older than its newest day, or until it accepts
    a drift (0: tune on every run). space: what is chosen among."""

    trials: int
    holdout_share: float
    max_epochs: int
    retune_days: int
    space: TuningSpace

    def __post_init__(self):
        if not isinstance(self.trials, int) or self.trials < 0:
            raise ValueError(f"trials must be an integer >= 0, got {self.trials!r}")
        if not 0.0 < self.holdout_share < 1.0:
            raise ValueError(f"holdout_share must be in (0, 1), got {self.holdout_share!r}")
        if not isinstance(self.max_epochs, int) or self.max_epochs < 1:
            raise ValueError(f"max_epochs must be an integer >= 1, got {self.max_epochs!r}")
        if not isinstance(self.retune_days, int) or self.retune_days < 0:
            raise ValueError(f"retune_days must be an integer >= 0, got {self.retune_days!r}")
