"""Overlay pictures of predictor outputs: masks tinted, boxes and scores drawn on the image; instance
prompts (clicks, a box) drawn on top."""

from __future__ import annotations

from typing import Sequence

import numpy as np

_PALETTE = np.array(
    [[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
     [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128], [220, 190, 255]],
    dtype=np.float32,
)


def overlay(image: np.ndarray, masks: np.ndarray, boxes: np.ndarray, scores: Sequence[float], *, alpha: float = 0.45,
            color_ids: Sequence[int] | None = None):
    """Draws masks (tinted), boxes and scores on an RGB uint8 image; returns a PIL image.
    color_ids: a palette index per mask (e.g. object ids, for colours stable over video frames);
    default: the mask's position."""
    from PIL import Image, ImageDraw

    canvas = np.asarray(image, dtype=np.float32).copy()
    ids = list(range(len(masks))) if color_ids is None else [int(c) for c in color_ids]
    for i, m in enumerate(np.asarray(masks, dtype=bool)):
        color = _PALETTE[ids[i] % len(_PALETTE)]
        canvas[m] = (1 - alpha) * canvas[m] + alpha * color
    pil = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for i, (box, score) in enumerate(zip(np.asarray(boxes), scores)):
        color = tuple(int(c) for c in _PALETTE[ids[i] % len(_PALETTE)])
        x0, y0, x1, y1 = (float(v) for v in box)
        draw.rectangle([x0, y0, x1, y1], outline=color, width=max(1, min(pil.size) // 200))
        draw.text((x0 + 2, y0 + 2), f"{score:.2f}", fill=color)
    return pil


def draw_prompts(pil, points=None, point_labels=None, box=None):
    """Draws instance prompts on a PIL image (in place, returned): clicks as discs (green positive,
    red negative, grey other labels) and the prompt box as a white rectangle."""
    from PIL import ImageDraw

    draw = ImageDraw.Draw(pil)
    r = max(2, min(pil.size) // 100)
    if box is not None:
        draw.rectangle([float(v) for v in box], outline=(255, 255, 255), width=max(1, min(pil.size) // 200))
    for (x, y), lab in zip(points if points is not None else [], point_labels if point_labels is not None else []):
        color = {1: (0, 200, 0), 0: (220, 0, 0)}.get(int(lab), (128, 128, 128))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=color, outline=(255, 255, 255))
    return pil
