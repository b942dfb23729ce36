"""What exact float64 parity needs beyond torch's stock API; each entry names the test that fails
without it (docs/PORTING.md, "compat.py").
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


# ----------------------------------------------------------------------------- clipping
@torch.no_grad()
def clip_grad_norm_(parameters: Iterable[nn.Parameter], max_norm: float) -> torch.Tensor:
    """`nn.utils.clip_grad_norm_` without its epsilon: grad *= min(1, max_norm / ||all grads||).

    The stock call scales by max_norm / (norm + 1e-6): 1e-6 / norm relative off the rule of
    scratch, Keras's `global_clipnorm` and `optax.clip_by_global_norm` on every clipped step.
    Without it: test_optim.py::test_trajectory_matches_scratch[torch_impl-*optim-sgd-clip*] and
    the clipped GRU trajectory of test_rnn.py::test_torch_rules_for_training_are_needed."""
    grads = [p.grad for p in parameters if p.grad is not None]
    norm = nn.utils.get_total_norm(grads)  # one norm over every tensor, like clip_grad_norm_'s
    scale = torch.clamp(max_norm / norm, max=1.0)
    for g in grads:
        g.mul_(scale)
    return norm
