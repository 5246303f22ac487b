"""Default settings of the HAP pipeline; every one can be overridden through create_pipeline()'s
arguments or the `hap run` command line."""
from hap.data.sample_routing import SAMPLE_ROUTING

PIPELINE_NAME = "hap"
EVAL_DAYS = 1                     # the last day is the eval split
VOCAB_TOP_K = 100_000             # larger vocabularies keep their most frequent ids, the rest are OOV

# Each Evaluator blesses its model only if, on the eval split, the AUC of exposed positives against
# each of its contrast groups clears that group's sanity floor (data/sample_routing.py), and (once a
# blessed model exists) does not fall more than AUC_TOLERANCE below the blessed one.
AUC_TOLERANCE = 0.01

# Epochs are chosen by validation (models/trainer_module.TrainerSettings: max_epochs, patience).
LIGHT_TRAINER = {"loss": "ghcl", "batch_size": 1024, "learning_rate": 2e-3}
HEAVY_TRAINER = {"loss": "ghcl", "batch_size": 1024, "learning_rate": 2e-3}

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
