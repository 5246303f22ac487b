"""The cascade's settings without TensorFlow: `RoutingPolicy` (which candidates the heavy model
re-scores; serving/routing.py routes by it in the graph) and `CascadeSettings`, the `cascade`
subtree of the settings tree (hap/settings.py), which checks them before TensorFlow loads."""
from __future__ import annotations

import dataclasses
import math

from hap.tree import defaults_from

TOP_K, BAND, ADAPTIVE, LEARNED = "top_k", "band", "adaptive", "learned"
POLICIES = (TOP_K, BAND, ADAPTIVE, LEARNED)
# No candidate re-scored: the cascade a budget below every routed option's cost falls back to.
LIGHT_ONLY = "light_only"
KINDS = (*POLICIES, LIGHT_ONLY)
IN_PLACE, ROUTED_FIRST = "in_place", "routed_first"
COMBINATIONS = (IN_PLACE, ROUTED_FIRST)


@dataclasses.dataclass(frozen=True)
@defaults_from("cascade.routing")
class RoutingPolicy:
    """kind: one of POLICIES, or LIGHT_ONLY (the light model's order; `fraction` unused). fraction: the share of candidates routed (exactly ceil(fraction N)
    for top_k and band; the mean over requests for adaptive). cutoff: how many candidates the
    stage passes on (band and adaptive centre on it). margin: adaptive only, in light logits
    (from `calibrate_margin`). combine: one of COMBINATIONS.

    The default (hap/defaults.yaml, `cascade.routing`) goes with the pipeline's narrowed second
    stage: docs/decisions/0001-second-stage.md. With K above the output size, the heavy model
    decides which candidates are passed on."""

    kind: str
    fraction: float
    cutoff: int
    margin: float | None
    combine: str

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"routing policy must be one of {KINDS}, got {self.kind!r}")
        if self.combine not in COMBINATIONS:
            raise ValueError(f"score combination must be one of {COMBINATIONS}, got {self.combine!r}")
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"route fraction must be in (0, 1], got {self.fraction}")
        if self.cutoff < 1:
            raise ValueError(f"cutoff must be >= 1, got {self.cutoff}")
        if self.kind == ADAPTIVE and (self.margin is None or not self.margin >= 0.0):
            raise ValueError("the adaptive policy needs a margin >= 0 (calibrate_margin finds one)")

    @property
    def label(self) -> str:
        if self.kind == LIGHT_ONLY:
            return "light model alone"
        around = f" around {self.cutoff}" if self.kind in (BAND, ADAPTIVE) else ""
        return f"{self.kind}{around} {self.fraction:.0%}" + ("" if self.combine == IN_PLACE else f", {self.combine}")

    def routed(self, n: int) -> int:
        """K for a request of N candidates (for `adaptive`, the mean its margin was calibrated to)."""
        return 0 if self.kind == LIGHT_ONLY else routed_count(n, self.fraction)


def routed_count(n: int, fraction: float) -> int:
    """K of the top_k and band policies for a request of N candidates."""
    return min(max(math.ceil(fraction * n), 1), n)


@dataclasses.dataclass(frozen=True)
@defaults_from("cascade.budget")
class BudgetSettings:
    """mflops: the serving budget, MFLOPs per request of `candidates` candidates; the
    CascadeAssembler then chooses the routing within it (serving/budget.py); None: the routing as
    set. policies, fractions: the options, every policy at every routed share."""

    mflops: float | None
    candidates: int
    policies: list[str]
    fractions: list[float]

    def __post_init__(self):
        if self.mflops is not None and not self.mflops > 0:
            raise ValueError(f"mflops must be a number > 0 or null, got {self.mflops!r}")
        if not isinstance(self.candidates, int) or self.candidates < 1:
            raise ValueError(f"candidates must be an integer >= 1, got {self.candidates!r}")
        unknown = [p for p in self.policies if p not in POLICIES]
        if unknown or not self.policies:
            raise ValueError(f"policies must name some of {POLICIES}, got {self.policies!r}")
        if not self.fractions or not all(0 < f <= 1 for f in self.fractions):
            raise ValueError(f"fractions must be shares in (0, 1], got {self.fractions!r}")


@dataclasses.dataclass(frozen=True)
@defaults_from("cascade")
class CascadeSettings:
    """routing: which candidates the heavy model re-scores and how the scores combine
    (serving/routing.py); with a `budget`, the CascadeAssembler's choice replaces it.
    k_out: how many candidate indices `top_indices` returns (at most N).
    max_candidates: the largest N a call may carry.
    tolerance, blessing_requests: the CascadeAssembler blesses a cascade whose blessing metric is
    at most `tolerance` below the last blessed cascade's, on at most `blessing_requests` eval
    requests (components/cascade_assembler).
    popularity_margin: without a last blessed cascade, by how much the cascade must beat item
    popularity on those requests (decision 0018); negative, by how much it may trail it."""

    routing: RoutingPolicy
    budget: BudgetSettings
    k_out: int
    max_candidates: int
    tolerance: float
    blessing_requests: int
    popularity_margin: float

    def __post_init__(self):
        if isinstance(self.routing, dict):  # as read back from JSON
            object.__setattr__(self, "routing", RoutingPolicy(**self.routing))
        if isinstance(self.budget, dict):
            object.__setattr__(self, "budget", BudgetSettings(**self.budget))
        for name in ("k_out", "max_candidates", "blessing_requests"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not self.tolerance >= 0:
            raise ValueError(f"tolerance must be a number >= 0, got {self.tolerance!r}")
        if not -1 <= self.popularity_margin <= 1:
            raise ValueError(f"popularity_margin must be a number in [-1, 1], got {self.popularity_margin!r}")
