"""The two-way transformer of the SAM mask decoder (official: sam3/sam/transformer.py,
`TwoWayTransformer`, `TwoWayAttentionBlock`, `Attention`; sam3/sam/common.py, `MLPBlock`).

Tokens (output tokens + prompt tokens, the "queries", with their own embedding as positional code)
and the image (flattened g*g "keys", with the dense Fourier positional code) update each other.
Each of the `depth` blocks is post-norm:

  1. token self-attention: q = k = queries + query_pe, v = queries, residual, `norm1`. In the
     first block (skip_first_layer_pe) q = k = v = queries and the attention output *replaces*
     the queries (no residual);
  2. tokens -> image cross-attention: q = queries + query_pe, k = keys + key_pe, v = keys,
     residual, `norm2`;
  3. token MLP `mlp` (lin1 -> ReLU -> lin2), residual, `norm3`;
  4. image -> tokens cross-attention: q = keys + key_pe, k = queries + query_pe, v = queries,
     residual on the keys, `norm4`.

After the blocks, a final tokens -> image attention (`final_attn_token_to_image`, residual) and
`norm_final_attn`. The query_pe of every block is the *initial* token embedding.

Attention (`Attention`): separate q / k / v Linear layers to an internal width embed // rate
(rate 1 for the self-attention, `attention_downsample_rate` for the cross-attentions), heads split
head-major, scaled dot product (scale 1/sqrt(head_dim)), `out_proj` back to the model width; it is
`sam3_jax.layers.attention.MultiHeadAttention` with `qkv_features`. LayerNorms are torch's
(eps 1e-5). Batch-first; the image enters as NHWC and leaves flattened (B, g*g, C).
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam3_jax.layers import partitioning as P
from sam3_jax.layers.attention import MultiHeadAttention
from sam3_jax.layers.core import LayerNorm
from sam3_jax.model.tracker.common import MLPBlock

Dtype = Any


def sam_attention(
    embed_dim: int, num_heads: int, downsample_rate: int = 1, *, attention_impl: Optional[str] = None,
    dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32, name: Optional[str] = None,
) -> MultiHeadAttention:
    """Official SAM `Attention(embed_dim, num_heads, downsample_rate)` (params q/k/v/out as
    query/key/value/out, head-split kernels)."""
    inner = embed_dim // downsample_rate
    if inner % num_heads:
        raise ValueError(f"internal width {inner} (= {embed_dim} // {downsample_rate}) is not divisible by "
                         f"{num_heads} heads")
    return MultiHeadAttention(
        num_heads, qkv_features=inner, out_features=embed_dim, attention_impl=attention_impl, dtype=dtype,
        param_dtype=param_dtype, name=name,
    )


class TwoWayAttentionBlock(nn.Module):
    num_heads: int = 8
    mlp_dim: int = 2048
    attention_downsample_rate: int = 2
    skip_first_layer_pe: bool = False
    attention_impl: Optional[str] = None
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, queries: jax.Array, keys: jax.Array, query_pe: jax.Array, key_pe: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        d = queries.shape[-1]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        attn = lambda name, rate: sam_attention(  # noqa: E731
            d, self.num_heads, rate, attention_impl=self.attention_impl, name=name, **kw
        )

        # 1. Token self-attention.
        if self.skip_first_layer_pe:
            queries = attn("self_attn", 1)(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + attn("self_attn", 1)(q, q, queries)
        queries = LayerNorm(name="norm1", **kw)(queries)

        # 2. Tokens attend to the image.
        q, k = queries + query_pe, keys + key_pe
        queries = queries + attn("cross_attn_token_to_image", self.attention_downsample_rate)(q, k, keys)
        queries = LayerNorm(name="norm2", **kw)(queries)

        # 3. Token MLP.
        queries = queries + MLPBlock(self.mlp_dim, name="mlp", **kw)(queries)
        queries = LayerNorm(name="norm3", **kw)(queries)

        # 4. The image attends to the tokens.
        q, k = queries + query_pe, keys + key_pe
        keys = keys + attn("cross_attn_image_to_token", self.attention_downsample_rate)(k, q, queries)
        keys = LayerNorm(name="norm4", **kw)(keys)
        keys = P.constrain(keys, (P.BATCH, P.LENGTH, P.ACT_EMBED))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """Official `TwoWayTransformer`; blocks are `layers_{i}` (the first skips the self-attention PE)."""

    depth: int = 2
    num_heads: int = 8
    mlp_dim: int = 2048
    attention_downsample_rate: int = 2
    attention_impl: Optional[str] = None
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, image_embedding: jax.Array, image_pe: jax.Array, point_embedding: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """image_embedding (B, H, W, C); image_pe (B or 1, H, W, C); point_embedding (B, N, C).
        Returns the tokens (B, N, C) and the image (B, H*W, C)."""
        b, h, w, c = image_embedding.shape
        if image_pe.ndim != 4 or tuple(image_pe.shape[1:]) != (h, w, c) or image_pe.shape[0] not in (1, b):
            raise ValueError(f"image_pe {tuple(image_pe.shape)} must have shape (1 or {b}, {h}, {w}, {c})")
        if point_embedding.ndim != 3 or point_embedding.shape[0] != b or point_embedding.shape[-1] != c:
            raise ValueError(f"point_embedding {tuple(point_embedding.shape)} must have shape ({b}, N, {c})")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        keys = P.constrain(image_embedding.reshape(b, h * w, c), (P.BATCH, P.LENGTH, P.ACT_EMBED))
        key_pe = image_pe.reshape(image_pe.shape[0], h * w, c)
        queries = point_embedding
        for i in range(self.depth):
            queries, keys = TwoWayAttentionBlock(
                self.num_heads, self.mlp_dim, self.attention_downsample_rate, skip_first_layer_pe=i == 0,
                attention_impl=self.attention_impl, name=f"layers_{i}", **kw,
            )(queries, keys, point_embedding, key_pe)

        q, k = queries + point_embedding, keys + key_pe
        queries = queries + sam_attention(
            c, self.num_heads, self.attention_downsample_rate, attention_impl=self.attention_impl,
            name="final_attn_token_to_image", **kw,
        )(q, k, keys)
        queries = LayerNorm(name="norm_final_attn", **kw)(queries)
        return queries, keys
