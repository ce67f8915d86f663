"""The plain multi-layer perceptron of SAM 3 (official: sam3/model/model_misc.py, `MLP`).

`num_layers` Linear layers input_dim -> hidden_dim -> ... -> hidden_dim -> output_dim with ReLU
between them (none after the last), then optionally `+ input` (residual, needs
input_dim == output_dim) and optionally a LayerNorm (`out_norm`). Dropout is an eval-time no-op
and is not modelled. The Linear layers live under `layers/{k}` and the norm under `out_norm`, so the
param paths mirror the official `layers.{k}` / `out_norm` keys.

Logical axes: the first kernel is (in_axis, hidden_axis), inner kernels (None, hidden_axis), the
last (hidden_axis, out_axis); a single layer is (in_axis, out_axis). Pass `in_axis=None` for tiny
inputs (e.g. 2-d coordinates) and `out_axis=P.EMBED` when the output is a model-width stream.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam3_jax.layers import partitioning as P
from sam3_jax.layers.core import Dense, LayerNorm

Dtype = Any


class _LinearStack(nn.Module):
    """Linear layers named '0', '1', ... (the official `nn.ModuleList`), ReLU between them."""

    dims: tuple[int, ...]  # output width of each layer
    in_axis: Optional[str]
    hidden_axis: Optional[str]
    out_axis: Optional[str]
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n = len(self.dims)
        for k, features in enumerate(self.dims):
            first, last = k == 0, k == n - 1
            axes = (
                self.in_axis if first else (self.hidden_axis if last else None),
                self.out_axis if last else self.hidden_axis,
            )
            x = Dense(features, axes, dtype=self.dtype, param_dtype=self.param_dtype, name=str(k))(x)
            if not last:
                x = jax.nn.relu(x)
        return x


class MLP(nn.Module):
    input_dim: int
    hidden_dim: int
    output_dim: int
    num_layers: int
    residual: bool = False
    out_norm: bool = False
    in_axis: Optional[str] = P.EMBED
    hidden_axis: Optional[str] = P.MLP
    out_axis: Optional[str] = None
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.num_layers < 1:
            raise ValueError(f"MLP needs at least one layer, got num_layers={self.num_layers}")
        if self.residual and self.input_dim != self.output_dim:
            raise ValueError(
                f"a residual MLP needs input_dim == output_dim, got {self.input_dim} and {self.output_dim}"
            )
        if x.shape[-1] != self.input_dim:
            raise ValueError(f"MLP expects inputs with {self.input_dim} features, got shape {tuple(x.shape)}")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        dims = (self.hidden_dim,) * (self.num_layers - 1) + (self.output_dim,)
        y = _LinearStack(dims, self.in_axis, self.hidden_axis, self.out_axis, name="layers", **kw)(x)
        if self.residual:
            y = y + x.astype(y.dtype)
        if self.out_norm:
            y = LayerNorm(axis_name=self.out_axis, name="out_norm", **kw)(y)
        return y
