"""Memory encoder of the SAM 3 tracker (official: sam3/model/memory.py, `SimpleMaskEncoder` with its
`SimpleMaskDownSampler`, `SimpleFuser` of `CXBlock`s and a `PositionEmbeddingSine`, as
`model_builder._create_tracker_maskmem_backbone` builds it; official name `maskmem_backbone`).

It turns one frame's image feature and the mask predicted on it into a memory for later frames
(g = image_size // patch_size, C = tracker width d_model, D = mem_dim; 72, 256, 64 at full size):

  1. masks (B, H, W, 1): mask logits at image resolution, or, as the official tracker passes them
     (`skip_mask_sigmoid=True`), already turned into probabilities / binarised and scaled by the
     tracker's sigmoid scale and bias (x20 - 10). Without `skip_mask_sigmoid` a sigmoid comes first.
  2. `mask_downsampler`: if (H, W) is not the interpolation size (16g x 16g, 1152 at full size), an
     antialiased bilinear resize to it (torch `F.interpolate(mode="bilinear", align_corners=False,
     antialias=True)` in float32; at full size 1008 -> 1152 is an upsampling). Then
     4 x [Conv 3x3 stride 2 pad 1 -> LayerNorm2d -> GELU] taking the channels 1 -> 4 -> 16 -> 64 ->
     256 (each stride-2 step multiplies them by 4, whatever d_model) and a 1x1 Conv 256 -> C:
     (B, g, g, C). Children keep the official Sequential indices: `encoder/{0,1,3,4,6,7,9,10,12}`.
  3. `pix_feat_proj` (1x1 Conv C -> C) of the frame's image feature pix_feat (B, g, g, C), the top
     level of the tracker neck, plus the downsampled mask.
  4. `fuser`: 2 ConvNeXt blocks `layers_0`, `layers_1` (no input projection), each
     x + gamma * pwconv2(GELU(pwconv1(LayerNorm2d(dwconv(x))))) with a 7x7 depthwise conv (pad 3),
     pwconv1 C -> 4C, pwconv2 4C -> C and the per-channel layer scale gamma (C,) (1e-6 at init).
  5. `out_proj`: 1x1 Conv C -> D (absent, i.e. the identity, when D == C, as in the official code).
  6. Position encoding: the normalized sine map (temperature 10000, D channels, [y-part, x-part])
     of the output grid, the same for every batch row.

Returns {"vision_features": (B, g, g, D), "vision_pos_enc": (B, g, g, D)}; the official module
returns the position encoding as a one-element list. The official tracker then adds
`no_obj_embed_spatial` where the object is absent: that belongs to the tracker, not here.

LayerNorm2d eps 1e-6, exact-erf GELU, torch conv layouts through `sam3_jax.layers.core.Conv`
(kernel (kh, kw, in, out)); the depthwise kernel is (7, 7, 1, C). Everything is batch-first / NHWC.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam3_jax.layers import partitioning as P
from sam3_jax.layers.core import Conv, Dense, LayerNorm2d, conv_general_dilated, default_kernel_init, gelu, zeros
from sam3_jax.layers.position import sine_position_map
from sam3_jax.layers.resize import resize_bilinear

Dtype = Any

# Official `_create_tracker_maskmem_backbone` / `SimpleMaskDownSampler` / `CXBlock` constants.
MASK_TOTAL_STRIDE = 16  # the downsampler's total stride (interpolation size = 16 g)
MASK_STRIDE = 2
MASK_KERNEL_SIZE = 3
MASK_PADDING = 1
FUSER_DEPTH = 2
CX_KERNEL_SIZE = 7
CX_LAYER_SCALE_INIT = 1e-6
POS_TEMPERATURE = 10000.0


def num_downsample_layers(total_stride: int, stride: int) -> int:
    """Number of stride-`stride` convs that make `total_stride` (which must be a power of stride)."""
    if stride < 2 or total_stride < 1:
        raise ValueError(f"stride {stride} must be >= 2 and total_stride {total_stride} >= 1")
    n, s = 0, 1
    while s < total_stride:
        s, n = s * stride, n + 1
    if s != total_stride:
        raise ValueError(f"total_stride {total_stride} is not a power of stride {stride}")
    return n


class _DownSamplerStack(nn.Module):
    """Official `mask_downsampler.encoder` Sequential: convs at indices 0, 3, 6, ..., LayerNorm2d at
    1, 4, 7, ..., GELUs (parameter-free) at 2, 5, 8, ..., the final 1x1 conv last."""

    embed_dim: int
    kernel_size: int = MASK_KERNEL_SIZE
    stride: int = MASK_STRIDE
    padding: int = MASK_PADDING
    total_stride: int = MASK_TOTAL_STRIDE
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        chans = 1
        idx = 0
        for _ in range(num_downsample_layers(self.total_stride, self.stride)):
            chans *= self.stride ** 2
            x = Conv(chans, self.kernel_size, stride=self.stride, padding=self.padding, name=str(idx), **kw)(x)
            x = gelu(LayerNorm2d(name=str(idx + 1), **kw)(x))
            idx += 3
        return Conv(self.embed_dim, 1, name=str(idx), **kw)(x)


class MaskDownSampler(nn.Module):
    """Official `SimpleMaskDownSampler`: optional antialiased bilinear resize to `interpol_size`,
    then the conv stack `encoder`. (B, H, W, 1) -> (B, h / total_stride, w / total_stride, embed_dim)
    with (h, w) = interpol_size (or (H, W) when it is None)."""

    embed_dim: int = 256
    kernel_size: int = MASK_KERNEL_SIZE
    stride: int = MASK_STRIDE
    padding: int = MASK_PADDING
    total_stride: int = MASK_TOTAL_STRIDE
    interpol_size: Optional[tuple[int, int]] = None
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    def setup(self):
        self.encoder = _DownSamplerStack(
            self.embed_dim, self.kernel_size, self.stride, self.padding, self.total_stride,
            dtype=self.dtype, param_dtype=self.param_dtype,
        )

    def __call__(self, masks: jax.Array) -> jax.Array:
        if masks.ndim != 4 or masks.shape[-1] != 1:
            raise ValueError(f"masks must have shape (B, H, W, 1), got {tuple(masks.shape)}")
        x = masks
        if self.interpol_size is not None and tuple(self.interpol_size) != tuple(x.shape[1:3]):
            x = resize_bilinear(x.astype(jnp.float32), tuple(self.interpol_size), antialias=True)
        return self.encoder(x.astype(self.dtype or jnp.float32))


class CXBlock(nn.Module):
    """Official ConvNeXt `CXBlock` (depthwise, no drop path): x + gamma * MLP(LayerNorm2d(dwconv(x)))."""

    kernel_size: int = CX_KERNEL_SIZE
    layer_scale_init: float = CX_LAYER_SCALE_INIT
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        c, k = x.shape[-1], self.kernel_size
        h = nn.Conv(
            c, kernel_size=(k, k), padding=((k // 2, k // 2), (k // 2, k // 2)), feature_group_count=c,
            kernel_init=P.with_axes(default_kernel_init, (None, None, None, P.CONV_OUT)),
            bias_init=P.with_axes(zeros, (P.CONV_OUT,)), conv_general_dilated=conv_general_dilated,
            name="dwconv", **kw,
        )(x)
        h = LayerNorm2d(name="norm", **kw)(h)
        h = gelu(Dense(4 * c, (P.EMBED, P.MLP), name="pwconv1", **kw)(h))
        h = Dense(c, (P.MLP, P.EMBED), name="pwconv2", **kw)(h)
        gamma = self.param(
            "gamma", P.with_axes(nn.initializers.constant(self.layer_scale_init), (P.EMBED,)), (c,),
            self.param_dtype,
        )
        return x + gamma.astype(h.dtype) * h


class Fuser(nn.Module):
    """Official `SimpleFuser` without input projection: `depth` CXBlocks `layers_{i}` in sequence."""

    depth: int = FUSER_DEPTH
    kernel_size: int = CX_KERNEL_SIZE
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    def setup(self):
        self.layers = [
            CXBlock(self.kernel_size, dtype=self.dtype, param_dtype=self.param_dtype) for _ in range(self.depth)
        ]

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers:
            x = layer(x)
        return x


class MemoryEncoder(nn.Module):
    """Official `SimpleMaskEncoder` (the tracker's `maskmem_backbone`), batch-first / NHWC.

    Methods: `__call__` (the memory and its position encoding) and `downsample_masks` (steps 1-2 of
    the module docstring alone)."""

    in_dim: int = 256  # C, the tracker width (pix_feat channels)
    out_dim: int = 64  # D, mem_dim
    interpol_size: Optional[tuple[int, int]] = (1152, 1152)
    fuser_depth: int = FUSER_DEPTH
    cx_kernel_size: int = CX_KERNEL_SIZE
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if self.out_dim % 2:
            raise ValueError(f"out_dim {self.out_dim} must be even (sine position encoding)")
        self.mask_downsampler = MaskDownSampler(
            embed_dim=self.in_dim, interpol_size=None if self.interpol_size is None else tuple(self.interpol_size),
            **kw,
        )
        self.pix_feat_proj = Conv(self.in_dim, 1, **kw)
        self.fuser = Fuser(self.fuser_depth, self.cx_kernel_size, **kw)
        if self.out_dim != self.in_dim:
            self.out_proj = Conv(self.out_dim, 1, **kw)

    def downsample_masks(self, masks: jax.Array, skip_mask_sigmoid: bool = False) -> jax.Array:
        """masks (B, H, W, 1) -> (sigmoid unless skip_mask_sigmoid) -> `mask_downsampler` (B, g, g, C)."""
        if masks.ndim != 4 or masks.shape[-1] != 1:
            raise ValueError(f"masks must have shape (B, H, W, 1), got {tuple(masks.shape)}")
        if not skip_mask_sigmoid:
            masks = jax.nn.sigmoid(masks.astype(jnp.float32))
        return self.mask_downsampler(masks)

    def __call__(self, pix_feat: jax.Array, masks: jax.Array, skip_mask_sigmoid: bool = False) -> dict[str, jax.Array]:
        """pix_feat (B, g, g, C): the frame's top-level tracker-neck feature; masks (B, H, W, 1): mask
        logits, or (skip_mask_sigmoid=True, how the official tracker calls it) values already passed
        through sigmoid / binarisation and the tracker's scale and bias. skip_mask_sigmoid is static.

        Returns {"vision_features": (B, g, g, out_dim), "vision_pos_enc": (B, g, g, out_dim)}."""
        c = self.in_dim
        if pix_feat.ndim != 4 or pix_feat.shape[-1] != c:
            raise ValueError(f"pix_feat must have shape (B, H, W, {c}), got {tuple(pix_feat.shape)}")
        m = self.downsample_masks(masks, skip_mask_sigmoid)
        if m.shape != pix_feat.shape:
            raise ValueError(
                f"masks {tuple(masks.shape)} downsample to {tuple(m.shape)}, which does not match pix_feat "
                f"{tuple(pix_feat.shape)} (interpolation size {self.interpol_size}, total stride {MASK_TOTAL_STRIDE})"
            )
        x = self.pix_feat_proj(pix_feat.astype(self.dtype or pix_feat.dtype))
        x = x + m.astype(x.dtype)
        x = self.fuser(x)
        if self.out_dim != self.in_dim:
            x = self.out_proj(x)
        b, h, w, d = x.shape
        pos = sine_position_map(h, w, d, temperature=POS_TEMPERATURE).astype(x.dtype)
        return {"vision_features": x, "vision_pos_enc": jnp.broadcast_to(pos[None], (b, h, w, d))}


def memory_encoder_from_config(cfg) -> MemoryEncoder:
    """The tracker's memory encoder at the sizes of a model config: width cfg.tracker.d_model, memory
    channels cfg.tracker.mem_dim, masks interpolated to 16 g x 16 g (g = image_size // patch_size)."""
    g = cfg.image_size // cfg.vit.patch_size
    s = MASK_TOTAL_STRIDE * g
    return MemoryEncoder(
        in_dim=cfg.tracker.d_model,
        out_dim=cfg.tracker.mem_dim,
        interpol_size=(s, s),
        dtype=jnp.dtype(cfg.dtype),
        param_dtype=jnp.dtype(cfg.param_dtype),
    )


__all__: Sequence[str] = ["CXBlock", "Fuser", "MaskDownSampler", "MemoryEncoder", "memory_encoder_from_config"]
