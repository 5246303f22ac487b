"""The models' hyper-parameters, without TensorFlow: the settings tree (hap/settings.py) checks a
Trainer's `model_config` against them before TensorFlow loads; models/light.py and heavy.py build
the models from them."""
from __future__ import annotations

import dataclasses

# How an id's embedding starts. "zeros" (the default of both models' configs): every id starts
# at the zero vector and moves only as it is trained on, so an id never trained on adds nothing
# to a score where a random start adds a random term; the MLPs' positive bias (layers.RELU_BIAS)
# lets the gradient through while the embeddings are zero. "uniform": Keras' default,
# U(-0.05, 0.05). Why zeros: docs/decisions/0008-zero-embedding-init.md.
EMBEDDING_INITS = ("zeros", "uniform")
EMBEDDING_INIT = "zeros"


def check_embedding_init(name: str) -> None:
    if name not in EMBEDDING_INITS:
        raise ValueError(f"embedding_init must be one of {EMBEDDING_INITS}, got {name!r}")


@dataclasses.dataclass(frozen=True)
class LightConfig:
    """Hyper-parameters of the light model.

    embedding_dim: width of every embedding table (shared by the two towers).
    tower_units: hidden layer widths of each tower's MLP.
    output_dim: D, the width of the user and item embeddings the towers end in.
    head_units: the head's M hidden layer widths over [u, v, u * v] (M = len(head_units)); the
        heavy model's MLP must be deeper.
    embedding_init: how every embedding table starts, "zeros" (default) or "uniform"
        (`EMBEDDING_INIT` says why and what chose it).
    """

    embedding_dim: int = 16
    tower_units: tuple[int, ...] = (64,)
    output_dim: int = 32
    head_units: tuple[int, ...] = (32, 16)
    embedding_init: str = EMBEDDING_INIT

    def __post_init__(self):
        if min((self.embedding_dim, self.output_dim) + self.tower_units + self.head_units) < 1:
            raise ValueError(f"every width must be positive: {self}")
        check_embedding_init(self.embedding_init)


@dataclasses.dataclass(frozen=True)
class HeavyConfig:
    """Hyper-parameters of the heavy model.

    embedding_dim: width of every embedding table.
    attention_units: hidden layer widths of each target attention's scoring MLP.
    cross_layers: number of DCN-v2 Cross layers over the concatenated features.
    cross_projection_dim: rank of each Cross layer's weight matrix; None for full rank (the
        default input is ~300 wide, so a full-rank matrix is still cheap).
    deep_units: the N hidden layer widths of the MLP after the crosses (N = len(deep_units));
        N must exceed the light head's M, or the heavy model is not the stronger scorer.
    embedding_init: how every embedding table starts, "zeros" (default) or "uniform"
        (`EMBEDDING_INIT` says why and what chose it).
    """

    embedding_dim: int = 16
    attention_units: tuple[int, ...] = (32,)
    cross_layers: int = 2
    cross_projection_dim: int | None = None
    deep_units: tuple[int, ...] = (256, 128, 64, 32)
    embedding_init: str = EMBEDDING_INIT

    def __post_init__(self):
        widths = (self.embedding_dim, self.cross_layers) + self.attention_units + self.deep_units
        if min(widths) < 1 or (self.cross_projection_dim is not None and self.cross_projection_dim < 1):
            raise ValueError(f"every width and the number of cross layers must be positive: {self}")
        check_embedding_init(self.embedding_init)
