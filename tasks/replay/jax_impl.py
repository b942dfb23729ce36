"""The mask-replaying dropout for jax_impl (see tasks/replay/__init__.py)."""

from jax_impl.regularize import Dropout as ReplayDropout
from jax_impl.regularize import set_mask

__all__ = ["ReplayDropout", "set_mask"]
