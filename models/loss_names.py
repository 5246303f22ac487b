"""The losses' names and their GHCL configurations, without TensorFlow, so that the settings tree
(hap/settings.py) checks a loss name before TensorFlow loads; models/losses.py builds them."""
from hap.data import contract as c
from hap.tree import default_value

HARMONIZE_RULES = ("ema", "none", "gradnorm", "ghm", "pcgrad")
# The rules that combine per-source parameter gradients in the train step (not in the loss).
GRADIENT_RULES = ("gradnorm", "pcgrad")
SAMPLING_MODES = ("fixed", "saturation")
DEFAULT_HARMONIZE = "ema"
# The losses' own default is the Trainers' (hap/defaults.yaml), so a loss built alone matches one trained.
DEFAULT_TEMPERATURE = default_value("light.trainer.temperature")
DEFAULT_MOMENTUM = 0.99
DEFAULT_GHM_BINS = 10
DEFAULT_MIN_KEEP = 0.25
# GHCL's settings by loss name, so that a rule or the sampling can be chosen wherever a loss is
# named (TrainerSettings.loss, `hap run --light-loss`, the benchmark's models): "ghcl" is the
# default configuration.
GHCL_VARIANTS = {
    "ghcl": {},
    **{f"ghcl_{rule}": {"harmonize": rule} for rule in HARMONIZE_RULES if rule != DEFAULT_HARMONIZE},
    "ghcl_sampled": {"sampling": "saturation"},
    "ghcl_bce": {"bce_path": True},
    "ghcl_batch_en": {"batch_contrasts": (c.EN,)},
}
LOSS_NAMES = (*GHCL_VARIANTS, "mixed_bce", "pooled_infonce")
