"""Basic layers with PyTorch-equivalent numerics and logical axis names.

* LayerNorm: eps 1e-5 (torch default, used by every `nn.LayerNorm` of SAM 3), two-pass variance.
* LayerNorm2d: the SAM `LayerNorm2d` (channels of an NHWC map), eps 1e-6.
* GELU: exact erf form (torch `nn.GELU()` default); never the tanh approximation.
* Conv: NHWC activations, kernel (kh, kw, in, out); explicit integer padding like torch.
* ConvTranspose with kernel == stride (the only kind SAM 3 uses), written as an einsum followed by a
  depth-to-space reshape, which is exactly torch's `ConvTranspose2d` (no kernel flip ambiguity).
* Matmuls and convolutions in bf16 / fp16 accumulate in fp32 and round the result once to the
  input dtype (`dot_general`, `einsum`, `conv_general_dilated`), as torch autocast's GEMMs do; on
  the CPU backend this is spelled out, so that XLA:CPU runs them on the CPU's native bf16 units
  (AMX / AVX-512 BF16: about 3x its fp32 rate) instead of upcasting them to fp32.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sam3_jax.layers import partitioning as P

Dtype = Any

TORCH_LN_EPS = 1e-5
SAM_LN2D_EPS = 1e-6  # sam3/sam/common.py `LayerNorm2d` (mask decoder upscaling, prompt / memory encoders)

# torch nn.Linear / nn.Conv2d default init is kaiming-uniform-like; any sensible init is fine for
# training from scratch. Converted checkpoints overwrite all of them.
default_kernel_init = nn.initializers.lecun_normal()
zeros = nn.initializers.zeros_init()
ones = nn.initializers.ones_init()


def wide_accumulation(*dtypes: Dtype) -> bool:
    """True where a product of these input dtypes should be computed with fp32 accumulation spelled
    out: all the same low-precision float (bf16 / fp16), on the CPU backend. Elsewhere the backend's
    own kernels already accumulate in fp32 (cuBLAS, the TPU MXU) and XLA's plain dot is kept."""
    low = {jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)}
    first = jnp.dtype(dtypes[0])
    return first in low and all(jnp.dtype(d) == first for d in dtypes) and jax.default_backend() == "cpu"


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **kwargs):
    """`lax.dot_general` with fp32 accumulation for bf16 / fp16 operands (see `wide_accumulation`):
    the product is formed in fp32 and rounded once to the operands' dtype. The project's Dense layers
    and einsums go through it."""
    if preferred_element_type is None and wide_accumulation(lhs.dtype, rhs.dtype):
        out = jax.lax.dot_general(lhs, rhs, dimension_numbers, precision,
                                  preferred_element_type=jnp.float32, **kwargs)
        return out.astype(lhs.dtype)
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision,
                               preferred_element_type=preferred_element_type, **kwargs)


def einsum(spec: str, a: jax.Array, b: jax.Array, **kwargs) -> jax.Array:
    """Two-operand `jnp.einsum` with `dot_general`'s fp32 accumulation for bf16 / fp16 operands."""
    if "preferred_element_type" not in kwargs and wide_accumulation(a.dtype, b.dtype):
        return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32, **kwargs).astype(a.dtype)
    return jnp.einsum(spec, a, b, **kwargs)


def conv_general_dilated(lhs, rhs, *args, preferred_element_type=None, **kwargs):
    """`lax.conv_general_dilated` with `dot_general`'s fp32 accumulation for bf16 / fp16 operands."""
    if preferred_element_type is None and wide_accumulation(lhs.dtype, rhs.dtype):
        out = jax.lax.conv_general_dilated(lhs, rhs, *args, preferred_element_type=jnp.float32, **kwargs)
        return out.astype(lhs.dtype)
    return jax.lax.conv_general_dilated(lhs, rhs, *args, preferred_element_type=preferred_element_type, **kwargs)


def gelu(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU as torch `nn.GELU()` computes it: x / 2 * (1 + erf(x / sqrt 2)) in fp32,
    rounded once to x's dtype.

    `jax.nn.gelu(approximate=False)` goes through erfc (a two-branch approximation with an exp,
    ~30 % slower on XLA:CPU) and, for bf16, rounds every intermediate to bf16 (up to 1.6e-2 off
    torch's bf16 GELU, against 1.5e-5 for this form). fp32 results agree with torch's to ~1e-6.
    """
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    return (xf * 0.5 * (1.0 + jax.lax.erf(xf * np.float32(np.sqrt(0.5))))).astype(x.dtype)


def LayerNorm(
    *,
    epsilon: float = TORCH_LN_EPS,
    axis_name: str = P.EMBED,
    dtype: Dtype | None = None,
    param_dtype: Dtype = jnp.float32,
    name: str | None = None,
) -> nn.LayerNorm:
    """LayerNorm over the last axis with torch semantics (eps 1e-5, two-pass variance)."""
    return nn.LayerNorm(
        epsilon=epsilon,
        use_fast_variance=False,
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=P.with_axes(ones, (axis_name,)),
        bias_init=P.with_axes(zeros, (axis_name,)),
        name=name,
    )


def LayerNorm2d(
    *,
    dtype: Dtype | None = None,
    param_dtype: Dtype = jnp.float32,
    name: str | None = None,
) -> nn.LayerNorm:
    """SAM's `LayerNorm2d` on an NHWC map: each pixel normalized over its channels, eps 1e-6,
    scale / bias on the channel axis (logical axis conv_out)."""
    return LayerNorm(epsilon=SAM_LN2D_EPS, axis_name=P.CONV_OUT, dtype=dtype, param_dtype=param_dtype, name=name)


def Dense(
    features: int,
    axes: tuple[str | None, str | None],
    *,
    use_bias: bool = True,
    dtype: Dtype | None = None,
    param_dtype: Dtype = jnp.float32,
    name: str | None = None,
) -> nn.Dense:
    """A Dense layer (kernel (in, out)) whose kernel and bias carry logical axis names."""
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=P.with_axes(default_kernel_init, axes),
        bias_init=P.with_axes(zeros, (axes[1],)),
        dot_general=dot_general,
        name=name,
    )


class PointwiseConv(nn.Module):
    """A 1x1 convolution (stride 1, no padding) computed as a matmul over the channels.

    Same params as `nn.Conv` with a (1, 1) kernel (`kernel` (1, 1, in, out), `bias` (out,)), same
    result up to summation order; but XLA:CPU runs a matmul and its weight gradient several times
    faster than the equivalent convolution (a 1x1 conv's kernel gradient at 16x32x32x64: 36 ms as a
    convolution, 8 ms as a matmul, on a 2-core AVX2 CPU)."""

    features: int
    use_bias: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", P.with_axes(default_kernel_init, (None, None, P.CONV_IN, P.CONV_OUT)),
                            (1, 1, x.shape[-1], self.features), self.param_dtype)
        bias = (self.param("bias", P.with_axes(zeros, (P.CONV_OUT,)), (self.features,), self.param_dtype)
                if self.use_bias else None)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = einsum("...c,co->...o", x, kernel[0, 0])
        return y + bias if bias is not None else y


def Conv(
    features: int,
    kernel_size: int,
    *,
    stride: int = 1,
    padding: int = 0,
    use_bias: bool = True,
    dtype: Dtype | None = None,
    param_dtype: Dtype = jnp.float32,
    name: str | None = None,
) -> nn.Module:
    """2D convolution on NHWC input, torch-style explicit padding, kernel (kh, kw, in, out).
    A 1x1 kernel with stride 1 and no padding is a `PointwiseConv` (a matmul, same params)."""
    k, p = kernel_size, padding
    if k == 1 and stride == 1 and p == 0:
        return PointwiseConv(features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name)
    return nn.Conv(
        features,
        kernel_size=(k, k),
        strides=(stride, stride),
        padding=((p, p), (p, p)),
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=P.with_axes(default_kernel_init, (None, None, P.CONV_IN, P.CONV_OUT)),
        bias_init=P.with_axes(zeros, (P.CONV_OUT,)),
        conv_general_dilated=conv_general_dilated,
        name=name,
    )


class ConvTranspose(nn.Module):
    """Transposed 2D convolution with kernel size == stride (non-overlapping), NHWC.

    With torch weight W of shape (in, out, kh, kw), the output is
    y[s*i + a, s*j + b, o] = sum_c x[i, j, c] * W[c, o, a, b] + bias[o]. The kernel here is stored
    as (kh, kw, in, out), i.e. W transposed by (2, 3, 0, 1).
    """

    features: int
    stride: int = 2
    use_bias: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s = self.stride
        kernel = self.param(
            "kernel",
            P.with_axes(default_kernel_init, (None, None, P.CONV_IN, P.CONV_OUT)),
            (s, s, x.shape[-1], self.features),
            self.param_dtype,
        )
        dtype = self.dtype or x.dtype
        y = einsum("bhwc,ijco->bhiwjo", x.astype(dtype), kernel.astype(dtype))
        b, h, _, w, _, o = y.shape
        y = y.reshape(b, h * s, w * s, o)
        if self.use_bias:
            bias = self.param("bias", P.with_axes(zeros, (P.CONV_OUT,)), (self.features,), self.param_dtype)
            y = y + bias.astype(dtype)
        return y


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """torch `MaxPool2d(kernel_size=2, stride=2)` (floor mode) on NHWC input."""
    return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")


class Mlp(nn.Module):
    """Two Dense layers with exact GELU between them (timm `Mlp` / CLIP MLP)."""

    hidden: int
    fc1_name: str = "fc1"
    fc2_name: str = "fc2"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = Dense(self.hidden, (P.EMBED, P.MLP), name=self.fc1_name, **kw)(x)
        h = gelu(h)
        return Dense(d, (P.MLP, P.EMBED), name=self.fc2_name, **kw)(h)


def count_params(tree: Any) -> int:
    """Number of scalar parameters in a (possibly abstract) tree."""
    import math

    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree))


def shape_tree(tree: Any) -> Any:
    return jax.tree_util.tree_map(lambda x: tuple(x.shape), tree)


__all__: Sequence[str] = [
    "gelu", "LayerNorm", "LayerNorm2d", "Dense", "Conv", "PointwiseConv", "ConvTranspose", "max_pool_2x2", "Mlp",
    "count_params",
]
