"""Group-wise low-bit weight quantization of one matrix: round-to-nearest and GPTQ.

Both work on a weight in *rows = output channels, columns = input channels* form ``W [N, K]``
(a MatMul weight ``[K, N]`` is passed transposed) and quantize each row in groups of
``group_size`` consecutive columns, the ONNX blocked layout (``DequantizeLinear`` with
``axis = reduce axis``, ``block_size = group_size``).

GPTQ (Frantar et al., 2023) quantizes one column at a time and spreads each column's
rounding error over the columns not yet quantized, weighted by the inverse of the layer's
calibration Hessian ``H = 2 X^T X``: lazy batches of ``block`` columns, the upper Cholesky
factor of ``H^-1``, dampening ``damp * mean(diag H)``, and optionally *act-order* (columns
processed by decreasing ``diag H``). With act-order the group parameters are computed up
front from the original groups ("static groups"), so groups stay contiguous in the original
column order and the result is still plain blocked quantization.

SpQR-style outliers: a boolean mask of weights kept exactly (in fp16) beside the low-bit
matrix; they are excluded from the group ranges and contribute no rounding error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from passes.quant.scheme import qrange, scale_zero_point


@dataclass
class GroupQuantized:
    """A matrix quantized in groups along its columns."""

    q: np.ndarray  #: int64 codes [N, K] (outlier positions hold a code too; it is overwritten at run time)
    scale: np.ndarray  #: float32 [N, G]
    zero_point: np.ndarray  #: int64 [N, G]
    outliers: np.ndarray  #: bool [N, K]: weights kept in fp16
    outlier_values: np.ndarray  #: float16 values of the outliers, in row-major order of the mask
    dequantized: np.ndarray  #: float32 [N, K]: what the quantized layer computes with (outliers included)
    bits: int
    signed: bool
    group_size: int


def _validate(w: np.ndarray, bits: int, group_size: int) -> None:
    if w.ndim != 2:
        raise ValueError(f"expected a 2-D weight [N, K], got shape {list(w.shape)}")
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in [2, 8], got {bits}")
    if group_size <= 0:
        raise ValueError(f"group_size must be positive, got {group_size}")


def _group_params(block: np.ndarray, mask: np.ndarray, bits: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-row ``(scale, zero_point)`` of ``block [N, g]``, ignoring masked (outlier) entries."""
    vals = np.where(mask, 0.0, block)  # 0 is always inside the quantized range
    p = scale_zero_point(vals.min(axis=1), vals.max(axis=1), bits, symmetric=symmetric)
    return p.scale.astype(np.float64), p.zero_point


def _finish(
    w_final: np.ndarray,
    q: np.ndarray,
    scale: np.ndarray,
    zp: np.ndarray,
    mask: np.ndarray,
    bits: int,
    symmetric: bool,
    group_size: int,
) -> GroupQuantized:
    k = q.shape[1]
    cols = np.arange(k) // group_size
    s32 = scale.astype(np.float32)
    deq = ((q - zp[:, cols]).astype(np.float32) * s32[:, cols]).astype(np.float32)
    values = w_final[mask].astype(np.float16)
    deq[mask] = values.astype(np.float32)
    return GroupQuantized(
        q=q.astype(np.int64),
        scale=scale.astype(np.float32),
        zero_point=zp.astype(np.int64),
        outliers=mask,
        outlier_values=values,
        dequantized=deq,
        bits=bits,
        signed=symmetric,
        group_size=group_size,
    )


def rtn(
    w: np.ndarray,
    bits: int,
    group_size: int,
    *,
    symmetric: bool = True,
    outliers: np.ndarray | None = None,
) -> GroupQuantized:
    """Round-to-nearest group quantization of ``w [N, K]`` (groups of ``group_size`` columns)."""
    _validate(w, bits, group_size)
    n, k = w.shape
    mask = np.zeros(w.shape, bool) if outliers is None else outliers
    groups = -(-k // group_size)
    w64 = w.astype(np.float64)
    scale = np.empty((n, groups))
    zp = np.empty((n, groups), np.int64)
    qmin, qmax = qrange(bits, symmetric)
    q = np.empty((n, k), np.int64)
    for g in range(groups):
        sl = slice(g * group_size, min(k, (g + 1) * group_size))
        scale[:, g], zp[:, g] = _group_params(w64[:, sl], mask[:, sl], bits, symmetric)
        s = scale[:, g : g + 1].astype(np.float32)
        q[:, sl] = np.clip(np.rint(w[:, sl].astype(np.float32) / s + zp[:, g : g + 1]), qmin, qmax)
    return _finish(w64, q, scale, zp, mask, bits, symmetric, group_size)


def _inverse_cholesky(h: np.ndarray, damp: float) -> np.ndarray:
    """Upper Cholesky factor of ``(H + damp * mean(diag H) * I)^-1``."""
    h = h.copy()
    h[np.diag_indices_from(h)] += damp * float(np.mean(np.diag(h)))
    for extra in (0.0, 1e-6, 1e-4, 1e-2, 1.0):
        try:
            hh = h + extra * float(np.mean(np.diag(h))) * np.eye(len(h)) if extra else h
            lower = np.linalg.cholesky(hh)
            inv_lower = np.linalg.solve(lower, np.eye(len(h)))
            hinv = inv_lower.T @ inv_lower
            return np.linalg.cholesky(hinv).T
        except np.linalg.LinAlgError:
            continue
    raise np.linalg.LinAlgError("Hessian is not positive definite even after extra dampening")


def gptq(
    w: np.ndarray,
    hessian: np.ndarray,
    bits: int,
    group_size: int,
    *,
    symmetric: bool = True,
    act_order: bool = False,
    damp: float = 0.01,
    block: int = 128,
    outliers: np.ndarray | None = None,
) -> GroupQuantized:
    """GPTQ quantization of ``w [N, K]`` given the input Hessian ``hessian [K, K]`` (``2 X^T X / n``).

    ``block`` is the lazy-batch width; ``act_order`` processes columns by decreasing
    ``diag(H)`` with group parameters fixed up front from the original groups.
    """
    _validate(w, bits, group_size)
    n, k = w.shape
    if hessian.shape != (k, k):
        raise ValueError(f"Hessian shape {list(hessian.shape)} does not match K={k}")
    mask = np.zeros(w.shape, bool) if outliers is None else outliers
    h = hessian.astype(np.float64).copy()
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0  # an input that is always zero: any value is exact, no error to spread
    groups = -(-k // group_size)
    qmin, qmax = qrange(bits, symmetric)
    w64 = w.astype(np.float64)
    scale = np.zeros((n, groups))
    zp = np.zeros((n, groups), np.int64)
    if act_order:
        perm = np.argsort(-np.diag(h), kind="stable")
        for g in range(groups):
            sl = slice(g * group_size, min(k, (g + 1) * group_size))
            scale[:, g], zp[:, g] = _group_params(w64[:, sl], mask[:, sl], bits, symmetric)
    else:
        perm = np.arange(k)
    wp = w64[:, perm].copy()
    mp = mask[:, perm]
    hinv = _inverse_cholesky(h[np.ix_(perm, perm)], damp)
    q = np.zeros((n, k), np.int64)
    final = np.zeros((n, k))
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1 = wp[:, i1:i2].copy()
        err1 = np.zeros((n, i2 - i1))
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            orig = int(perm[col])
            g = orig // group_size
            if not act_order and orig % group_size == 0:
                upcoming = np.concatenate([w1[:, i:], wp[:, i2:]], axis=1)[:, :group_size]
                scale[:, g], zp[:, g] = _group_params(upcoming, mp[:, col : col + group_size], bits, symmetric)
            wc = w1[:, i]
            s = scale[:, g]
            code = np.clip(np.rint(wc.astype(np.float32) / s.astype(np.float32) + zp[:, g]), qmin, qmax)
            deq = (code - zp[:, g]) * s.astype(np.float32)
            out_rows = mp[:, col]
            deq = np.where(out_rows, wc.astype(np.float16).astype(np.float64), deq)
            q[:, col] = code.astype(np.int64)
            final[:, col] = wc
            e = (wc - deq) / hinv1[i, i]
            w1[:, i:] -= np.outer(e, hinv1[i, i:])
            err1[:, i] = e
        wp[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    inv = np.argsort(perm)
    return _finish(final[:, inv], q[:, inv], scale, zp, mask, bits, symmetric, group_size)


def _prepared_inverse(hessian: np.ndarray, damp: float) -> np.ndarray:
    """:func:`gptq`'s ``hinv`` for one Hessian without act-order: dead inputs given a unit diagonal, then the upper
    Cholesky factor of the dampened inverse."""
    h = hessian.astype(np.float64).copy()
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    return _inverse_cholesky(h, damp)


def gptq_grouped(w: np.ndarray, hessians: np.ndarray, bits: int, *, damp: float = 0.01) -> GroupQuantized:
    """:func:`gptq` of each of ``G`` equal row blocks of ``w [N, K]`` with its own Hessian ``hessians [G, K, K]``,
    per row (one group of all ``K`` columns), symmetric, in input order: a grouped conv's weight, whose groups see
    different inputs. Bit for bit the per-block calls, in one pass over the columns for all rows (a depthwise conv
    has a block per channel, each a 9- or 25-column GPTQ that costs more in call overhead than in arithmetic).
    Falls back to the per-block calls when ``K`` exceeds :func:`gptq`'s lazy block (128 columns)."""
    _validate(w, bits, 1)
    n, k = w.shape
    groups = hessians.shape[0]
    if hessians.shape != (groups, k, k) or n % groups:
        raise ValueError(f"Hessians {list(hessians.shape)} do not fit {groups} row blocks of a weight {[n, k]}")
    per = n // groups
    if k > 128:
        parts = [gptq(w[g * per : (g + 1) * per], hessians[g], bits, k, damp=damp) for g in range(groups)]
        q = np.concatenate([p.q for p in parts])
        scale = np.concatenate([p.scale for p in parts]).astype(np.float64)
        zp = np.concatenate([p.zero_point for p in parts])
        return _finish(w.astype(np.float64), q, scale, zp, np.zeros(w.shape, bool), bits, True, k)
    hinv = np.stack([_prepared_inverse(h, damp) for h in hessians])
    rows_hinv = np.repeat(hinv, per, axis=0)  # [N, K, K]: each row's group factor
    qmin, qmax = qrange(bits, True)
    w1 = w.astype(np.float64).copy()
    no_outliers = np.zeros(w.shape, bool)
    scale, zp = _group_params(w1, no_outliers, bits, True)
    s = scale.astype(np.float32)
    q = np.zeros((n, k), np.int64)
    for i in range(k):  # gptq's column step, with each row's own factor
        wc = w1[:, i]
        code = np.clip(np.rint(wc.astype(np.float32) / s + zp), qmin, qmax)
        q[:, i] = code.astype(np.int64)
        e = (wc - (code - zp) * s) / rows_hinv[:, i, i]
        w1[:, i:] -= e[:, None] * rows_hinv[:, i, i:]
    return _finish(w, q, scale.reshape(n, 1), zp.reshape(n, 1), no_outliers, bits, True, k)


def select_outliers(
    w: np.ndarray,
    fraction: float,
    bits: int,
    group_size: int,
    *,
    symmetric: bool = True,
    hessian_diag: np.ndarray | None = None,
) -> np.ndarray:
    """The ``fraction`` of ``w [N, K]``'s weights with the largest quantization error (SpQR-style).

    Two rounds: the ``2 * fraction`` largest-magnitude weights (times ``sqrt(diag H)`` when given)
    are first left out of the group ranges; every weight's error under those tighter ranges, again
    weighted by ``sqrt(diag H)``, then picks the outliers (weights clipped by the tighter ranges
    have large errors, so the range-setting ones are the usual picks).
    """
    count = round(fraction * w.size)
    mask = np.zeros(w.shape, bool)
    if count <= 0:
        return mask
    weight = np.ones(w.shape[1]) if hessian_diag is None else np.sqrt(np.maximum(hessian_diag, 0.0))
    weight = np.broadcast_to(weight, w.shape)
    score = np.abs(w) * weight
    candidates = np.zeros(w.shape, bool)
    flat = np.argpartition(score.ravel(), -min(2 * count, w.size))[-min(2 * count, w.size) :]
    candidates.ravel()[flat] = True
    tight = rtn(w, bits, group_size, symmetric=symmetric, outliers=candidates)
    cols = np.arange(w.shape[1]) // group_size
    plain = (tight.q - tight.zero_point[:, cols]) * tight.scale[:, cols]
    error = np.abs(w - plain) * weight
    flat = np.argpartition(error.ravel(), -count)[-count:]
    mask.ravel()[flat] = True
    return mask
