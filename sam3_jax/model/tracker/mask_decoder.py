"""SAM mask decoder of the SAM 3 tracker (official: sam3/sam/mask_decoder.py, `MaskDecoder`, as
`Sam3TrackerBase._build_sam_heads` and `build_tracker` configure it: 3 multimask outputs, a
two-way transformer of depth 2 / 8 heads / MLP 2048, high-resolution features, IoU head with sigmoid,
object-score token with an MLP head, multimask tokens as object pointer, dynamic multimask via
stability with delta 0.05 and threshold 0.98).

Inference data flow (C = transformer_dim, g x g image embedding, B prompts):
  1. Output tokens [obj_score_token (if pred_obj_scores), iou_token, mask_tokens (1 + 3)] are
     prepended to the sparse prompt tokens; the image embedding (repeated per prompt when
     `repeat_image`) plus the dense prompt embedding is the image, the dense Fourier PE its position.
  2. Two-way transformer -> token outputs hs (B, T, C) and image outputs (B, g*g, C).
  3. Upscaling to 4g: ConvT 2x2 s2 (C -> C/4) [+ conv_s1(level 2g)] -> LayerNorm2d -> GELU ->
     ConvT 2x2 s2 (C/4 -> C/8) [+ conv_s0(level 4g)] -> GELU. The bracketed high-resolution
     features are the tracker neck's 4g and 2g levels projected by `conv_s0` (C -> C/8) and
     `conv_s1` (C -> C/4); as in the official tracker they are projected once per image
     (`project_high_res_features`) and passed in projected.
  4. Each mask token i goes through its hypernetwork MLP `output_hypernetworks_mlps_{i}` (3 layers,
     ReLU, C -> C -> C -> C/8); its dot product with the upscaled map gives mask logits (4g x 4g).
  5. `iou_prediction_head` (MLP C -> 256 -> 256 -> 4, then sigmoid) on the IoU token;
     `pred_obj_score_head` (MLP C -> C -> C -> 1) on the object-score token gives the object-score
     logit (without pred_obj_scores it is the constant 10).
  6. Selection: multimask_output -> masks / IoUs of tokens 1..3; otherwise, in eval with
     dynamic_multimask_via_stability, token 0 if its stability score (area(logits > delta) /
     area(logits > -delta), 1 when the latter is empty) is >= thresh, else the multimask token with
     the highest predicted IoU (first on ties); otherwise token 0. `sam_tokens_out` is tokens 1..3
     for multimask output with use_multimask_token_for_obj_ptr, else token 0.

LayerNorm2d eps 1e-6, exact GELU, ConvTranspose kernels (kh, kw, in, out). Masks keep the official
(B, M, 4g, 4g) order; everything else is batch-first / NHWC.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam3_jax.layers import partitioning as P
from sam3_jax.layers.core import Conv, ConvTranspose, Dense, LayerNorm2d, einsum, gelu
from sam3_jax.model.mlp import MLP
from sam3_jax.model.tracker.common import token_table
from sam3_jax.model.tracker.two_way_transformer import TwoWayTransformer

Dtype = Any

# Object-score logit when the decoder has no object-score head ("object present", sigmoid(10) ~ 1).
NO_OBJ_SCORE_LOGIT = 10.0


def stability_scores(mask_logits: jax.Array, delta: float) -> jax.Array:
    """(..., H, W) mask logits -> (...,) IoU between the masks thresholded at +delta and -delta
    (1 when nothing exceeds -delta)."""
    flat = mask_logits.reshape(*mask_logits.shape[:-2], -1)
    area_i = jnp.sum(flat > delta, axis=-1).astype(jnp.float32)
    area_u = jnp.sum(flat > -delta, axis=-1).astype(jnp.float32)
    return jnp.where(area_u > 0, area_i / jnp.maximum(area_u, 1.0), 1.0)


def select_by_stability(
    all_mask_logits: jax.Array, all_iou_scores: jax.Array, delta: float, thresh: float
) -> tuple[jax.Array, jax.Array]:
    """Official `_dynamic_multimask_via_stability`: all_mask_logits (B, 1 + M, H, W) and
    all_iou_scores (B, 1 + M) -> one mask (B, 1, H, W) and its IoU (B, 1) per row: token 0 when its
    stability score is >= thresh, else the multimask token with the highest IoU (first on ties)."""
    multi_logits, multi_iou = all_mask_logits[:, 1:], all_iou_scores[:, 1:]
    best = jnp.argmax(multi_iou, axis=-1)
    best_logits = jnp.take_along_axis(multi_logits, best[:, None, None, None], axis=1)
    best_iou = jnp.take_along_axis(multi_iou, best[:, None], axis=1)
    single_logits, single_iou = all_mask_logits[:, :1], all_iou_scores[:, :1]
    stable = stability_scores(single_logits, delta) >= thresh  # (B, 1)
    return (
        jnp.where(stable[..., None, None], single_logits, best_logits),
        jnp.where(stable, single_iou, best_iou),
    )


class _OutputUpscaling(nn.Module):
    """Official `output_upscaling` Sequential (children 0: ConvT, 1: LayerNorm2d, 3: ConvT), with the
    high-resolution features added before the norm / the last activation when given."""

    transformer_dim: int
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array, feat_s0: Optional[jax.Array] = None, feat_s1: Optional[jax.Array] = None
    ) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        c = self.transformer_dim
        x = ConvTranspose(c // 4, stride=2, name="0", **kw)(x)
        if feat_s1 is not None:
            x = x + feat_s1.astype(x.dtype)
        x = gelu(LayerNorm2d(name="1", **kw)(x))
        x = ConvTranspose(c // 8, stride=2, name="3", **kw)(x)
        if feat_s0 is not None:
            x = x + feat_s0.astype(x.dtype)
        return gelu(x)


class MaskDecoder(nn.Module):
    """Official SAM `MaskDecoder` (with its `TwoWayTransformer` as `transformer`), batch-first / NHWC.

    Methods: `__call__` (predict + select), `predict_masks` (every token's mask and IoU, no
    selection) and `project_high_res_features` (conv_s0 / conv_s1 on the tracker neck's 4g / 2g
    levels)."""

    transformer_dim: int = 256
    num_multimask_outputs: int = 3
    transformer_depth: int = 2
    transformer_heads: int = 8
    transformer_mlp_dim: int = 2048
    attention_downsample_rate: int = 2
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    use_high_res_features: bool = False
    iou_prediction_use_sigmoid: bool = False
    dynamic_multimask_via_stability: bool = False
    dynamic_multimask_stability_delta: float = 0.05
    dynamic_multimask_stability_thresh: float = 0.98
    pred_obj_scores: bool = False
    pred_obj_scores_mlp: bool = False
    use_multimask_token_for_obj_ptr: bool = False
    attention_impl: Optional[str] = None
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @property
    def num_mask_tokens(self) -> int:
        return self.num_multimask_outputs + 1

    def setup(self):
        c = self.transformer_dim
        if c % 8:
            raise ValueError(f"transformer_dim {c} must be divisible by 8 (upscaling to C/4 and C/8)")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.transformer = TwoWayTransformer(
            self.transformer_depth, self.transformer_heads, self.transformer_mlp_dim,
            self.attention_downsample_rate, attention_impl=self.attention_impl, **kw,
        )
        self.iou_token = token_table(1, c, self.param_dtype)
        self.mask_tokens = token_table(self.num_mask_tokens, c, self.param_dtype)
        if self.pred_obj_scores:
            self.obj_score_token = token_table(1, c, self.param_dtype)
        self.output_upscaling = _OutputUpscaling(c, **kw)
        if self.use_high_res_features:
            self.conv_s0 = Conv(c // 8, 1, **kw)
            self.conv_s1 = Conv(c // 4, 1, **kw)
        self.output_hypernetworks_mlps = [
            MLP(c, c, c // 8, 3, in_axis=P.EMBED, out_axis=None, **kw) for _ in range(self.num_mask_tokens)
        ]
        self.iou_prediction_head = MLP(
            c, self.iou_head_hidden_dim, self.num_mask_tokens, self.iou_head_depth, in_axis=P.EMBED, out_axis=None,
            **kw,
        )
        if self.pred_obj_scores:
            self.pred_obj_score_head = (
                MLP(c, c, 1, 3, in_axis=P.EMBED, out_axis=None, **kw) if self.pred_obj_scores_mlp
                else Dense(1, (P.EMBED, None), **kw)
            )

    def project_high_res_features(self, feat_s0: jax.Array, feat_s1: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Tracker neck levels (B, 4g, 4g, C) and (B, 2g, 2g, C) -> conv_s0 (C/8) and conv_s1 (C/4)
        maps: what the official tracker stores as `backbone_fpn[0]` / `[1]` for the decoder."""
        if not self.use_high_res_features:
            raise ValueError("this mask decoder has no conv_s0 / conv_s1 (use_high_res_features=False)")
        return self.conv_s0(feat_s0), self.conv_s1(feat_s1)

    def predict_masks(
        self,
        image_embeddings: jax.Array,
        image_pe: jax.Array,
        sparse_prompt_embeddings: jax.Array,
        dense_prompt_embeddings: jax.Array,
        *,
        repeat_image: bool = False,
        high_res_features: Optional[Sequence[jax.Array]] = None,
    ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """Masks (B, 1 + M, 4g, 4g), IoU predictions (B, 1 + M), mask-token outputs (B, 1 + M, C) and
        object-score logits (B, 1) of every mask token (no selection). See `__call__` for inputs."""
        c = self.transformer_dim
        if image_embeddings.ndim != 4 or image_embeddings.shape[-1] != c:
            raise ValueError(f"image_embeddings must have shape (B, H, W, {c}), got {tuple(image_embeddings.shape)}")
        bi, h, w, _ = image_embeddings.shape
        sparse = sparse_prompt_embeddings
        if sparse.ndim != 3 or sparse.shape[-1] != c:
            raise ValueError(f"sparse_prompt_embeddings must have shape (B, N, {c}), got {tuple(sparse.shape)}")
        b = sparse.shape[0]
        if tuple(dense_prompt_embeddings.shape) != (b, h, w, c):
            raise ValueError(f"dense_prompt_embeddings must have shape {(b, h, w, c)}, "
                             f"got {tuple(dense_prompt_embeddings.shape)}")
        if image_pe.ndim != 4 or image_pe.shape[0] != 1 or tuple(image_pe.shape[1:]) != (h, w, c):
            raise ValueError(f"image_pe must have shape (1, {h}, {w}, {c}) (from get_dense_pe), "
                             f"got {tuple(image_pe.shape)}")
        feat_s0 = feat_s1 = None
        if self.use_high_res_features:
            if high_res_features is None or len(high_res_features) != 2:
                raise ValueError("high_res_features must be the pair (conv_s0 map, conv_s1 map) from "
                                 "project_high_res_features: this decoder uses high-resolution features")
            feat_s0, feat_s1 = high_res_features
            for name, f, s, ch in (("[0]", feat_s0, 4, c // 8), ("[1]", feat_s1, 2, c // 4)):
                if f.ndim != 4 or tuple(f.shape[1:]) != (s * h, s * w, ch) or f.shape[0] not in (1, b):
                    raise ValueError(f"high_res_features{name} must have shape ({b}, {s * h}, {s * w}, {ch}), "
                                     f"got {tuple(f.shape)}")
        elif high_res_features is not None:
            raise ValueError("high_res_features given, but this decoder has use_high_res_features=False")

        # 1. Output tokens + prompt tokens; image + dense prompt.
        parts = [self.iou_token.embedding, self.mask_tokens.embedding]
        s = 0
        if self.pred_obj_scores:
            parts.insert(0, self.obj_score_token.embedding)
            s = 1
        output_tokens = jnp.concatenate(parts, axis=0)
        output_tokens = jnp.broadcast_to(output_tokens[None], (b,) + output_tokens.shape)
        tokens = jnp.concatenate([output_tokens.astype(sparse.dtype), sparse], axis=1)
        if repeat_image:
            if bi != 1:
                raise ValueError(f"repeat_image needs one image, got image_embeddings for {bi}")
            src = jnp.repeat(image_embeddings, b, axis=0)
        else:
            if bi != b:
                raise ValueError(f"image_embeddings hold {bi} images for {b} prompts (pass repeat_image=True "
                                 "to use one image for every prompt)")
            src = image_embeddings
        src = src + dense_prompt_embeddings.astype(src.dtype)

        # 2. Two-way transformer.
        hs, keys = self.transformer(src, image_pe, tokens)
        iou_token_out = hs[:, s]
        mask_tokens_out = hs[:, s + 1: s + 1 + self.num_mask_tokens]

        # 3. Upscaling (with the high-resolution features).
        upscaled = self.output_upscaling(keys.reshape(src.shape[0], h, w, c), feat_s0, feat_s1)

        # 4. Hypernetwork MLPs and mask logits.
        hyper_in = jnp.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], axis=1
        )
        masks = einsum("bmc,bhwc->bmhw", hyper_in, upscaled.astype(hyper_in.dtype))

        # 5. IoU and object-score heads.
        iou_pred = self.iou_prediction_head(iou_token_out)
        if self.iou_prediction_use_sigmoid:
            iou_pred = jax.nn.sigmoid(iou_pred)
        if self.pred_obj_scores:
            object_score_logits = self.pred_obj_score_head(hs[:, 0])
        else:
            object_score_logits = jnp.full((iou_pred.shape[0], 1), NO_OBJ_SCORE_LOGIT, iou_pred.dtype)
        return masks, iou_pred, mask_tokens_out, object_score_logits

    def __call__(
        self,
        image_embeddings: jax.Array,
        image_pe: jax.Array,
        sparse_prompt_embeddings: jax.Array,
        dense_prompt_embeddings: jax.Array,
        *,
        multimask_output: bool,
        repeat_image: bool = False,
        high_res_features: Optional[Sequence[jax.Array]] = None,
        training: bool = False,
    ) -> dict[str, jax.Array]:
        """Predicts masks for B prompts.

        image_embeddings (B, g, g, C) (or (1, g, g, C) with repeat_image, one image for every
        prompt); image_pe (1, g, g, C) from the prompt encoder's `get_dense_pe`;
        sparse_prompt_embeddings (B, N, C) and dense_prompt_embeddings (B, g, g, C) from the prompt
        encoder; high_res_features: (conv_s0 map (B, 4g, 4g, C/8), conv_s1 map (B, 2g, 2g, C/4))
        from `project_high_res_features`, required when use_high_res_features. multimask_output
        (static) picks the 3 multimask outputs, else one mask (see the module docstring);
        training turns the dynamic stability selection off, as the official `self.training` does.

        Returns masks (B, M, 4g, 4g) logits, iou_pred (B, M), sam_tokens_out (B, M', C) and
        object_score_logits (B, 1), with M = 3 or 1 and M' = 3 (multimask output with
        use_multimask_token_for_obj_ptr) or 1.
        """
        if self.is_initializing() and self.use_high_res_features:
            probe = jnp.zeros((1, 1, 1, self.transformer_dim), self.dtype or jnp.float32)
            self.project_high_res_features(probe, probe)
        masks, iou_pred, mask_tokens_out, object_score_logits = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
            repeat_image=repeat_image, high_res_features=high_res_features,
        )
        if multimask_output:
            masks, iou_pred = masks[:, 1:], iou_pred[:, 1:]
        elif self.dynamic_multimask_via_stability and not training:
            masks, iou_pred = select_by_stability(
                masks, iou_pred, self.dynamic_multimask_stability_delta, self.dynamic_multimask_stability_thresh
            )
        else:
            masks, iou_pred = masks[:, :1], iou_pred[:, :1]
        if multimask_output and self.use_multimask_token_for_obj_ptr:
            sam_tokens_out = mask_tokens_out[:, 1:]
        else:
            sam_tokens_out = mask_tokens_out[:, :1]
        return {
            "masks": masks,
            "iou_pred": iou_pred,
            "sam_tokens_out": sam_tokens_out,
            "object_score_logits": object_score_logits,
        }


def mask_decoder_from_config(cfg) -> MaskDecoder:
    """The tracker's SAM mask decoder at the sizes of a model config (`cfg.tracker.sam`)."""
    s = cfg.tracker.sam
    return MaskDecoder(
        transformer_dim=cfg.tracker.d_model,
        num_multimask_outputs=s.num_multimask_outputs,
        transformer_depth=s.transformer_depth,
        transformer_heads=s.transformer_heads,
        transformer_mlp_dim=s.transformer_mlp_dim,
        attention_downsample_rate=s.attention_downsample_rate,
        iou_head_depth=s.iou_head_depth,
        iou_head_hidden_dim=s.iou_head_hidden_dim,
        use_high_res_features=s.use_high_res_features,
        iou_prediction_use_sigmoid=s.iou_prediction_use_sigmoid,
        dynamic_multimask_via_stability=s.dynamic_multimask_via_stability,
        dynamic_multimask_stability_delta=s.dynamic_multimask_stability_delta,
        dynamic_multimask_stability_thresh=s.dynamic_multimask_stability_thresh,
        pred_obj_scores=s.pred_obj_scores,
        pred_obj_scores_mlp=s.pred_obj_scores_mlp,
        use_multimask_token_for_obj_ptr=s.use_multimask_token_for_obj_ptr,
        attention_impl=cfg.attention_impl,
        dtype=jnp.dtype(cfg.dtype),
        param_dtype=jnp.dtype(cfg.param_dtype),
    )
