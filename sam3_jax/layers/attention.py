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
from sam3_jax.layers.core import einsum, zeros
from sam3_jax.layers.stack import from_bits, inference_only, to_bits

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
    implementation: None picks one (see `automatic_implementation`: blocked for long sequences
    on the CPU, cuDNN's fused kernel for bf16 / fp16 on an Ampere or newer GPU, XLA's reference
    otherwise); "xla", "cudnn" (jax.nn's kernels) or "blocked" force one.
    """
    if implementation is None:
        implementation = automatic_implementation(q.shape, k.shape, q.dtype)
    if implementation == "blocked":
        return blocked_attention(q, k, v, bias=bias, mask=mask, is_causal=is_causal)
    if implementation == "cudnn":  # cuDNN wants bias / mask with both sequence lengths spelled out
        bias, mask = (full_sequence_lengths(x, q.shape[1], k.shape[1]) for x in (bias, mask))
    return jax.nn.dot_product_attention(
        q, k, v, bias=bias, mask=mask, is_causal=is_causal, implementation=implementation
    )


# Attention whose logits tensor would exceed this many elements runs blocked on the CPU backend.
BLOCKED_MIN_LOGITS = 1 << 24
# Target size of one query block's fp32 logits (block x Tk) in the blocked loop. The loop body
# runs on about one core, so fewer, larger blocks pay: at 5184 keys (2-core AVX-512 CPU, fp32 and
# bf16) blocks of ~740 queries (16 MB) took 20-30 % less time than blocks of ~200 (4 MB), and
# ~1300 (32 MB) no less.
BLOCKED_TARGET_BYTES = 16 << 20
# Where one head's block is smaller than this (short key sequences: the ViT's 576-token windows),
# each step takes several heads at once, up to this many bytes of logits: at (9, 576, 16, 64) on
# the same CPU, 4 heads per step (5.3 MB) took ~16 % less time than 1 in fp32 and ~15 % in bf16;
# 8 (10.6 MB) gave back most of it in fp32.
BLOCKED_GROUP_BYTES = 6 << 20


def use_blocked(q_shape: tuple[int, ...], k_shape: tuple[int, ...]) -> bool:
    """The automatic choice: blocked attention on the CPU backend once the (B, N, Tq, Tk) logits
    would be large (XLA:CPU materialises them and runs 3-6x slower than a blocked loop there)."""
    b, tq, n, _ = q_shape
    return jax.default_backend() == "cpu" and b * n * tq * k_shape[1] >= BLOCKED_MIN_LOGITS


def automatic_implementation(q_shape: tuple[int, ...], k_shape: tuple[int, ...], dtype) -> str:
    """The kernel `implementation=None` runs: "blocked" where `use_blocked` says so (CPU, long
    sequences); "cudnn" on a GPU of compute capability 8.0+ for bf16 / fp16 where the fused kernel
    takes the call forward and backward: head dim a multiple of 8, at most 128, and both sequence
    lengths even (jax's cuDNN gradient rule treats every call as biased, and cuDNN's biased
    backward rejects odd lengths: 5 geometry tokens, 201 decoder queries); fp32 has no cuDNN
    kernel; else "xla"."""
    if use_blocked(q_shape, k_shape):
        return "blocked"
    if jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
        h, tq, tk = q_shape[-1], q_shape[1], k_shape[1]
        cc = getattr(jax.devices()[0], "compute_capability", "0")
        if h % 8 == 0 and h <= 128 and float(cc) >= 8.0 and tq % 2 == 0 and tk % 2 == 0:
            return "cudnn"
    return "xla"


def _to_4d(x: Optional[jax.Array], b: int, n: int, tq: int, tk: int, name: str) -> Optional[jax.Array]:
    """A mask / bias broadcastable to (B, N, Tq, Tk) -> 4D with every dim 1 or full (no copy)."""
    if x is None:
        return None
    if x.ndim > 4:
        raise ValueError(f"attention {name} has {x.ndim} dims, at most 4 (B, N, Tq, Tk)")
    x = x.reshape((1,) * (4 - x.ndim) + x.shape)
    for got, full, axis in zip(x.shape, (b, n, tq, tk), "B N Tq Tk".split()):
        if got not in (1, full):
            raise ValueError(f"attention {name} of shape {x.shape} does not broadcast to {(b, n, tq, tk)} ({axis})")
    if x.shape[3] != tk:  # keys are never looped over: give them their full length
        x = jnp.broadcast_to(x, x.shape[:3] + (tk,))
    return x


def blocked_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    bias: Optional[jax.Array] = None,
    mask: Optional[jax.Array] = None,
    is_causal: bool = False,
    block_q: Optional[int] = None,
    heads_per_step: Optional[int] = None,
) -> jax.Array:
    """Exact attention as a loop over batch rows, groups of heads and query blocks (jax.nn's math).

    Each step computes one batch row's logits for a group of heads and a block of queries against
    every key, (heads, block, Tk) in fp32, so the working set stays in cache instead of XLA:CPU's
    whole (B, N, Tq, Tk) tensor. By default a block holds ~`BLOCKED_TARGET_BYTES` of one head's
    logits, and a group as many heads (a divisor of N) as fit in `BLOCKED_GROUP_BYTES` (one head
    unless the keys are short).
    The softmax is exact per row (no online rescaling: all keys are in the block); the
    normalisation is applied after the value product, (e @ v) / sum(e), which changes results by
    float rounding only; e is in the values' dtype (for bf16 inputs the weights the value product
    takes, and their sum, accumulated in fp32, is of those same rounded weights). Masked logits
    get jax.nn's large negative value, so a row with every key masked averages the values, as
    jax.nn does. Differentiable (a `lax.map`), but meant for inference on one device: the loop runs
    over batch rows and heads, so do not shard those axes when it is on (the automatic choice only
    picks it on the CPU backend).
    """
    b, tq, n, h = q.shape
    tk = k.shape[1]
    if k.shape != (b, tk, n, h) or v.shape[:3] != (b, tk, n):
        raise ValueError(f"q {q.shape}, k {k.shape}, v {v.shape} do not form (B, T, N, H) attention")
    bias = _to_4d(bias, b, n, tq, tk, "bias")
    mask = _to_4d(mask, b, n, tq, tk, "mask")
    if block_q is None:
        block_q = max(8, BLOCKED_TARGET_BYTES // (4 * tk))
    nc = -(-tq // min(block_q, tq))
    blk = -(-tq // nc)
    pad = nc * blk - tq
    if heads_per_step is None:
        fits = lambda g: g == 1 or g * blk * tk * 4 <= BLOCKED_GROUP_BYTES  # noqa: E731
        heads_per_step = max(g for g in range(1, n + 1) if n % g == 0 and fits(g))
    if n % heads_per_step:
        raise ValueError(f"heads_per_step {heads_per_step} does not divide the {n} heads")
    g = heads_per_step
    ng = n // g
    logits_dtype = jnp.promote_types(q.dtype, jnp.float32)
    scale = jnp.asarray(h ** -0.5, logits_dtype)
    large_negative = -0.7 * jnp.finfo(jnp.float32).max

    def by_block(x: jax.Array, axis: int) -> jax.Array:
        """Pads `axis` (Tq) to nc * blk and splits it into (nc, blk) at that place."""
        if pad:
            x = jnp.pad(x, [(0, pad) if i == axis else (0, 0) for i in range(x.ndim)])
        return x.reshape(x.shape[:axis] + (nc, blk) + x.shape[axis + 1:])

    def by_group(x: jax.Array) -> jax.Array:
        """(B', N', ...) -> (B', N'/G, G, ...) where N' = N, (B', 1, 1, ...) where N' = 1."""
        return x.reshape(x.shape[:1] + ((ng, g) if x.shape[1] == n else (1, 1)) + x.shape[2:])

    qb = by_group(by_block(q, 1).transpose(0, 3, 1, 2, 4))  # (B, N/G, G, nc, blk, H)
    kt = by_group(k.transpose(0, 2, 1, 3))  # (B, N/G, G, Tk, H): row-major keys, a cheaper transpose
    vt = by_group(v.transpose(0, 2, 1, 3))  # (B, N/G, G, Tk, Hv)
    # XLA:CPU upcasts a bf16 array that a loop slices to fp32 as a whole, and the step's products
    # then run in fp32; for inference (no gradient through bits) the loop slices uint16 bits and
    # each step bitcasts its slice back, so the products stay bf16 x bf16 -> fp32 (layers/stack.py).
    bits = inference_only() and jax.default_backend() == "cpu"
    unpack = from_bits if bits else (lambda x: x)
    if bits:
        qb, kt, vt = to_bits((qb, kt, vt))

    def split(x: Optional[jax.Array]) -> Optional[jax.Array]:
        """(B', N', Tq', Tk) -> (B', N'/G | 1, G | 1, nc', blk', Tk): indexed like the queries."""
        if x is None:
            return None
        return by_group(by_block(x, 2) if x.shape[2] != 1 else x[:, :, None])

    bias, mask = split(bias), split(mask)
    q_pos = jnp.arange(nc * blk).reshape(nc, blk)

    def pick(x: Optional[jax.Array], i: jax.Array, axis: int = 0) -> Optional[jax.Array]:
        """x[i] along `axis`, or x[0] there where that axis is broadcast (size 1)."""
        if x is None:
            return None
        return jax.lax.index_in_dim(x, 0, axis, keepdims=False) if x.shape[axis] == 1 else \
            jax.lax.dynamic_index_in_dim(x, i, axis, keepdims=False)

    def one(i, j, c):  # batch row i, head group j, query block c -> (G, blk, Hv)
        qc, kc, vc = unpack(qb[i, j, :, c]), unpack(kt[i, j]), unpack(vt[i, j])
        s = jax.lax.dot_general(qc, kc, (((2,), (2,)), ((0,), (0,))), preferred_element_type=logits_dtype) * scale
        bias_c = pick(pick(pick(bias, i), j), c, axis=1)  # (G | 1, blk | 1, Tk)
        if bias_c is not None:
            s = s + bias_c.astype(logits_dtype)
        keep = pick(pick(pick(mask, i), j), c, axis=1)
        if is_causal:
            causal = q_pos[c][:, None] >= jnp.arange(tk)[None, :]
            keep = causal if keep is None else keep & causal
        if keep is not None:
            s = jnp.where(keep, s, large_negative)
        s = s.astype(jnp.float32)
        # The weights in the values' dtype, as the value product takes them; the sum (fp32) is of
        # those same weights, which XLA:CPU then forms from the bf16 array in the exp's fusion
        # instead of another pass over fp32 ones (bf16: ~1/3 less time; fp32: unchanged).
        e = jnp.exp(s - s.max(-1, keepdims=True)).astype(v.dtype)
        o = jnp.matmul(e, vc, preferred_element_type=jnp.float32)
        return (o / e.sum(-1, dtype=jnp.float32, keepdims=True)).astype(v.dtype)

    idx = lambda size: jnp.arange(size)  # noqa: E731
    out = jax.lax.map(lambda i: jax.lax.map(lambda j: jax.lax.map(lambda c: one(i, j, c), idx(nc)), idx(ng)), idx(b))
    # (B, N/G, nc, G, blk, Hv) -> (B, nc, blk, N/G, G, Hv) -> (B, T, N, Hv)
    out = out.transpose(0, 2, 4, 1, 3, 5).reshape(b, nc * blk, n, v.shape[-1])
    return out[:, :tq]


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
        y = einsum("...c,chd->...hd", x.astype(dtype), kernel.astype(dtype))
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
        return einsum("...hd,hdc->...c", x.astype(dtype), kernel.astype(dtype)) + bias.astype(dtype)


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
