"""Segmentation head of the SAM 3 detector (official: sam3/model/maskformer_segmentation.py,
`UniversalSegmentationHead` + `PixelDecoder`, as built by `_create_segmentation_head`).

Inference data flow (eval mode, no presence head, no aux masks, d = d_model):
  1. The fusion-encoder output e (B, g*g, d) attends to the prompt (text + geometry tokens):
     e' = e + MHA(LN(e), prompt, prompt) with the prompt padding mask and no positional encoding.
  2. e' reshaped to (B, g, g, d) takes the place of the 1x FPN level; the two finer levels
     (2g and 4g) are kept.
  3. Pixel decoder, coarse to fine: x = fpn[k] + nearest_upsample(x); x = ReLU(GN(Conv3x3(x))),
     using `conv_layers_0`/`norms_0` at 2g and `conv_layers_1`/`norms_1` at 4g. The checkpoint has a
     third conv/norm pair that no forward pass reaches; it is kept as params for exact round trips.
  4. pixel_embed (B, 4g, 4g, d) -> `instance_seg_head` (1x1 conv) -> per-pixel instance embeddings;
     `mask_predictor.mask_embed` (3-layer ReLU MLP) maps the object queries to mask embeddings and
     their dot product with the pixel embeddings gives the mask logits (B, Q, 4g, 4g).
  5. `semantic_seg_head` (1x1 conv d -> 1) on pixel_embed: a training head, returned for parity.

Layouts are batch-first / NHWC; `pred_masks` keeps the official (B, Q, H, W) order.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam3_jax.layers import partitioning as P
from sam3_jax.layers.attention import MultiHeadAttention
from sam3_jax.layers.core import Conv, LayerNorm, einsum, ones, zeros
from sam3_jax.layers.resize import resize_nearest
from sam3_jax.model.mlp import MLP

Dtype = Any

# torch nn.GroupNorm default epsilon (the official pixel decoder uses the default).
GROUP_NORM_EPS = 1e-5


def GroupNorm(
    num_groups: int,
    *,
    epsilon: float = GROUP_NORM_EPS,
    dtype: Dtype | None = None,
    param_dtype: Dtype = jnp.float32,
    name: str | None = None,
) -> nn.GroupNorm:
    """GroupNorm over NHWC channels with torch semantics (eps 1e-5, two-pass variance)."""
    return nn.GroupNorm(
        num_groups=num_groups,
        epsilon=epsilon,
        use_fast_variance=False,
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=P.with_axes(ones, (P.CONV_OUT,)),
        bias_init=P.with_axes(zeros, (P.CONV_OUT,)),
        name=name,
    )


def upsample_nearest_to(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """torch `F.interpolate(mode="nearest")` to `size` on NHWC input.

    An integer up-scaling factor is an exact repeat (cheaper than a gather); anything else falls
    back to the general torch-equal nearest resize.
    """
    h, w = x.shape[1], x.shape[2]
    th, tw = int(size[0]), int(size[1])
    if (th, tw) == (h, w):
        return x
    if th % h == 0 and tw % w == 0:
        return jnp.repeat(jnp.repeat(x, th // h, axis=1), tw // w, axis=2)
    return resize_nearest(x, (th, tw))


class PixelDecoder(nn.Module):
    """Top-down FPN fusion with nearest upsampling and Conv3x3 -> GroupNorm -> ReLU per stage.

    Holds `num_stages` conv/norm pairs (`conv_layers_{k}`, `norms_{k}`); a pyramid of L levels uses
    the first L - 1 of them, the rest are created so the official tensors have a home.
    """

    hidden_dim: int
    num_stages: int = 3
    num_groups: int = 8
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, feats: Sequence[jax.Array]) -> jax.Array:
        """feats: NHWC maps, finest first, coarsest last. Returns the finest-resolution map."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        used = len(feats) - 1
        if used > self.num_stages:
            raise ValueError(f"{len(feats)} pyramid levels need {used} decoder stages, have {self.num_stages}")
        convs = [Conv(self.hidden_dim, 3, padding=1, name=f"conv_layers_{k}", **kw) for k in range(self.num_stages)]
        norms = [GroupNorm(self.num_groups, name=f"norms_{k}", **kw) for k in range(self.num_stages)]
        x = feats[-1]
        for k, skip in enumerate(reversed(feats[:-1])):
            x = skip + upsample_nearest_to(x, skip.shape[1:3])
            x = nn.relu(norms[k](convs[k](x)))
            x = P.constrain(x, (P.BATCH, P.HEIGHT, P.WIDTH, P.ACT_EMBED))
        if self.is_initializing():
            # Materialise the stages no forward pass reaches (checkpoint round trip, param counts).
            probe = jnp.zeros((1, 1, 1, self.hidden_dim), x.dtype)
            for k in range(used, self.num_stages):
                norms[k](convs[k](probe))
        return x


class _MaskPredictor(nn.Module):
    """Official `MaskPredictor`: holds `mask_embed`, the query -> mask-embedding MLP."""

    d_model: int
    num_layers: int = 3
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, obj_queries: jax.Array) -> jax.Array:
        d = self.d_model
        return MLP(
            d, d, d, self.num_layers, out_axis=P.EMBED, dtype=self.dtype, param_dtype=self.param_dtype,
            name="mask_embed",
        )(obj_queries)


class SegmentationHead(nn.Module):
    """`UniversalSegmentationHead` at inference (prompt cross-attention, no presence head)."""

    d_model: int = 256
    num_heads: int = 8
    num_upsampling_stages: int = 3
    num_groups: int = 8
    mask_mlp_layers: int = 3
    attention_impl: Optional[str] = None
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        backbone_fpn: Sequence[jax.Array],
        encoder_hidden_states: jax.Array,
        prompt: jax.Array,
        prompt_mask: jax.Array,
        obj_queries: jax.Array,
    ) -> dict[str, jax.Array]:
        """
        backbone_fpn: detector neck levels after scalp, finest first, NHWC:
            [(Bi, 4g, 4g, d), (Bi, 2g, 2g, d), (Bi, g, g, d)]; the last one is only used for its
            size (the encoder output replaces it). Bi is B, or 1 to share one image's maps.
        encoder_hidden_states: (B, g*g, d) fusion-encoder output, batch-first.
        prompt: (B, P, d); prompt_mask: (B, P) bool, True = padding.
        obj_queries: (B, Q, d) last decoder layer's queries (after the decoder's final norm).

        Returns pred_masks (B, Q, 4g, 4g) mask logits, semantic_seg (B, 4g, 4g, 1) logits and
        pixel_embed (B, 4g, 4g, d) (the pixel decoder output).
        """
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        feats = list(backbone_fpn)
        if len(feats) < 2:
            raise ValueError(f"the pixel decoder needs at least 2 pyramid levels, got {len(feats)}")
        b, n, d = encoder_hidden_states.shape
        gh, gw = feats[-1].shape[1], feats[-1].shape[2]
        if n < gh * gw:
            raise ValueError(f"encoder states hold {n} tokens, the coarsest level needs {gh}x{gw}")
        if prompt_mask.shape != prompt.shape[:2]:
            raise ValueError(f"prompt_mask {tuple(prompt_mask.shape)} does not match prompt {tuple(prompt.shape)}")

        # 1. Prompt cross-attention on the encoder output (pre-norm residual, no pos encodings).
        e = P.constrain(encoder_hidden_states, (P.BATCH, P.LENGTH, P.ACT_EMBED))
        q = LayerNorm(name="cross_attn_norm", **kw)(e)
        attend = jnp.logical_not(prompt_mask.astype(bool))[:, None, None, :]
        e = e + MultiHeadAttention(
            self.num_heads, attention_impl=self.attention_impl, name="cross_attend_prompt", **kw
        )(q, prompt, prompt, mask=attend)

        # 2. The prompted encoder output replaces the coarsest pyramid level.
        feats[-1] = e[:, : gh * gw].reshape(b, gh, gw, d)

        # 3. Pixel decoder.
        pixel_embed = PixelDecoder(
            self.d_model, self.num_upsampling_stages, self.num_groups, name="pixel_decoder", **kw
        )(feats)

        # 4. Instance embeddings and mask logits.
        instance_embeds = Conv(self.d_model, 1, name="instance_seg_head", **kw)(pixel_embed)
        query_embed = _MaskPredictor(self.d_model, self.mask_mlp_layers, name="mask_predictor", **kw)(obj_queries)
        query_embed = P.constrain(query_embed, (P.BATCH, P.LENGTH, P.ACT_EMBED))
        pred_masks = einsum("bqc,bhwc->bqhw", query_embed, instance_embeds.astype(query_embed.dtype))

        # 5. Semantic head.
        semantic_seg = Conv(1, 1, name="semantic_seg_head", **kw)(pixel_embed)
        return {"pred_masks": pred_masks, "semantic_seg": semantic_seg, "pixel_embed": pixel_embed}


def segmentation_head_from_config(cfg) -> SegmentationHead:
    return SegmentationHead(
        d_model=cfg.d_model,
        num_heads=cfg.num_heads,
        attention_impl=cfg.attention_impl,
        dtype=jnp.dtype(cfg.dtype),
        param_dtype=jnp.dtype(cfg.param_dtype),
    )
