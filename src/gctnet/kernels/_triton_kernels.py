"""Triton kernels for GCT (imported only where Triton is available).

Both kernels see a tensor of shape (N, C, *spatial) as the strided 3-D view (N, C, HW): any layout
whose spatial dims flatten to one stride works, in particular contiguous (HW stride 1) and
channels_last (C stride 1, HW stride C).  Programs work on (BLOCK_C, BLOCK_HW) tiles of one sample;
the launcher chooses the tile shape so the contiguous dimension is the wide one.

* :func:`reduce_kernel` - per-(n, c) reductions over HW, accumulated in float32:
  ``KIND`` 0: sum a^2, 1: sum |a|, 2: sum a, 3: sum a*b.  A grid of ``N * cdiv(C, BLOCK_C) * SPLITS``
  programs; each split of HW writes a partial sum to ``out[split, n, c]`` (summed by the caller; no
  atomics, so results are deterministic).
* :func:`scale_kernel` - one pointwise pass: ``out = a * gate[n, c]`` (``KIND`` 0), plus
  ``coef[n, c] * b`` (1), ``coef[n, c] * sign(b)`` (2) or ``coef[n, c]`` (3), computed in float32 and
  stored in ``out``'s dtype.  Forward uses ``a = x``; backward ``a = grad_y, b = x``.
"""

import triton
import triton.language as tl

__all__ = ["reduce_kernel", "scale_kernel"]


@triton.jit
def reduce_kernel(
    a_ptr,
    b_ptr,
    out_ptr,
    NC,
    C,
    HW,
    HW_PER_SPLIT,
    SPLITS,
    sa_n,
    sa_c,
    sa_hw,
    sb_n,
    sb_c,
    sb_hw,
    KIND: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    pid = tl.program_id(0)
    split = pid % SPLITS
    tile = pid // SPLITS
    num_cb = tl.cdiv(C, BLOCK_C)
    n = (tile // num_cb).to(tl.int64)
    offs_c = (tile % num_cb) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    hw_lo = split * HW_PER_SPLIT
    hw_hi = tl.minimum(hw_lo + HW_PER_SPLIT, HW)
    row_a = a_ptr + n * sa_n + offs_c[:, None].to(tl.int64) * sa_c
    row_b = b_ptr + n * sb_n + offs_c[:, None].to(tl.int64) * sb_c
    acc = tl.zeros((BLOCK_C, BLOCK_HW), dtype=tl.float32)
    for hw0 in range(hw_lo, hw_hi, BLOCK_HW):
        offs_hw = (hw0 + tl.arange(0, BLOCK_HW)).to(tl.int64)
        mask = mask_c[:, None] & (offs_hw[None, :] < hw_hi)
        a = tl.load(row_a + offs_hw[None, :] * sa_hw, mask=mask, other=0.0).to(tl.float32)
        if KIND == 0:
            acc += a * a
        elif KIND == 1:
            acc += tl.abs(a)
        elif KIND == 2:
            acc += a
        else:
            b = tl.load(row_b + offs_hw[None, :] * sb_hw, mask=mask, other=0.0).to(tl.float32)
            acc += a * b
    total = tl.sum(acc, axis=1)
    tl.store(out_ptr + split.to(tl.int64) * NC + n * C + offs_c, total, mask=mask_c)


@triton.jit
def scale_kernel(
    a_ptr,
    b_ptr,
    out_ptr,
    gate_ptr,
    coef_ptr,
    C,
    HW,
    sa_n,
    sa_c,
    sa_hw,
    sb_n,
    sb_c,
    sb_hw,
    so_n,
    so_c,
    so_hw,
    KIND: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    pid = tl.program_id(0)
    num_hb = tl.cdiv(HW, BLOCK_HW)
    hb = pid % num_hb
    tile = pid // num_hb
    num_cb = tl.cdiv(C, BLOCK_C)
    n = (tile // num_cb).to(tl.int64)
    offs_c = (tile % num_cb) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    offs_hw = (hb * BLOCK_HW + tl.arange(0, BLOCK_HW)).to(tl.int64)
    mask = mask_c[:, None] & (offs_hw[None, :] < HW)
    c64 = offs_c[:, None].to(tl.int64)
    gate = tl.load(gate_ptr + n * C + offs_c, mask=mask_c, other=0.0)
    a = tl.load(a_ptr + n * sa_n + c64 * sa_c + offs_hw[None, :] * sa_hw, mask=mask, other=0.0)
    out = a.to(tl.float32) * gate[:, None]
    if KIND != 0:
        coef = tl.load(coef_ptr + n * C + offs_c, mask=mask_c, other=0.0)[:, None]
        if KIND == 3:
            out += coef
        else:
            b = tl.load(b_ptr + n * sb_n + c64 * sb_c + offs_hw[None, :] * sb_hw, mask=mask, other=0.0)
            b = b.to(tl.float32)
            if KIND == 1:
                out += coef * b
            else:
                sign = tl.where(b > 0, 1.0, tl.where(b < 0, -1.0, 0.0))
                out += coef * sign
    o_ptrs = out_ptr + n * so_n + c64 * so_c + offs_hw[None, :] * so_hw
    tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=mask)
