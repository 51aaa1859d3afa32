"""Hand-written CPU kernels (TE compute + register-tiled TIR schedule), one module per op family.

Lowerings build a kernel's PrimFunc at emit time (weights pre-packed as constants) and tag it
with ``cacc.kernel``; :func:`backends.tvm.schedule.safe_default_schedule` schedules tagged
functions with :func:`backends.tvm.schedules.tiled.schedule_tiled`.
"""

from backends.tvm.schedules.tiled import KERNEL_ATTR, schedule_tiled
from backends.tvm.schedules.tiling import TileConfig, target_lanes

__all__ = ["KERNEL_ATTR", "TileConfig", "schedule_tiled", "target_lanes"]
