"""From-scratch initialisation of the image model as the official PyTorch modules initialise it.

Flax's defaults (LeCun-normal kernels, zero biases) differ from what `sam3` gets from torch, and a
run that trains from scratch (the synthetic default) should start where the official model would.
`official_init(params, key)` re-draws every parameter of a `Sam3Image` params tree by its path:

* ViT trunk (official `_init_weights`): linear kernels trunc-normal(0.02) (timm: cut at +-2), biases 0,
  `pos_embed` trunc-normal(0.02); the bias-free patch conv keeps torch's conv default (below).
* Fusion encoder + decoder (official `TransformerWrapper._reset_parameters`): Xavier-uniform for
  every matrix except `bbox_embed`, `query_embed` and `reference_points`; an attention's q/k/v
  kernels are drawn as one torch `in_proj_weight` (3d, d); attention biases 0 (torch
  `MultiheadAttention`), other biases torch's default. `bbox_embed` keeps torch's default but its
  last layer is zero (box refinement starts at the reference boxes); `query_embed`,
  `reference_points` normal(1).
* Elsewhere (necks, geometry encoder, segmentation head, scoring, text resizer), torch defaults:
  kernels and biases uniform(+-1/sqrt(fan_in)), with fan_in of a ConvTranspose taken over its
  output channels as torch does, attention modules as torch `MultiheadAttention` (Xavier in_proj,
  zero biases), embeddings normal(1).
* The text encoder keeps the module's own (CLIP-style) init; norms keep scale 1, bias 0.

Leaves of scanned stacks carry a leading layer axis, which is not part of the fans.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import jax
import jax.numpy as jnp

# Path prefixes whose leaves are stacked along a leading layer axis (nn.scan).
STACKED = (
    "backbone/vision_backbone/trunk/blocks/",
    "backbone/language_backbone/encoder/transformer/",
    "transformer/encoder/layers/",
    "transformer/decoder/layers/",
    "geometry_encoder/encode/",
)
ATTN_IN = ("query", "key", "value")
NORM_LEAVES = ("scale",)


def _uniform(key, shape, bound):
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def _trunc_normal(key, shape, std, bound=2.0):
    """timm's trunc_normal_(std=std): normal(0, std) cut at +-bound in absolute value (not in stds)."""
    return std * jax.random.truncated_normal(key, -bound / std, bound / std, shape, jnp.float32)


def _fans(names: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) of a kernel in torch's convention (shape without the stack axis)."""
    module = names[-2] if len(names) > 1 else ""
    if module in ATTN_IN and len(shape) == 3:  # (d, heads, head_dim): one third of in_proj (3d, d)
        return shape[0], 3 * shape[1] * shape[2]
    if module == "out" and len(shape) == 3:  # (heads, head_dim, d)
        return shape[0] * shape[1], shape[2]
    if len(shape) == 4:  # conv (kh, kw, in, out)
        rf = shape[0] * shape[1]
        if module.startswith("dconv"):  # torch ConvTranspose weight (in, out, kh, kw): fan_in over out
            return rf * shape[3], rf * shape[2]
        return rf * shape[2], rf * shape[3]
    if len(shape) == 2:
        return shape[0], shape[1]
    raise ValueError(f"no fan rule for {'/'.join(names)} with shape {shape}")


def _is_attention(names: tuple[str, ...]) -> bool:
    return len(names) > 1 and names[-2] in ATTN_IN + ("out",) and names[-1] in ("kernel", "bias")


def _kernel_fan_in(names, kernel_shape) -> int:
    return _fans(names[:-1] + ("kernel",), kernel_shape)[0]


def _leaf(path: str, names: tuple[str, ...], shape: tuple[int, ...], key, kernel_shapes: dict) -> Any:
    """New value of one leaf (shape without the stack axis), or None to keep it."""
    leaf = names[-1]
    if leaf in NORM_LEAVES or path.startswith("backbone/language_backbone/encoder/"):
        return None
    if len(names) > 1 and ("norm" in names[-2] or names[-2].startswith("ln")):
        return None  # layer / group norms stay (1, 0)
    kernel_shape = kernel_shapes.get("/".join(names[:-1]) + "/kernel")

    if path.startswith("backbone/vision_backbone/trunk/"):
        if leaf == "pos_embed":
            return _trunc_normal(key, shape, 0.02)
        if names[-2] == "patch_embed":
            return _uniform(key, shape, 1.0 / math.sqrt(_fans(names, shape)[0]))
        if leaf == "kernel":
            return _trunc_normal(key, shape, 0.02)
        if leaf == "bias":
            return jnp.zeros(shape, jnp.float32)
        return None

    if path.startswith("transformer/"):
        if leaf == "embedding":
            if names[-2] == "presence_token":  # a (1, d) matrix: Xavier like the rest
                return _uniform(key, shape, math.sqrt(6.0 / (shape[0] + shape[1])))
            return jax.random.normal(key, shape, jnp.float32)  # query_embed, reference_points
        if "bbox_embed" in names:
            layers = sorted(k for k in kernel_shapes if "/bbox_embed/layers/" in k)
            last = max(int(k.split("/layers/")[1].split("/")[0]) for k in layers)
            if names[-2] == str(last):
                return jnp.zeros(shape, jnp.float32)
            fan_in = _kernel_fan_in(names, kernel_shape)
            return _uniform(key, shape, 1.0 / math.sqrt(fan_in))
        if leaf == "kernel":
            fan_in, fan_out = _fans(names, shape)
            return _uniform(key, shape, math.sqrt(6.0 / (fan_in + fan_out)))
        if leaf == "bias":
            if _is_attention(names):
                return jnp.zeros(shape, jnp.float32)
            return _uniform(key, shape, 1.0 / math.sqrt(_kernel_fan_in(names, kernel_shape)))
        return None

    # torch defaults everywhere else
    if leaf == "embedding":
        return jax.random.normal(key, shape, jnp.float32)
    if _is_attention(names):
        if leaf == "bias":
            return jnp.zeros(shape, jnp.float32)
        fan_in, fan_out = _fans(names, shape)
        if names[-2] in ATTN_IN:
            return _uniform(key, shape, math.sqrt(6.0 / (fan_in + fan_out)))
        return _uniform(key, shape, 1.0 / math.sqrt(fan_in))  # out_proj: torch Linear default
    if leaf == "kernel":
        return _uniform(key, shape, 1.0 / math.sqrt(_fans(names, shape)[0]))
    if leaf == "bias" and kernel_shape is not None:
        return _uniform(key, shape, 1.0 / math.sqrt(_kernel_fan_in(names, kernel_shape)))
    return None


def official_init(params: Any, key: jax.Array) -> Any:
    """params (a Sam3Image params tree) re-drawn as the official modules initialise (see module doc).
    Each leaf's draw depends only on `key` and its path. Shapes and dtypes are kept."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]

    def names_of(p):
        return tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in p)

    stacked = {}
    kernel_shapes = {}
    for p, x in flat:
        path = "/".join(names_of(p))
        s = any(path.startswith(pre) for pre in STACKED)
        stacked[path] = s
        if path.endswith("/kernel"):
            kernel_shapes[path] = tuple(x.shape[1:] if s else x.shape)

    def one(p, x):
        names = names_of(p)
        path = "/".join(names)
        k = jax.random.fold_in(key, zlib.crc32(path.encode()) & 0x7FFFFFFF)
        if stacked[path]:
            n = x.shape[0]
            draws = [_leaf(path, names, tuple(x.shape[1:]), jax.random.fold_in(k, i), kernel_shapes) for i in range(n)]
            if draws[0] is None:
                return x
            return jnp.stack(draws).astype(x.dtype)
        new = _leaf(path, names, tuple(x.shape), k, kernel_shapes)
        return x if new is None else new.astype(x.dtype)

    return jax.tree_util.tree_map_with_path(one, params)
