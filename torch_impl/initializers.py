"""torch.nn.init's named initialisers for the rules of scratch/initializers.py.

He et al. (2015): `kaiming_normal_` / `kaiming_uniform_` with nonlinearity="relu" (gain sqrt(2));
Glorot & Bengio (2010): `xavier_normal_` / `xavier_uniform_` (gain 1). torch's normals are untruncated.
torch computes fans from (out, in, kh, kw), the canonical layout: no transpose.
"""

from __future__ import annotations

import torch
from torch import nn


# ----------------------------------------------------------------------------- sampling
@torch.no_grad()
def initialize_(weight: torch.Tensor, name: str, *, generator: torch.Generator) -> torch.Tensor:
    """Fill `weight` in place by the named rule, drawing from `generator` (not the global RNG)."""
    if name == "he_normal":
        return nn.init.kaiming_normal_(
            weight, mode="fan_in", nonlinearity="relu", generator=generator
        )
    if name == "he_uniform":
        return nn.init.kaiming_uniform_(
            weight, mode="fan_in", nonlinearity="relu", generator=generator
        )
    if name == "xavier_normal":
        return nn.init.xavier_normal_(weight, generator=generator)
    if name == "xavier_uniform":
        return nn.init.xavier_uniform_(weight, generator=generator)
    # "uniform": nn.Linear's own default rule, U(±1/sqrt(fan_in))
    bound = 1.0 / weight[0].numel() ** 0.5
    return weight.uniform_(-bound, bound, generator=generator)
