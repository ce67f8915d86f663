"""Sine position encodings (DETR style), exactly as SAM 3 defines them.

`sine_position_map(h, w, num_pos_feats)` is the PositionEmbeddingSine map used for every neck level:
with F = num_pos_feats/2 features per axis, normalized positions y_i = (i+1)/(h+1e-6)*2*pi and
x_j = (j+1)/(w+1e-6)*2*pi, frequencies dim_t[k] = T^(2*floor(k/2)/F), per axis the interleaved
[sin(v/dim_t[0]), cos(v/dim_t[1]), ...], and channels ordered [y-part, x-part]. Returned
channels-last (h, w, num_pos_feats) in float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def _interleaved_sin_cos(v: jax.Array, num_feats: int, temperature: float) -> jax.Array:
    k = jnp.arange(num_feats, dtype=jnp.float32)
    dim_t = jnp.float32(temperature) ** (2 * jnp.floor(k / 2) / num_feats)
    p = v[..., None] / dim_t
    out = jnp.stack([jnp.sin(p[..., 0::2]), jnp.cos(p[..., 1::2])], axis=-1)
    return out.reshape(*v.shape, num_feats)


def sine_position_map(
    h: int, w: int, num_pos_feats: int, *, temperature: float = 10000.0, eps: float = 1e-6
) -> jax.Array:
    if num_pos_feats % 2:
        raise ValueError(f"num_pos_feats must be even, got {num_pos_feats}")
    f = num_pos_feats // 2
    scale = jnp.float32(2 * math.pi)
    y = jnp.arange(1, h + 1, dtype=jnp.float32)
    x = jnp.arange(1, w + 1, dtype=jnp.float32)
    y = y / (y[-1] + jnp.float32(eps)) * scale
    x = x / (x[-1] + jnp.float32(eps)) * scale
    pos_y = _interleaved_sin_cos(y, f, temperature)  # (h, f)
    pos_x = _interleaved_sin_cos(x, f, temperature)  # (w, f)
    pos_y = jnp.broadcast_to(pos_y[:, None, :], (h, w, f))
    pos_x = jnp.broadcast_to(pos_x[None, :, :], (h, w, f))
    return jnp.concatenate([pos_y, pos_x], axis=-1)
