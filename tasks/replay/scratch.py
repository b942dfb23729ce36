"""The mask-replaying dropout for scratch (see tasks/replay/__init__.py)."""

from scratch.regularize import Dropout as ReplayDropout
from scratch.regularize import set_mask

__all__ = ["ReplayDropout", "set_mask"]
