"""serving/routing.py, the one routing policy of the cascade graph, `hap evaluate` and
`hap benchmark`, on hand-built requests with known answers."""
import numpy as np
import pytest
import tensorflow as tf

from hap.serving import routing


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


def test_the_highest_light_scores_are_routed_ties_to_the_earlier_candidate():
    light = tf.constant([0.1, 0.5, 0.9, 0.5, 0.2])
    assert routing.routed_rows(light, 0.4).numpy().tolist() == [2, 1]  # K = 2; 0.5 at rows 1 and 3 tie


def test_routed_candidates_rank_first_in_heavy_order():
    light = np.array([0.1, 0.5, 0.9, 0.5, 0.2])
    heavy = np.array([0.99, 0.3, 0.2, 0.7, 0.6])
    scores, routed = routing.route_request(light, heavy, 0.4)
    np.testing.assert_allclose(scores.numpy(), [0.1, 1.3, 1.2, 0.5, 0.2])
    assert routed.numpy().tolist() == [False, True, True, False, False]
    # The unrouted 0.99 of the heavy model is never read; the heavy model reorders the routed two.
    assert np.argsort(-scores.numpy(), kind="stable").tolist() == [1, 2, 3, 4, 0]


def test_final_scores_keep_light_probabilities_where_not_routed():
    out = routing.final_scores(tf.constant([0.3, 0.6]), tf.constant([0.0, 0.25]), tf.constant([False, True]))
    np.testing.assert_allclose(out.numpy(), [0.3, 1.25])
