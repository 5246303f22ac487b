"""The command-line defaults of `hap evaluate` and `hap benchmark`, in a module of their own so
that building the `hap` parser loads neither TensorFlow nor TFX (`hap --help` stays fast)."""

DEFAULT_KS = (1, 3, 5)                           # K of HitRate@K and Recall@K on logged requests
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_ROUTE_FRACTIONS = (0.05, 0.1, 0.2, 0.5)
DEFAULT_LATENCY_REQUESTS = 100
VARIANT_SETS = ("all", "routing", "losses")    # `hap benchmark --variants` (evaluation/benchmark.py)
