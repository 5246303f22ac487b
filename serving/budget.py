"""The cascade within a serving budget: which routing (policy and routed share) to push, chosen
by measurement on the user's data within a FLOPs budget per request.

Every option is a `RoutingPolicy`: each policy of `cascade.budget.policies` at each share of
`cascade.budget.fractions` (the adaptive policy's margin calibrated to that share on the same
requests' light logits), and the light model alone. An option's cost is the cascade's FLOPs for
a request of `cascade.budget.candidates` candidates (serving/flops.py), counted as served: the
light model on every candidate, the heavy model on the routed ones. Each option is scored by the
cascade's blessing metric (evaluation/evaluate.py `BLESSING_METRICS`: funnel Recall@200 where the
dataset has a funnel/, else GAUC) on one half of the eval day's requests (`CHOOSING_HALF`); the
CascadeAssembler blesses and reports on the other half, so the choice does not grade itself. The
best option within the budget wins, the cheaper on a tie; a budget no routed option meets falls
back to the light model alone, and a budget below the light model's own cost is an error naming
the minimum.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import tensorflow as tf

from hap.data import contract as c
from hap.evaluation import evaluate
from hap.serving import flops, request as rq, routing
from hap.serving.policy import ADAPTIVE, LIGHT_ONLY, BudgetSettings, CascadeSettings, RoutingPolicy

# The half of the eval day's requests (evaluate.RequestSample) that chooses; the other blesses.
CHOOSING_HALF, BLESSING_HALF = 1, 0


class BudgetError(ValueError):
    """A budget below the light model's own cost; the message names the minimum."""


def mflops(parts: dict, policy: RoutingPolicy, n: int) -> float:
    """MFLOPs of one request of `n` candidates with `policy` (parts: flops.model_flops)."""
    return flops.request_flops(parts, n, policy.routed(n))["cascade"] / 1e6


def check_budget(budget: BudgetSettings, parts: dict) -> None:
    light_only = mflops(parts, RoutingPolicy(LIGHT_ONLY, 1.0, 1, None, routing.IN_PLACE), budget.candidates)
    if budget.mflops < light_only:
        raise BudgetError(
            f"cascade.budget.mflops {budget.mflops:g} is below the light model's own cost, {light_only:.1f} MFLOPs "
            f"per request of {budget.candidates} candidates: the budget must be at least that (or null, to route "
            f"as cascade.routing says)")


def policies(settings: CascadeSettings) -> list[RoutingPolicy]:
    """The options: every policy at every share (adaptive's margin still to calibrate), then the
    light model alone; cut-off and score combination are the settings' routing's."""
    base, budget = settings.routing, settings.budget
    options = [dataclasses.replace(base, kind=kind, fraction=fraction, margin=0.0 if kind == ADAPTIVE else None)
               for kind in budget.policies for fraction in budget.fractions]
    return options + [dataclasses.replace(base, kind=LIGHT_ONLY, fraction=1.0, margin=None)]


@dataclasses.dataclass
class Scores:
    """The logits of every candidate of some requests, each request's rows contiguous, and what
    their blessing metric reads."""

    part: str
    request: np.ndarray
    light: np.ndarray
    router: np.ndarray
    heavy: np.ndarray
    metric: object  # score per candidate -> the blessing metric

    def by_request(self) -> list[np.ndarray]:
        return [self.light[rows] for rows in routing.rows_by_request(self.request)]


def score_requests(module, features: c.FeatureSet, data_dir: str, max_requests: int,
                   half: int = CHOOSING_HALF) -> Scores:
    """Light, router and heavy logits of one half's requests (at most `max_requests`), computed
    by the cascade module's own graph pieces, the heavy model on every candidate."""
    part, requests = evaluate.blessing_requests(data_dir, features, max_requests, half)
    if not requests:
        raise ValueError(f"{data_dir}: no {part} requests in half {half} of the eval day")
    layout = rq.RequestLayout(features)
    signature = [layout.signature()]
    light_fn = tf.function(module.light_logits, input_signature=signature, autograph=False)
    heavy_fn = tf.function(module.heavy_logits, input_signature=signature, autograph=False)
    ids, light, router, heavy, label, group, utility = [], [], [], [], [], [], []
    for request_id, rows in requests.items():
        tensors = layout.to_tensors(layout.from_rows(rows))
        light_out = light_fn(tensors)
        light.append(light_out["logits"].numpy())
        router.append(light_out["router_logits"].numpy())
        heavy.append(heavy_fn(tensors)["logits"].numpy())
        ids.extend([request_id] * len(rows))
        if part == evaluate.LOGGED:
            label.extend(r["click"] for r in rows)
            group.extend(evaluate.groups_of(rows))
        else:
            utility.extend(r[c.ORACLE_COLUMN] for r in rows)
    request = np.asarray(ids)
    return Scores(part, request, np.concatenate(light), np.concatenate(router), np.concatenate(heavy),
                  evaluate.part_metric(part, request, label, group, utility))


def value(policy: RoutingPolicy, scores: Scores) -> float:
    """The blessing metric of the cascade routed by `policy` on `scores`' requests."""
    keys, _ = routing.route_requests(policy, scores.request, scores.light, scores.heavy, scores.router)
    return float(scores.metric(keys))


def frontier(settings: CascadeSettings, parts: dict, scores: Scores) -> list[dict]:
    """Every option with its routing, MFLOPs per request of the budget's N, blessing metric on
    the choosing requests and whether it is within the budget."""
    by_request = scores.by_request()
    out = []
    for policy in policies(settings):
        if policy.kind == ADAPTIVE:
            policy = dataclasses.replace(policy, margin=routing.calibrate_margin(by_request, policy.fraction,
                                                                                 policy.cutoff))
        cost = mflops(parts, policy, settings.budget.candidates)
        out.append({"routing": dataclasses.asdict(policy), "label": policy.label, "mflops": cost,
                    "value": value(policy, scores), "within": cost <= settings.budget.mflops})
    return out


def choose(options: list[dict]) -> tuple[dict, dict | None]:
    """The best option within the budget (a NaN metric counts as the worst; the cheaper on a tie)
    and the runner-up (None when it is alone)."""
    within = [o for o in options if o["within"]]

    def key(option):
        value = option["value"]
        return (-math.inf if math.isnan(value) else value, -option["mflops"])

    ranked = sorted(within, key=key, reverse=True)
    return ranked[0], (ranked[1] if len(ranked) > 1 else None)


def choose_routing(module, features: c.FeatureSet, data_dir: str, settings: CascadeSettings,
                   parts: dict) -> tuple[RoutingPolicy, dict]:
    """The routing to push within `settings.budget` and the record of the choice (stored with the
    cascade: every option, the chosen one, the runner-up and the margin)."""
    check_budget(settings.budget, parts)
    scores = score_requests(module, features, data_dir, settings.blessing_requests)
    options = frontier(settings, parts, scores)
    chosen, runner_up = choose(options)
    record = {"mflops": settings.budget.mflops, "candidates": settings.budget.candidates,
              "metric": evaluate.BLESSING_METRICS[scores.part], "part": scores.part,
              "requests": len(routing.rows_by_request(scores.request)), "options": options,
              "chosen": chosen["label"], "runner_up": runner_up["label"] if runner_up else None,
              "margin": chosen["value"] - runner_up["value"] if runner_up else None,
              "light_only": chosen["routing"]["kind"] == LIGHT_ONLY}
    return RoutingPolicy(**chosen["routing"]), record
