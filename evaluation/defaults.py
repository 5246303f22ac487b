"""The command-line defaults of `hap evaluate` and `hap benchmark`, read from hap/defaults.yaml
(the only place a default is written) without loading TensorFlow, so that building the `hap`
parser stays fast."""
from hap.tree import default_value

DEFAULT_KS = tuple(default_value("evaluation.ks"))       # K of HitRate@K and Recall@K on logged requests
DEFAULT_SEEDS = tuple(default_value("benchmark.seeds"))
DEFAULT_ROUTE_FRACTIONS = tuple(default_value("benchmark.route_fractions"))
DEFAULT_LATENCY_REQUESTS = default_value("benchmark.latency_requests")
VARIANT_SETS = ("all", "routing", "losses")    # `hap benchmark --variants` (evaluation/benchmark.py)
