"""Image / mask resizing with PyTorch `F.interpolate` semantics (NHWC; axes 1 and 2).

* `resize_bilinear(x, size)` = torch bilinear, align_corners=False, antialias=False: source
  coordinate (dst + 0.5) * in/out - 0.5, clamped below at 0, computed in float32 like torch's CPU
  kernel; no antialiasing even when downsampling (unlike `jax.image.resize`'s default).
* `resize_bilinear(x, size, antialias=True)` = torch bilinear with antialias=True (a triangle filter
  widened by the downsampling factor); `jax.image.resize` implements the same filter.
* `resize_nearest(x, size)` = torch mode="nearest": src = min(floor(dst * in/out), in - 1)
  (not the half-pixel "nearest-exact" that `jax.image.resize` uses).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _linear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scale = np.float32(in_size) / np.float32(out_size)
    dst = np.arange(out_size, dtype=np.float32) + np.float32(0.5)
    # torch evaluates scale * (dst + 0.5) - 0.5 as one fused multiply-add in float32: the exact
    # product of two float32 numbers fits a float64, so one rounding at the end reproduces it.
    src = (np.float64(scale) * dst.astype(np.float64) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    lam = np.clip(src - i0.astype(np.float32), 0.0, 1.0).astype(np.float32)
    i1 = i0 + (i0 < in_size - 1)
    return i0, i1, lam


def _interp_axis(x: jax.Array, axis: int, out_size: int) -> jax.Array:
    in_size = x.shape[axis]
    if in_size == out_size:
        return x
    i0, i1, lam = _linear_taps(in_size, out_size)
    shape = [1] * x.ndim
    shape[axis] = out_size
    lam = jnp.asarray(lam, dtype=jnp.float32).reshape(shape)
    a = jnp.take(x, jnp.asarray(i0), axis=axis).astype(jnp.float32)
    b = jnp.take(x, jnp.asarray(i1), axis=axis).astype(jnp.float32)
    return ((1 - lam) * a + lam * b).astype(x.dtype)


def _check(x: jax.Array, size: tuple[int, int]) -> tuple[int, int]:
    if x.ndim != 4:
        raise ValueError(f"resize expects NHWC input, got shape {tuple(x.shape)}")
    h, w = (int(s) for s in size)
    if h <= 0 or w <= 0:
        raise ValueError(f"resize target size must be positive, got {size}")
    return h, w


def resize_bilinear(x: jax.Array, size: tuple[int, int], *, antialias: bool = False) -> jax.Array:
    h, w = _check(x, size)
    if antialias and (h < x.shape[1] or w < x.shape[2]):
        out = jax.image.resize(x.astype(jnp.float32), (x.shape[0], h, w, x.shape[3]), "linear", antialias=True)
        return out.astype(x.dtype)
    return _interp_axis(_interp_axis(x, 1, h), 2, w)


def _nearest_index(in_size: int, out_size: int) -> np.ndarray:
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(src, in_size - 1)


def resize_nearest(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    h, w = _check(x, size)
    x = jnp.take(x, jnp.asarray(_nearest_index(x.shape[1], h)), axis=1)
    return jnp.take(x, jnp.asarray(_nearest_index(x.shape[2], w)), axis=2)


def antialias_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """One axis of torch's CPU antialiased bilinear resize (`_upsample_bilinear2d_aa`): per output
    index the source indices (out, K) and float32 weights (out, K) (zero-padded), computed with
    torch's float32 arithmetic (window center scale * (i + 0.5), triangle filter widened by the
    downsampling factor, weights normalised by their float32 sum)."""
    scale = np.float32(in_size / out_size)
    down = scale >= 1
    support = scale if down else np.float32(1.0)
    invscale = np.float32(1.0) / scale if down else np.float32(1.0)
    rows = []
    for i in range(out_size):
        # as the C++ evaluates it: float32 variables, double literals (0.5) promote the expression
        center = np.float32(np.float64(scale) * (i + 0.5))
        xmin = max(int(np.float64(center) - np.float64(support) + 0.5), 0)
        xsize = min(int(np.float64(center) + np.float64(support) + 0.5), in_size) - xmin
        w = []
        total = np.float32(0.0)
        for j in range(xsize):
            x = np.float32((np.float64(np.float32(j + xmin) - center) + 0.5) * np.float64(invscale))
            wj = np.float32(max(np.float32(0.0), np.float32(1.0) - abs(x)))
            w.append(wj)
            total = np.float32(total + wj)
        if total != 0:
            w = [np.float32(v / total) for v in w]
        rows.append((xmin, w))
    k = max(len(w) for _, w in rows)
    idx = np.zeros((out_size, k), np.int32)
    wts = np.zeros((out_size, k), np.float32)
    for i, (xmin, w) in enumerate(rows):
        idx[i] = np.minimum(xmin + np.arange(k), in_size - 1)
        wts[i, :len(w)] = w
    return idx, wts


def _aa_axis(x: jax.Array, axis: int, out_size: int) -> jax.Array:
    idx, wts = antialias_taps(x.shape[axis], out_size)
    acc = None
    for j in range(idx.shape[1]):  # torch's order: one tap after the other, multiply-add in float32
        tap = jnp.take(x, jnp.asarray(idx[:, j]), axis=axis)
        shape = [1] * x.ndim
        shape[axis] = out_size
        w = jnp.asarray(wts[:, j]).reshape(shape)
        acc = tap * w if acc is None else tap * w + acc
    return acc


def resize_bilinear_aa_exact(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """(B, H, W) float32 -> (B, h, w): torch `F.interpolate(mode="bilinear", align_corners=False,
    antialias=True)` on the CPU, bit for bit where XLA fuses each multiply-add into an FMA as the
    CPU backend does (tests/test_resize.py checks it): the width first, then the height. The
    official video model thresholds such resizes of binary masks at exactly the values (0.5) where
    the last bit decides, so those paths need this rather than `resize_bilinear(antialias=True)`."""
    h, w = (int(s) for s in size)
    x = x.astype(jnp.float32)
    if x.shape[2] != w:
        x = _aa_axis(x, 2, w)
    if x.shape[1] != h:
        x = _aa_axis(x, 1, h)
    return x
