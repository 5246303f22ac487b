import collections
import dataclasses
import filecmp
import os

import numpy as np
import pytest

from conftest import TINY
from hap.data import contract as c
from hap.data import reader, simulator


def _requests(cfg=TINY):
    return list(simulator.FeedSimulator(cfg).requests())


@pytest.fixture(scope="module")
def requests():
    return _requests()


def test_per_request_counts_follow_the_contract(requests):
    lo, hi = TINY.exposed_range
    for r in requests:
        groups = collections.Counter(r.groups)
        assert lo <= groups[c.EP] + groups[c.EN] <= hi
        assert groups[c.RN] == TINY.ranking_negatives
        assert groups[c.PRN] == TINY.preranking_negatives
        assert groups[c.GN] == TINY.global_per_positive * groups[c.EP]
        assert len(set(r.items.tolist())) == len(r.items), "a candidate is sampled twice"


def test_stage_positions_match_the_sources(requests):
    for r in requests:
        exposed = r.source == c.EXPOSED
        assert (r.expose_pos[exposed] >= 0).all() and (r.rank_pos[exposed] < TINY.rank_keep).all()
        assert (r.expose_pos[~exposed] == -1).all()
        assert (r.rank_pos[r.source == c.RANKING] >= c.RANK_CUTOFF).all()
        pre = r.source == c.PRERANKING
        assert (r.prerank_pos[pre] >= c.PRERANK_CUTOFF).all() and (r.rank_pos[pre] == -1).all()
        glob = r.source == c.GLOBAL
        assert (r.prerank_pos[glob] == -1).all() and (r.click[glob] == 0).all()
        assert (r.click[~exposed] == 0).all()
        assert sorted(r.expose_pos[exposed]) == list(range(exposed.sum()))


def test_mean_oracle_utility_orders_the_groups(requests):
    util = collections.defaultdict(list)
    for r in requests:
        for g, u in zip(r.groups, r.utility):
            util[g].append(u)
    means = [np.mean(util[g]) for g in c.SAMPLE_GROUPS]
    assert means == sorted(means, reverse=True), dict(zip(c.SAMPLE_GROUPS, means))


def test_clicks_and_positives_are_realistic(requests):
    clicks = np.array([int((r.click == 1).sum()) for r in requests])
    exposed = np.array([int((r.source == c.EXPOSED).sum()) for r in requests])
    ctr = clicks.sum() / exposed.sum()
    assert 0.05 < ctr < 0.3
    assert 0.1 < (clicks == 0).mean() < 0.6, "requests without a positive should be common but not the rule"


def test_truth_has_effects_a_two_tower_dot_product_cannot_represent():
    # Within a request, ordering candidates needs the cross and history terms about as much as
    # the dot product: otherwise a heavy model would have nothing to win.
    sim = simulator.FeedSimulator(TINY)
    w = sim.world
    ratios = []
    for u in range(40):
        hist = w.histories[u]
        if not hist:
            continue
        items = w.retrieve(u, hist, sim.rng)
        t = w.truth_terms(u, hist, 12, 0, items)
        ratios.append(np.std(t["cross"] + t["history"]) / np.std(t["dot"]))
    assert np.median(ratios) > 0.5


def test_history_grows_with_clicks(requests):
    last_seen = {}
    for r in requests:
        if r.user in last_seen:
            prev_history, prev_clicked = last_seen[r.user]
            assert r.history[: len(prev_clicked)] == prev_clicked
        clicked = r.items[r.click == 1][np.argsort(r.expose_pos[r.click == 1])].tolist()
        last_seen[r.user] = (r.history, clicked)


def test_funnel_has_every_retrieved_candidate_with_oracle_utility(tiny_csv):
    rows = list(reader.read_rows(tiny_csv, c.FUNNEL_DIR))
    per_request = collections.defaultdict(list)
    for row in rows:
        per_request[row["request_id"]].append(row)
    assert len(per_request) == TINY.funnel_requests
    for cands in per_request.values():
        assert len(cands) == TINY.retrieval_size
        assert {r["day"] for r in cands} == {TINY.days - 1}
        assert sorted(r["prerank_pos"] for r in cands) == list(range(TINY.retrieval_size))
        assert sum(r["rank_pos"] >= 0 for r in cands) == TINY.prerank_keep
        assert all(0.0 < r[c.ORACLE_COLUMN] < 1.0 for r in cands)
        assert {r["source"] for r in cands} == {c.EXPOSED, c.RANKING, c.PRERANKING}


def test_features_yaml_describes_29_features_with_a_behaviour_sequence(tiny_csv):
    features = c.load_features(tiny_csv)
    assert len(features.listed) == 29
    assert {f.role for f in features.listed} == set(c.ROLES)
    seq = [f for f in features.listed if f.kind == c.SEQUENCE]
    assert any(f.target == "item_id" for f in seq)


def test_missing_values_and_empty_histories_occur(tiny_csv):
    rows = list(reader.read_rows(tiny_csv))
    assert any(r["u_click_seq"] == [] for r in rows)
    assert any(r["i_duration_s"] is None for r in rows) and any(r["i_duration_s"] is not None for r in rows)
    assert any(r["u_gender"] is None for r in rows)


def test_same_seed_same_files_other_seed_other_files(tmp_path, tiny_csv):
    again = str(tmp_path / "again")
    simulator.simulate(again, TINY, progress=False)
    cmp = filecmp.dircmp(tiny_csv, again)
    assert not cmp.diff_files and not cmp.left_only and not cmp.right_only
    for sub in (c.SAMPLES_DIR, c.FUNNEL_DIR):
        names = os.listdir(os.path.join(again, sub))
        _, mismatch, errors = filecmp.cmpfiles(os.path.join(tiny_csv, sub), os.path.join(again, sub), names,
                                               shallow=False)
        assert not mismatch and not errors

    other = str(tmp_path / "other")
    simulator.simulate(other, simulator.SimulationConfig(requests=TINY.requests, funnel_requests=0, seed=8),
                       progress=False)
    assert not filecmp.cmp(os.path.join(tiny_csv, "samples", "day-0.csv"),
                           os.path.join(other, "samples", "day-0.csv"), shallow=False)


def test_csv_and_tfrecord_hold_identical_rows(tiny_csv, tiny_tfrecord):
    for part in (c.SAMPLES_DIR, c.FUNNEL_DIR):
        from_csv = list(reader.read_rows(tiny_csv, part))
        from_tfrecord = list(reader.read_rows(tiny_tfrecord, part))
        assert len(from_csv) == len(from_tfrecord) > 0
        for a, b in zip(from_csv, from_tfrecord):
            assert a == b


def test_requests_size_the_dataset(tmp_path):
    counts = simulator.simulate(str(tmp_path / "d"), simulator.SimulationConfig(requests=10, funnel_requests=0),
                                progress=False)
    assert counts["requests"] == 10
    assert not os.path.exists(tmp_path / "d" / c.FUNNEL_DIR)
    assert counts["samples"] == sum(1 for _ in reader.read_rows(str(tmp_path / "d")))


def _same_files(left: str, right: str) -> bool:
    for sub, _, names in os.walk(left):
        other = os.path.join(right, os.path.relpath(sub, left))
        if sorted(os.listdir(other)) != sorted(os.listdir(sub)):
            return False
        _, mismatch, errors = filecmp.cmpfiles(sub, other, names, shallow=False)
        if mismatch or errors:
            return False
    return True


def _click_rate(reqs) -> float:
    exposed = np.concatenate([r.source == c.EXPOSED for r in reqs])
    return float(np.concatenate([r.click for r in reqs])[exposed].mean())


def test_default_regime_and_default_knobs_write_the_default_files(tmp_path, tiny_csv):
    explicit = dataclasses.replace(TINY, cross_strength=1.0, history_strength=1.0, click_noise=0.0,
                                   click_sparsity=0.0)
    regime = simulator.config_for_regime("default", requests=TINY.requests, funnel_requests=TINY.funnel_requests,
                                         seed=TINY.seed)
    assert explicit == regime == TINY
    simulator.simulate(str(tmp_path / "default"), regime, progress=False)
    assert _same_files(tiny_csv, str(tmp_path / "default"))


def test_sparse_noisy_clicks_are_much_rarer(requests):
    sparse = _requests(simulator.config_for_regime("sparse_noisy", requests=TINY.requests, funnel_requests=0,
                                                   seed=TINY.seed))
    assert _click_rate(sparse) < 0.5 * _click_rate(requests)
    for name in ("very_sparse_noisy", "rare_clicks"):
        very_sparse = _requests(simulator.config_for_regime(name, requests=TINY.requests, funnel_requests=0,
                                                            seed=TINY.seed))
        assert _click_rate(very_sparse) < 0.5 * _click_rate(sparse), name


@pytest.mark.parametrize("knob", [{"click_sparsity": 1.5}, {"click_noise": 0.5}])
def test_click_knobs_leave_the_cascade_alone(knob):
    # Only the first request is comparable: later ones see histories grown from other clicks.
    for seed in range(4):
        base = dataclasses.replace(TINY, seed=seed)
        before = next(simulator.FeedSimulator(base).requests())
        after = next(simulator.FeedSimulator(dataclasses.replace(base, **knob)).requests())
        shown, shown_after = before.source == c.EXPOSED, after.source == c.EXPOSED
        for field in ("items", "expose_pos", "rank_pos", "prerank_pos", "utility"):
            assert np.array_equal(getattr(before, field)[shown], getattr(after, field)[shown_after]), field
        if "click_sparsity" in knob:
            # The same uniform draws against lower click probabilities.
            assert not (after.click[shown_after] > before.click[shown]).any()


def test_label_noise_flips_its_share_of_exposed_labels_to_coins_at_the_mean_click_probability():
    n = 200_000
    sim = simulator.FeedSimulator(dataclasses.replace(TINY, click_noise=0.3))
    exposed = np.arange(n) % 4 != 0
    p_click = np.where(np.arange(n) % 2 == 0, 0.05, 0.15)  # the exposed items' mean is 0.1
    clicked = sim._add_label_noise(exposed.astype(np.int64), exposed, p_click)
    assert not clicked[~exposed].any()
    assert abs((clicked[exposed] == 0).mean() - 0.3 * 0.9) < 0.01
    unclicked = sim._add_label_noise(np.zeros(n, dtype=np.int64), exposed, p_click)
    assert abs(unclicked[exposed].mean() - 0.3 * 0.1) < 0.005


def test_light_enough_scales_down_exactly_the_terms_a_two_tower_model_cannot_see():
    default, light = (simulator.FeedWorld(simulator.config_for_regime(name, requests=TINY.requests, seed=TINY.seed))
                      for name in ("default", "light_enough"))
    light_knobs = simulator.REGIMES["light_enough"]
    items = np.arange(0, TINY.n_items, 7)
    shares = {"default": [], "light_enough": []}
    for u in range(40):
        hist = default.histories[u]
        if not hist:
            continue
        terms, light_terms = default.truth_terms(u, hist, 12, 0, items), light.truth_terms(u, hist, 12, 0, items)
        np.testing.assert_allclose(light_terms["cross"], light_knobs["cross_strength"] * terms["cross"], rtol=1e-12)
        np.testing.assert_allclose(light_terms["history"], light_knobs["history_strength"] * terms["history"],
                                   rtol=1e-12)
        for name in ("dot", "item", "content_type"):
            assert np.array_equal(light_terms[name], terms[name])
        for regime, t in (("default", terms), ("light_enough", light_terms)):
            shares[regime].append(np.var(t["cross"] + t["history"]) / np.var(sum(t.values())))
    assert np.median(shares["light_enough"]) < 0.1 * np.median(shares["default"])


def test_unknown_regime_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="'realistic'.*default, sparse_noisy, very_sparse_noisy, rare_clicks, light_enough"):
        simulator.config_for_regime("realistic")


@pytest.mark.parametrize("knob,value", [
    ("cross_strength", -0.1), ("history_strength", float("nan")), ("click_sparsity", float("inf")),
    ("click_sparsity", -1.0), ("click_noise", 1.0), ("click_noise", -0.01)])
def test_out_of_range_knobs_are_refused_by_name(knob, value):
    with pytest.raises(ValueError, match=knob):
        simulator.SimulationConfig(**{knob: value})


def test_cli_applies_the_regime_and_the_knobs_over_it(tmp_path, capsys):
    from hap import cli

    out = str(tmp_path / "cli")
    assert cli.main(["data", "simulate", "--out", out, "--requests", "20", "--funnel-requests", "0",
                     "--regime", "sparse_noisy", "--click-sparsity", "2", "--quiet"]) == 0
    expected = str(tmp_path / "expected")
    simulator.simulate(expected, simulator.config_for_regime("sparse_noisy", requests=20, funnel_requests=0,
                                                             click_sparsity=2.0), progress=False)
    assert _same_files(out, expected)
    assert cli.main(["data", "simulate", "--out", str(tmp_path / "bad"), "--requests", "20",
                     "--click-noise", "1", "--quiet"]) == 2
    assert "click_noise" in capsys.readouterr().err
