"""Register-tile sizes derived from the target's vector width."""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm.target import Target

from backends.tvm.target import host_target

_AVX512 = ("avx512", "skylake-avx512", "cascadelake", "icelake", "sapphirerapids", "znver4", "znver5")


@dataclass(frozen=True)
class TileConfig:
    """fp32 SIMD lanes and vector registers of a CPU."""

    lanes: int
    registers: int


def emit_target() -> Target:
    """The target in scope (``with target:``), else the host CPU."""
    cur = Target.current(allow_none=True)
    return cur if cur is not None else host_target()


def target_lanes(target: Target | None = None) -> TileConfig:
    """fp32 lanes / vector registers for ``target`` (AVX-512: 16 / 32, AVX2 and others: 8 / 16)."""
    tgt = target if target is not None else emit_target()
    if tgt.kind.name != "llvm":
        return TileConfig(8, 16)
    mcpu = str(tgt.attrs.get("mcpu", "") or "")
    mattr = [str(a) for a in (tgt.attrs.get("mattr", None) or [])]
    triple = str(tgt.attrs.get("mtriple", "") or "")
    if triple.startswith(("aarch64", "arm")):
        return TileConfig(4, 32)
    # by name, or by LLVM's features (a CPU LLVM names otherwise, e.g. a virtualised Xeon as "rocketlake")
    if any(k in mcpu for k in _AVX512) or any("avx512f" in a for a in mattr) or has_feature(tgt, "avx512f"):
        return TileConfig(16, 32)
    return TileConfig(8, 16)


def conv_block_config(target: Target | None = None) -> TileConfig:
    """Lanes / registers of the channel-blocked conv kernels (:mod:`backends.tvm.schedules.nchwc`): 8-channel blocks
    and AVX2's 16 registers on every x86 CPU, AVX-512 ones included. EfficientNet-Lite0's 24- and 40-channel convs
    cannot take 16-channel blocks, and leaving the blocked layout there cost more than the wider vectors gained:
    its int8 model ran 3.65 ms with 16-channel blocks against 3.37 with 8 (2-core Xeon, AVX-512 VNNI)."""
    tgt = target if target is not None else emit_target()
    cfg = target_lanes(tgt)
    return TileConfig(8, 16) if cfg.lanes == 16 else cfg


def has_feature(target: Target, feature: str) -> bool:
    """Whether LLVM says ``target`` has the CPU ``feature`` (False for non-LLVM targets or an LLVM that cannot tell)."""
    if target.kind.name != "llvm":
        return False
    try:
        return bool(tvm.target.codegen.target_has_features(feature, target))
    except Exception:
        return False


def fits_registers(mr: int, vecs: int, cfg: TileConfig) -> bool:
    """Whether an ``mr x vecs``-vector accumulator tile, the ``vecs`` vectors of one operand row and one
    broadcast operand fit the vector registers (a tile that does not spills: 3x4 on AVX2 ran 2.4x slower)."""
    return mr * vecs + vecs + 1 <= cfg.registers


def pick_tile(rows: int, cols: int, cfg: TileConfig, max_rows: int = 6) -> tuple[int, int]:
    """(mr, nb): rows x columns of the register accumulator tile, minimising padding.

    The accumulator uses ``mr * nb / lanes`` registers, and must leave room for the operand loads
    (:func:`fits_registers`).
    """
    best: tuple[float, int, int] | None = None
    for vecs in (4, 3, 2, 1):
        nb = vecs * cfg.lanes
        for mr in range(max_rows, 0, -1):
            if not fits_registers(mr, vecs, cfg):
                continue
            padded = (-(-rows // mr) * mr) * (-(-cols // nb) * nb)
            waste = padded / (rows * cols)
            # prefer big tiles (fewer loads per FMA) unless they pad a lot
            eff = waste * (1.0 + 1.0 / mr + 1.0 / vecs)
            if best is None or eff < best[0] - 1e-9:
                best = (eff, mr, nb)
    if best is None:  # pragma: no cover - budget is always >= 1
        return 1, cfg.lanes
    return best[1], best[2]


def ceil_to(value: int, multiple: int) -> int:
    """``value`` rounded up to a multiple of ``multiple``."""
    return -(-value // multiple) * multiple


__all__ = [
    "TileConfig",
    "ceil_to",
    "conv_block_config",
    "emit_target",
    "fits_registers",
    "has_feature",
    "pick_tile",
    "target_lanes",
    "tvm",
]
