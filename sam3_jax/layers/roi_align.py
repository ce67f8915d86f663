"""RoI-Align and bilinear grid sampling on NHWC features, with torchvision / torch semantics.

`roi_align` reproduces the forward of `torchvision.ops.roi_align` (CPU and CUDA kernels): average of
bilinear samples on a regular grid inside each of the `output_size x output_size` bins of a box,
including the legacy `aligned=False` behaviour (no half-pixel shift, box sides clamped to >= 1) and
the adaptive grid of `sampling_ratio <= 0` (ceil(box side / output_size) samples per bin and axis).

How it is computed (static shapes, jit-able)
-------------------------------------------
torchvision's bilinear sample is separable: its weight on pixel (r, s) is wy(r) * wx(s), where each
factor only depends on one coordinate (its clamping rules and its "sample lies outside
[-1, size]" zero test are per axis too). The average over the gh x gw samples of a bin is therefore

    out[p, q, c] = sum_{r, s} Ay[p, r] * Ax[q, s] * F[r, s, c],
    Ay[p, r] = (1 / gh) * sum_{samples i of bin p} wy_i(r)         (likewise Ax),

so we build the two small per-axis matrices and contract them with the feature map (two einsums).

The adaptive grid size gh depends on the box, so the number of samples along an axis
(output_size * gh) is data dependent and unbounded (a box may extend far beyond the map). Only the
samples inside [-1, size] contribute, though, and those are few: when gh >= 2 the sample spacing
bin/gh = bin/ceil(bin) is > 1/2 pixel, so at most 2 * size + 3 samples can lie in [-1, size];
when gh == 1 there are only output_size samples in total. We therefore evaluate a static window of
`S = max(output_size, 2 * size + 6)` consecutive sample indices starting just before the first
sample that can be inside the map, and mask every sample that is past the last sample of the box
or outside [-1, size]. This is exact for every box, whatever its size.

Cost per box and axis: S * size weights (e.g. 150 x 72 for the 72x72 SAM 3 map) to build the
weight matrices; then the contraction costs 2 * output_size * H * W * C (+ a smaller second
einsum) multiply-adds per box, e.g. ~9.3 M for 7x7 bins on a 72x72x256 map -- independent of the
box size, whereas torchvision's loop costs output_size^2 * gh * gw * 4 * C (larger for big boxes,
smaller for tiny ones). With `sampling_ratio > 0` the grid is static and the window is exactly
`output_size * sampling_ratio` samples.

`grid_sample` is `torch.nn.functional.grid_sample(mode="bilinear", padding_mode="zeros",
align_corners=False)` on NHWC features for an arbitrary batch of sample locations.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sam3_jax.layers.core import einsum


def _axis_weights(
    start: jax.Array,
    bin_size: jax.Array,
    grid: jax.Array,
    size: int,
    out_size: int,
    num_samples: int,
    adaptive: bool,
) -> jax.Array:
    """Per-axis pooling matrix (..., out_size, size) for boxes given by start / bin size / grid.

    start, bin_size: float (...,); grid: int32 (...,) samples per bin along this axis (>= 0).
    """
    dtype = start.dtype
    total = grid * out_size  # number of samples of the box along this axis
    safe_grid = jnp.maximum(grid, 1)
    if adaptive:
        # First sample index whose coordinate can be >= -1, minus a safety margin of 2 samples
        # against rounding (earlier samples are masked by the exact test below anyway).
        step = bin_size / safe_grid.astype(dtype)
        first = jnp.floor((-1.0 - start) / jnp.where(step > 0, step, 1.0) - 0.5) - 2.0
        first = jnp.clip(first, 0.0, jnp.maximum(total - 1, 0).astype(dtype))
        first = jnp.where(step > 0, first, 0.0).astype(jnp.int32)
    else:
        first = jnp.zeros(start.shape, jnp.int32)
    j = first[..., None] + jnp.arange(num_samples, dtype=jnp.int32)  # (..., S)
    p = j // safe_grid[..., None]  # bin index
    i = j % safe_grid[..., None]  # sample index inside the bin
    g = safe_grid[..., None].astype(dtype)
    b = bin_size[..., None]
    # Same operation order as the torchvision kernels.
    y = start[..., None] + p.astype(dtype) * b + (i.astype(dtype) + 0.5) * b / g
    valid = (j < total[..., None]) & (y >= -1.0) & (y <= float(size))
    y = jnp.maximum(y, 0.0)
    lo = jnp.floor(y).astype(jnp.int32)
    at_end = lo >= size - 1
    lo = jnp.where(at_end, size - 1, lo)
    hi = jnp.where(at_end, size - 1, lo + 1)
    y = jnp.where(at_end, lo.astype(dtype), y)
    frac = y - lo.astype(dtype)
    frac = jnp.where(valid, frac, 0.0)
    keep = jnp.where(valid, 1.0 - frac, 0.0)
    rows = jnp.arange(size, dtype=jnp.int32)
    w = keep[..., None] * (lo[..., None] == rows).astype(dtype) + frac[..., None] * (
        hi[..., None] == rows
    ).astype(dtype)  # (..., S, size)
    bins = (p[..., None] == jnp.arange(out_size, dtype=jnp.int32)).astype(dtype)  # (..., S, out)
    a = jnp.einsum("...sp,...sr->...pr", bins, w, precision=jax.lax.Precision.HIGHEST)
    return a / safe_grid[..., None, None].astype(dtype)


def roi_align(
    features: jax.Array,
    boxes: jax.Array,
    output_size: int = 7,
    *,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> jax.Array:
    """torchvision `roi_align` on NHWC features with per-image boxes.

    features: (B, H, W, C); boxes: (B, N, 4) as (x1, y1, x2, y2) in input coordinates (multiplied
    by `spatial_scale` to reach feature pixels). Box n of batch element b pools from image b.
    Returns (B, N, output_size, output_size, C) (torch: (B*N, C, out, out) for a list of per-image
    box tensors).
    """
    _, h, w, _ = features.shape
    out = int(output_size)
    boxes = boxes.astype(jnp.float32)
    offset = 0.5 if aligned else 0.0
    x1 = boxes[..., 0] * spatial_scale - offset
    y1 = boxes[..., 1] * spatial_scale - offset
    x2 = boxes[..., 2] * spatial_scale - offset
    y2 = boxes[..., 3] * spatial_scale - offset
    roi_w = x2 - x1
    roi_h = y2 - y1
    if not aligned:
        roi_w = jnp.maximum(roi_w, 1.0)
        roi_h = jnp.maximum(roi_h, 1.0)
    # A true division (as torch): XLA would turn a division by the constant `out` into a
    # multiplication by its rounded reciprocal (84 * fl(1/7) = 12.000001, whose ceil is 13).
    out_f = jax.lax.optimization_barrier(jnp.full(roi_h.shape, out, jnp.float32))
    bin_h = roi_h / out_f
    bin_w = roi_w / out_f
    if sampling_ratio > 0:
        grid_h = grid_w = jax.lax.optimization_barrier(jnp.full(bin_h.shape, sampling_ratio, jnp.int32))
        n_h = n_w = out * sampling_ratio
    else:
        # ceil(side / out) as in torchvision; a non-positive side (aligned=True only) gives no samples.
        grid_h = jnp.maximum(jnp.ceil(roi_h / out_f), 0.0).astype(jnp.int32)
        grid_w = jnp.maximum(jnp.ceil(roi_w / out_f), 0.0).astype(jnp.int32)
        n_h = max(out, 2 * h + 6)
        n_w = max(out, 2 * w + 6)
    adaptive = sampling_ratio <= 0
    ay = _axis_weights(y1, bin_h, grid_h, h, out, n_h, adaptive)  # (B, N, out, H)
    ax = _axis_weights(x1, bin_w, grid_w, w, out, n_w, adaptive)  # (B, N, out, W)
    dtype = features.dtype
    ay, ax = ay.astype(dtype), ax.astype(dtype)
    rows = einsum("bnph,bhwc->bnpwc", ay, features)
    return einsum("bnqw,bnpwc->bnpqc", ax, rows)


def grid_sample(features: jax.Array, grid: jax.Array) -> jax.Array:
    """`F.grid_sample(bilinear, padding_mode='zeros', align_corners=False)` on NHWC features.

    features: (B, H, W, C); grid: (B, ..., 2) with (x, y) in [-1, 1] (-1 / 1 = outer edges of the
    border pixels). Returns (B, ..., C); corners outside the map contribute zero.
    """
    b, h, w, c = features.shape
    lead = grid.shape[1:-1]
    g = grid.reshape(b, -1, 2).astype(jnp.float32)
    ix = ((g[..., 0] + 1.0) * w - 1.0) / 2.0
    iy = ((g[..., 1] + 1.0) * h - 1.0) / 2.0
    x0 = jnp.floor(ix)
    y0 = jnp.floor(iy)
    x1 = x0 + 1.0
    y1 = y0 + 1.0
    flat = features.reshape(b, h * w, c)

    def corner(yc, xc, weight):
        inside = (xc >= 0) & (xc <= w - 1) & (yc >= 0) & (yc <= h - 1)
        xi = jnp.clip(xc, 0, w - 1).astype(jnp.int32)
        yi = jnp.clip(yc, 0, h - 1).astype(jnp.int32)
        vals = jnp.take_along_axis(flat, (yi * w + xi)[..., None], axis=1)  # (B, P, C)
        return vals * jnp.where(inside, weight, 0.0)[..., None].astype(features.dtype)

    out = (
        corner(y0, x0, (x1 - ix) * (y1 - iy))
        + corner(y0, x1, (ix - x0) * (y1 - iy))
        + corner(y1, x0, (x1 - ix) * (iy - y0))
        + corner(y1, x1, (ix - x0) * (iy - y0))
    )
    return out.reshape(b, *lead, c)
