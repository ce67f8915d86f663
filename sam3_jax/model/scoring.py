"""Dot-product scoring head of SAM 3 (official: sam3/model/model_misc.py, `DotProductScoring`,
built by `model_builder._create_dot_product_scoring`).

    p      = prompt_mlp(prompt)                 residual MLP C -> hidden -> C, then LayerNorm out_norm
    pooled = mean of p over the valid (non-padding) prompt tokens (divided by max(count, 1))
    logits = <hs_proj(hs), prompt_proj(pooled)> / sqrt(d_proj), clipped to [-12, 12]

for every decoder layer's (normed) queries. The prompt is the pre-encoder prompt (text + geometry).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam3_jax.layers import partitioning as P
from sam3_jax.layers.core import Dense, einsum
from sam3_jax.model.mlp import MLP

Dtype = Any


def masked_mean(x: jax.Array, pad: jax.Array) -> jax.Array:
    """Mean of x (B, T, C) over the tokens where pad (B, T) is False; all-padding rows give 0."""
    valid = (~pad).astype(x.dtype)[..., None]
    count = jnp.maximum(valid.sum(axis=1), 1.0)
    return (x * valid).sum(axis=1) / count


class DotProductScoring(nn.Module):
    d_model: int
    d_proj: int
    prompt_hidden_dim: int
    clamp_max_val: float = 12.0
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, hs: jax.Array, prompt: jax.Array, prompt_mask: jax.Array) -> jax.Array:
        """hs (L, B, Q, C); prompt (B, P, C); prompt_mask (B, P) bool, True = padding.

        Returns the class logits (L, B, Q, 1).
        """
        if hs.ndim != 4 or prompt.ndim != 3 or prompt_mask.shape != prompt.shape[:2]:
            raise ValueError(
                "expected hs (L, B, Q, C), prompt (B, P, C) and prompt_mask (B, P); got "
                f"{tuple(hs.shape)}, {tuple(prompt.shape)}, {tuple(prompt_mask.shape)}"
            )
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        c = self.d_model
        p = MLP(c, self.prompt_hidden_dim, c, 2, residual=True, out_norm=True, out_axis=P.EMBED,
                name="prompt_mlp", **kw)(prompt)
        pooled = masked_mean(p, prompt_mask)
        proj_prompt = Dense(self.d_proj, (P.EMBED, None), name="prompt_proj", **kw)(pooled)  # (B, D)
        proj_hs = Dense(self.d_proj, (P.EMBED, None), name="hs_proj", **kw)(hs)  # (L, B, Q, D)
        scores = einsum("lbqd,bd->lbq", proj_hs, proj_prompt.astype(proj_hs.dtype))[..., None]
        scores = scores * jnp.asarray(1.0 / math.sqrt(self.d_proj), scores.dtype)
        return jnp.clip(scores, -self.clamp_max_val, self.clamp_max_val)


def dot_product_scoring_from_config(cfg) -> DotProductScoring:
    return DotProductScoring(
        d_model=cfg.d_model,
        d_proj=cfg.d_model,
        prompt_hidden_dim=cfg.dim_feedforward,
        dtype=jnp.dtype(cfg.dtype),
        param_dtype=jnp.dtype(cfg.param_dtype),
    )

