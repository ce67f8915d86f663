"""2D axial rotary position embedding (RoPE) with interleaved pairs, as used by the SAM 3 ViT.

For a grid of `end_x` x `end_y` tokens in row-major order, token t sits at x = t mod end_x and
y = t div end_x. Positions are multiplied by `scale` (1 for windowed blocks, window/grid for global
blocks, so that every block sees positions in the pretraining range). Per axis there are dim/4
frequencies f_j = theta^(-4j/dim); the angle vector of a token is [x*f_0..x*f_{d/4-1},
y*f_0..y*f_{d/4-1}] (dim/2 angles). Rotation k acts on the interleaved feature pair (2k, 2k+1).
Everything is computed in float32 and cast back, as the official implementation does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def axial_rope_angles(
    dim: int, end_x: int, end_y: int, *, theta: float = 10000.0, scale: float = 1.0
) -> jax.Array:
    """Returns the (end_x*end_y, dim//2) float32 rotation angles for a 2D token grid."""
    if dim % 4:
        raise ValueError(f"RoPE head dim must be divisible by 4, got {dim}")
    exponents = jnp.arange(0, dim, 4, dtype=jnp.float32)[: dim // 4] / dim
    freqs = 1.0 / (jnp.float32(theta) ** exponents)
    t = jnp.arange(end_x * end_y, dtype=jnp.float32)
    # Float ops in the same order as the reference: (t mod W) * scale, floor(t / W) * scale.
    pos_x = jnp.mod(t, end_x) * jnp.float32(scale)
    pos_y = jnp.floor(t / end_x) * jnp.float32(scale)
    return jnp.concatenate([pos_x[:, None] * freqs[None], pos_y[:, None] * freqs[None]], axis=-1)


def rope_cos_sin(angles: jax.Array) -> tuple[jax.Array, jax.Array]:
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates interleaved pairs of the last axis of x (..., T, H, D) by per-token angles (T, D/2)."""
    dtype = x.dtype
    xf = x.astype(jnp.float32)
    pairs = xf.reshape(*xf.shape[:-1], xf.shape[-1] // 2, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    # cos/sin are (T, D/2); broadcast over heads (axis -2 of x).
    c = cos[:, None, :]
    s = sin[:, None, :]
    out = jnp.stack([a * c - b * s, a * s + b * c], axis=-1)
    return out.reshape(xf.shape).astype(dtype)


def complex_table(angles: np.ndarray) -> np.ndarray:
    """The complex64 form (cos + i sin) stored in official checkpoints as `freqs_cis`."""
    angles = np.asarray(angles, dtype=np.float32)
    return (np.cos(angles) + 1j * np.sin(angles)).astype(np.complex64)
