"""The mask-replaying dropout for torch_impl (see tasks/replay/__init__.py)."""

from torch_impl.regularize import Dropout as ReplayDropout
from torch_impl.regularize import set_mask

__all__ = ["ReplayDropout", "set_mask"]
