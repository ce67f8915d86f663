"""Instance prompts (clicks, a box, a mask) on one image with the tracker's SAM heads: the pure
functions behind `Sam3ImagePredictor.predict_instance`, reusable by the video step.

Official path (SAM 3 image model with `enable_inst_interactivity=True`):
`Sam3Processor.set_image` projects the tracker neck's 4g and 2g levels once with the mask decoder's
`conv_s0` / `conv_s1`; `Sam3Image.predict_inst` adds the tracker's `no_mem_embed` (the "no memory"
embedding of the video model) to the g level; `SAM3InteractiveImagePredictor.predict` /
`_prep_prompts` / `_predict` (sam3/model/sam1_task_predictor.py) turn the prompts into model input,
run the prompt encoder and the mask decoder, and post-process with `SAM2Transforms`
(sam3/model/utils/sam1_utils.py).

Steps, as the official code takes them:
  1. `image_features`: conv_s0(level 4g), conv_s1(level 2g) and level g + no_mem_embed, once per
     image.
  2. `prompt_points` (host, numpy fp32): clicks (x, y) in original-image pixels are divided by the
     original (W, H) and multiplied by image_size; a box (x0, y0, x1, y1) becomes its two corners
     with labels 2 and 3, placed *before* the clicks. The prompt encoder then appends one padding
     point (label -1) and moves every point to its pixel centre.
  3. `predict_low_res`: prompt encoder (mask prompt = previous low-res logits (B, 1, 4g, 4g)) ->
     mask decoder on the one image (repeated per prompt) -> low-res mask logits (B, K, 4g, 4g) and
     predicted IoUs (B, K), K = 3 with multimask output, else 1 (the dynamic stability selection).
  4. `postprocess_masks`: on the low-res logits, background components (logit <= 0) of area <= 256
     become +10 (skimage-style 8-connected labelling, `sam3_jax.layers.components`), then a
     bilinear resize (torch semantics, align_corners False) to the original size, then > 0. The
     low-res logits handed back for the next round are clamped to [-32, 32], without hole filling.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sam3_jax.layers.components import fill_holes
from sam3_jax.layers.resize import resize_bilinear
from sam3_jax.model.tracker.mask_decoder import mask_decoder_from_config
from sam3_jax.model.tracker.prompt_encoder import prompt_encoder_from_config

# `SAM3InteractiveImagePredictor` defaults, as `build_sam3_image_model` builds it.
MASK_THRESHOLD = 0.0
MAX_HOLE_AREA = 256.0
MAX_SPRINKLE_AREA = 0.0
# Low-res logits returned for the next round are clamped to this range.
LOW_RES_LOGIT_LIMIT = 32.0
# Tracker params the instance path reads (under the checkpoint's `tracker` subtree).
HEAD_PARAMS = ("sam_prompt_encoder", "sam_mask_decoder", "no_mem_embed")
BOX_CORNER_LABELS = (2, 3)


def tracker_heads(params: Any) -> dict[str, Any]:
    """The subtree of a converted checkpoint's params the instance path needs ({sam_prompt_encoder,
    sam_mask_decoder, no_mem_embed} of `params["tracker"]`); ValueError when it is missing."""
    tracker = params.get("tracker") if hasattr(params, "get") else None
    missing = [k for k in HEAD_PARAMS if tracker is None or k not in tracker]
    if missing:
        raise ValueError(
            "this checkpoint has no tracker params (missing tracker/" + ", tracker/".join(missing) + "): "
            "instance prompts need the tracker's SAM heads; convert the official checkpoint again with "
            "the tracker included"
        )
    return {k: tracker[k] for k in HEAD_PARAMS}


def image_features(cfg, heads: Any, sam2_levels: Sequence[jax.Array]) -> dict[str, Any]:
    """Tracker neck levels [(B, 4g, 4g, C), (B, 2g, 2g, C), (B, g, g, C)] (`sam2_backbone_out`'s
    `backbone_fpn`) -> {"image_embed": level g + no_mem_embed, "high_res": (conv_s0(level 4g),
    conv_s1(level 2g))}: what the official predictor caches per image."""
    if len(sam2_levels) != 3:
        raise ValueError(f"sam2_levels must be the 3 tracker-neck levels (4g, 2g, g), got {len(sam2_levels)}")
    md = mask_decoder_from_config(cfg)
    s0, s1 = md.apply({"params": heads["sam_mask_decoder"]}, sam2_levels[0], sam2_levels[1],
                      method=md.project_high_res_features)
    emb = sam2_levels[2]
    c = emb.shape[-1]
    no_mem = jnp.asarray(heads["no_mem_embed"])
    if no_mem.size != c:
        raise ValueError(f"no_mem_embed has {no_mem.size} values for a {c}-channel image embedding")
    return {"image_embed": emb + no_mem.reshape(1, 1, 1, c).astype(emb.dtype), "high_res": (s0, s1)}


def to_model_frame(coords: np.ndarray, orig_hw: tuple[int, int], image_size: int) -> np.ndarray:
    """(..., 2) (x, y) pixels of the original image -> pixels of the image_size x image_size model
    input, in float32 as the official `transform_coords` computes them (x / W, y / H, then * size)."""
    h, w = orig_hw
    c = np.array(coords, dtype=np.float32, copy=True)
    c[..., 0] = c[..., 0] / np.float32(w)
    c[..., 1] = c[..., 1] / np.float32(h)
    return c * np.float32(image_size)


def prompt_points(
    points: Optional[np.ndarray], labels: Optional[np.ndarray], box: Optional[np.ndarray],
    orig_hw: tuple[int, int], image_size: int,
) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """Batched clicks (B, N, 2) + labels (B, N) and / or boxes (B, 4), in original-image pixels ->
    the prompt encoder's points (B, 2 + N or N or 2, 2) float32 in model-input pixels and labels
    int32: box corners (labels 2, 3) first, then the clicks. (None, None) when neither is given."""
    parts, labs = [], []
    if box is not None:
        b = np.asarray(box, np.float32)
        parts.append(to_model_frame(b.reshape(-1, 2, 2), orig_hw, image_size))
        labs.append(np.broadcast_to(np.array(BOX_CORNER_LABELS, np.int32), (b.shape[0], 2)))
    if points is not None:
        parts.append(to_model_frame(np.asarray(points, np.float32), orig_hw, image_size))
        labs.append(np.asarray(labels, np.int32))
    if not parts:
        return None, None
    return np.concatenate(parts, axis=1), np.concatenate(labs, axis=1)


def predict_low_res(
    cfg, heads: Any, features: dict[str, Any], points: Optional[jax.Array], labels: Optional[jax.Array],
    mask_input: Optional[jax.Array], *, multimask_output: bool,
) -> dict[str, jax.Array]:
    """Prompt encoder + mask decoder on one image for B prompts.

    points (B, P, 2) float32 in model-input pixels and labels (B, P) int32 (from `prompt_points`),
    or None; mask_input (B, 1, 4g, 4g) low-res logits or None (at least one of the two).
    Returns the decoder outputs: masks (B, K, 4g, 4g) raw low-res logits, iou_pred (B, K),
    sam_tokens_out and object_score_logits."""
    pe, md = prompt_encoder_from_config(cfg), mask_decoder_from_config(cfg)
    pe_vars = {"params": heads["sam_prompt_encoder"]}
    dense_mask = None
    if mask_input is not None:
        if mask_input.ndim != 4 or mask_input.shape[1] != 1:
            raise ValueError(f"mask_input must have shape (B, 1, H, W), got {tuple(mask_input.shape)}")
        dense_mask = jnp.transpose(mask_input, (0, 2, 3, 1))
    if points is None and dense_mask is None:
        raise ValueError("give points (with labels), a mask_input, or both")
    sparse, dense = pe.apply(pe_vars, points, labels, masks=dense_mask)
    image_pe = pe.apply(pe_vars, method=pe.get_dense_pe)
    return md.apply(
        {"params": heads["sam_mask_decoder"]}, features["image_embed"], image_pe, sparse, dense,
        multimask_output=multimask_output, repeat_image=True, high_res_features=features["high_res"],
    )


def postprocess_masks(
    low_res: jax.Array, orig_hw: tuple[int, int], *, threshold: float = MASK_THRESHOLD,
    max_hole_area: float = MAX_HOLE_AREA, max_sprinkle_area: float = MAX_SPRINKLE_AREA,
) -> jax.Array:
    """Low-res logits (..., 4g, 4g) -> original-size logits (..., H, W) after the official hole
    filling (and sprinkle removal, off by default) and a torch-style bilinear resize. Threshold
    them at `threshold` (> threshold) for the masks."""
    h, w = (int(s) for s in orig_hw)
    filled = fill_holes(low_res.astype(jnp.float32), max_hole_area, threshold, max_sprinkle_area)
    lead, (lh, lw) = filled.shape[:-2], filled.shape[-2:]
    up = resize_bilinear(filled.reshape((-1, lh, lw, 1)), (h, w))
    return up[..., 0].reshape(lead + (h, w))


def predict(
    cfg, heads: Any, features: dict[str, Any], points: Optional[jax.Array], labels: Optional[jax.Array],
    mask_input: Optional[jax.Array], *, orig_hw: tuple[int, int], multimask_output: bool,
) -> dict[str, jax.Array]:
    """`predict_low_res` + `postprocess_masks`: masks (B, K, H, W) bool, iou (B, K) float32 and
    low_res_logits (B, K, 4g, 4g) clamped to [-32, 32] (the official `_predict` outputs)."""
    out = predict_low_res(cfg, heads, features, points, labels, mask_input, multimask_output=multimask_output)
    low_res = out["masks"].astype(jnp.float32)
    logits = postprocess_masks(low_res, orig_hw)
    return {
        "masks": logits > MASK_THRESHOLD,
        "iou": out["iou_pred"].astype(jnp.float32),
        "low_res_logits": jnp.clip(low_res, -LOW_RES_LOGIT_LIMIT, LOW_RES_LOGIT_LIMIT),
    }
