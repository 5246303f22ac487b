"""serving/routing.py, the one routing module of the cascade graph, `hap evaluate` and
`hap benchmark`: each policy's routed set and final order on hand-built requests with known
answers, and the adaptive policy's calibration to its budget."""
import numpy as np
import pytest
import tensorflow as tf

from hap.serving import routing
from hap.serving.routing import ADAPTIVE, BAND, LEARNED, ROUTED_FIRST, TOP_K, RoutingPolicy


def _order(keys) -> list[int]:
    return np.argsort(-np.asarray(keys), kind="stable").tolist()


@pytest.mark.parametrize("n, fraction, k", [(1, 0.1, 1), (10, 0.1, 1), (11, 0.1, 2), (1000, 0.1, 100),
                                            (3, 0.5, 2), (7, 1.0, 7), (5, 0.01, 1)])
def test_routed_count_is_the_ceiling_of_the_fraction_between_one_and_n(n, fraction, k):
    assert routing.routed_count(n, fraction) == k
    assert int(routing.routed_count_in_graph(tf.constant(n), fraction)) == k


def test_python_and_graph_counts_agree_for_every_n():
    # 0.07 * 100 = 7.000000000000001 in float64: a float32 product would give 7, not 8.
    for fraction in (0.07, 0.1, 0.2, 0.3, 0.35):
        for n in range(1, 1001):
            assert int(routing.routed_count_in_graph(tf.constant(n), fraction)) == routing.routed_count(n, fraction)


def test_top_k_routes_the_highest_light_logits_ties_to_the_earlier_candidate():
    light = tf.constant([0.1, 0.5, 0.9, 0.5, 0.2])
    routed = routing.routed_mask(RoutingPolicy(TOP_K, fraction=0.4), light)  # K = 2; rows 1 and 3 tie
    assert routed.numpy().tolist() == [False, True, True, False, False]


# Ten candidates whose light order is row 0 first, row 9 last.
LIGHT = np.linspace(5.0, -4.0, 10)


def test_band_routes_the_candidates_around_the_cut_off():
    # K = 4 around cut-off 5: ranks 3..6 (two above the cut, two below).
    routed = routing.routed_mask(RoutingPolicy(BAND, fraction=0.4, cutoff=5), tf.constant(LIGHT))
    assert np.flatnonzero(routed.numpy()).tolist() == [3, 4, 5, 6]
    # Shifted to stay inside the request: the cut-off at the end routes the last K, at 1 the first K.
    routed = routing.routed_mask(RoutingPolicy(BAND, fraction=0.3, cutoff=200), tf.constant(LIGHT))
    assert np.flatnonzero(routed.numpy()).tolist() == [7, 8, 9]
    routed = routing.routed_mask(RoutingPolicy(BAND, fraction=0.3, cutoff=1), tf.constant(LIGHT))
    assert np.flatnonzero(routed.numpy()).tolist() == [0, 1, 2]


def test_learned_routes_the_router_s_hardest_and_reorders_them_in_their_light_places():
    router = np.array([0.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0, 3.0])  # rows 1 and 9 tie: 1 first
    policy = RoutingPolicy(LEARNED, fraction=0.2)  # K = 2
    routed = routing.routed_mask(policy, tf.constant(LIGHT), tf.constant(router))
    assert np.flatnonzero(routed.numpy()).tolist() == [1, 9]
    # The heavy model prefers row 9: it takes row 1's light place (1) and row 1 takes 9's.
    heavy = np.array([0, 1.0, 0, 0, 0, 0, 0, 0, 0, 5.0])
    keys, _ = routing.route_request(policy, LIGHT, heavy, router)
    assert _order(keys) == [0, 9, 2, 3, 4, 5, 6, 7, 8, 1]
    keys, _ = routing.route_requests(policy, np.zeros(10), LIGHT, heavy, router)
    assert _order(keys) == [0, 9, 2, 3, 4, 5, 6, 7, 8, 1]
    with pytest.raises(ValueError, match="router logits"):
        routing.routed_mask(policy, tf.constant(LIGHT))


def test_in_place_reorders_the_routed_among_their_own_positions():
    heavy = np.array([9.0, 0, 0, 1.0, 2.0, 3.0, 4.0, 0, 0, 9.0])  # reverses rows 3..6; rows 0, 9 unread
    keys, routed = routing.route_request(RoutingPolicy(BAND, fraction=0.4, cutoff=5), LIGHT, heavy)
    assert _order(keys) == [0, 1, 2, 6, 5, 4, 3, 7, 8, 9]
    np.testing.assert_allclose(np.sort(keys.numpy()), np.arange(1, 11) / 10)


def test_routed_first_puts_every_routed_candidate_above_the_unrouted():
    heavy = np.array([9.0, 0, 0, 1.0, 2.0, 3.0, 4.0, 0, 0, 9.0])
    policy = RoutingPolicy(BAND, fraction=0.4, cutoff=5, combine=ROUTED_FIRST)
    keys, _ = routing.route_request(policy, LIGHT, heavy)
    assert _order(keys) == [6, 5, 4, 3, 0, 1, 2, 7, 8, 9]


def test_both_combinations_agree_for_top_k():
    rng = np.random.default_rng(0)
    light, heavy = rng.normal(size=50), rng.normal(size=50)
    keys = [routing.route_request(RoutingPolicy(TOP_K, fraction=0.2, combine=combine), light, heavy)[0].numpy()
            for combine in routing.COMBINATIONS]
    np.testing.assert_array_equal(keys[0], keys[1])
    order = _order(keys[0])
    top10 = np.argsort(-light, kind="stable")[:10]
    assert order[:10] == top10[np.argsort(-heavy[top10], kind="stable")].tolist()
    assert order[10:] == np.argsort(-light, kind="stable")[10:].tolist()


def test_adaptive_routes_the_candidates_within_the_margin_of_the_cut():
    # Cut-off 3: the cut's logit is row 2's, 3.0; |logit - 3| <= 1.0 holds for rows 1..3.
    routed = routing.routed_mask(RoutingPolicy(ADAPTIVE, fraction=0.3, cutoff=3, margin=1.0), tf.constant(LIGHT))
    assert np.flatnonzero(routed.numpy()).tolist() == [1, 2, 3]
    crowded = np.array([5.0, 3.1, 3.05, 3.0, 2.95, 2.9, -4.0])  # more candidates near the cut
    routed = routing.routed_mask(RoutingPolicy(ADAPTIVE, fraction=0.3, cutoff=3, margin=1.0), tf.constant(crowded))
    assert np.flatnonzero(routed.numpy()).tolist() == [1, 2, 3, 4, 5]


def test_the_calibrated_margin_meets_the_mean_budget():
    rng = np.random.default_rng(1)
    requests = [rng.normal(scale=rng.uniform(0.5, 3.0), size=rng.integers(300, 1200)) for _ in range(40)]
    for fraction in (0.05, 0.1, 0.25):
        margin = routing.calibrate_margin(requests, fraction, cutoff=200)
        share = routing.mean_routed_share(RoutingPolicy(ADAPTIVE, fraction, cutoff=200, margin=margin), requests)
        assert fraction - 0.01 < share <= fraction + 1e-9
        # Requests whose scores spread more around the cut get fewer candidates routed.
        spread = [np.std(r) for r in requests]
        shares = [routing.routed_mask(RoutingPolicy(ADAPTIVE, fraction, 200, margin), tf.constant(r, tf.float32))
                  .numpy().mean() for r in requests]
        assert np.corrcoef(spread, shares)[0, 1] < -0.5


def test_many_requests_are_routed_as_each_alone():
    request = np.array(["b", "a", "b", "a", "b", "a"])
    light = np.array([0.3, 0.9, 0.1, 0.2, 0.8, 0.5])
    heavy = np.array([1.0, 0.0, 0.0, 1.0, 0.0, 0.0])
    policy = RoutingPolicy(TOP_K, fraction=0.7)  # K = 3 of 3: the heavy model orders all
    keys, routed = routing.route_requests(policy, request, light, heavy)
    assert routed.all()
    for rows in ([1, 3, 5], [0, 2, 4]):
        np.testing.assert_allclose(keys[rows], routing.route_request(policy, light[rows], heavy[rows])[0].numpy())


@pytest.mark.parametrize("settings, message", [
    ({"kind": "random"}, "routing policy must be one of"),
    ({"combine": "sum"}, "score combination"),
    ({"fraction": 0.0}, "route fraction"),
    ({"cutoff": 0}, "cutoff"),
    ({"kind": ADAPTIVE}, "needs a margin"),
])
def test_bad_policies_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        RoutingPolicy(**settings)
