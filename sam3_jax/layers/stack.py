"""Repeated blocks: `nn.scan` over a stacked 'layers' param axis, with optional `nn.remat`.

Scanning keeps compile time flat in depth; the params of the L blocks live in one tree whose
leaves have a leading axis of size L (logical axis name 'layers').

Inference with bf16 params (`for_inference`, `stacks_as_bits`): XLA:CPU upcasts a bf16 array that
a loop slices to fp32 as a whole, before the loop (at the full config: a 1.6 GB fp32 copy of the
ViT's 32 stacked blocks on every call, 0.7 GB for the text encoder's, whose per-prompt time it
quadrupled). A predictor keeps the bf16 stacks as their uint16 bits (`stacks_as_bits`, once, outside
any jit) and applies the model inside `for_inference`, where each scanned block turns its slice back
into bf16 (a bitcast), so the loop reads the stored bf16 weights. The bits carry no gradient, hence
only for inference; fp32 params are untouched. A bf16 stack that is not stored as bits still works
inside `for_inference` (it is converted in the jitted call, which costs a copy). The CPU blocked
attention slices its bf16 queries, keys and values the same way there (`inference_only`).
"""

from __future__ import annotations

import contextvars
import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam3_jax.layers import partitioning as P

REMAT_POLICIES = {
    "none": None,
    "full": "full",
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
}


_BF16_AS_BITS = contextvars.ContextVar("sam3_jax_bf16_scan_params_as_bits", default=False)


def for_inference(fn: Callable) -> Callable:
    """Decorates a function that applies the model for inference (no gradient to its params):
    while it is traced, scanned stacks slice bf16 params as uint16 bits (see the module doc)."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        token = _BF16_AS_BITS.set(True)
        try:
            return fn(*args, **kwargs)
        finally:
            _BF16_AS_BITS.reset(token)

    return wrapped


def inference_only() -> bool:
    """True while a function decorated with `for_inference` is traced (no gradients are taken):
    other loops (the CPU blocked attention) may then slice bf16 arrays as bits too."""
    return _BF16_AS_BITS.get()


def stacks_as_bits(params: Any, abstract: Any) -> Any:
    """params with every bf16 leaf of a scanned stack (its first logical axis is 'layers' in
    `abstract`, the boxed tree of `jax.eval_shape(model.init, ...)["params"]`) replaced by its
    uint16 bits: the form `for_inference` slices without an fp32 copy."""
    names = {path: leaf.names for path, leaf in jax.tree_util.tree_flatten_with_path(
        abstract, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))[0]
        if isinstance(leaf, nn.LogicallyPartitioned)}

    def one(path, x):
        axes = names.get(path)
        if x.dtype == jnp.bfloat16 and axes and axes[0] == P.LAYERS:
            return jax.lax.bitcast_convert_type(x, jnp.uint16)
        return x

    return jax.tree_util.tree_map_with_path(one, params)


def to_bits(tree: Any) -> Any:
    """bf16 leaves to their uint16 bits (a bitcast); other leaves unchanged."""
    return jax.tree_util.tree_map(
        lambda x: jax.lax.bitcast_convert_type(x, jnp.uint16) if x.dtype == jnp.bfloat16 else x, tree)


def from_bits(tree: Any) -> Any:
    """uint16 leaves (bf16 bits, see `stacks_as_bits` / `to_bits`) back to bf16; other leaves unchanged."""
    return jax.tree_util.tree_map(
        lambda x: jax.lax.bitcast_convert_type(x, jnp.bfloat16) if x.dtype == jnp.uint16 else x, tree)


def scanned(block_cls: type[nn.Module], *, length: int, in_axes: Sequence[Any], remat: str = "none"):
    """Returns a scanned (and optionally rematerialised) version of `block_cls`.

    The block must have the signature `__call__(self, carry, *xs) -> (carry, y)`.
    """
    if remat not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {remat!r}; expected one of {sorted(REMAT_POLICIES)}")
    cls = block_cls
    if remat != "none":
        policy = REMAT_POLICIES[remat]
        cls = nn.remat(cls, prevent_cse=False, policy=None if policy == "full" else policy)
    bits = _BF16_AS_BITS.get()
    if bits:  # each block sees bf16 again; init (no bf16 yet) passes through unchanged
        cls = nn.map_variables(cls, "params", trans_in_fn=from_bits, trans_out_fn=to_bits, init=True)
    stack = nn.scan(
        cls,
        variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=tuple(in_axes),
        length=length,
        metadata_params={nn.PARTITION_NAME: P.LAYERS},
    )
    if bits:
        stack = nn.map_variables(stack, "params", trans_in_fn=to_bits, trans_out_fn=from_bits, init=True)
    return stack
