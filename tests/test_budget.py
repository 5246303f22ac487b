"""The cascade within a serving budget (serving/budget.py): options, their costs, the choice.
On a real pipeline's models: components/cascade_assembler/executor_test.py."""
import dataclasses
import math

import numpy as np
import pytest

from hap import settings as hap_settings
from hap.evaluation import evaluate
from hap.serving import budget, routing
from hap.serving.policy import LIGHT_ONLY

# FLOPs: 1 M for the user tower, 20 k per candidate for the light model, 100 k for the heavy one.
PARTS = {"light_user": 1_000_000, "light_per_candidate": 20_000, "heavy_per_candidate": 100_000}


def _settings(mflops, policies=("top_k", "band", "learned"), fractions=(0.05, 0.1, 0.2, 0.5), candidates=1000):
    tree = hap_settings.override(hap_settings.defaults(), {
        "cascade.budget.mflops": mflops, "cascade.budget.policies": list(policies),
        "cascade.budget.fractions": list(fractions), "cascade.budget.candidates": candidates})
    return tree.cascade


def test_an_option_costs_the_light_model_on_every_candidate_and_the_heavy_on_the_routed():
    options = {p.label: budget.mflops(PARTS, p, 1000) for p in budget.policies(_settings(50.0))}
    assert options["light model alone"] == 21.0  # 1 + 1000 * 0.02
    assert options["top_k 10%"] == 21.0 + 100 * 0.1
    assert options["band around 200 50%"] == options["learned 50%"] == 21.0 + 500 * 0.1
    assert len(options) == 3 * 4 + 1


def test_a_budget_below_the_light_models_own_cost_is_refused_naming_the_minimum():
    with pytest.raises(budget.BudgetError, match=r"below the light model's own cost, 21\.0 MFLOPs per request of "
                                                 r"1000 candidates"):
        budget.check_budget(_settings(20.0).budget, PARTS)
    budget.check_budget(_settings(21.0).budget, PARTS)


def _option(label, value, mflops, within=True):
    return {"label": label, "value": value, "mflops": mflops, "within": within}


def test_the_best_option_within_the_budget_wins_and_the_cheaper_on_a_tie():
    chosen, runner_up = budget.choose([_option("a", 0.5, 30), _option("b", 0.7, 40), _option("c", 0.7, 35),
                                       _option("d", 0.9, 60, within=False), _option("e", math.nan, 22)])
    assert (chosen["label"], runner_up["label"]) == ("c", "b")
    alone, none = budget.choose([_option("light", 0.4, 21)])
    assert alone["label"] == "light" and none is None


def _scores() -> budget.Scores:
    """Two requests of 10 candidates with utility 0..9: the light model ranks the best one third
    (8, 7, 9, 6, ...), the heavy model ranks by utility; the metric is the share of requests whose
    first candidate is the best one."""
    utility = np.tile(np.arange(10.0), 2)
    light_one = np.array([0, 1, 2, 3, 4, 5, 6, 8, 9, 7], np.float32)  # item 9 third, after 8 and 7
    request = np.repeat(["a", "b"], 10)

    def hit_at_1(keys):
        return float(np.mean([utility[rows][np.argmax(keys[rows])] == 9 for rows in routing.rows_by_request(request)]))

    light = np.tile(light_one, 2)
    return budget.Scores(evaluate.FUNNEL, request, light, light, utility.astype(np.float32), hit_at_1)


def test_routing_more_than_the_light_models_top_two_finds_the_best_candidate_within_a_budget_that_allows_it():
    # N = 10: routing K costs 1 + 0.2 + 0.1 K MFLOPs; 1.7 allows K = 5 (50%), 1.6 no more than K = 2.
    frontier = budget.frontier(_settings(1.7, candidates=10), PARTS, _scores())
    values = {o["label"]: o["value"] for o in frontier}
    assert values == {"top_k 5%": 0.0, "top_k 10%": 0.0, "top_k 20%": 0.0, "top_k 50%": 1.0,
                      "band around 200 5%": 0.0, "band around 200 10%": 0.0, "band around 200 20%": 0.0,
                      "band around 200 50%": 0.0,  # ranks 5-9 of 10: the best is at rank 2
                      "learned 5%": 0.0, "learned 10%": 0.0, "learned 20%": 0.0, "learned 50%": 1.0,
                      "light model alone": 0.0}
    chosen, runner_up = budget.choose(frontier)
    assert (chosen["label"], runner_up["label"]) == ("top_k 50%", "learned 50%")

    tighter = budget.frontier(_settings(1.6, candidates=10), PARTS, _scores())
    assert {o["label"] for o in tighter if o["within"]} == {
        "top_k 5%", "top_k 10%", "top_k 20%", "band around 200 5%", "band around 200 10%", "band around 200 20%",
        "learned 5%", "learned 10%", "learned 20%", "light model alone"}
    chosen, _ = budget.choose(tighter)
    assert chosen["routing"]["kind"] == LIGHT_ONLY, "no routed option within it does better: the cheapest"


def test_the_light_model_alone_keeps_the_light_order():
    light = np.array([0.3, 2.0, -1.0, 0.7], np.float32)
    policy = dataclasses.replace(_settings(50.0).routing, kind=LIGHT_ONLY)
    keys, routed = routing.route_request(policy, light, np.zeros(4, np.float32))
    assert not routed.numpy().any()
    assert list(np.argsort(-keys.numpy())) == list(np.argsort(-light))


def test_the_two_halves_of_a_days_requests_are_disjoint_and_cover_it(e2e_data):
    from hap.data import contract as c

    features = c.load_features(e2e_data)
    _, whole = evaluate.eval_day_requests(e2e_data, features)
    halves = [evaluate.eval_day_requests(e2e_data, features, half=h)[1] for h in (0, 1)]
    assert not set(halves[0]) & set(halves[1])
    assert set(halves[0]) | set(halves[1]) == set(whole)
    assert min(len(h) for h in halves) > len(whole) // 4
