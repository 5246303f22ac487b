"""`hap benchmark`: HAP against its baselines, trained and evaluated in one run on the same data.

Variants (`variants()`), each built from the models of `MODELS`; `--variants` picks a set:

    (a) light two-tower, mixed_bce            (b) light, pooled_infonce       (c) light, GHCL
    (d) heavy on all samples, mixed_bce       (e) heavy on all samples, GHCL: the heavy model as a
        one-stage pre-ranker on every candidate
    (us), (um) the heavy architecture narrowed to about 13% and 27% of its FLOPs (NARROW_HEAVY;
        (us) is the pipeline's second stage), on every candidate: with (c) and (e), the
        uniform-scaling curve that routing must beat
    (f) HAP as the pipeline pushes it (CascadeSettings' policy, routed to the pipeline's heavy model)
    (<policy>-<heavy>-<f>) every routing policy of serving/routing.py (top_k, band, adaptive, learned)
        x the heavy model it routes to (hard: full size, trained on EP, EN, RN as the paper
        trains it; all: full size, trained on every group; narrow: the pipeline's) x route
        fraction f (5%, 10%, 20%, 50% by default).

    (c-gradnorm), (c-ghm), (c-pcgrad), (c-sampled), (c-bce), (c-batch_en) light, GHCL with each
        other harmonising rule, with conflict-sensitive sampling, with BCE as one more path, or
        with EN contrasted across the batch's requests (models/losses.py); (d-pooled) heavy on
        all samples, pooled_infonce; (e-sampled) heavy on all samples, GHCL with sampling

"losses" is (a)-(e) with the rule variants; "routing" is (c), (us), (um), (e) and the
cascades; "all" is both without the rule variants (eight more trainings per seed, which the
routing comparison does not read). benchmark.md's "Losses" section and, over several datasets,
summary.md's gain plot compare every loss with its model's pooled_infonce.

How. The TFX pipeline runs once (`hap.pipeline.local_runner.run`, cached across runs) for its
Transform output; every model is then trained in-process with `trainer_module.train` on the
transformed examples, as the pipeline's Trainer does, once per seed. The heavy models are full
size unless named narrow; the paper's is `TrainerSettings(sample_routing="hard_only")`.

Scoring, with the same metric code as `hap evaluate` (evaluation/evaluate.py):
- logged samples of the eval day: the Keras models on the transformed eval split;
- funnel/ (when present): one request per call through `serving.cascade.CascadeModule`, the
  class the cascade SavedModel is saved from, so Transform and the per-request user tower run
  as served;
- a cascade's order is made from its two models' logits (and the light model's difficulty
  router's, for the learned policy) request by request by
  serving/routing.py, the module the cascade signature calls (tests/test_cascade_model.py
  proves the SavedModel equals it), so the sweep needs no model per policy and fraction.
  The adaptive policy's margin is calibrated per seed and fraction on the light logits of the
  compute requests (no labels), so that its mean routed share is the fraction.

Compute: FLOPs per request from `serving.flops.model_flops` + `request_flops` (the same counts
the assembler stores with the cascade) on the compute requests (funnel/ if present, where
N ~ 1000 is what pre-ranking serves, else the logged eval requests), with each cascade's routed
count per request. Latency depends on the architecture, not the loss or seed: it is measured
once, with the first seed's models, per architecture as in-process calls of the tf.function'd
CascadeModule methods on up to `latency_requests` compute requests. Training time is the wall
time of `trainer_module.train` (with its per-epoch evaluation and the gradient-conflict probe,
which every model runs alike); a HAP variant's is its two models' sum.

Claims (`routing_claims`), per routing family, with funnel/: no harm (Recall@200 never below
the light model's beyond one standard deviation), the light-to-heavy gap recovered (80% of it on
Recall@100 and NDCG@100 within 25% of heavy-on-all FLOPs), and better than the uniform-scaling
curve at equal FLOPs.

Outputs under OUT/report (written to a temporary folder and moved into place):
`benchmark.md` (the claims and tables), `benchmark.json` (every number of every seed),
`pareto.png` (quality against FLOPs per request: the routing families' curves against the
uniform-scaling curve) and `gradient_conflict.png` (cosine between per-source gradients over
training), and the training logs under `logs/`.
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
from hap.data.sample_routing import HARD_ONLY, HEAVY, LIGHT, MEAN_AUC
from hap.evaluation import evaluate as ev
from hap.evaluation import report
from hap.evaluation.defaults import (DEFAULT_KS, DEFAULT_LATENCY_REQUESTS, DEFAULT_ROUTE_FRACTIONS, DEFAULT_SEEDS,
                                     VARIANT_SETS)
from hap.evaluation.top_k_metrics import FUNNEL_KS
from hap.models import request_records, trainer_module, training, transformed
from hap.pipeline import local_runner, run_report
from hap.serving import cascade, flops, routing
from hap.serving import request as rq
from hap.tree import default_value

CASCADE = "cascade"
# What the metrics read of the eval records besides the scores.
EVALUATION_COLUMNS = (transformed.LABEL, transformed.SAMPLE_GROUP, transformed.REQUEST_KEY)


@dataclasses.dataclass(frozen=True)
class ModelRecipe:
    """One model to train: its `trainer_module.TrainerSettings` fields besides seed and max_epochs."""

    model: str
    loss: str
    sample_routing: str = ""
    model_config: dict = dataclasses.field(default_factory=dict)


# The uniform-scaling baselines: the heavy architecture narrowed to about 13% (s: the pipeline's
# second stage) and 27% (m) of its FLOPs per candidate on the simulator's features (about what the
# cascade spends routing 10% and 20% of the candidates to the full model), trained on every
# candidate, so that the cascade meets one model of its own compute.
NARROW_HEAVY = {
    "s": default_value("heavy.trainer.model_config"),
    "m": {"embedding_dim": 8, "cross_projection_dim": 32, "deep_units": [64, 32]},
}

# GHCL's other harmonising rules, its conflict-sensitive sampling, BCE as a path and the batch-wide
# EN contrast (models/losses.py), in the "losses" set: each on the light model, and on the heavy
# model the one a one-seed pilot of the light models on the default data ranked first
# (docs/decisions/0002-ghcl-default-loss.md), which is also among the cheapest per step (benchmarks/loss_rules.py): the
# heavy step with gradnorm or pcgrad costs several times GHCL's, more than the benchmark's time
# allows.
LIGHT_RULES = ("ghcl_gradnorm", "ghcl_ghm", "ghcl_pcgrad", "ghcl_sampled", "ghcl_bce", "ghcl_batch_en")
HEAVY_RULES = ("ghcl_sampled",)

MODELS = {
    "light_mixed_bce": ModelRecipe(LIGHT, "mixed_bce"),
    "light_pooled_infonce": ModelRecipe(LIGHT, "pooled_infonce"),
    "light_ghcl": ModelRecipe(LIGHT, "ghcl"),
    "heavy_all_mixed_bce": ModelRecipe(HEAVY, "mixed_bce"),
    "heavy_all_ghcl": ModelRecipe(HEAVY, "ghcl"),
    "heavy_hard_ghcl": ModelRecipe(HEAVY, "ghcl", sample_routing=HARD_ONLY),
    **{f"heavy_narrow_{size}_ghcl": ModelRecipe(HEAVY, "ghcl", model_config=config)
       for size, config in NARROW_HEAVY.items()},
    # The loss comparison's GHCL rules (models/losses.py GHCL_VARIANTS) and the heavy model's pooled baseline.
    **{f"light_{loss}": ModelRecipe(LIGHT, loss) for loss in LIGHT_RULES},
    "heavy_all_pooled_infonce": ModelRecipe(HEAVY, "pooled_infonce"),
    **{f"heavy_all_{loss}": ModelRecipe(HEAVY, loss) for loss in HEAVY_RULES},
}
# The models a cascade may route to: the full-size heavy model trained on the hard groups (as the
# paper does) or on every group (it has seen candidates like the whole band), and the pipeline's
# narrowed heavy model, trained on every group: a cheaper second stage that can be given more of
# the candidates for the same FLOPs.
ROUTED_HEAVY = {"hard": "heavy_hard_ghcl", "all": "heavy_all_ghcl", "narrow": "heavy_narrow_s_ghcl"}


@dataclasses.dataclass(frozen=True)
class Variant:
    """A scorer of the benchmark: one model on every candidate, or a cascade of two routed by
    `policy` (a `routing.RoutingPolicy` kind) at `route_fraction`; the adaptive policy's margin is
    calibrated per seed (`policy_for`)."""

    key: str
    label: str
    light: str | None = None
    heavy: str | None = None
    policy: str | None = None
    route_fraction: float | None = None
    cutoff: int | None = None

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(m for m in (self.light, self.heavy) if m)

    @property
    def is_cascade(self) -> bool:
        return self.policy is not None

    @property
    def architecture(self) -> str:
        """What latency depends on: the model on every candidate, or the cascade's routing."""
        if self.is_cascade:
            return f"{CASCADE}:{self.policy}@{self.cutoff}:{self.route_fraction:g}:{self.heavy}"
        return self.models[0] if self.heavy else LIGHT

    @property
    def family(self) -> str | None:
        """A cascade's policy and routed heavy model: the fractions of one family form a curve."""
        if not self.is_cascade or self.key == "f":
            return None
        policy = self.policy if self.policy in CUTOFF_FREE else f"{self.policy} around {self.cutoff}"
        return f"{policy}, heavy {next(k for k, m in ROUTED_HEAVY.items() if m == self.heavy)}"


# The variants of each --variants set, by key; the cascade sweep is added to "routing" and "all".
RULE_KEY = {"ghcl_gradnorm": "gradnorm", "ghcl_ghm": "ghm", "ghcl_pcgrad": "pcgrad", "ghcl_sampled": "sampled",
            "ghcl_bce": "bce", "ghcl_batch_en": "batch_en"}
LOSS_KEYS = ("a", "b", "c", *(f"c-{RULE_KEY[r]}" for r in LIGHT_RULES), "d", "d-pooled", "e",
             *(f"e-{RULE_KEY[r]}" for r in HEAVY_RULES))
# Per model, the loss comparison's baselines (benchmark.md's "Losses" table and the gain plot).
LOSS_BASELINES = {LIGHT: ("a", "b"), HEAVY: ("d", "d-pooled")}
UNIFORM_KEYS = ("c",) + tuple(f"u{size}" for size in NARROW_HEAVY) + ("e",)  # light, then wider to heavy


# The output sizes the band and adaptive policies centre on: the funnel metrics' two cut-offs (a
# band around 200 cannot change a top 100, and one around 100 is too narrow for a top 200).
POLICY_CUTOFFS = FUNNEL_KS
# The policies that do not centre on a cut-off.
CUTOFF_FREE = (routing.TOP_K, routing.LEARNED)


def router_key(light_model: str) -> str:
    """Where a light model's difficulty-router logits sit beside the models' logits."""
    return f"{light_model}:router"


def variants(route_fractions=DEFAULT_ROUTE_FRACTIONS, which: str = "all",
             policies=routing.POLICIES) -> list[Variant]:
    """The benchmark's scorers. "losses": the single models of the loss comparison, (a)-(e) and
    GHCL's other rules (LOSS_KEYS);
    "routing": the light and heavy GHCL models, the uniform-scaling models, HAP as the pipeline
    builds it (f) and every policy (band and adaptive at each of POLICY_CUTOFFS) x routed heavy
    model x fraction; "all": both, without the rule variants."""
    if which not in VARIANT_SETS:
        raise ValueError(f"variant set must be one of {VARIANT_SETS}, got {which!r}")
    hap = cascade.CascadeSettings().routing
    singles = [
        Variant("a", "light, mixed_bce", light="light_mixed_bce"),
        Variant("b", "light, pooled_infonce", light="light_pooled_infonce"),
        Variant("c", "light, GHCL", light="light_ghcl"),
        Variant("d", "heavy on all samples, mixed_bce", heavy="heavy_all_mixed_bce"),
        Variant("e", "heavy on all samples, GHCL", heavy="heavy_all_ghcl"),
    ] + [Variant(f"u{size}", f"heavy narrowed ({size}) on every candidate, GHCL", heavy=f"heavy_narrow_{size}_ghcl")
         for size in NARROW_HEAVY]
    cascades = [Variant("f", f"HAP as pushed: {hap.label}, heavy narrow", light="light_ghcl",
                        heavy=ROUTED_HEAVY["narrow"], policy=hap.kind, route_fraction=hap.fraction, cutoff=hap.cutoff)]
    for policy in policies:
        for cutoff in ((hap.cutoff,) if policy in CUTOFF_FREE else POLICY_CUTOFFS):
            name = policy if policy in CUTOFF_FREE else f"{policy}@{cutoff}"
            for heavy_kind, heavy_model in ROUTED_HEAVY.items():
                for fraction in sorted(set(route_fractions)):
                    cascades.append(Variant(f"{name}-{heavy_kind}-{fraction:.0%}",
                                            f"HAP, {name} {fraction:.0%}, heavy {heavy_kind}",
                                            light="light_ghcl", heavy=heavy_model, policy=policy,
                                            route_fraction=fraction, cutoff=cutoff))
    if which == "losses":
        rules = [Variant(f"c-{RULE_KEY[r]}", f"light, GHCL {RULE_KEY[r]}", light=f"light_{r}") for r in LIGHT_RULES]
        rules += [Variant("d-pooled", "heavy on all samples, pooled_infonce", heavy="heavy_all_pooled_infonce")]
        rules += [Variant(f"e-{RULE_KEY[r]}", f"heavy on all samples, GHCL {RULE_KEY[r]}", heavy=f"heavy_all_{r}")
                  for r in HEAVY_RULES]
        return sorted([v for v in singles if v.key in LOSS_KEYS] + rules, key=lambda v: LOSS_KEYS.index(v.key))
    if which == "routing":
        return [v for v in singles if v.key in UNIFORM_KEYS] + cascades
    return singles + cascades


def policy_for(variant: Variant, margins: dict) -> routing.RoutingPolicy:
    """The variant's routing policy; `margins`: the adaptive policy's calibrated margin per
    (fraction, cutoff)."""
    margin = margins[(variant.route_fraction, variant.cutoff)] if variant.policy == routing.ADAPTIVE else None
    return routing.RoutingPolicy(variant.policy, variant.route_fraction, cutoff=variant.cutoff, margin=margin,
                                 combine=cascade.CascadeSettings().routing.combine)


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
                 policy: routing.RoutingPolicy | None = None):
        settings = cascade.CascadeSettings() if policy is None else cascade.CascadeSettings(routing=policy)
        module = cascade.CascadeModule(light, heavy, tft_layer, inputs.tft_output.raw_feature_spec(),
                                       inputs.features, settings)
        self._layout = rq.RequestLayout(inputs.features)
        signature = [self._layout.signature()]
        self._module = module  # the tf.functions below hold its methods, and so the module
        self.functions = {LIGHT: tf.function(module.light_logits, input_signature=signature, autograph=False),
                          HEAVY: tf.function(module.heavy_logits, input_signature=signature, autograph=False),
                          CASCADE: tf.function(module.cascade, input_signature=signature, autograph=False)}

    def logits(self, which: str, requests: list[dict], output: str = "logits") -> np.ndarray:
        fn = self.functions[which]
        return np.concatenate([fn(self._layout.to_tensors(r))[output].numpy() for r in requests])

    def latency_ms(self, which: str, requests: list[dict]) -> list[float]:
        fn = self.functions[which]
        tensors = [self._layout.to_tensors(r) for r in requests]
        fn(tensors[0])  # traces the function: not part of a served call
        out = []
        for t in tensors:
            start = time.perf_counter()
            tf.nest.map_structure(lambda x: x.numpy(), fn(t))
            out.append(1000.0 * (time.perf_counter() - start))
        return out


def train_model(name: str, seed: int, max_epochs: int | None, inputs: Inputs, log_dir: str):
    """Trains MODELS[name]; returns (Keras scorer, seconds, history)."""
    recipe = MODELS[name]
    settings = trainer_module.TrainerSettings(model=recipe.model, loss=recipe.loss, sample_routing=recipe.sample_routing,
                                              model_config=recipe.model_config, seed=seed,
                                              **({"max_epochs": max_epochs} if max_epochs else {}))
    start = time.perf_counter()
    scorer, history = trainer_module.train(settings, inputs.model_inputs, inputs.train, inputs.eval,
                                           os.path.join(log_dir, f"{name}-seed{seed}"))
    return scorer, time.perf_counter() - start, history


def warm_up(inputs: Inputs, log_dir: str, requests: int = 32) -> None:
    """One short, untimed training on a few requests: the first training in a process pays
    TensorFlow's one-off set-up (kernels, tracing machinery), which would otherwise be billed to
    whichever model is timed first."""
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


def calibrate_margins(request, light_logits, settings) -> dict[tuple, float]:
    """The adaptive policy's margin per (route fraction, cutoff) of `settings`, on unlabelled
    requests' light logits."""
    by_request = [light_logits[rows] for rows in routing.rows_by_request(request)]
    return {(f, cutoff): routing.calibrate_margin(by_request, f, cutoff) for f, cutoff in settings}


def variant_scores(variant: Variant, logits: dict[str, np.ndarray], request, margins: dict):
    """(ranking scores, routed flags or None) of a variant from its models' logits (`logits`:
    model name -> [n]), routed request by request by serving/routing.py."""
    if not variant.is_cascade:
        return logits[variant.models[0]], None
    router = logits[router_key(variant.light)] if variant.policy == routing.LEARNED else None
    return routing.route_requests(policy_for(variant, margins), request, logits[variant.light], logits[variant.heavy],
                                  router)


def model_flops(keras: dict) -> dict:
    """FLOPs per part (serving/flops.py): the light model's two, and per candidate of every
    heavy-architecture model, by model name."""
    parts = {}
    for name, model in keras.items():
        if MODELS[name].model == HEAVY:
            parts[name] = flops.heavy_flops(model)
        elif "light_user" not in parts:
            parts.update(flops.light_flops(model))
    return parts


def variant_flops(variant: Variant, parts: dict, sizes: np.ndarray, routed_counts: np.ndarray | None) -> float:
    """Mean FLOPs per request of the compute part (`sizes`: N per request; `routed_counts`: K
    per request of a cascade)."""
    if variant.is_cascade:
        cost = {**parts, "heavy_per_candidate": parts[variant.heavy]}
        return float(np.mean([flops.request_flops(cost, n, k)["cascade"] for n, k in zip(sizes, routed_counts)]))
    if variant.light:
        return float(np.mean(parts["light_user"] + sizes * parts["light_per_candidate"]))
    return float(np.mean(sizes * parts[variant.heavy]))


def run_seed(seed: int, max_epochs: int | None, inputs: Inputs, tft_layer, chosen: list[Variant], ks, log_dir: str,
             progress) -> dict:
    """Trains every model once with `seed` and evaluates every variant; returns
    {"models": {name: {seconds, per_source_auc, gradient_conflict}}, "metrics": {variant: {...}},
    "flops": {variant: mean FLOPs per compute request}, "margins": {fraction: adaptive margin},
    "keras": {name: model}}."""
    needed = sorted({m for v in chosen for m in v.models}, key=list(MODELS).index)
    request, label, group = _logged_columns(inputs)
    if inputs.funnel is not None:
        f_request, utility = _funnel_columns(inputs)
    # Every Serving stays alive to the end: with each dropped after use, a heavy model's funnel
    # call ran the light trace of a collected module (seen here; tf.function's trace cache of a
    # bound method outlived its module), so no module is collected while its traces may be.
    models, keras, logged_logits, funnel_logits, servings = {}, {}, {}, {}, []
    for name in needed:
        progress.set_postfix_str(f"seed {seed}: training {name}")
        scorer, seconds, history = train_model(name, seed, max_epochs, inputs, log_dir)
        models[name] = {"seconds": seconds, **history}
        keras[name] = scorer
        logged_logits[name] = np.asarray(training.score_records(training.predictor(scorer, inputs.eval), inputs.eval))
        model = MODELS[name].model
        if model == LIGHT:
            logged_logits[router_key(name)] = training.score_records(
                tf.function(scorer.router_logits, reduce_retracing=True, autograph=False), inputs.eval)
        if inputs.funnel is not None:
            servings.append(Serving(inputs, tft_layer, **{model: scorer}))
            funnel_logits[name] = servings[-1].logits(model, inputs.compute_requests)
            if model == LIGHT:
                funnel_logits[router_key(name)] = servings[-1].logits(model, inputs.compute_requests, "router_logits")
        progress.update()
    # FLOPs, and the adaptive policy's calibration, on the requests pre-ranking serves: funnel/
    # when present, else the logged eval requests.
    if inputs.funnel is not None:
        compute_request, compute_logits = f_request, funnel_logits
    else:
        compute_request, compute_logits = request, logged_logits
    adaptive = sorted({(v.route_fraction, v.cutoff) for v in chosen if v.policy == routing.ADAPTIVE})
    margins = calibrate_margins(compute_request, compute_logits["light_ghcl"], adaptive) if adaptive else {}
    parts = model_flops(keras)
    sizes = np.asarray([len(rows) for rows in routing.rows_by_request(compute_request)])
    result, cost = {}, {}
    progress.set_postfix_str(f"seed {seed}: scoring {len(chosen)} variants")
    for v in chosen:
        scores, _ = variant_scores(v, logged_logits, request, margins)
        result[v.key] = {name: m.value for name, m in ev.logged_metrics(request, label, group, scores, ks).items()}
        if inputs.funnel is not None:
            f_scores, _ = variant_scores(v, funnel_logits, f_request, margins)
            result[v.key].update({name: m.value for name, m in ev.funnel_metrics(f_request, utility, f_scores).items()})
        _, routed = variant_scores(v, compute_logits, compute_request, margins)
        counts = None if routed is None else np.asarray(
            [routed[rows].sum() for rows in routing.rows_by_request(compute_request)])
        cost[v.key] = variant_flops(v, parts, sizes, counts)
    return {"models": models, "metrics": result, "flops": cost, "flops_parts": parts, "margins": margins,
            "keras": keras}


def measure_latency(inputs: Inputs, tft_layer, keras: dict, margins: dict, chosen: list[Variant],
                    latency_requests: int) -> dict:
    """In-process latency per architecture (one seed's models), one request per call."""
    timed = inputs.compute_requests[:latency_requests]
    latency, servings = {}, []  # kept alive: see run_seed
    for v in chosen:
        if v.architecture in latency:
            continue
        if v.is_cascade:
            servings.append(Serving(inputs, tft_layer, keras[v.light], keras[v.heavy], policy_for(v, margins)))
            which = CASCADE
        else:
            which = LIGHT if v.light else HEAVY
            servings.append(Serving(inputs, tft_layer, **{which: keras[v.models[0]]}))
        latency[v.architecture] = ev.latency_summary(servings[-1].latency_ms(which, timed))
    return latency


# ---------------------------------------------------------------------------------------------
# The whole run


def summarise(per_seed: list[dict], chosen: list[Variant]) -> dict:
    """Mean, std (population, over seeds) and values of every metric, the training time and the
    FLOPs per request."""
    out = {}
    for v in chosen:
        entry = {}
        for name in per_seed[0]["metrics"][v.key]:
            entry[name] = _stats([s["metrics"][v.key][name] for s in per_seed])
        entry["train_seconds"] = _stats([sum(s["models"][m]["seconds"] for m in v.models) for s in per_seed])
        entry["flops"] = _stats([s["flops"][v.key] for s in per_seed])
        out[v.key] = entry
    return out


def _stats(values) -> dict:
    values = np.asarray(values, np.float64)
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values.tolist()}


# What "HAP's routing claim holds" means, per dataset (issue "difficulty-aware routing"): the
# quality metrics, the compute budget and the share of the light-to-heavy gap to recover.
NO_HARM_METRIC = "oracle_recall@200"
GAP_METRICS = ("oracle_recall@100", "ndcg@100")
BUDGET_SHARE, GAP_SHARE = 0.25, 0.8
LIGHT_KEY, HEAVY_KEY = "c", "e"


def _paired_diff(per_seed: list[dict], key: str, other: str, metric: str) -> np.ndarray:
    return np.array([s["metrics"][key][metric] - s["metrics"][other][metric] for s in per_seed], np.float64)


def uniform_curve(result: dict, metric: str, flops_value: float) -> float | None:
    """The uniform-scaling models' `metric` at `flops_value` FLOPs per request, linearly
    interpolated in log FLOPs between the two models around it (None outside their range)."""
    points = sorted((result["summary"][k]["flops"]["mean"], result["summary"][k][metric]["mean"])
                    for k in UNIFORM_KEYS if k in result["summary"])
    xs, ys = np.log([p[0] for p in points]), [p[1] for p in points]
    x = np.log(flops_value)
    if not points or x < xs[0] or x > xs[-1]:
        return None
    return float(np.interp(x, xs, ys))


def routing_claims(result: dict) -> list[dict]:
    """Per cascade family (policy x routed heavy model), whether each claim holds on this dataset:
    no_harm: at every fraction, Recall@200 is not below the light model's by more than one
    standard deviation of the per-seed difference;
    recovers_gap: some fraction within BUDGET_SHARE of heavy-on-all FLOPs recovers GAP_SHARE of
    the light-to-heavy gap on every GAP_METRICS metric;
    beats_uniform: that same fraction beats the uniform-scaling curve at its FLOPs on them.
    Needs funnel/ (the metrics are the funnel's); an empty list otherwise."""
    if not result["funnel"] or not {LIGHT_KEY, HEAVY_KEY} <= set(result["summary"]):
        return []
    per_seed, summary = result["per_seed"], result["summary"]
    budget = BUDGET_SHARE * summary[HEAVY_KEY]["flops"]["mean"]
    families: dict[str, list[dict]] = {}
    for v in result["variants"]:
        if v["family"]:
            families.setdefault(v["family"], []).append(v)
    out = []
    for family, members in families.items():
        worst_harm, best = None, None
        for v in members:
            diff = _paired_diff(per_seed, v["key"], LIGHT_KEY, NO_HARM_METRIC)
            margin = float(diff.mean() + diff.std())
            worst_harm = margin if worst_harm is None else min(worst_harm, margin)
            if summary[v["key"]]["flops"]["mean"] > budget:
                continue
            recovered = {}
            for metric in GAP_METRICS:
                gap = summary[HEAVY_KEY][metric]["mean"] - summary[LIGHT_KEY][metric]["mean"]
                gain = summary[v["key"]][metric]["mean"] - summary[LIGHT_KEY][metric]["mean"]
                recovered[metric] = gain / gap if gap > 0 else float("inf") if gain >= 0 else float("-inf")
            uniform = {m: uniform_curve(result, m, summary[v["key"]]["flops"]["mean"]) for m in GAP_METRICS}
            candidate = {"key": v["key"], "route_fraction": v["route_fraction"], "recovered": recovered,
                         "uniform_at_equal_flops": uniform,
                         "flops_share_of_heavy": summary[v["key"]]["flops"]["mean"] / summary[HEAVY_KEY]["flops"]["mean"]}
            if best is None or min(recovered.values()) > min(best["recovered"].values()):
                best = candidate
        out.append({
            "family": family, "no_harm": worst_harm >= 0, "worst_recall200_diff_plus_std": worst_harm,
            "best_within_budget": best,
            "recovers_gap": best is not None and all(r >= GAP_SHARE for r in best["recovered"].values()),
            "beats_uniform": best is not None and all(
                u is not None and summary[best["key"]][m]["mean"] > u for m, u in best["uniform_at_equal_flops"].items()),
        })
    return out


# What "GHCL earns its name" means on one dataset (issue 13): a GHCL variant's mean per-source
# AUC above pooled_infonce's by more than LOSS_STDS standard deviations of both, above mixed_bce's
# by MIXED_MARGIN, and (with funnel/) no loss of Recall@100 against either beyond one standard
# deviation of the per-seed difference.
LOSS_STDS, MIXED_MARGIN, LOSS_RECALL = 2.0, 0.015, "oracle_recall@100"
# The GHCL variants of each model: (c) and the c-<rule> keys, (e) and the e-<rule> keys.
GHCL_PREFIX = {LIGHT: "c", HEAVY: "e"}


def loss_claims(result: dict) -> list[dict]:
    """Per variant of the loss comparison but its model's pooled_infonce (LOSS_BASELINES): its
    per-seed paired gains over pooled_infonce (`gains`: metric -> [mean, std]) and, for the GHCL
    variants, its gains over both baselines and whether the criteria above hold (`holds`; None
    for mixed_bce); empty without the baselines."""
    summary, per_seed = result["summary"], result["per_seed"]
    metrics = [MEAN_AUC] + ([LOSS_RECALL] if result["funnel"] else [])
    out = []
    for model, (mixed, pooled) in LOSS_BASELINES.items():
        if not {mixed, pooled} <= set(summary):
            continue
        prefix = GHCL_PREFIX[model]
        for v in result["variants"]:
            key = v["key"]
            ghcl = key == prefix or key.startswith(prefix + "-")
            if key != mixed and not ghcl:
                continue
            gains = {m: [float(d.mean()), float(d.std())] for m in metrics
                     for d in [_paired_diff(per_seed, key, pooled, m)]}
            entry = {"model": model, "key": key, "label": v["label"], "gains": gains, "holds": None}
            if ghcl:
                auc, base = summary[key][MEAN_AUC], summary[pooled][MEAN_AUC]
                gain = auc["mean"] - base["mean"]
                over_mixed = auc["mean"] - summary[mixed][MEAN_AUC]["mean"]
                recall = None
                if result["funnel"]:
                    recall = all(float(d.mean() + d.std()) >= 0 for d in (
                        _paired_diff(per_seed, key, other, LOSS_RECALL) for other in (mixed, pooled)))
                beats_pooled = gain > LOSS_STDS * auc["std"] and gain > LOSS_STDS * base["std"]
                entry.update({"gain_over_pooled": gain, "gain_over_mixed": over_mixed, "beats_pooled": beats_pooled,
                              "beats_mixed": over_mixed >= MIXED_MARGIN, "keeps_recall": recall,
                              "holds": beats_pooled and over_mixed >= MIXED_MARGIN and recall is not False})
            out.append(entry)
    return out


def machine() -> dict:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
            "gpus": [d.name for d in tf.config.list_physical_devices("GPU")]}


def benchmark(data_dir: str, out_dir: str, run_dir: str | None = None, seeds=DEFAULT_SEEDS, max_epochs: int | None = None,
              route_fractions=DEFAULT_ROUTE_FRACTIONS, ks=DEFAULT_KS, which: str = "all",
              latency_requests: int = DEFAULT_LATENCY_REQUESTS, overwrite: bool = False,
              progress: bool = True, only=None, settings=None) -> dict:
    """Runs the benchmark (module docstring); returns the content of benchmark.json.

    `run_dir`: a finished `hap run` output made from `data_dir` whose Transform output is used
    as is; by default the pipeline runs into OUT/run (served from its cache when it already ran).
    `which`: the variant set (`variants`); `only`: the keys of those variants to run (all by default).
    `settings`: the pipeline's settings tree (hap/settings.py; default: hap/defaults.yaml).
    """
    seeds = list(dict.fromkeys(int(s) for s in seeds))
    if not seeds:
        raise ValueError("at least one seed is needed")
    if (max_epochs is not None and max_epochs < 1) or latency_requests < 1:
        raise ValueError(f"max_epochs and latency_requests must be >= 1, got {max_epochs} and {latency_requests}")
    if not route_fractions or not all(0.0 < f <= 1.0 for f in route_fractions):
        raise ValueError(f"route fractions must be in (0, 1], got {list(route_fractions)}")
    chosen = variants(route_fractions, which)
    if only:
        unknown = sorted(set(only) - {v.key for v in chosen})
        if unknown:
            raise ValueError(f"no variant {', '.join(unknown)} in the {which!r} set; it has {', '.join(v.key for v in chosen)}")
        chosen = [v for v in chosen if v.key in set(only)]
    ks = tuple(sorted(set(int(k) for k in ks)))
    report_dir = os.path.join(out_dir, "report")
    if os.path.exists(report_dir) and os.listdir(report_dir) and not overwrite:
        raise FileExistsError(f"{report_dir}: already exists and is not empty (pass --overwrite to replace it)")
    c.load_features(data_dir)  # a bad features.yaml fails here, before the pipeline runs
    load_start = os.getloadavg()
    started = time.time()
    if run_dir is None:
        run_dir = os.path.join(out_dir, "run")
        local_runner.run(data_dir, run_dir, settings)
    pipeline_seconds = time.time() - started

    inputs = load_inputs(data_dir, run_dir)
    tft_layer = inputs.tft_output.transform_features_layer()
    needed = {m for v in chosen for m in v.models}
    with writer.atomic_directory(report_dir, overwrite=overwrite) as tmp:
        log_dir = os.path.join(tmp, "logs")
        per_seed, latency = [], None
        warm_up(inputs, log_dir)
        with tqdm(total=len(seeds) * len(needed), desc="benchmark trainings", unit="model",
                  disable=not progress, file=ev.progress_stream(progress)) as bar:
            for seed in seeds:
                seed_result = run_seed(seed, max_epochs, inputs, tft_layer, chosen, ks, log_dir, bar)
                keras = seed_result.pop("keras")
                if latency is None:
                    bar.set_postfix_str("measuring latency")
                    latency = measure_latency(inputs, tft_layer, keras, seed_result["margins"], chosen,
                                              latency_requests)
                seed_result["margins"] = {f"{f:g}@{cutoff}": m for (f, cutoff), m in seed_result["margins"].items()}
                per_seed.append({"seed": seed, **seed_result})
        sizes = [rq.RequestLayout(inputs.features).num_candidates(r) for r in inputs.compute_requests]
        result = ev.jsonable({
            "data": os.path.abspath(data_dir), "run": os.path.abspath(run_dir), "eval_day": inputs.eval_day,
            "seeds": seeds, "max_epochs": max_epochs or trainer_module.TrainerSettings().max_epochs, "ks": list(ks),
            "funnel": inputs.funnel is not None, "variant_set": which,
            "routing": dataclasses.asdict(cascade.CascadeSettings().routing),
            "variants": [{**dataclasses.asdict(v), "family": v.family} for v in chosen],
            "models": {k: dataclasses.asdict(r) for k, r in MODELS.items() if k in needed},
            "summary": summarise(per_seed, chosen),
            "compute": {"part": inputs.compute_part, "requests": len(sizes), "candidates_mean": float(np.mean(sizes)),
                        "latency": latency, "architecture": {v.key: v.architecture for v in chosen}},
            "per_seed": per_seed,
            "machine": {**machine(), "load_average_at_start": load_start, "load_average_at_end": os.getloadavg()},
            "seconds": {"pipeline": pipeline_seconds, "total": time.time() - started},
        })
        result["claims"] = ev.jsonable(routing_claims(result))
        result["loss_claims"] = ev.jsonable(loss_claims(result))
        with open(os.path.join(tmp, "benchmark.json"), "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
        report.write_benchmark_report(result, tmp)
    return result
