"""A Trainer's settings (`TrainerSettings`), without TensorFlow: the settings tree
(hap/settings.py) builds and checks them before TensorFlow loads; models/trainer_module.py trains
with them."""
from __future__ import annotations

import dataclasses

from hap.data.sample_routing import HEAVY, LIGHT, MODELS, SampleRouting, routing_of
from hap.models.hparams import HeavyConfig, LightConfig
from hap.models.loss_names import LOSS_NAMES
from hap.tree import defaults_from

CONFIG_CLASSES = {LIGHT: LightConfig, HEAVY: HeavyConfig}


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
