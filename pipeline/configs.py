"""Default settings of the HAP pipeline; every one can be overridden through create_pipeline()'s
arguments or the `hap run` command line."""
import os

import hap
from hap.data.sample_routing import SAMPLE_ROUTING

PIPELINE_NAME = "hap"
EVAL_DAYS = 1                     # the last day is the eval split
VOCAB_TOP_K = 100_000             # larger vocabularies keep their most frequent ids, the rest are OOV

# Each Evaluator blesses its model only if, on the eval split, the AUC of exposed positives against
# each of its contrast groups clears that group's sanity floor (data/sample_routing.py), and (once a
# blessed model exists) does not fall more than AUC_TOLERANCE below the blessed one.
AUC_TOLERANCE = 0.01
# The CascadeAssembler blesses a cascade whose blessing metric (funnel/ Recall@200, else GAUC) on
# the eval day is at most this far below the last blessed cascade's (components/cascade_assembler).
CASCADE_TOLERANCE = 0.01
# ... measured on at most this many eval requests, a sample fixed by their ids, so that its cost
# stops growing with the eval day (one cascade call per request; README, "Training at scale").
CASCADE_BLESSING_REQUESTS = 2000

# Day by day: the Trainers learn from WINDOW_DAYS days before the eval day (None: every earlier
# day) and, with `hap run --warm-start`, start from the last blessed model of their kind.
WINDOW_DAYS = None

# The newest day's statistics against the last accepted day's (components/drift_gate): TFDV's
# L-infinity distance of the value shares (categorical) or Jensen-Shannon divergence (numeric),
# on features where a day-to-day change means a fault or a shift the models should not meet
# unchecked, not on those that move every day by design (item age, weekday, histories). A
# feature the dataset lacks is skipped. Calibrated on the simulator (README, "Day by day"): an
# ordinary day of the tests' tiny data (50 requests) against the day before measured c_network
# 0.072, content_type 0.031, source 0.017, click 0.0003; a day appended with `--drift 0.8`
# measured c_network 0.71.
DRIFT_COMPARATORS = {
    "source": ("infinity_norm", 0.1),          # the sampling's mix of negative sources: a logging fault
    "content_type": ("infinity_norm", 0.1),    # the content mix of the candidates
    "c_network": ("infinity_norm", 0.25),      # the traffic's mix of networks (a context feature)
    "click": ("jensen_shannon_divergence", 0.005),  # the click base rate: 5% -> 10% is about 0.004
}

# Epochs are chosen by validation (models/trainer_module.TrainerSettings: max_epochs, patience).
LIGHT_TRAINER = {"loss": "ghcl", "batch_size": 1024, "learning_rate": 2e-3}
# The second stage is the heavy architecture (models/heavy.py: attention, crosses, a deep MLP)
# narrowed to about 13% of its FLOPs per candidate: half-width embeddings, rank-16 crosses, a
# two-layer MLP. `hap benchmark --variants routing` measured it on three simulator regimes (README,
# "Routing"): on every candidate it comes within a few points of the full-size heavy model, and
# top_k routing of half the candidates to it (CASCADE_ROUTING) recovers 94-96% of the light-to-
# heavy gap on oracle Recall@100 at 9% of the full model's FLOPs, where the full model at the
# same budget could be routed only 5-10% of the candidates and recovered at most 72%. A dataset
# whose second stage needs more capacity can set `model_config` (e.g. {} for the full size).
HEAVY_TRAINER = {"loss": "ghcl", "batch_size": 1024, "learning_rate": 2e-3,
                 "model_config": {"embedding_dim": 8, "cross_projection_dim": 16, "deep_units": [32, 16],
                                  "attention_units": [16]}}

# Beam in this process: TFX's own tests force in-memory running because multi-process DirectRunner
# hung in CI; `hap run --beam-arg=...` switches to multi_processing or a distributed runner.
BEAM_PIPELINE_ARGS = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
# Per component, by data size, what `benchmarks/beam_throughput.py` measured on 2 cores (README,
# "Beam: in-memory or multi-process"): on the default data (65 MB of samples) a second process
# cost more than it gained in every component; at 3x (200 MB) it made these four 13-32% faster,
# left ContractExampleGen even and RequestGrouper 12% slower. So above MULTI_PROCESS_MIN_BYTES
# of samples these four run one Beam worker process per core; the rest stay in memory.
MULTI_PROCESS_COMPONENTS = ("StatisticsGen", "Transform", "Evaluator_light", "Evaluator_heavy")
MULTI_PROCESS_MIN_BYTES = 128 * 2**20
MULTI_PROCESS_ARGS = ["--direct_running_mode=multi_processing", "--direct_num_workers=0"]


def source_setup_file() -> str | None:
    """HAP's setup.py where this process imports HAP from a source tree (`make setup`'s editable
    install, the pipeline image), the Beam workers' dependency (pipeline.with_worker_dependency);
    None for an install without one, whose remote runs must name their own."""
    setup_file = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(hap.__file__))), "setup.py")
    return setup_file if os.path.isfile(setup_file) else None


def component_beam_args(sample_bytes: int) -> dict[str, list[str]]:
    """The local runner's per-component Beam arguments for a dataset of `sample_bytes`."""
    if sample_bytes < MULTI_PROCESS_MIN_BYTES:
        return {}
    return {component: MULTI_PROCESS_ARGS for component in MULTI_PROCESS_COMPONENTS}
# On a cluster (`hap compile kubeflow`) a component has its pod to itself: one Beam worker process
# per core (0 = multiprocessing.cpu_count(), the node's cores, not the pod's CPU limit: on shared
# nodes pass the pod's count). `--beam-arg` swaps in Dataflow, Flink or Spark (docs/deploying.md).
CLUSTER_BEAM_PIPELINE_ARGS = ["--direct_running_mode=multi_processing", "--direct_num_workers=0"]


def auc_floors_with(overrides: dict) -> dict:
    """Each model's per-contrast AUC floors (data/sample_routing.py) with some replaced, e.g.
    {"light": {"EN": 0.5}}; an unknown model or contrast, or a floor outside [0, 1], is an error
    naming it."""
    floors = {model: dict(routing.auc_floors) for model, routing in SAMPLE_ROUTING.items()}
    if not isinstance(overrides, dict):
        raise ValueError(f"AUC floors: expected a mapping of model to {{source: floor}}, got {overrides!r}")
    for model, by_source in overrides.items():
        if model not in floors:
            raise ValueError(f"AUC floors: unknown model {model!r}; the models are {sorted(floors)}")
        if not isinstance(by_source, dict):
            raise ValueError(f"AUC floors: {model} needs a mapping of source to floor, got {by_source!r}")
        for source, floor in by_source.items():
            if source not in floors[model]:
                raise ValueError(f"AUC floors: {model} has no floor for {source!r}; its sources are "
                                 f"{sorted(floors[model])}")
            if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0.0 <= floor <= 1.0:
                raise ValueError(f"AUC floors: {model}.{source} must be a number in [0, 1], got {floor!r}")
            floors[model][source] = float(floor)
    return floors
