"""Perception-Encoder ViT trunk of SAM 3 (official: sam3/model/vitdet.py).

Patch conv (no bias) -> + absolute position table (cls row dropped, tiled from the pretraining grid)
-> ln_pre -> depth pre-norm blocks, windowed attention except at `global_blocks`, 2D RoPE in every
block (window-local positions in windowed blocks; positions scaled by window/grid in global blocks)
-> output of the last block, (B, grid, grid, width) channels-last.

All blocks share one structure, so they are scanned; each block picks windowed or global attention
with `nn.cond` on a per-layer flag (a trunk whose blocks are all global runs without the cond).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sam3_jax.layers import partitioning as P
from sam3_jax.layers.attention import MultiHeadAttention
from sam3_jax.layers.core import Conv, LayerNorm, Mlp
from sam3_jax.layers.rope import apply_rope, axial_rope_angles, rope_cos_sin
from sam3_jax.layers.stack import scanned

Dtype = Any


def window_partition(x: jax.Array, window: int) -> tuple[jax.Array, tuple[int, int]]:
    """(B, H, W, C) -> (B*nW, window*window, C), zero-padding H and W up to multiples of window."""
    b, h, w, c = x.shape
    ph, pw = (-h) % window, (-w) % window
    if ph or pw:
        x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)))
    hp, wp = h + ph, w + pw
    x = x.reshape(b, hp // window, window, wp // window, window, c)
    x = x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)
    return x, (hp, wp)


def window_unpartition(x: jax.Array, window: int, padded: tuple[int, int], hw: tuple[int, int]) -> jax.Array:
    """Inverse of `window_partition`: (B*nW, window*window, C) -> (B, H, W, C)."""
    hp, wp = padded
    h, w = hw
    c = x.shape[-1]
    b = x.shape[0] // ((hp // window) * (wp // window))
    x = x.reshape(b, hp // window, wp // window, window, window, c)
    x = x.transpose(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
    return x[:, :h, :w, :]


def _rope_fn(cos: jax.Array, sin: jax.Array):
    def rope(q: jax.Array, k: jax.Array) -> tuple[jax.Array, jax.Array]:
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin)

    return rope


class ViTBlock(nn.Module):
    """Pre-norm block: x += attn(norm1 x); x += mlp(norm2 x). No LayerScale, no drop-path at eval."""

    num_heads: int
    mlp_hidden: int
    window_size: int
    attention_impl: Optional[str] = None
    return_block_outputs: bool = False
    kind: str = "mixed"  # "mixed": per-layer flag picks the attention; "global" / "windowed": every block alike
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, is_global: jax.Array, tables: dict[str, jax.Array]):
        b, h, w, c = x.shape
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = P.constrain(x, (P.BATCH, P.HEIGHT, P.WIDTH, P.ACT_EMBED))
        y = LayerNorm(name="norm1", **kw)(x)
        attn = MultiHeadAttention(self.num_heads, attention_impl=self.attention_impl, name="attn", **kw)
        ws = self.window_size

        def windowed(mdl: nn.Module, y: jax.Array) -> jax.Array:
            t, padded = window_partition(y, ws)
            t = mdl(t, rope=_rope_fn(tables["window_cos"], tables["window_sin"]))
            return window_unpartition(t, ws, padded, (h, w))

        def global_(mdl: nn.Module, y: jax.Array) -> jax.Array:
            t = mdl(y.reshape(b, h * w, c), rope=_rope_fn(tables["global_cos"], tables["global_sin"]))
            return t.reshape(b, h, w, c)

        if self.kind == "global":
            y = global_(attn, y)
        elif self.kind == "windowed":
            y = windowed(attn, y)
        else:
            y = nn.cond(is_global, global_, windowed, attn, y)
        x = x + y
        x = x + Mlp(self.mlp_hidden, name="mlp", **kw)(LayerNorm(name="norm2", **kw)(x))
        return x, (x if self.return_block_outputs else None)


class ViT(nn.Module):
    image_size: int
    patch_size: int
    width: int
    depth: int
    heads: int
    mlp_ratio: float
    window_size: int
    global_blocks: tuple[int, ...]
    pretrain_image_size: int
    rope_theta: float = 10000.0
    pretrain_use_cls_token: bool = True
    attention_impl: Optional[str] = None
    remat: str = "none"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    def rope_tables(self) -> dict[str, jax.Array]:
        head_dim = self.width // self.heads
        ws, g = self.window_size, self.grid
        # Windowed blocks: window-local positions at scale window/window = 1. Global blocks: the
        # whole grid, positions scaled by window/grid (the RoPE pretraining size is the window).
        wcos, wsin = rope_cos_sin(axial_rope_angles(head_dim, ws, ws, theta=self.rope_theta, scale=1.0))
        gcos, gsin = rope_cos_sin(
            axial_rope_angles(head_dim, g, g, theta=self.rope_theta, scale=ws / g)
        )
        return dict(window_cos=wcos, window_sin=wsin, global_cos=gcos, global_sin=gsin)

    def abs_pos(self, pos_embed: jax.Array) -> jax.Array:
        """(1, [1+]P*P, C) table -> (grid, grid, C): drop the cls row, tile (not interpolate), crop."""
        table = pos_embed[0, 1:] if self.pretrain_use_cls_token else pos_embed[0]
        p = self.pretrain_image_size // self.patch_size
        table = table.reshape(p, p, self.width)
        if p != self.grid:
            reps = self.grid // p + 1
            table = jnp.tile(table, (reps, reps, 1))[: self.grid, : self.grid]
        return table

    @nn.compact
    def __call__(self, images: jax.Array, *, return_block_outputs: bool = False):
        """images: (B, S, S, 3) normalised float. Returns (features (B, g, g, C), intermediates)."""
        if images.ndim != 4 or images.shape[1:] != (self.image_size, self.image_size, 3):
            raise ValueError(
                f"ViT expects images of shape (B, {self.image_size}, {self.image_size}, 3), "
                f"got {tuple(images.shape)}"
            )
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        inter: dict[str, Any] = {}
        x = Conv(self.width, self.patch_size, stride=self.patch_size, use_bias=False, name="patch_embed", **kw)(
            images
        )
        inter["patch_embed"] = x
        p = self.pretrain_image_size // self.patch_size
        n_pos = p * p + (1 if self.pretrain_use_cls_token else 0)
        pos_embed = self.param(
            "pos_embed",
            P.with_axes(nn.initializers.truncated_normal(0.02), (None, P.POSITIONS, P.EMBED)),
            (1, n_pos, self.width),
            self.param_dtype,
        )
        x = x + self.abs_pos(pos_embed).astype(x.dtype)
        x = LayerNorm(name="ln_pre", **kw)(x)
        inter["ln_pre"] = x

        is_global = jnp.asarray(np.isin(np.arange(self.depth), np.asarray(self.global_blocks)))
        Blocks = scanned(ViTBlock, length=self.depth, in_axes=(0, nn.broadcast), remat=self.remat)
        x, block_outs = Blocks(
            num_heads=self.heads,
            mlp_hidden=int(self.width * self.mlp_ratio),
            window_size=self.window_size,
            attention_impl=self.attention_impl,
            return_block_outputs=return_block_outputs,
            kind=_block_kind(self.depth, self.global_blocks),
            name="blocks",
            **kw,
        )(x, is_global, self.rope_tables())
        if return_block_outputs:
            inter["blocks"] = block_outs
        return x, inter


def _block_kind(depth: int, global_blocks: Sequence[int]) -> str:
    """A cond per block only where the blocks differ (a trunk of one kind compiles and runs faster)."""
    n = len(set(global_blocks))
    return "global" if n == depth else "windowed" if n == 0 else "mixed"


def vit_from_config(cfg) -> ViT:
    """Builds the trunk from a model ConfigDict (`sam3_jax.config.model_config`)."""
    v = cfg.vit
    return ViT(
        image_size=cfg.image_size,
        patch_size=v.patch_size,
        width=v.width,
        depth=v.depth,
        heads=v.heads,
        mlp_ratio=v.mlp_ratio,
        window_size=v.window_size,
        global_blocks=tuple(v.global_blocks),
        pretrain_image_size=v.pretrain_image_size,
        rope_theta=v.rope_theta,
        pretrain_use_cls_token=v.pretrain_use_cls_token,
        attention_impl=cfg.attention_impl,
        remat=cfg.remat,
        dtype=jnp.dtype(cfg.dtype),
        param_dtype=jnp.dtype(cfg.param_dtype),
    )
