"""Prediction writers: predictor outputs -> records in the official results format (image records
`{image_id, category_id, segmentation, bbox, score, area}`, video tracks `{video_id, category_id,
score, segmentations, bboxes, areas}`, one per object track; `VideoTrackWriter` builds them frame by
frame), masks as compressed RLE, and the JSON file they go to."""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from sam3_jax.formats.masks import encode_mask

__all__ = ["VideoTrackWriter", "image_prediction_records", "video_prediction_record", "write_predictions"]


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


def _track_frame(mask: np.ndarray, box_xywh: Optional[Any] = None) -> tuple:
    """One frame of a track: (compressed RLE, box xywh in pixels, area), or three Nones when the mask
    is empty (so pHOTA does not count the frame); the box defaults to the one around the mask."""
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return None, None, None
    if box_xywh is None:
        ys, xs = np.nonzero(m)
        box = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
    else:
        box = [float(v) for v in box_xywh]
    return encode_mask(m), box, int(m.sum())


def video_prediction_record(video_id: int, category_id: int, score: float, masks: np.ndarray,
                            boxes_xywh: Optional[np.ndarray] = None) -> dict:
    """One predicted track (T, H, W) bool -> an official VEval prediction record; frames with an
    empty mask get null mask, box and area (so pHOTA does not count them)."""
    masks = np.asarray(masks, dtype=bool)
    frames = [_track_frame(m, None if boxes_xywh is None else boxes_xywh[t]) for t, m in enumerate(masks)]
    return {"video_id": int(video_id), "category_id": int(category_id), "score": float(score),
            "segmentations": [f[0] for f in frames], "bboxes": [f[1] for f in frames],
            "areas": [f[2] for f in frames]}


class VideoTrackWriter:
    """Per-frame outputs of a video predictor for one (video, phrase) pair -> one VEval prediction
    record per object id (`records()`, in id order), the same records `video_prediction_record`
    makes. Masks are encoded as their frames come, so memory holds RLEs, not (T, H, W) masks.

        writer = VideoTrackWriter(video_id, category_id, num_frames)
        for frame_idx, out in predictor.propagate():
            writer.add_frame(frame_idx, out["obj_ids"], out["scores"], out["masks"], boxes_in_pixels)
        records = writer.records()
    """

    def __init__(self, video_id: int, category_id: int, num_frames: int):
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self.video_id, self.category_id, self.num_frames = int(video_id), int(category_id), int(num_frames)
        self._tracks: dict[int, dict] = {}

    def add_frame(self, frame_idx: int, obj_ids: Sequence[int], scores: Sequence[float], masks: np.ndarray,
                  boxes_xywh: Optional[np.ndarray] = None) -> None:
        """masks (N, H, W) bool of the objects `obj_ids` on frame `frame_idx`; boxes_xywh (N, 4) in
        pixels (default: the box around each mask). A track's score is the score given with its
        first frame (the video predictor reports each object's detection score at birth)."""
        if not 0 <= frame_idx < self.num_frames:
            raise ValueError(f"frame_idx {frame_idx} is out of range for {self.num_frames} frames")
        if not len(obj_ids) == len(scores) == len(masks) or (boxes_xywh is not None and len(boxes_xywh) != len(masks)):
            raise ValueError("obj_ids, scores, masks (and boxes) must have the same length")
        T = self.num_frames
        for k, oid in enumerate(obj_ids):
            rec = self._tracks.get(int(oid))
            if rec is None:
                rec = self._tracks[int(oid)] = {
                    "video_id": self.video_id, "category_id": self.category_id, "score": float(scores[k]),
                    "segmentations": [None] * T, "bboxes": [None] * T, "areas": [None] * T}
            seg, box, area = _track_frame(masks[k], None if boxes_xywh is None else boxes_xywh[k])
            rec["segmentations"][frame_idx], rec["bboxes"][frame_idx], rec["areas"][frame_idx] = seg, box, area

    def records(self) -> list[dict]:
        return [self._tracks[k] for k in sorted(self._tracks)]


def write_predictions(path: str, records: Iterable[dict]) -> None:
    """Writes a results list as JSON (atomically: a temporary file, then rename)."""
    records = list(records)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(records, f)
    os.replace(tmp, path)
