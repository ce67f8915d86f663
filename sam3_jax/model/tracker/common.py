"""Pieces shared by the SAM modules of the tracker (official: sam3/sam/common.py).

`LayerNorm2d` (eps 1e-6) lives with the other numerics in `sam3_jax.layers.core`; here are the
learned token tables (torch `nn.Embedding`, N(0, 1) at init) and the token MLP `MLPBlock`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam3_jax.layers import partitioning as P
from sam3_jax.layers.core import Dense

Dtype = Any


def token_table(rows: int, features: int, param_dtype: Dtype = jnp.float32) -> nn.Embed:
    """A learned (rows, features) table, read whole (`.embedding`): prompt-type embeddings, output
    tokens. Logical axes (None, embed); drawn N(0, 1) like torch `nn.Embedding`."""
    return nn.Embed(
        rows, features, embedding_init=P.with_axes(nn.initializers.normal(1.0), (None, P.EMBED)),
        param_dtype=param_dtype,
    )


class MLPBlock(nn.Module):
    """Official `MLPBlock` with ReLU (the activation the two-way transformer passes): lin1 -> ReLU -> lin2."""

    mlp_dim: int
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = jax.nn.relu(Dense(self.mlp_dim, (P.EMBED, P.MLP), name="lin1", **kw)(x))
        return Dense(x.shape[-1], (P.MLP, P.EMBED), name="lin2", **kw)(h)
