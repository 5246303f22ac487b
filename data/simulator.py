"""A simulated news feed that writes a hybrid-sample dataset following the contract.

Generative model
----------------
Population. `n_categories` content categories each have a centroid c_k in R^d (d = `latent_dim`,
N(0, 1/d) entries, so |c_k| ~ 1). An item i has a category k(i) (Zipf popularity), an author, a
content type, a latent vector q_i = c_k(i) + N(0, 0.5^2/d), a quality a_i ~ N(0, 1), a popularity
z-score pop_i and a publication age. A user u has 1-3 interest categories; their preference
vector p_u is the mean of those centroids times 1.5 plus noise, so a user with several interests
has a weaker dot product with each. Users also carry a bias b_u, a per-content-type taste
T[u, t] and an idiosyncratic per-category taste Z[u, k] ~ N(0, 1), independent across (u, k).
Each user starts with a click history drawn from their interests (8% are new users with none);
every simulated click is prepended to it.

Ground truth. For user u with history H_u (the 20 most recent clicks), candidate i and context x,
the click logit is

    s(u, i, x) = b0 + b_u + <p_u, q_i>                        (two-tower representable)
               + 0.7 c_cross Z[u, k(i)]                       (user x category cross, full rank)
               + 1.5 c_hist max_{j in H_u} cos(q_j, q_i)      (affinity of the candidate to the history)
               + 0.4 a_i + 0.2 pop_i + T[u, t(i)] + D[t(i), daypart(x)] - 0.3 log1p(age_i / 24h)

with c_cross = `cross_strength` and c_hist = `history_strength` (both 1 by default, see Regimes),
and `oracle_utility` = sigmoid(s), the expected engagement without position bias. The Z term is
a full-rank user x category table that a low-dimensional dot product of a user and an item
embedding cannot hold; the cross feature `x_user_cat_ctr` reveals it, noisily (as a past-period
click rate it follows c_cross Z, so it loses its use where the cross term does). The history term
is a max over the history, which a pooled history embedding in the user tower cannot express
but target attention of the candidate over the sequence can. Both are what the heavy model
should win on, and they matter most among candidates that already score well on the dot product.

Cascade per request. Retrieval returns `retrieval_size` (~1000) items: up to 100 nearest items
to each of the 3 latest clicks (item-to-item) plus the best by a noisy <p_u, q_i> + pop_i
(user-to-item); it never sees the cross or history terms, like a real embedding retrieval.
Pre-ranking orders all retrieved items by s + N(0, 1.0^2) and keeps the top 200; ranking orders
those by s + N(0, 0.5^2) and keeps the top 50; the feed exposes the top 8-12 of them by
s + N(0, 0.3^2). Each stage is a noisy estimate of the truth with less noise at later stages, so
the sample sources differ in difficulty as in production.

Feedback. An exposed item at position p is clicked with probability
sigmoid(s - `click_sparsity`) (1 + p)^-0.4 (position bias). Then, with probability `click_noise`,
an exposed item's click label is replaced by a coin flip whose heads probability is the mean click
probability of the request's exposed items: noise that leaves the expected number of clicks as it
is but cuts the link between a label and the utility. A click (after noise) is liked with
probability 0.5 sigmoid(s - 1) and commented with probability 0.1 sigmoid(s); a click's dwell time
is log-normal around 30 s, longer when s is high.

Sampling, per request, as the contract says: every exposed item; 10 ranking negatives drawn from
rank positions >= 50; 10 pre-ranking negatives from pre-ranking positions >= 200; 2 random
items per clicked item from the pool outside the retrieved set (positions -1).

Funnel. `funnel_requests` further requests on the last day, held out (they change no history),
with all retrieved candidates, their stage positions, the source of the last stage they reached
and their `oracle_utility`.

Day after day. `append_day` adds one more day to a simulated dataset: the same world (users,
items, tastes) with the histories and seen sets every earlier request left behind, replayed from
`simulation.json`, the record `simulate` writes of its configuration and of every appended day.
The new day has `requests / days` requests and may drift (`DayDrift`): a share `network` of its
requests arrive over the network the fewest users have (context feature `c_network`), and its
click logit moves by `click` (at the feedback stage only, like `click_sparsity`). funnel/ is left
as it is: the held-out requests of the original last day.

Features: 29 anonymised ones (`FEATURES`), all categorical values as random integer codes; some
are missing by design (age and gender of some users, video duration of text items, the past
CTRs and the history match of new users, whose histories are empty).

Regimes
-------
The routing and contrastive-learning benchmarks compare methods across regimes: how much a heavy
model gains over the light one depends on how much of the utility the two towers cannot see, and
how much a loss gains from the unclicked samples depends on how few and how unreliable clicks are.
Four knobs of `SimulationConfig` set this; their defaults reproduce the original simulator
byte for byte under the same seed.

- `cross_strength` (c_cross, >= 0, default 1): multiplies the user x category cross term.
- `history_strength` (c_hist, >= 0, default 1): multiplies the history-affinity term.
- `click_noise` (in [0, 1), default 0): share of exposed items whose click label is a coin flip
  (see Feedback).
- `click_sparsity` (>= 0, default 0): subtracted from the click logit at the feedback stage only,
  so the cascade, the oracle utility and the orderings stay as they are while clicks get rarer.

`REGIMES` names sets of them; `config_for_regime` and `hap data simulate --regime` apply one:

- `default`: the generative model above; the heavy model has cross and history effects to win on.
- `sparse_noisy`: like real logs, clicks several times rarer (`click_sparsity` 1.5) and one
  exposed label in ten a coin flip (`click_noise` 0.1): the negatives' share of the signal grows.
- `very_sparse_noisy`: clicks as rare as in a real feed, about one exposed item in a hundred
  (`click_sparsity` 3), and three exposed labels in ten a coin flip (`click_noise` 0.3): the
  clicks alone say little, the logged negatives much more.
- `rare_clicks`: a real feed's click rate as in `very_sparse_noisy` (`click_sparsity` 3), with
  `sparse_noisy`'s one label in ten a coin flip (`click_noise` 0.1): rare clicks that are mostly
  right. Named before it was measured, as the second real-feed regime of the loss comparison.

The click rate each regime gives is measured, not set: results/legacy/simulator_regimes.json
(docs/data.md, "Regimes").
- `light_enough`: cross and history terms at a tenth (0.1 each), so a two-tower model is nearly
  enough and routing to the heavy model should gain little. `base_logit` goes from -5 to -3.5 to
  make up for what the two terms add on average to the exposed items' logits, keeping the click
  rate near the default's: the regime differs in what drives clicks, not in how many there are.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from typing import Iterator

import numpy as np
from tqdm import tqdm

from hap.data import contract as c
from hap.data import writer as wr

CONTENT_TYPES = ("article", "short_video", "microblog", "long_video")
CONTENT_TYPE_SHARE = (0.45, 0.30, 0.15, 0.10)
VIDEO_TYPES = ("short_video", "long_video")
LABELS = ("like", "comment", "dwell_ms")

F = c.Feature
FEATURES: tuple[c.Feature, ...] = (
    F("u_age_bucket", c.USER, c.CATEGORICAL),
    F("u_gender", c.USER, c.CATEGORICAL),
    F("u_city_tier", c.USER, c.CATEGORICAL),
    F("u_device_os", c.USER, c.CATEGORICAL),
    F("u_activity_level", c.USER, c.NUMERIC),
    F("u_account_age_days", c.USER, c.NUMERIC),
    F("u_interest_cluster", c.USER, c.CATEGORICAL),
    F("u_pref_content_type", c.USER, c.CATEGORICAL),
    F("u_click_seq", c.USER, c.SEQUENCE, max_len=50, target="item_id"),
    F("u_cat_seq", c.USER, c.SEQUENCE, max_len=50, target="i_category"),
    F("c_hour", c.CONTEXT, c.CATEGORICAL),
    F("c_weekday", c.CONTEXT, c.CATEGORICAL),
    F("c_network", c.CONTEXT, c.CATEGORICAL),
    F("c_refresh_idx", c.CONTEXT, c.NUMERIC),
    F("i_category", c.ITEM, c.CATEGORICAL),
    F("i_subcategory", c.ITEM, c.CATEGORICAL),
    F("i_author_id", c.ITEM, c.CATEGORICAL),
    F("i_age_hours", c.ITEM, c.NUMERIC),
    F("i_quality_score", c.ITEM, c.NUMERIC),
    F("i_hist_ctr", c.ITEM, c.NUMERIC),
    F("i_hist_impressions", c.ITEM, c.NUMERIC),
    F("i_duration_s", c.ITEM, c.NUMERIC),
    F("i_title_len", c.ITEM, c.NUMERIC),
    F("i_tag_cluster", c.ITEM, c.CATEGORICAL),
    F("x_user_cat_ctr", c.CROSS, c.NUMERIC),
    F("x_user_author_clicks", c.CROSS, c.NUMERIC),
    F("x_user_ctype_ctr", c.CROSS, c.NUMERIC),
    F("x_hist_cat_match", c.CROSS, c.NUMERIC),
    F("x_user_item_seen", c.CROSS, c.CATEGORICAL),
)
del F
FEATURE_SET = c.FeatureSet(tuple(
    c.Feature(name, role, c.CATEGORICAL) for name, role in c.IMPLICIT_FEATURES.items()) + FEATURES)
SAMPLE_COLUMNS = tuple(c.REQUIRED_COLUMNS) + LABELS + tuple(f.name for f in FEATURES)
FUNNEL_COLUMNS = SAMPLE_COLUMNS + (c.ORACLE_COLUMN,)

# Weights of the ground-truth logit (see the module docstring).
W_CROSS, W_HISTORY, W_QUALITY, W_POP, W_AGE = 0.7, 1.5, 0.4, 0.2, 0.3
HISTORY_WINDOW = 20
POSITION_BIAS = 0.4


@dataclasses.dataclass(frozen=True)
class SimulationConfig:
    requests: int = 3000            # training requests, over all days
    days: int = 3
    seed: int = 0
    funnel_requests: int = 100      # held-out full-funnel requests on the last day
    n_users: int = 1000
    n_items: int = 10000
    n_categories: int = 24
    n_authors: int = 1200
    latent_dim: int = 16
    retrieval_size: int = 1000
    prerank_keep: int = c.PRERANK_CUTOFF
    rank_keep: int = c.RANK_CUTOFF
    exposed_range: tuple[int, int] = (8, 12)
    ranking_negatives: int = 10
    preranking_negatives: int = 10
    global_per_positive: int = 2
    noise_prerank: float = 1.0
    noise_rank: float = 0.5
    noise_expose: float = 0.3
    base_logit: float = -5.0
    # Regime knobs (module docstring, Regimes).
    cross_strength: float = 1.0
    history_strength: float = 1.0
    click_noise: float = 0.0
    click_sparsity: float = 0.0

    def __post_init__(self):
        if self.requests < 1 or self.days < 1 or self.funnel_requests < 0:
            raise ValueError("requests and days must be >= 1, funnel_requests >= 0")
        if not self.rank_keep < self.prerank_keep < self.retrieval_size < self.n_items:
            raise ValueError("need rank_keep < prerank_keep < retrieval_size < n_items")
        if self.exposed_range[1] > self.rank_keep:
            raise ValueError("cannot expose more items than ranking keeps")
        for knob in ("cross_strength", "history_strength", "click_sparsity"):
            value = getattr(self, knob)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{knob} must be a finite number >= 0, got {value!r}")
        # At 1 every label would be a coin flip and say nothing about the utility.
        if not 0 <= self.click_noise < 1:
            raise ValueError(f"click_noise must be in [0, 1), got {self.click_noise!r}")


# Named regimes: SimulationConfig fields that differ from the defaults (module docstring, Regimes).
REGIMES: dict[str, dict] = {
    "default": {},
    "sparse_noisy": {"click_sparsity": 1.5, "click_noise": 0.1},
    "very_sparse_noisy": {"click_sparsity": 3.0, "click_noise": 0.3},
    "rare_clicks": {"click_sparsity": 3.0, "click_noise": 0.1},
    "light_enough": {"cross_strength": 0.1, "history_strength": 0.1, "base_logit": -3.5},
}


def config_for_regime(name: str, **overrides) -> SimulationConfig:
    """The SimulationConfig of regime `name`, with `overrides` (any fields) on top."""
    if name not in REGIMES:
        raise ValueError(f"unknown simulator regime {name!r}; known regimes: {', '.join(REGIMES)}")
    return SimulationConfig(**{**REGIMES[name], **overrides})


@dataclasses.dataclass(frozen=True)
class DayDrift:
    """How an appended day differs from the days before it (module docstring, Day after day).

    network: share, in [0, 1], of the day's requests whose context feature `c_network` is the
    network the fewest users have, whatever the user's own.
    click: added to the click logit when clicks are drawn (more clicks when > 0, fewer when < 0);
    the cascade and the oracle utility stay as they are."""

    network: float = 0.0
    click: float = 0.0

    def __post_init__(self):
        if not (math.isfinite(self.network) and 0 <= self.network <= 1):
            raise ValueError(f"network drift must be a share in [0, 1], got {self.network!r}")
        if not math.isfinite(self.click):
            raise ValueError(f"click drift must be a finite number, got {self.click!r}")


@dataclasses.dataclass
class SimulatedRequest:
    """One request: who, when, and the sampled (or, for funnel requests, all) candidates."""

    request_id: int
    user: int
    day: int
    hour: int
    items: np.ndarray            # pool indices of the candidates
    source: np.ndarray           # contract source per candidate
    prerank_pos: np.ndarray
    rank_pos: np.ndarray
    expose_pos: np.ndarray
    click: np.ndarray
    like: np.ndarray
    comment: np.ndarray
    dwell_ms: np.ndarray
    utility: np.ndarray          # oracle utility, sigmoid of the truth logit
    history: list[int]           # the user's click history at request time, most recent first
    seen: np.ndarray             # 1 where the user was shown the candidate in an earlier request

    @property
    def groups(self) -> list[str]:
        return [c.sample_group(s, k) for s, k in zip(self.source, self.click)]


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _codes(rng: np.random.Generator, n: int, low: int, high: int) -> np.ndarray:
    """n distinct anonymised integer codes in [low, high), in random order."""
    codes = np.unique(rng.integers(low, high, size=2 * n + 16))
    return rng.permutation(codes)[:n]


class FeedWorld:
    """The hidden population and ground truth; everything random is drawn from one seed."""

    def __init__(self, cfg: SimulationConfig):
        self.cfg = cfg
        rng = self.rng = np.random.default_rng(cfg.seed)
        d, nu, ni, nk = cfg.latent_dim, cfg.n_users, cfg.n_items, cfg.n_categories

        cat_pop = 1.0 / np.arange(1, nk + 1) ** 0.8
        self.cat_pop = cat_pop / cat_pop.sum()
        self.centroids = rng.normal(0, 1 / np.sqrt(d), (nk, d))
        self.author_cat = rng.choice(nk, cfg.n_authors, p=self.cat_pop)
        self.item_author = rng.integers(0, cfg.n_authors, ni)
        # Most items share their author's category.
        own = rng.random(ni) < 0.8
        self.item_cat = np.where(own, self.author_cat[self.item_author], rng.choice(nk, ni, p=self.cat_pop))
        self.item_q = self.centroids[self.item_cat] + rng.normal(0, 0.5 / np.sqrt(d), (ni, d))
        self.item_qn = self.item_q / np.linalg.norm(self.item_q, axis=1, keepdims=True)
        self.item_ctype = rng.choice(len(CONTENT_TYPES), ni, p=CONTENT_TYPE_SHARE)
        self.item_quality = rng.normal(0, 1, ni)
        self.item_pop = rng.normal(0, 1, ni)
        self.item_base_age_h = rng.exponential(48.0, ni)
        self.items_by_cat = [np.flatnonzero(self.item_cat == k) for k in range(nk)]

        n_interests = rng.choice([1, 2, 3], nu, p=[0.4, 0.4, 0.2])
        self.user_interests = [rng.choice(nk, n, replace=False, p=self.cat_pop) for n in n_interests]
        self.user_p = np.stack([1.5 * self.centroids[ks].mean(axis=0) for ks in self.user_interests])
        self.user_p += rng.normal(0, 0.3 / np.sqrt(d), (nu, d))
        self.user_bias = rng.normal(0, 0.3, nu)
        self.user_ctype_taste = rng.normal(0, 0.4, (nu, len(CONTENT_TYPES)))
        self.user_cat_taste = rng.normal(0, 1.0, (nu, nk))
        self.daypart_ctype = rng.normal(0, 0.3, (4, len(CONTENT_TYPES)))
        self.user_activity = rng.lognormal(0, 1.0, nu)
        self.user_new = rng.random(nu) < 0.08

        self.histories: list[list[int]] = []
        for u in range(nu):
            if self.user_new[u]:
                self.histories.append([])
                continue
            n = 5 + rng.poisson(25)
            own = rng.random(n) < 0.85
            cats = np.where(own, rng.choice(self.user_interests[u], n), rng.choice(nk, n, p=self.cat_pop))
            self.histories.append([int(rng.choice(self.items_by_cat[k])) for k in cats])
        self.seen: list[set[int]] = [set() for _ in range(nu)]

    def truth_terms(self, user: int, history: list[int], hour: int, day: int,
                    items: np.ndarray) -> dict[str, np.ndarray]:
        """The additive terms of the truth logit; `cross` and `history` are the ones a two-tower
        dot product cannot represent."""
        n = len(items)
        ctype = self.item_ctype[items]
        terms = {
            "base": np.full(n, self.cfg.base_logit + self.user_bias[user]),
            "dot": self.item_q[items] @ self.user_p[user],
            "cross": W_CROSS * self.cfg.cross_strength * self.user_cat_taste[user, self.item_cat[items]],
            "history": np.zeros(n),
            "item": (W_QUALITY * self.item_quality[items] + W_POP * self.item_pop[items]
                     - W_AGE * np.log1p(self.item_age_hours(items, day, hour) / 24.0)),
            "content_type": self.user_ctype_taste[user, ctype] + self.daypart_ctype[hour // 6, ctype],
        }
        if history:
            sims = self.item_qn[history[:HISTORY_WINDOW]] @ self.item_qn[items].T
            terms["history"] = W_HISTORY * self.cfg.history_strength * sims.max(axis=0)
        return terms

    def truth_logit(self, user: int, history: list[int], hour: int, day: int, items: np.ndarray) -> np.ndarray:
        return sum(self.truth_terms(user, history, hour, day, items).values())

    def item_age_hours(self, items: np.ndarray, day: int, hour: int) -> np.ndarray:
        return self.item_base_age_h[items] + 24.0 * day + hour

    def retrieve(self, user: int, history: list[int], rng: np.random.Generator) -> np.ndarray:
        size = self.cfg.retrieval_size
        chosen: list[np.ndarray] = []
        for j in history[:3]:
            sims = self.item_q @ self.item_q[j] + rng.normal(0, 0.3, self.cfg.n_items)
            chosen.append(np.argpartition(-sims, 100)[:100])
        i2i = np.unique(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)
        u2i = self.item_q @ self.user_p[user] + 0.3 * self.item_pop + rng.normal(0, 0.5, self.cfg.n_items)
        u2i[i2i] = -np.inf
        fill = np.argpartition(-u2i, size - len(i2i))[: size - len(i2i)]
        return np.concatenate([i2i, fill]).astype(np.int64)


class FeedSimulator:
    """Runs the feed request by request and yields SimulatedRequests in time order."""

    def __init__(self, cfg: SimulationConfig):
        self.cfg = cfg
        self.world = FeedWorld(cfg)
        self.rng = np.random.default_rng([cfg.seed, 1])
        # Its own stream, so that noise-free regimes draw exactly what the simulator always drew.
        self.label_noise_rng = np.random.default_rng([cfg.seed, 5])
        self.click_shift = 0.0  # DayDrift.click of the day being simulated
        hour_w = np.array([1, 0.6, 0.4, 0.3, 0.3, 0.5, 1, 2, 3, 2.5, 2, 2.5,
                           3, 2.5, 2, 2, 2, 2.5, 3, 3.5, 4, 4, 3, 2], float)
        self.hour_p = hour_w / hour_w.sum()

    def _schedule(self, n: int, days: range, rng: np.random.Generator):
        act = self.world.user_activity / self.world.user_activity.sum()
        users = rng.choice(self.cfg.n_users, n, p=act)
        day = np.sort(rng.choice(np.asarray(days), n))
        hour = rng.choice(24, n, p=self.hour_p)
        order = np.lexsort((hour, day))
        return users[order], day[order], hour[order]

    def requests(self) -> Iterator[SimulatedRequest]:
        users, days, hours = self._schedule(self.cfg.requests, range(self.cfg.days), self.rng)
        for r, (u, d, h) in enumerate(zip(users, days, hours)):
            yield self._request(1_000_000 + r, int(u), int(d), int(h), funnel=False)

    def day_requests(self, day: int, n: int, first_id: int, drift: DayDrift) -> Iterator[SimulatedRequest]:
        """`n` requests of an appended day, ids from `first_id`, drawn from streams of their own
        (seeded by the day), so a replay of the earlier days is all a new day depends on."""
        self.rng = np.random.default_rng([self.cfg.seed, 10, day])
        self.label_noise_rng = np.random.default_rng([self.cfg.seed, 12, day])
        self.click_shift = drift.click
        try:
            users, days, hours = self._schedule(n, range(day, day + 1), self.rng)
            for r, (u, d, h) in enumerate(zip(users, days, hours)):
                yield self._request(first_id + r, int(u), int(d), int(h), funnel=False)
        finally:
            self.click_shift = 0.0

    def funnel_requests(self) -> Iterator[SimulatedRequest]:
        rng = np.random.default_rng([self.cfg.seed, 2])
        users, days, hours = self._schedule(self.cfg.funnel_requests, range(self.cfg.days - 1, self.cfg.days), rng)
        for r, (u, d, h) in enumerate(zip(users, days, hours)):
            yield self._request(9_000_000 + r, int(u), int(d), int(h), funnel=True)

    def _request(self, request_id: int, u: int, day: int, hour: int, funnel: bool) -> SimulatedRequest:
        cfg, w, rng = self.cfg, self.world, self.rng
        history = list(w.histories[u])
        cands = w.retrieve(u, history, rng)
        s = w.truth_logit(u, history, hour, day, cands)
        n = len(cands)
        prerank_pos = _positions(s + rng.normal(0, cfg.noise_prerank, n))
        rank_pos = np.full(n, -1)
        to_rank = np.flatnonzero(prerank_pos < cfg.prerank_keep)
        rank_pos[to_rank] = _positions(s[to_rank] + rng.normal(0, cfg.noise_rank, len(to_rank)))
        expose_pos = np.full(n, -1)
        to_expose = np.flatnonzero((rank_pos >= 0) & (rank_pos < cfg.rank_keep))
        n_exp = int(rng.integers(cfg.exposed_range[0], cfg.exposed_range[1] + 1))
        order = _positions(s[to_expose] + rng.normal(0, cfg.noise_expose, len(to_expose)))
        shown = order < n_exp
        expose_pos[to_expose[shown]] = order[shown]

        exposed = expose_pos >= 0
        p_click = _sigmoid(s - cfg.click_sparsity + self.click_shift) * (1.0 + np.maximum(expose_pos, 0)) ** -POSITION_BIAS
        click = (exposed & (rng.random(n) < p_click)).astype(np.int64)
        if cfg.click_noise > 0:
            click = self._add_label_noise(click, exposed, p_click)
        like = (click.astype(bool) & (rng.random(n) < 0.5 * _sigmoid(s - 1))).astype(np.int64)
        comment = (click.astype(bool) & (rng.random(n) < 0.1 * _sigmoid(s))).astype(np.int64)
        dwell = np.where(click == 1, np.exp(np.log(30000.0) + 0.3 * s + rng.normal(0, 0.6, n)), 0).astype(np.int64)
        source = np.where(exposed, c.EXPOSED, np.where(rank_pos >= 0, c.RANKING, c.PRERANKING))

        if funnel:
            keep = np.arange(n)
            glob = np.empty(0, dtype=np.int64)
        else:
            rn = rng.permutation(np.flatnonzero(rank_pos >= cfg.rank_keep))[: cfg.ranking_negatives]
            prn = rng.permutation(np.flatnonzero(prerank_pos >= cfg.prerank_keep))[: cfg.preranking_negatives]
            keep = np.concatenate([np.flatnonzero(exposed), rn, prn])
            glob = self._global_negatives(cands, cfg.global_per_positive * int(click.sum()))
        items = np.concatenate([cands[keep], glob])
        seen = np.array([int(i) in w.seen[u] for i in items], dtype=np.int64)
        if not funnel:
            w.seen[u].update(int(i) for i in cands[exposed])
            clicked = cands[click == 1][np.argsort(expose_pos[click == 1])]
            w.histories[u] = ([int(i) for i in clicked] + history)[: FEATURE_SET["u_click_seq"].max_len]

        g = len(glob)
        none = np.full(g, -1)
        zeros = np.zeros(g, dtype=np.int64)
        return SimulatedRequest(
            request_id=request_id, user=u, day=day, hour=hour, items=items,
            source=np.concatenate([source[keep], np.full(g, c.GLOBAL)]),
            prerank_pos=np.concatenate([prerank_pos[keep], none]),
            rank_pos=np.concatenate([rank_pos[keep], none]),
            expose_pos=np.concatenate([expose_pos[keep], none]),
            click=np.concatenate([click[keep], zeros]),
            like=np.concatenate([like[keep], zeros]),
            comment=np.concatenate([comment[keep], zeros]),
            dwell_ms=np.concatenate([dwell[keep], zeros]),
            utility=np.concatenate([_sigmoid(s[keep]), _sigmoid(w.truth_logit(u, history, hour, day, glob))]),
            history=history,
            seen=seen,
        )

    def _add_label_noise(self, click: np.ndarray, exposed: np.ndarray, p_click: np.ndarray) -> np.ndarray:
        """`click` with a `click_noise` share of the exposed labels replaced by coin flips at the
        request's mean click probability, so the expected number of clicks stays as it is."""
        rng, n = self.label_noise_rng, len(click)
        flipped = exposed & (rng.random(n) < self.cfg.click_noise)
        coin = rng.random(n) < p_click[exposed].mean()
        return np.where(flipped, coin, click).astype(np.int64)

    def _global_negatives(self, retrieved: np.ndarray, count: int) -> np.ndarray:
        taken = np.zeros(self.cfg.n_items, dtype=bool)
        taken[retrieved] = True
        picked = []
        while len(picked) < count:
            i = int(self.rng.integers(self.cfg.n_items))
            if not taken[i]:
                taken[i] = True
                picked.append(i)
        return np.asarray(picked, dtype=np.int64)


def _positions(scores: np.ndarray) -> np.ndarray:
    """Position of each element when sorted by descending score (0 = first)."""
    pos = np.empty(len(scores), dtype=np.int64)
    pos[np.argsort(-scores, kind="stable")] = np.arange(len(scores))
    return pos


class FeatureEncoder:
    """Turns simulated requests into contract rows: anonymised codes and observable features."""

    def __init__(self, world: FeedWorld):
        self.w = w = world
        cfg = w.cfg
        rng = np.random.default_rng([cfg.seed, 3])
        nu, ni, nk = cfg.n_users, cfg.n_items, cfg.n_categories
        self.user_ids = _codes(rng, nu, 10**7, 10**8)
        self.item_ids = _codes(rng, ni, 10**9, 10**10)
        self.cat_codes = _codes(rng, nk, 100, 1000)
        self.subcat_codes = _codes(rng, nk * 5, 1000, 10000)
        self.author_codes = _codes(rng, cfg.n_authors, 10**5, 10**6)
        self.tag_codes = _codes(rng, 64, 100, 1000)
        self.hour_codes, self.weekday_codes = _codes(rng, 24, 10, 100), _codes(rng, 7, 10, 100)
        self.network_codes = _codes(rng, 3, 10, 100)

        self.u_age = np.where(rng.random(nu) < 0.05, -1, _codes(rng, 8, 10, 100)[rng.integers(0, 8, nu)])
        self.u_gender = np.where(rng.random(nu) < 0.10, -1, _codes(rng, 3, 10, 100)[rng.integers(0, 3, nu)])
        self.u_city = _codes(rng, 5, 10, 100)[rng.integers(0, 5, nu)]
        self.u_os = _codes(rng, 3, 10, 100)[rng.integers(0, 3, nu)]
        self.u_activity = np.log1p(w.user_activity * 20) + rng.normal(0, 0.2, nu)
        self.u_account_age = np.where(w.user_new, rng.uniform(0, 7, nu), rng.uniform(7, 2000, nu))
        primary = np.array([ks[0] for ks in w.user_interests])
        noisy = np.where(rng.random(nu) < 0.8, primary, rng.integers(0, nk, nu))
        self.u_interest = self.cat_codes[noisy]
        self.u_pref_ctype = np.argmax(w.user_ctype_taste + rng.normal(0, 0.2, w.user_ctype_taste.shape), axis=1)
        self.u_network = rng.choice(3, nu, p=[0.6, 0.3, 0.1])

        self.i_subcat = w.item_cat * 5 + rng.integers(0, 5, ni)
        self.i_quality = w.item_quality + rng.normal(0, 0.5, ni)
        self.i_hist_ctr = _sigmoid(-2 + 0.5 * w.item_quality + 0.3 * w.item_pop + rng.normal(0, 0.2, ni))
        self.i_impressions = np.log1p(np.exp(6 + 1.5 * w.item_pop))
        is_video = np.isin(np.asarray(CONTENT_TYPES)[w.item_ctype], VIDEO_TYPES)
        self.i_duration = np.where(is_video, rng.lognormal(4.5, 0.8, ni), np.nan)
        self.i_title_len = rng.poisson(22, ni).astype(float)
        self.i_tag = np.argmax(w.item_qn @ rng.normal(0, 1, (cfg.latent_dim, 64)), axis=1)

        # Past-period statistics: noisy views of the hidden tastes, unknown for new users.
        self.x_cat_ctr = _sigmoid(-1.5 + 0.8 * (w.user_p @ w.centroids.T + cfg.cross_strength * w.user_cat_taste)
                                  + rng.normal(0, 0.3, (nu, nk)))
        self.x_ctype_ctr = _sigmoid(-1.5 + w.user_ctype_taste + rng.normal(0, 0.2, w.user_ctype_taste.shape))
        self.refresh_rng = np.random.default_rng([cfg.seed, 4])
        self.network_drift, self.drift_rng = 0.0, None  # DayDrift.network of the day being encoded
        self.rarest_network = int(np.argmin(np.bincount(self.u_network, minlength=3)))

    def start_day(self, day: int, drift: DayDrift) -> None:
        """Streams of an appended day's own, and its drift (see FeedSimulator.day_requests)."""
        seed = self.w.cfg.seed
        self.refresh_rng = np.random.default_rng([seed, 11, day])
        self.drift_rng = np.random.default_rng([seed, 13, day])
        self.network_drift = drift.network

    def network(self, user: int) -> int:
        if self.network_drift and self.drift_rng.random() < self.network_drift:
            return self.rarest_network
        return int(self.u_network[user])

    def columns(self, req: SimulatedRequest, with_oracle: bool) -> dict[str, list]:
        """Column name -> list of python values (None where missing) for the request's rows."""
        w, u, items, n = self.w, req.user, req.items, len(req.items)
        hist = req.history
        new = not hist

        def rep(value):
            return [value] * n

        def opt(x):
            return None if x < 0 else int(x)

        def num(values):
            return [None if np.isnan(v) else round(float(v), 4) for v in values]

        hist_arr = np.asarray(hist, dtype=np.int64)
        hist_cats = w.item_cat[hist_arr] if hist else np.empty(0, dtype=np.int64)
        hist_authors = w.item_author[hist_arr] if hist else np.empty(0, dtype=np.int64)
        cats = w.item_cat[items]
        col = {
            "request_id": rep(req.request_id),
            "user_id": rep(int(self.user_ids[u])),
            "item_id": [int(x) for x in self.item_ids[items]],
            "day": rep(req.day),
            "source": [str(s) for s in req.source],
            "click": [int(x) for x in req.click],
            "content_type": [CONTENT_TYPES[t] for t in w.item_ctype[items]],
            "prerank_pos": [int(x) for x in req.prerank_pos],
            "rank_pos": [int(x) for x in req.rank_pos],
            "expose_pos": [int(x) for x in req.expose_pos],
            "like": [int(x) for x in req.like],
            "comment": [int(x) for x in req.comment],
            "dwell_ms": [int(x) for x in req.dwell_ms],
            "u_age_bucket": rep(opt(self.u_age[u])),
            "u_gender": rep(opt(self.u_gender[u])),
            "u_city_tier": rep(int(self.u_city[u])),
            "u_device_os": rep(int(self.u_os[u])),
            "u_activity_level": rep(round(float(self.u_activity[u]), 4)),
            "u_account_age_days": rep(round(float(self.u_account_age[u]), 4)),
            "u_interest_cluster": rep(int(self.u_interest[u])),
            "u_pref_content_type": rep(None if new else CONTENT_TYPES[self.u_pref_ctype[u]]),
            "u_click_seq": rep([int(x) for x in self.item_ids[hist_arr]] if hist else []),
            "u_cat_seq": rep([int(x) for x in self.cat_codes[hist_cats]] if hist else []),
            "c_hour": rep(int(self.hour_codes[req.hour])),
            "c_weekday": rep(int(self.weekday_codes[req.day % 7])),
            "c_network": rep(int(self.network_codes[self.network(u)])),
            "c_refresh_idx": rep(float(self.refresh_rng.poisson(2))),
            "i_category": [int(x) for x in self.cat_codes[cats]],
            "i_subcategory": [int(x) for x in self.subcat_codes[self.i_subcat[items]]],
            "i_author_id": [int(x) for x in self.author_codes[w.item_author[items]]],
            "i_age_hours": num(w.item_age_hours(items, req.day, req.hour)),
            "i_quality_score": num(self.i_quality[items]),
            "i_hist_ctr": num(self.i_hist_ctr[items]),
            "i_hist_impressions": num(self.i_impressions[items]),
            "i_duration_s": num(self.i_duration[items]),
            "i_title_len": num(self.i_title_len[items]),
            "i_tag_cluster": [int(x) for x in self.tag_codes[self.i_tag[items]]],
            "x_user_cat_ctr": rep(None) if new else num(self.x_cat_ctr[u, cats]),
            "x_user_author_clicks": num((hist_authors[None, :] == w.item_author[items][:, None]).sum(axis=1)),
            "x_user_ctype_ctr": rep(None) if new else num(self.x_ctype_ctr[u, w.item_ctype[items]]),
            "x_hist_cat_match": rep(None) if new else num((hist_cats[None, :] == cats[:, None]).mean(axis=1)),
            "x_user_item_seen": [int(x) for x in req.seen],
        }
        if with_oracle:
            col[c.ORACLE_COLUMN] = num(req.utility)
        return col


FEATURES_HEADER = """Features of the simulated feed (hap data simulate). Ids and categorical values are
anonymised integer codes; see data/simulator.py for the generative model."""
# What `simulate` records beside the contract's files, so that `append_day` can continue the feed.
RECORD_FILE = "simulation.json"


def simulate(out_dir: str, cfg: SimulationConfig, fmt: str = "csv", overwrite: bool = False,
             progress: bool = True) -> dict:
    """Writes a contract dataset to `out_dir` (atomically); returns counts of what it wrote.

    Samples go to one shard per day, `samples/day-<d>.<ext>`; funnel requests to
    `funnel/day-<last>.<ext>`.
    """
    sim = FeedSimulator(cfg)
    enc = FeatureEncoder(sim.world)
    counts = {"requests": 0, "samples": 0, "funnel_requests": 0, "funnel_rows": 0}
    with wr.atomic_directory(out_dir, overwrite=overwrite) as tmp:
        with open(os.path.join(tmp, c.FEATURES_FILE), "w", encoding="utf-8") as f:
            f.write(c.dump_features(FEATURES, FEATURES_HEADER))
        _write_record(tmp, {"config": dataclasses.asdict(cfg), "format": fmt, "appended_days": []})
        samples_dir = os.path.join(tmp, c.SAMPLES_DIR)
        os.makedirs(samples_dir)
        bar = tqdm(total=cfg.requests + cfg.funnel_requests, desc="simulating requests", unit="req",
                   disable=not progress, mininterval=0.5)
        writers: dict[int, object] = {}
        try:
            for req in sim.requests():
                if req.day not in writers:
                    writers[req.day] = wr.shard_writer(samples_dir, f"day-{req.day}", fmt, SAMPLE_COLUMNS)
                writers[req.day].write(enc.columns(req, with_oracle=False))
                counts["requests"] += 1
                counts["samples"] += len(req.items)
                bar.update()
            if cfg.funnel_requests:
                funnel_dir = os.path.join(tmp, c.FUNNEL_DIR)
                os.makedirs(funnel_dir)
                writers[-1] = wr.shard_writer(funnel_dir, f"day-{cfg.days - 1}", fmt, FUNNEL_COLUMNS)
                for req in sim.funnel_requests():
                    writers[-1].write(enc.columns(req, with_oracle=True))
                    counts["funnel_requests"] += 1
                    counts["funnel_rows"] += len(req.items)
                    bar.update()
        finally:
            for w in writers.values():
                w.close()
            bar.close()
    return counts


def _write_record(data_dir: str, record: dict) -> None:
    tmp = os.path.join(data_dir, f".{RECORD_FILE}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, os.path.join(data_dir, RECORD_FILE))


def read_record(data_dir: str) -> dict:
    """`simulation.json` of a simulated dataset: its SimulationConfig, format and appended days."""
    path = os.path.join(data_dir, RECORD_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{data_dir}: no {RECORD_FILE}, so not a dataset `hap data simulate` wrote (or one "
                                "written before it kept that record): only a simulated dataset can grow by a day")
    with open(path, encoding="utf-8") as f:
        record = json.load(f)
    record["config"]["exposed_range"] = tuple(record["config"]["exposed_range"])
    return record


def append_day(data_dir: str, drift: DayDrift = DayDrift(), progress: bool = True) -> dict:
    """Adds the next day to the simulated dataset `data_dir`: `samples/day-<d>.<ext>` with
    `requests / days` requests of the same feed, continued (module docstring, Day after day).
    Written to a temporary file beside the dataset and renamed into samples/, then recorded in
    `simulation.json`; returns counts of what it wrote and the day."""
    record = read_record(data_dir)
    cfg = SimulationConfig(**record["config"])
    fmt, appended = record["format"], record["appended_days"]
    day = cfg.days + len(appended)
    per_day = max(1, cfg.requests // cfg.days)
    samples_dir = os.path.join(data_dir, c.SAMPLES_DIR)
    if any(name.startswith(f"day-{day}.") for name in os.listdir(samples_dir)):
        raise FileExistsError(f"{samples_dir}: already holds day {day}, which {RECORD_FILE} does not record")
    sim = FeedSimulator(cfg)
    enc = FeatureEncoder(sim.world)
    bar = tqdm(total=cfg.requests + sum(d["requests"] for d in appended) + per_day, desc=f"simulating day {day}",
               unit="req", disable=not progress, mininterval=0.5)
    counts = {"day": day, "requests": 0, "samples": 0}
    try:
        # The earlier days again, for the histories and seen sets they left; nothing is written.
        for _ in sim.requests():
            bar.update()
        first_id = 1_000_000 + cfg.requests
        for earlier in appended:
            for _ in sim.day_requests(earlier["day"], earlier["requests"], first_id, DayDrift(**earlier["drift"])):
                bar.update()
            first_id += earlier["requests"]
        staging = tempfile.mkdtemp(prefix=f".day-{day}.tmp-", dir=data_dir)
        try:
            writer = wr.shard_writer(staging, f"day-{day}", fmt, SAMPLE_COLUMNS)
            try:
                enc.start_day(day, drift)
                for req in sim.day_requests(day, per_day, first_id, drift):
                    writer.write(enc.columns(req, with_oracle=False))
                    counts["requests"] += 1
                    counts["samples"] += len(req.items)
                    bar.update()
            finally:
                writer.close()
            (name,) = os.listdir(staging)
            os.replace(os.path.join(staging, name), os.path.join(samples_dir, name))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    finally:
        bar.close()
    appended.append({"day": day, "requests": per_day, "drift": dataclasses.asdict(drift)})
    _write_record(data_dir, record)
    return counts
