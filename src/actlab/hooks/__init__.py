"""Hook-point names, context-managed hooks, capture at token positions, streaming statistics."""

from .capture import Activations, Capture
from .core import ForwardState, HookSession, StopForward, count_hooks
from .points import BLOCK_KINDS, GLOBAL_POINTS, RESIDUAL_KINDS, HookPoint, all_point_names, parse_points
from .positions import PositionSpec, select
from .stats import RunningStats, stream_stats

__all__ = [
    "BLOCK_KINDS", "GLOBAL_POINTS", "RESIDUAL_KINDS", "Activations", "Capture", "ForwardState", "HookPoint",
    "HookSession", "PositionSpec", "RunningStats", "StopForward", "all_point_names", "count_hooks",
    "parse_points", "select", "stream_stats",
]
