"""Layout transforms from official PyTorch tensors to Flax params, one per target module type.

A `Layout` lists, for one module, which official leaf tensors (relative to the module's key prefix)
fill which Flax leaves (relative to the module's param path), how the tensor is rearranged, and
which official shape each Flax shape implies (so shapes are checked before anything is moved).
Leaves marked `recomputed` are consumed but not stored (e.g. RoPE `freqs_cis`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import numpy as np

Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class LeafMap:
    src: tuple[str, ...]  # official leaf names ('' = the prefix itself is the key)
    dst: tuple[str, ...]  # Flax leaf paths relative to the module path ('' = the path itself)
    forward: Callable[[Sequence[np.ndarray], Sequence[Shape]], list[np.ndarray]] | None
    src_shapes: Callable[[Sequence[Shape]], list[Shape]] | None
    recomputed: bool = False


@dataclasses.dataclass(frozen=True)
class Layout:
    name: str
    leaves: tuple[LeafMap, ...]


def _one(fn: Callable[[np.ndarray], np.ndarray]):
    return lambda srcs, _shapes: [fn(srcs[0])]


def _same(shapes):
    return [tuple(shapes[0])]


def _transposed(perm: Sequence[int]):
    inv = list(np.argsort(perm))
    return lambda shapes: [tuple(shapes[0][i] for i in inv)]


def _direct(src: str, dst: str) -> LeafMap:
    return LeafMap((src,), (dst,), _one(lambda x: x), _same)


def _permute(src: str, dst: str, perm: Sequence[int]) -> LeafMap:
    return LeafMap((src,), (dst,), _one(lambda x: np.transpose(x, perm)), _transposed(perm))


# Fused [q; k; v] projection rows, each head-major: (3*H*D, C) -> 3 x (C, H, D); bias (3*H*D,) -> 3 x (H, D).
def _split_qkv_kernel(srcs, shapes):
    c, h, d = shapes[0]
    w = srcs[0].reshape(3, h, d, c).transpose(0, 3, 1, 2)
    return [w[0], w[1], w[2]]


def _split_qkv_bias(srcs, shapes):
    h, d = shapes[0]
    b = srcs[0].reshape(3, h, d)
    return [b[0], b[1], b[2]]


def _qkv_kernel(src: str) -> LeafMap:
    return LeafMap(
        (src,), ("query/kernel", "key/kernel", "value/kernel"), _split_qkv_kernel,
        lambda s: [(3 * s[0][1] * s[0][2], s[0][0])],
    )


def _qkv_bias(src: str) -> LeafMap:
    return LeafMap(
        (src,), ("query/bias", "key/bias", "value/bias"), _split_qkv_bias,
        lambda s: [(3 * math.prod(s[0]),)],
    )


# Output projection (C_out, H*D) -> (H, D, C_out).
def _out_kernel(src: str) -> LeafMap:
    return LeafMap(
        (src,), ("out/kernel",),
        lambda srcs, s: [srcs[0].T.reshape(s[0])],
        lambda s: [(s[0][2], s[0][0] * s[0][1])],
    )


def _recomputed(src: str) -> LeafMap:
    return LeafMap((src,), (), None, None, recomputed=True)


DENSE = Layout("Dense", (_permute("weight", "kernel", (1, 0)), _direct("bias", "bias")))
LAYERNORM = Layout("LayerNorm", (_direct("weight", "scale"), _direct("bias", "bias")))
# torch Conv2d weight (out, in, kh, kw) -> (kh, kw, in, out).
CONV = Layout("Conv", (_permute("weight", "kernel", (2, 3, 1, 0)), _direct("bias", "bias")))
# torch ConvTranspose2d weight (in, out, kh, kw) -> (kh, kw, in, out); kernel == stride, no flip.
CONV_TRANSPOSE = Layout("ConvTranspose", (_permute("weight", "kernel", (2, 3, 0, 1)), _direct("bias", "bias")))
EMBED = Layout("Embed", (_direct("weight", "embedding"),))
PARAM = Layout("Param", (_direct("", ""),))
# SAM's LayerNorm2d holds weight / bias like nn.LayerNorm.
LAYERNORM_2D = Layout("LayerNorm2d", LAYERNORM.leaves)
# ViT attention: fused qkv Linear + proj Linear + the RoPE table buffer (recomputed from the config).
VIT_ATTENTION = Layout(
    "ViTAttention",
    (
        _qkv_kernel("qkv.weight"),
        _qkv_bias("qkv.bias"),
        _out_kernel("proj.weight"),
        _direct("proj.bias", "out/bias"),
        _recomputed("freqs_cis"),
    ),
)
# torch nn.MultiheadAttention with a packed in-projection (equal q/k/v dims).
TORCH_MHA = Layout(
    "MultiheadAttention",
    (
        _qkv_kernel("in_proj_weight"),
        _qkv_bias("in_proj_bias"),
        _out_kernel("out_proj.weight"),
        _direct("out_proj.bias", "out/bias"),
    ),
)


# Separate q / k / v Linear layers (out = H*D rows, head-major) -> HeadProjection (C_in, H, D);
# bias (H*D,) -> (H, D).
def _head_kernel(src: str, dst: str) -> LeafMap:
    return LeafMap(
        (src,), (dst,),
        lambda srcs, s: [srcs[0].T.reshape(s[0])],
        lambda s: [(s[0][1] * s[0][2], s[0][0])],
    )


def _head_bias(src: str, dst: str) -> LeafMap:
    return LeafMap((src,), (dst,), lambda srcs, s: [srcs[0].reshape(s[0])], lambda s: [(math.prod(s[0]),)])


# SAM's `Attention` (sam3/sam/transformer.py): q_proj / k_proj / v_proj / out_proj Linear layers,
# the projected width possibly smaller than the model width (attention_downsample_rate) and the key /
# value input width possibly another one (kv_in_dim).
SAM_ATTENTION = Layout(
    "SamAttention",
    tuple(
        leaf
        for proj, name in (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value"))
        for leaf in (_head_kernel(f"{proj}.weight", f"{name}/kernel"), _head_bias(f"{proj}.bias", f"{name}/bias"))
    )
    + (_out_kernel("out_proj.weight"), _direct("out_proj.bias", "out/bias")),
)
