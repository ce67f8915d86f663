"""Image preprocessing identical to the official `Sam3Processor`.

The official processor squashes the uint8 image to a square (no letterbox) with torchvision's
`v2.Resize` on a uint8 tensor, i.e. an antialiased bilinear resize computed in fixed point (int16
weights, per-pass rounding, horizontal pass first, as in Pillow-SIMD), then scales to [0, 1] and
normalises with mean = std = 0.5. `resize_uint8` reproduces that arithmetic in numpy on the host, so
both implementations see bit-identical pixels; `normalize_images` is the scaling and normalisation,
shared by `preprocess` (one user image, for the predictor) and the data pipeline (uint8 batches).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

MEAN = 0.5
STD = 0.5


@functools.lru_cache(maxsize=256)
def _aa_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Per output index: window start, int16 weights (out, K), and their precision (bits).
    Memoised (a pipeline resizes many images between the same sizes); callers must not mutate."""
    scale = in_size / out_size
    support = scale if scale >= 1.0 else 1.0  # bilinear: interp_size 2 -> half-width 1, widened by scale
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    k_max = int(np.ceil(support)) * 2 + 1
    starts = np.zeros(out_size, np.int64)
    weights = np.zeros((out_size, k_max), np.float64)
    for i in range(out_size):
        center = scale * (i + 0.5)
        xmin = max(int(center - support + 0.5), 0)
        xsize = min(int(center + support + 0.5), in_size) - xmin
        xsize = min(max(xsize, 0), k_max)
        x = (np.arange(xsize) + xmin - center + 0.5) * invscale
        w = np.maximum(1.0 - np.abs(x), 0.0)
        total = w.sum()
        if total != 0.0:
            w = w / total
        starts[i] = xmin
        weights[i, :xsize] = w
    w_max = weights.max()
    precision = 0
    while precision < 22 and int(0.5 + w_max * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    scaled = weights * (1 << precision)
    w16 = np.where(scaled < 0, (-0.5 + scaled).astype(np.int32), (0.5 + scaled).astype(np.int32))
    return starts, w16, precision


def _resample_axis(x: np.ndarray, axis: int, out_size: int) -> np.ndarray:
    in_size = x.shape[axis]
    if in_size == out_size:
        return x
    idx, w16, precision = resize_taps(in_size, out_size)  # padded taps have weight 0
    xm = np.moveaxis(x, axis, 0).astype(np.int32)  # (in, ...); sums stay below 2**31
    taps = xm[idx]  # (out, K, ...)
    w = w16.reshape(w16.shape + (1,) * (taps.ndim - 2))
    acc = (taps * w).sum(axis=1) + (1 << (precision - 1))
    out = np.clip(acc >> precision, 0, 255).astype(np.uint8)
    return np.moveaxis(out, 0, axis)


def resize_taps(in_size: int, out_size: int, k_multiple: int = 1) -> tuple[np.ndarray, np.ndarray, int]:
    """One axis of `resize_uint8` as gather taps: source indices (out, K) int32, int16-valued
    weights (out, K) int32 (0 on padded taps; K padded up to a multiple of `k_multiple`) and the
    fixed-point precision (bits). An axis that keeps its size is the identity: one tap of weight 1,
    precision 0."""
    if in_size == out_size:
        idx, w, precision = np.arange(out_size)[:, None], np.ones((out_size, 1), np.int64), 0
    else:
        starts, w, precision = _aa_weights(in_size, out_size)
        idx = np.minimum(starts[:, None] + np.arange(w.shape[1])[None, :], in_size - 1)
    pad = -w.shape[1] % k_multiple
    idx, w = (np.pad(a, ((0, 0), (0, pad))) for a in (idx, w))
    return idx.astype(np.int32), w.astype(np.int32), precision


def resize_uint8_on_device(image, taps_w, taps_h):
    """`resize_uint8` in jax on the device: (H, W, C) uint8 -> (h, w, C) uint8, bit-identical (the
    same integer arithmetic: horizontal pass, rounding shift, clip, then the vertical pass). taps_w /
    taps_h: `resize_taps(W, w)` / `resize_taps(H, h)` (arrays may be traced; jit-friendly)."""
    import jax.numpy as jnp

    def one_axis(x, taps, axis):
        idx, w, precision = taps
        xm = jnp.moveaxis(x, axis, 0).astype(jnp.int32)  # (in, ...)
        t = xm[idx]  # (out, K, ...)
        acc = jnp.sum(t * w.reshape(w.shape + (1,) * (t.ndim - 2)), axis=1)
        precision = jnp.asarray(precision, jnp.int32)
        acc = acc + jnp.where(precision > 0, jnp.left_shift(1, jnp.maximum(precision - 1, 0)), 0)
        out = jnp.clip(jnp.right_shift(acc, precision), 0, 255).astype(jnp.uint8)
        return jnp.moveaxis(out, 0, axis)

    return one_axis(one_axis(image, taps_w, 1), taps_h, 0)


def resize_uint8(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, C) uint8 -> (h, w, C) uint8, bit-identical to torchvision v2.Resize on a uint8 tensor."""
    h, w = size
    out = _resample_axis(image, 1, w)  # horizontal pass first
    return _resample_axis(out, 0, h)


def to_uint8_rgb(image: Any) -> np.ndarray:
    """Validates a user image (HxWx3 uint8 array or PIL image) and returns it as an array."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        Image = None
    if Image is not None and isinstance(image, Image.Image):
        if image.mode != "RGB":
            raise ValueError(f"expected an RGB PIL image, got mode {image.mode!r} (convert it with .convert('RGB'))")
        image = np.asarray(image)
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be an HxWx3 uint8 numpy array or a PIL image, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(f"image must have dtype uint8, got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must have shape (H, W, 3), got {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image is empty: shape {image.shape}")
    return np.ascontiguousarray(image)


def normalize_table() -> np.ndarray:
    """(256,) float32: `normalize_images` of every uint8 value (a lookup table for the device)."""
    return normalize_images(np.arange(256, dtype=np.uint8))


def normalize_images(images: np.ndarray) -> np.ndarray:
    """uint8 (..., 3) -> float32 ((x / 255 - 0.5) / 0.5), the official processor's arithmetic."""
    # torchvision's ToDtype(float32, scale=True) multiplies by the float32 value of 1/255.
    x = np.asarray(images).astype(np.float32) * np.float32(1.0 / 255.0)
    return ((x - np.float32(MEAN)) / np.float32(STD)).astype(np.float32)


def preprocess(image: Any, resolution: int) -> np.ndarray:
    """User image -> (resolution, resolution, 3) float32, normalised ((x/255 - 0.5) / 0.5)."""
    img = to_uint8_rgb(image)
    return normalize_images(resize_uint8(img, (resolution, resolution)))
