"""Box geometry for the matcher and the losses (the arithmetic of the official sam3/model/box_ops.py).

Formats: cxcywh = (centre x, centre y, width, height), xyxy = (x0, y0, x1, y1); coordinates are
normalised to [0, 1] in SAM 3 but nothing here depends on it.

* `box_iou(a, b)` / `generalized_box_iou(a, b)`: all pairs, a (..., N, 4), b (..., M, 4) xyxy ->
  (..., N, M) (leading dims broadcast).
* `elementwise_box_iou(a, b)` / `elementwise_generalized_box_iou(a, b)`: matching rows, (..., 4)
  and (..., 4) -> (...) (the official `fast_diag_*` functions).

Degenerate boxes give NaN exactly where the official code does (0 / 0); the losses only ever feed
boxes of positive area (padding is replaced by a dummy box before any of these is called).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def box_cxcywh_to_xyxy(b: jax.Array) -> jax.Array:
    cx, cy, w, h = (b[..., i] for i in range(4))
    return jnp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def box_xyxy_to_cxcywh(b: jax.Array) -> jax.Array:
    x0, y0, x1, y1 = (b[..., i] for i in range(4))
    return jnp.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], axis=-1)


def box_area(b: jax.Array) -> jax.Array:
    """xyxy (..., 4) -> (...)."""
    return (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])


def _extent(wh: jax.Array) -> jax.Array:
    """Area of a clamped (..., 2) width/height pair."""
    wh = jnp.maximum(wh, 0.0)
    return wh[..., 0] * wh[..., 1]


def box_iou(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Pairwise IoU and union: a (..., N, 4), b (..., M, 4) xyxy -> two (..., N, M) arrays."""
    area_a = box_area(a)[..., :, None]
    area_b = box_area(b)[..., None, :]
    a_ = a[..., :, None, :]
    b_ = b[..., None, :, :]
    inter = _extent(jnp.minimum(a_[..., 2:], b_[..., 2:]) - jnp.maximum(a_[..., :2], b_[..., :2]))
    union = area_a + area_b - inter
    return inter / union, union


def generalized_box_iou(a: jax.Array, b: jax.Array) -> jax.Array:
    """Pairwise GIoU: a (..., N, 4), b (..., M, 4) xyxy -> (..., N, M)."""
    iou, union = box_iou(a, b)
    a_ = a[..., :, None, :]
    b_ = b[..., None, :, :]
    hull = _extent(jnp.maximum(a_[..., 2:], b_[..., 2:]) - jnp.minimum(a_[..., :2], b_[..., :2]))
    return iou - (hull - union) / hull


def _elementwise_parts(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    area_a = jnp.prod(a[..., 2:] - a[..., :2], axis=-1)
    area_b = jnp.prod(b[..., 2:] - b[..., :2], axis=-1)
    overlap = jnp.minimum(a[..., 2:], b[..., 2:]) - jnp.maximum(a[..., :2], b[..., :2])
    inter = jnp.prod(jnp.maximum(overlap, 0.0), axis=-1)
    return inter, area_a + area_b - inter


def elementwise_box_iou(a: jax.Array, b: jax.Array) -> jax.Array:
    """IoU of corresponding boxes: (..., 4), (..., 4) xyxy -> (...)."""
    inter, union = _elementwise_parts(a, b)
    return inter / union


def elementwise_generalized_box_iou(a: jax.Array, b: jax.Array) -> jax.Array:
    """GIoU of corresponding boxes: (..., 4), (..., 4) xyxy -> (...)."""
    inter, union = _elementwise_parts(a, b)
    span = jnp.maximum(a[..., 2:], b[..., 2:]) - jnp.minimum(a[..., :2], b[..., :2])
    hull = jnp.prod(jnp.maximum(span, 0.0), axis=-1)
    return inter / union - (hull - union) / hull
