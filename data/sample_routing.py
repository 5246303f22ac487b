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
- `bce_on`: the groups whose samples get the pointwise BCE term;
- `auc_floors`: per contrast, the Evaluator's sanity floor (0.5 is a random scorer).

The light model scores every candidate, so it sees every group; the heavy model only re-scores
the hard candidates, so it trains on the exposed and ranking samples (the paper's "hard" groups,
`HARD_GROUPS`) and gets BCE only where clicks were observed. To change what a model trains on,
or to add a negative source, edit this table (and the contract for a new source).
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

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
    auc_floors: Mapping[str, float]

    def __post_init__(self):
        unknown = set(self.trains_on) - set(c.SAMPLE_GROUPS)
        if unknown or c.EP not in self.trains_on:
            raise ValueError(f"trains_on must hold EP and only groups of {c.SAMPLE_GROUPS}: {self.trains_on}")
        if not self.contrasts or not set(self.contrasts) <= set(self.trains_on) - {c.EP}:
            raise ValueError(f"contrasts must be negative groups the model trains on: {self.contrasts}")
        if not set(self.bce_on) <= set(self.trains_on):
            raise ValueError(f"bce_on must be groups the model trains on: {self.bce_on}")
        if set(self.auc_floors) != set(self.contrasts):
            raise ValueError(f"auc_floors needs one floor per contrast {self.contrasts}: {dict(self.auc_floors)}")


SAMPLE_ROUTING: dict[str, SampleRouting] = {
    LIGHT: SampleRouting(trains_on=c.SAMPLE_GROUPS, contrasts=c.NEGATIVE_GROUPS, bce_on=c.SAMPLE_GROUPS,
                         auc_floors={c.EN: 0.55, c.RN: 0.60, c.PRN: 0.70, c.GN: 0.75}),
    HEAVY: SampleRouting(trains_on=(c.EP,) + HARD_GROUPS, contrasts=HARD_GROUPS, bce_on=(c.EP, c.EN),
                         auc_floors={c.EN: 0.55, c.RN: 0.60}),
}


def routing_of(model: str) -> SampleRouting:
    if model not in SAMPLE_ROUTING:
        raise ValueError(f"unknown model {model!r}; the models are {sorted(SAMPLE_ROUTING)}")
    return SAMPLE_ROUTING[model]
