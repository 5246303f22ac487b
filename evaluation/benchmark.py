"""`hap benchmark`: HAP against its baselines, trained and evaluated in one run on the same data.

Variants (`VARIANTS`), each built from the models of `MODELS`:

    (a) light two-tower, mixed_bce            (b) light, pooled_infonce       (c) light, GHCL
    (d) heavy on ALL samples, mixed_bce       (e) heavy on all samples, GHCL  (uniform scaling:
        the heavy model as a one-stage pre-ranker, on every candidate)
    (f) HAP: light GHCL + heavy GHCL trained on the hard samples (EP, EN, RN) as the pipeline
        trains it, re-scoring the top K = ceil(f N) candidates by light score, f = 10% (the
        pipeline's CascadeSettings)
    (g) HAP with f swept (5%, 10%, 20%, 50% by default).

How. The TFX pipeline runs once (`hap.pipeline.local_runner.run`, cached across runs) for its
Transform output; every model is then trained in-process with `trainer_module.train` on the
transformed examples, as the pipeline's Trainer does, once per seed. Heavy-on-all-samples is
`TrainerSettings(sample_routing="light")`: every sample group and the loss over all four
negative sources.

Scoring, with the same metric code as `hap evaluate` (evaluation/evaluate.py):
- logged samples of the eval day: the Keras models on the transformed eval split;
- funnel/ (when present): one request per call through `serving.cascade.CascadeModule`, the
  class the cascade SavedModel is saved from, so Transform and the per-request user tower run
  as served;
- HAP's scores are composed from the light and heavy scores of each request: the top K by light
  score get 1 + heavy probability, the others their light probability. That is exactly the
  cascade signature's `scores` (serving/cascade.py; tests/test_cascade_model.py proves the
  SavedModel routes this way), so the sweep needs no model per K; ties in light score are broken
  by candidate order, as tf.math.top_k does.

Compute: FLOPs per request from `serving.flops.model_flops` + `request_flops` (the same counts
the assembler stores with the cascade) on the compute requests (funnel/ if present, where
N ~ 1000 is what pre-ranking serves, else the logged eval requests). Latency depends on the
architecture, not the loss or seed: it is measured once, with the first seed's models, per
architecture (light alone, heavy on all N, the cascade at each f) as in-process calls of the
tf.function'd CascadeModule methods on up to `latency_requests` compute requests. Training time
is the wall time of `trainer_module.train` (including its per-epoch eval AUC and the gradient-conflict
probe every 10 steps, which every model runs alike); a HAP variant's is its two models' sum.

Outputs under OUT/report (written to a temporary folder and moved into place):
`benchmark.md` (the tables), `benchmark.json` (every number of every seed), `pareto.png`
(quality against FLOPs per request) and `gradient_conflict.png` (cosine between per-source
gradients over training), and the training logs under `logs/`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import time

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from tqdm import tqdm

from hap.data import contract as c
from hap.data import writer
from hap.data.sample_routing import HEAVY, LIGHT
from hap.evaluation import evaluate as ev
from hap.evaluation import report
from hap.evaluation.defaults import DEFAULT_KS, DEFAULT_LATENCY_REQUESTS, DEFAULT_ROUTE_FRACTIONS, DEFAULT_SEEDS
from hap.models import request_records, trainer_module, training, transformed
from hap.pipeline import local_runner, run_report
from hap.serving import cascade, flops, routing
from hap.serving import request as rq

CASCADE = "cascade"
# What the metrics read of the eval records besides the scores.
EVALUATION_COLUMNS = (transformed.LABEL, transformed.SAMPLE_GROUP, transformed.REQUEST_KEY)


@dataclasses.dataclass(frozen=True)
class ModelRecipe:
    """One model to train: its `trainer_module.TrainerSettings` fields besides seed and max_epochs."""

    model: str
    loss: str
    sample_routing: str = ""


MODELS = {
    "light_mixed_bce": ModelRecipe(LIGHT, "mixed_bce"),
    "light_pooled_infonce": ModelRecipe(LIGHT, "pooled_infonce"),
    "light_ghcl": ModelRecipe(LIGHT, "ghcl"),
    "heavy_all_mixed_bce": ModelRecipe(HEAVY, "mixed_bce", sample_routing=LIGHT),
    "heavy_all_ghcl": ModelRecipe(HEAVY, "ghcl", sample_routing=LIGHT),
    "heavy_hard_ghcl": ModelRecipe(HEAVY, "ghcl"),
}


@dataclasses.dataclass(frozen=True)
class Variant:
    """A scorer of the benchmark: one model on every candidate, or a cascade of two (`route_fraction`)."""

    key: str
    label: str
    light: str | None = None
    heavy: str | None = None
    route_fraction: float | None = None

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(m for m in (self.light, self.heavy) if m)

    @property
    def architecture(self) -> str:
        if self.route_fraction is not None:
            return f"{CASCADE}@{self.route_fraction:g}"
        return LIGHT if self.light else HEAVY


def variants(route_fractions=DEFAULT_ROUTE_FRACTIONS) -> list[Variant]:
    hap_fraction = cascade.CascadeSettings().route_fraction
    out = [
        Variant("a", "light, mixed_bce", light="light_mixed_bce"),
        Variant("b", "light, pooled_infonce", light="light_pooled_infonce"),
        Variant("c", "light, GHCL", light="light_ghcl"),
        Variant("d", "heavy on all samples, mixed_bce", heavy="heavy_all_mixed_bce"),
        Variant("e", "heavy on all samples, GHCL", heavy="heavy_all_ghcl"),
        Variant("f", f"HAP, K = {hap_fraction:.0%} of N", light="light_ghcl", heavy="heavy_hard_ghcl",
                route_fraction=hap_fraction),
    ]
    for fraction in sorted(set(route_fractions) - {hap_fraction}):
        out.append(Variant(f"g{fraction:.0%}", f"HAP, K = {fraction:.0%} of N", light="light_ghcl",
                           heavy="heavy_hard_ghcl", route_fraction=fraction))
    return out


def cascade_scores(request, light, heavy, route_fraction: float) -> np.ndarray:
    """The cascade's ranking key per candidate, request by request (ids in `request`), as
    serving/routing.py routes and combines them."""
    request, light, heavy = np.asarray(request), np.asarray(light, np.float64), np.asarray(heavy, np.float64)
    out = np.empty(len(light), np.float64)
    codes = np.unique(request, return_inverse=True)[1].reshape(-1)
    rows_by_request = np.split(np.argsort(codes, kind="stable"), np.cumsum(np.bincount(codes))[:-1])
    for rows in rows_by_request:
        out[rows] = routing.route_request(light[rows], heavy[rows], route_fraction)[0].numpy()
    return out


# ---------------------------------------------------------------------------------------------
# Inputs: the pipeline's Transform output and the dataset's raw requests


@dataclasses.dataclass
class Inputs:
    features: c.FeatureSet
    tft_output: object
    model_inputs: object
    train: request_records.RequestRecords
    eval: request_records.RequestRecords
    eval_columns: dict                # EVALUATION_COLUMNS of the eval records, in their order
    eval_day: int
    compute_part: str                 # FUNNEL or LOGGED: whose requests FLOPs and latency are taken on
    compute_requests: list[dict]      # request arrays (numpy), as `RequestLayout.from_rows` makes them
    funnel: dict[str, list[dict]] | None


def load_inputs(data_dir: str, run_dir: str) -> Inputs:
    features = c.load_features(data_dir)
    tft_output = tft.TFTransformOutput(run_report.latest_artifact(run_dir, "Transform", "TransformGraph").uri)
    examples = run_report.latest_artifact(run_dir, "RequestGrouper", "Examples").uri
    feature_spec = tft_output.transformed_feature_spec()
    missing = [f.name for f in features.features if f.name not in feature_spec]
    if missing:
        raise ValueError(f"{run_dir}: its Transform output has no {', '.join(missing)}: the run was not made "
                         f"from {data_dir}")
    train, evaluation = (request_records.RequestRecords.from_split(os.path.join(examples, f"Split-{split}", "*"),
                                                                   feature_spec, features)
                         for split in ("train", "eval"))
    eval_columns = evaluation.columns(EVALUATION_COLUMNS)
    day, logged = ev.eval_day_requests(data_dir, features)
    split_requests = {k.decode() for k in eval_columns[transformed.REQUEST_KEY]}
    if split_requests != set(logged):
        raise ValueError(f"{run_dir}: its eval split has {len(split_requests)} requests and {data_dir}'s day "
                         f"{day} has {len(logged)}, {len(split_requests ^ set(logged))} differing: the run was "
                         "not made from this dataset")
    funnel = ev.funnel_requests(data_dir, features)
    part, rows = (ev.FUNNEL, funnel) if funnel is not None else (ev.LOGGED, logged)
    return Inputs(features, tft_output, transformed.ModelInputs.from_transform_output(features, tft_output), train,
                  evaluation, eval_columns, day, part, [rq.RequestLayout(features).from_rows(r) for r in rows.values()], funnel)


# ---------------------------------------------------------------------------------------------
# Training and scoring


class Serving:
    """tf.function'd CascadeModule methods over one pair of models, one request per call."""

    def __init__(self, inputs: Inputs, tft_layer, light=None, heavy=None,
                 route_fraction: float | None = None):
        settings = cascade.CascadeSettings() if route_fraction is None else cascade.CascadeSettings(route_fraction)
        module = cascade.CascadeModule(light, heavy, tft_layer, inputs.tft_output.raw_feature_spec(),
                                       inputs.features, settings)
        self._layout = rq.RequestLayout(inputs.features)
        signature = [self._layout.signature()]
        self._module = module  # the tf.functions below hold its methods, and so the module
        self.functions = {LIGHT: tf.function(module.light_scores, input_signature=signature),
                          HEAVY: tf.function(module.heavy_scores, input_signature=signature),
                          CASCADE: tf.function(module.cascade, input_signature=signature)}

    def scores(self, which: str, requests: list[dict]) -> np.ndarray:
        fn = self.functions[which]
        return np.concatenate([fn(self._layout.to_tensors(r))["scores"].numpy().astype(np.float64) for r in requests])

    def latency_ms(self, which: str, requests: list[dict]) -> list[float]:
        fn = self.functions[which]
        tensors = [self._layout.to_tensors(r) for r in requests]
        fn(tensors[0])  # traces the function: not part of a served call
        out = []
        for t in tensors:
            start = time.perf_counter()
            fn(t)["scores"].numpy()
            out.append(1000.0 * (time.perf_counter() - start))
        return out


def train_model(name: str, seed: int, max_epochs: int | None, inputs: Inputs, log_dir: str):
    """Trains MODELS[name]; returns (Keras scorer, seconds, history)."""
    recipe = MODELS[name]
    settings = trainer_module.TrainerSettings(model=recipe.model, loss=recipe.loss, sample_routing=recipe.sample_routing,
                                              seed=seed, **({"max_epochs": max_epochs} if max_epochs else {}))
    start = time.perf_counter()
    scorer, history = trainer_module.train(settings, inputs.model_inputs, inputs.train, inputs.eval,
                                    os.path.join(log_dir, f"{name}-seed{seed}"))
    return scorer, time.perf_counter() - start, history


def warm_up(inputs: Inputs, log_dir: str, requests: int = 32) -> None:
    """One short, untimed training on a few requests: the first training in a process pays
    TensorFlow's one-off set-up (kernels, tracing machinery), which would otherwise be billed to
    whichever model is timed first (measured: about 15 s on 2 cores, doubling a light model's time)."""
    subset = dataclasses.replace(inputs.eval, requests=requests)
    trainer_module.train(trainer_module.TrainerSettings(model=LIGHT, loss="mixed_bce", max_epochs=1), inputs.model_inputs,
                         subset, subset, os.path.join(log_dir, "warm_up"))


def _logged_columns(inputs: Inputs):
    e = inputs.eval_columns
    return (e[transformed.REQUEST_KEY], e[transformed.LABEL].astype(np.int64),
            np.asarray(c.SAMPLE_GROUPS)[e[transformed.SAMPLE_GROUP].astype(np.int64)])


def _funnel_columns(inputs: Inputs):
    rows = [(request_id, r[c.ORACLE_COLUMN]) for request_id, rs in inputs.funnel.items() for r in rs]
    return np.asarray([r for r, _ in rows]), np.asarray([u for _, u in rows], np.float64)


def variant_scores(variant: Variant, probs: dict[str, np.ndarray], request) -> np.ndarray:
    """A variant's scores from its models' click probabilities (`probs`: model name -> [n])."""
    if variant.route_fraction is None:
        return probs[variant.models[0]]
    return cascade_scores(request, probs[variant.light], probs[variant.heavy], variant.route_fraction)


def run_seed(seed: int, max_epochs: int | None, inputs: Inputs, tft_layer, chosen: list[Variant], ks, log_dir: str,
             progress) -> dict:
    """Trains every model once with `seed` and evaluates every variant; returns
    {"models": {name: {seconds, per_source_auc, gradient_conflict}}, "metrics": {variant: {...}},
    "keras": {name: model}}."""
    needed = sorted({m for v in chosen for m in v.models}, key=list(MODELS).index)
    request, label, group = _logged_columns(inputs)
    if inputs.funnel is not None:
        f_request, utility = _funnel_columns(inputs)
    models, keras, logged_probs, funnel_probs = {}, {}, {}, {}
    for name in needed:
        progress.set_postfix_str(f"seed {seed}: training {name}")
        scorer, seconds, history = train_model(name, seed, max_epochs, inputs, log_dir)
        models[name] = {"seconds": seconds, **history}
        keras[name] = scorer
        logged_probs[name] = tf.sigmoid(training.score_records(training.predictor(scorer), inputs.eval)).numpy().astype(np.float64)
        if inputs.funnel is not None:
            model = MODELS[name].model
            serving = Serving(inputs, tft_layer, **{model: scorer})
            funnel_probs[name] = serving.scores(model, inputs.compute_requests)
        progress.update()
    result = {}
    for v in chosen:
        scores = variant_scores(v, logged_probs, request)
        result[v.key] = {name: m.value for name, m in ev.logged_metrics(request, label, group, scores, ks).items()}
        if inputs.funnel is not None:
            f_scores = variant_scores(v, funnel_probs, f_request)
            funnel = ev.funnel_metrics(f_request, utility, f_scores)
            result[v.key].update({name: m.value for name, m in funnel.items()})
    return {"models": models, "metrics": result, "keras": keras}


def measure_compute(inputs: Inputs, tft_layer, keras: dict, chosen: list[Variant], latency_requests: int) -> dict:
    """FLOPs per request (mean over the compute requests) and latency per architecture."""
    light_name = next(v.light for v in chosen if v.light)
    heavy_name = next(v.heavy for v in chosen if v.heavy)
    parts = flops.model_flops(keras[light_name], keras[heavy_name])
    sizes = [rq.RequestLayout(inputs.features).num_candidates(r) for r in inputs.compute_requests]
    timed = inputs.compute_requests[:latency_requests]
    latency, out = {}, {"parts": parts, "part": inputs.compute_part, "requests": len(sizes),
                        "candidates_mean": float(np.mean(sizes)), "variants": {}}
    for v in chosen:
        if v.architecture not in latency:
            if v.route_fraction is None:
                which = LIGHT if v.light else HEAVY
                serving = Serving(inputs, tft_layer, **{which: keras[v.models[0]]})
            else:
                which = CASCADE
                serving = Serving(inputs, tft_layer, keras[v.light], keras[v.heavy], v.route_fraction)
            latency[v.architecture] = ev.latency_summary(serving.latency_ms(which, timed))
        if v.route_fraction is None:
            cost = "light_only" if v.light else "heavy_all"
            per_request = [flops.request_flops(parts, n, n)[cost] for n in sizes]
        else:
            per_request = [flops.request_flops(parts, n, routing.routed_count(n, v.route_fraction))["cascade"]
                           for n in sizes]
        out["variants"][v.key] = {"flops_mean": float(np.mean(per_request)), "latency": latency[v.architecture],
                                  "architecture": v.architecture}
    return out


# ---------------------------------------------------------------------------------------------
# The whole run


def summarise(per_seed: list[dict], chosen: list[Variant]) -> dict:
    """Mean, std (population, over seeds) and values of every metric and training time."""
    out = {}
    for v in chosen:
        names = per_seed[0]["metrics"][v.key]
        entry = {}
        for name in names:
            values = np.array([s["metrics"][v.key][name] for s in per_seed], np.float64)
            entry[name] = {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values.tolist()}
        seconds = np.array([sum(s["models"][m]["seconds"] for m in v.models) for s in per_seed])
        entry["train_seconds"] = {"mean": float(seconds.mean()), "std": float(seconds.std()),
                                  "values": seconds.tolist()}
        out[v.key] = entry
    return out


def machine() -> dict:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
            "gpus": [d.name for d in tf.config.list_physical_devices("GPU")]}


def benchmark(data_dir: str, out_dir: str, run_dir: str | None = None, seeds=DEFAULT_SEEDS, max_epochs: int | None = None,
              route_fractions=DEFAULT_ROUTE_FRACTIONS, ks=DEFAULT_KS,
              latency_requests: int = DEFAULT_LATENCY_REQUESTS, overwrite: bool = False,
              progress: bool = True) -> dict:
    """Runs the benchmark (module docstring); returns the content of benchmark.json.

    `run_dir`: a finished `hap run` output made from `data_dir` whose Transform output is used
    as is; by default the pipeline runs into OUT/run (served from its cache when it already ran).
    """
    seeds = list(dict.fromkeys(int(s) for s in seeds))
    if not seeds:
        raise ValueError("at least one seed is needed")
    if (max_epochs is not None and max_epochs < 1) or latency_requests < 1:
        raise ValueError(f"max_epochs and latency_requests must be >= 1, got {max_epochs} and {latency_requests}")
    if not route_fractions or not all(0.0 < f <= 1.0 for f in route_fractions):
        raise ValueError(f"route fractions must be in (0, 1], got {list(route_fractions)}")
    ks = tuple(sorted(set(int(k) for k in ks)))
    report_dir = os.path.join(out_dir, "report")
    if os.path.exists(report_dir) and os.listdir(report_dir) and not overwrite:
        raise FileExistsError(f"{report_dir}: already exists and is not empty (pass --overwrite to replace it)")
    c.load_features(data_dir)  # a bad features.yaml fails here, before the pipeline runs
    load_start = os.getloadavg()
    started = time.time()
    if run_dir is None:

        run_dir = os.path.join(out_dir, "run")
        local_runner.run(data_dir, run_dir)
    pipeline_seconds = time.time() - started

    inputs = load_inputs(data_dir, run_dir)
    tft_layer = inputs.tft_output.transform_features_layer()
    chosen = variants(route_fractions)
    needed = {m for v in chosen for m in v.models}
    with writer.atomic_directory(report_dir, overwrite=overwrite) as tmp:
        log_dir = os.path.join(tmp, "logs")
        per_seed, compute = [], None
        warm_up(inputs, log_dir)
        with tqdm(total=len(seeds) * len(needed), desc="benchmark trainings", unit="model",
                  disable=not progress) as bar:
            for seed in seeds:
                seed_result = run_seed(seed, max_epochs, inputs, tft_layer, chosen, ks, log_dir, bar)
                if compute is None:
                    bar.set_postfix_str("measuring FLOPs and latency")
                    compute = measure_compute(inputs, tft_layer, seed_result["keras"], chosen, latency_requests)
                del seed_result["keras"]
                per_seed.append({"seed": seed, **seed_result})
        result = ev.jsonable({
            "data": os.path.abspath(data_dir), "run": os.path.abspath(run_dir), "eval_day": inputs.eval_day,
            "seeds": seeds, "max_epochs": max_epochs or trainer_module.TrainerSettings().max_epochs, "ks": list(ks), "funnel": inputs.funnel is not None,
            "variants": [dataclasses.asdict(v) for v in chosen], "models": {k: dataclasses.asdict(r)
                                                                           for k, r in MODELS.items()},
            "summary": summarise(per_seed, chosen), "compute": compute, "per_seed": per_seed,
            "machine": {**machine(), "load_average_at_start": load_start, "load_average_at_end": os.getloadavg()},
            "seconds": {"pipeline": pipeline_seconds, "total": time.time() - started},
        })
        with open(os.path.join(tmp, "benchmark.json"), "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
        report.write_benchmark_report(result, tmp)
    return result
