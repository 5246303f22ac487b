"""Which sample groups each of HAP's two models sees, and how: the one table that the losses,
Transform's `is_hard` feature, the Evaluators' per-source floors, the TensorBoard logs, the
benchmark variants and the tests all read.

The contract's samples fall into five groups (`contract.SAMPLE_GROUPS`): exposed positives EP and
one negative group per source, EN (exposed, not clicked), RN (ranking rejects), PRN (pre-ranking
rejects), GN (random pool items). "EP vs g" is the contrast of the positives with the negatives
of group g; `contrast_metric(g)` is its one name everywhere (TensorBoard, TFMA slices' AUC,
`hap evaluate`, `hap benchmark`).

Per model, `SampleRouting` says:
- `trains_on`: the groups whose samples reach the model's loss at all;
- `contrasts`: the negative groups with a contrastive path of their own (GHCL's one InfoNCE per
  group; pooled_infonce pools them), which are also the model's per-source AUCs and floors;
- `bce_on`: the groups whose samples get the pointwise BCE term.
The Evaluators' floors per contrast are settings (hap/defaults.yaml, `light.auc_floors`).

Both models train on every group with every contrast. The light model scores every candidate,
so it must see them all. The heavy model is the second stage (hap/defaults.yaml, `heavy.trainer`):
the routing policy (serving/routing.py) hands it half of each request's candidates, most of
which are neither exposed nor ranking candidates, so it is trained on candidates like those it
re-scores. The paper trains it on the exposed and ranking samples only (`HARD_GROUPS`); that
routing is kept as `HARD_ONLY` for `hap benchmark`, which measured both: why every group,
docs/decisions/0001-second-stage.md.
To change what a model trains on, or to add a negative source, edit this table (and the
contract for a new source).
"""
from __future__ import annotations

import dataclasses
from hap.data import contract as c

LIGHT, HEAVY = "light", "heavy"
MODELS = (LIGHT, HEAVY)
HARD_GROUPS = (c.EN, c.RN)
MEAN_AUC = "auc_mean"


def contrast_metric(group: str) -> str:
    """The canonical name of the AUC of EP against the negatives of `group`."""
    return f"auc_EP_vs_{group}"


@dataclasses.dataclass(frozen=True)
class SampleRouting:
    trains_on: tuple[str, ...]
    contrasts: tuple[str, ...]
    bce_on: tuple[str, ...]

    def __post_init__(self):
        unknown = set(self.trains_on) - set(c.SAMPLE_GROUPS)
        if unknown or c.EP not in self.trains_on:
            raise ValueError(f"trains_on must hold EP and only groups of {c.SAMPLE_GROUPS}: {self.trains_on}")
        if not self.contrasts or not set(self.contrasts) <= set(self.trains_on) - {c.EP}:
            raise ValueError(f"contrasts must be negative groups the model trains on: {self.contrasts}")
        if not set(self.bce_on) <= set(self.trains_on):
            raise ValueError(f"bce_on must be groups the model trains on: {self.bce_on}")


EVERY_GROUP = SampleRouting(trains_on=c.SAMPLE_GROUPS, contrasts=c.NEGATIVE_GROUPS, bce_on=c.SAMPLE_GROUPS)
SAMPLE_ROUTING: dict[str, SampleRouting] = {LIGHT: EVERY_GROUP, HEAVY: EVERY_GROUP}

# Routings a model may be trained with instead of its own (TrainerSettings.sample_routing).
HARD_ONLY = "hard_only"
ALTERNATIVE_ROUTING: dict[str, SampleRouting] = {
    HARD_ONLY: SampleRouting(trains_on=(c.EP,) + HARD_GROUPS, contrasts=HARD_GROUPS, bce_on=(c.EP, c.EN)),
}


def routing_of(name: str) -> SampleRouting:
    """A model's own routing, or one of ALTERNATIVE_ROUTING's by name."""
    known = {**SAMPLE_ROUTING, **ALTERNATIVE_ROUTING}
    if name not in known:
        raise ValueError(f"unknown model or sample routing {name!r}; known: {sorted(known)}")
    return known[name]
