"""Agreement of two detectors' outputs on the same image and prompt, query by query: how far a
reduced-precision path (bf16) lands from the official float32 model.

Both outputs hold every query (threshold 0), in query order, as the official `Sam3Processor`
and `Sam3ImagePredictor` return them: masks (Q, H, W) bool, boxes (Q, 4) xyxy pixels, scores (Q,).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def official_detections(model, cfg, photo: np.ndarray, texts: Sequence[str]) -> list[dict[str, np.ndarray]]:
    """The official `Sam3Processor` at threshold 0 (every query) for each text prompt."""
    from PIL import Image
    from sam3.model.sam3_image_processor import Sam3Processor

    from sam3_jax.parity.oracle import cuda_to_cpu

    out = []
    with cuda_to_cpu():
        proc = Sam3Processor(model, resolution=int(cfg.image_size), device="cpu", confidence_threshold=0.0)
        state = proc.set_image(Image.fromarray(photo))
        for t in texts:
            s = proc.set_text_prompt(t, state)
            out.append({"masks": s["masks"][:, 0].numpy(), "boxes": s["boxes"].numpy(),
                        "scores": s["scores"].numpy()})
    return out


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row IoU of (Q, H, W) bool masks; 1 where both are empty."""
    n = int(np.prod(a.shape[1:]))
    a, b = a.reshape(len(a), n), b.reshape(len(b), n)
    inter = np.count_nonzero(a & b, axis=1)
    union = np.count_nonzero(a | b, axis=1)
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def agreement(ref: dict[str, np.ndarray], ours: dict[str, np.ndarray], threshold: float,
              margin: float = 0.01) -> dict[str, Any]:
    """Query-by-query comparison of two threshold-0 outputs (every query on both sides).

    Returns: queries; score_abs_max; box_err_px_max / box_err_px_mean (max abs corner error in
    pixels per query) and mask_iou_min / mask_iou_mean over every query; at `threshold`:
    kept_ref / kept_ours and keep_flips (queries kept by one side only), and keep_flips_clear:
    the flips of queries whose official score lies more than `margin` from the threshold (random
    weights put many scores within a few 1e-3 of each other, so a flip near the threshold says
    little; one far from it is a real disagreement)."""
    if ref["scores"].shape != ours["scores"].shape:
        raise ValueError(f"{ref['scores'].shape} queries against {ours['scores'].shape}: compare threshold-0 outputs")
    k_ref, k_ours = ref["scores"] > threshold, ours["scores"] > threshold
    clear = np.abs(ref["scores"].astype(np.float64) - threshold) > margin
    box_err = np.abs(ref["boxes"].astype(np.float64) - ours["boxes"].astype(np.float64)).max(axis=1)
    iou = mask_iou(ref["masks"], ours["masks"])
    return {
        "queries": int(len(k_ref)),
        "threshold": float(threshold),
        "score_abs_max": float(np.abs(ref["scores"].astype(np.float64) - ours["scores"]).max()),
        "box_err_px_max": float(box_err.max()),
        "box_err_px_mean": float(box_err.mean()),
        "mask_iou_min": float(iou.min()),
        "mask_iou_mean": float(iou.mean()),
        "kept_ref": int(k_ref.sum()),
        "kept_ours": int(k_ours.sum()),
        "keep_flips": int((k_ref ^ k_ours).sum()),
        "keep_flips_clear": int(((k_ref ^ k_ours) & clear).sum()),
    }
