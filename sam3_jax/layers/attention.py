"""The one attention entry point of the project, and the multi-head attention module.

Every attention in the model goes through `dot_product_attention`, a thin wrapper over
`jax.nn.dot_product_attention` (layout BTNH), so a kernel (cuDNN, Pallas splash / flash) can be
swapped in by changing `implementation` (config `model.attention_impl`) in one place.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam3_jax.layers import partitioning as P
from sam3_jax.layers.core import zeros

Dtype = Any


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    bias: Optional[jax.Array] = None,
    mask: Optional[jax.Array] = None,
    is_causal: bool = False,
    implementation: Optional[str] = None,
) -> jax.Array:
    """Scaled dot-product attention, q/k/v (B, T, N, H), default scale 1/sqrt(H).

    mask: boolean, True = attend, broadcastable to (B, N, Tq, Tk). bias: additive, same shape.
    """
    if implementation == "cudnn":  # cuDNN wants bias / mask with both sequence lengths spelled out
        bias, mask = (full_sequence_lengths(x, q.shape[1], k.shape[1]) for x in (bias, mask))
    return jax.nn.dot_product_attention(
        q, k, v, bias=bias, mask=mask, is_causal=is_causal, implementation=implementation
    )


def full_sequence_lengths(x: Optional[jax.Array], tq: int, tk: int) -> Optional[jax.Array]:
    """A bias or mask broadcastable to (B, N, Tq, Tk) -> 4D with its last two dims exactly (Tq, Tk)
    (B and N may stay 1), the form the cuDNN kernel accepts."""
    if x is None:
        return None
    x = x.reshape((1,) * (4 - x.ndim) + x.shape)
    return jnp.broadcast_to(x, x.shape[:2] + (tq, tk))


class HeadProjection(nn.Module):
    """x (..., C) -> (..., H, D) with kernel (C, H, D) (logical axes embed, heads, kv).

    Written with an explicit 3D kernel rather than `nn.DenseGeneral`, whose flat-init-then-reshape
    path applies the 3D logical constraint to a 2D array when a mesh and rules are active.
    """

    num_heads: int
    head_dim: int
    use_bias: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = nn.initializers.lecun_normal(in_axis=0, out_axis=(1, 2))
        kernel = self.param(
            "kernel", P.with_axes(init, (P.EMBED, P.HEADS, P.KV)),
            (x.shape[-1], self.num_heads, self.head_dim), self.param_dtype,
        )
        dtype = self.dtype or jnp.result_type(x, kernel)
        y = jnp.einsum("...c,chd->...hd", x.astype(dtype), kernel.astype(dtype))
        if self.use_bias:
            bias = self.param("bias", P.with_axes(zeros, (P.HEADS, P.KV)), (self.num_heads, self.head_dim),
                              self.param_dtype)
            y = y + bias.astype(dtype)
        return y


class HeadMerge(nn.Module):
    """(..., H, D) -> (..., C) with kernel (H, D, C) (logical axes heads, kv, embed)."""

    features: int
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2)
        kernel = self.param(
            "kernel", P.with_axes(init, (P.HEADS, P.KV, P.EMBED)), (x.shape[-2], x.shape[-1], self.features),
            self.param_dtype,
        )
        bias = self.param("bias", P.with_axes(zeros, (P.EMBED,)), (self.features,), self.param_dtype)
        dtype = self.dtype or jnp.result_type(x, kernel)
        return jnp.einsum("...hd,hdc->...c", x.astype(dtype), kernel.astype(dtype)) + bias.astype(dtype)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate q/k/v projections (kernel (in, heads, head_dim)).

    Covers torch `nn.MultiheadAttention` (fused `in_proj_weight` is split by the converter), the
    ViT's fused `qkv` Linear and SAM's `Attention` (separate q/k/v Linear layers to an internal
    width `qkv_features`, e.g. embed / 2, keys and values possibly of another width than the
    queries). `rope` is an optional function applied to (q, k) after projection.
    """

    num_heads: int
    qkv_bias: bool = True
    out_features: Optional[int] = None
    qkv_features: Optional[int] = None  # width of the projected q / k / v (default: the query width)
    attention_impl: Optional[str] = None
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        x_q: jax.Array,
        x_k: Optional[jax.Array] = None,
        x_v: Optional[jax.Array] = None,
        *,
        rope: Optional[Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]] = None,
        mask: Optional[jax.Array] = None,
        bias: Optional[jax.Array] = None,
        is_causal: bool = False,
    ) -> jax.Array:
        x_k = x_q if x_k is None else x_k
        x_v = x_k if x_v is None else x_v
        dim = x_q.shape[-1]
        inner = self.qkv_features or dim
        if inner % self.num_heads:
            raise ValueError(f"width {inner} is not divisible by {self.num_heads} heads")
        head_dim = inner // self.num_heads

        def proj(name: str, x: jax.Array) -> jax.Array:
            return HeadProjection(
                self.num_heads, head_dim, self.qkv_bias, self.dtype, self.param_dtype, name=name
            )(x)

        q, k, v = proj("query", x_q), proj("key", x_k), proj("value", x_v)
        if rope is not None:
            q, k = rope(q, k)
        q = P.constrain(q, (P.BATCH, P.LENGTH, P.ACT_HEADS, None))
        k = P.constrain(k, (P.BATCH, P.LENGTH, P.ACT_HEADS, None))
        v = P.constrain(v, (P.BATCH, P.LENGTH, P.ACT_HEADS, None))
        out = dot_product_attention(
            q, k, v, mask=mask, bias=bias, is_causal=is_causal, implementation=self.attention_impl
        )
        return HeadMerge(self.out_features or dim, self.dtype, self.param_dtype, name="out")(out)
