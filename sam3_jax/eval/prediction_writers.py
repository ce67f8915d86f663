"""Prediction writers: predictor outputs -> records in the official results format (image records
`{image_id, category_id, segmentation, bbox, score, area}`, video tracks `{video_id, category_id,
score, segmentations, bboxes, areas}`), masks as compressed RLE, and the JSON file they go to."""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Optional

import numpy as np

from sam3_jax.formats.masks import encode_mask

__all__ = ["image_prediction_records", "video_prediction_record", "write_predictions"]


def image_prediction_records(image_id: Any, masks: Optional[np.ndarray], boxes_xyxy: np.ndarray,
                             scores: np.ndarray, height: int, width: int, *, category_id: int = 1,
                             normalize_boxes: bool = True, round_digits: Optional[int] = 5) -> list[dict]:
    """Predictor output for one (image, phrase) pair -> official result records.

    `segmentation` is compressed RLE (str counts), `bbox` xywh (normalised by the image size like
    SA-Co/Gold when `normalize_boxes`, else pixels), `area` normalised like the official dumper,
    scores and boxes rounded to `round_digits` decimals as the official `PredictionDumper` does."""
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(boxes) != len(scores) or (masks is not None and len(masks) != len(scores)):
        raise ValueError("masks, boxes and scores must have the same length")
    recs = []
    for k in range(len(scores)):
        x0, y0, x1, y1 = boxes[k]
        b = [x0, y0, x1 - x0, y1 - y0]
        if normalize_boxes:
            b = [b[0] / width, b[1] / height, b[2] / width, b[3] / height]
        s = float(scores[k])
        if round_digits is not None:
            b = [round(float(v), round_digits) for v in b]
            s = round(s, round_digits)
        rec = {"image_id": image_id, "category_id": category_id, "bbox": [float(v) for v in b], "score": s}
        if masks is not None:
            m = np.asarray(masks[k], dtype=bool)
            if m.shape != (height, width):
                raise ValueError(f"mask {k} has shape {m.shape}, expected {(height, width)}")
            rec["segmentation"] = encode_mask(m)
            rec["area"] = float(m.sum()) / float(height * width)
        recs.append(rec)
    return recs


def video_prediction_record(video_id: int, category_id: int, score: float, masks: np.ndarray,
                            boxes_xywh: Optional[np.ndarray] = None) -> dict:
    """One predicted track (T, H, W) bool -> an official VEval prediction record; frames with an
    empty mask get null mask, box and area (so pHOTA does not count them)."""
    masks = np.asarray(masks, dtype=bool)
    segs, boxes, areas = [], [], []
    for t, m in enumerate(masks):
        if not m.any():
            segs.append(None), boxes.append(None), areas.append(None)
            continue
        segs.append(encode_mask(m))
        areas.append(int(m.sum()))
        if boxes_xywh is not None:
            boxes.append([float(v) for v in boxes_xywh[t]])
        else:
            ys, xs = np.nonzero(m)
            boxes.append([float(xs.min()), float(ys.min()),
                          float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)])
    return {"video_id": int(video_id), "category_id": int(category_id), "score": float(score),
            "segmentations": segs, "bboxes": boxes, "areas": areas}


def write_predictions(path: str, records: Iterable[dict]) -> None:
    """Writes a results list as JSON (atomically: a temporary file, then rename)."""
    records = list(records)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(records, f)
    os.replace(tmp, path)
