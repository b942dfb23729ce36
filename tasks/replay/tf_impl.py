"""The mask-replaying dropout for tf_impl (see tasks/replay/__init__.py)."""

from tf_impl.regularize import Dropout as ReplayDropout
from tf_impl.regularize import set_mask

__all__ = ["ReplayDropout", "set_mask"]
