"""SA-Co/VEval video metrics, both as the official evaluators in `sam3/eval/saco_veval_evaluators.py`:
video cgF1 (`sam3_jax.eval.video_cgf1`, spatio-temporal masklet IoU, then the image recipe per
(video, phrase) pair) and phrase HOTA (`sam3_jax.eval.phota`). `evaluate_video` runs both for each IoU
type; each module's docstring gives its rules.
"""

from __future__ import annotations

from typing import Any, Sequence

from sam3_jax.eval.phota import evaluate_phota
from sam3_jax.eval.video_cgf1 import evaluate_video_cgf1
from sam3_jax.eval.video_inputs import VideoGT

__all__ = ["evaluate_phota", "evaluate_video", "evaluate_video_cgf1"]


def evaluate_video(gt: VideoGT, preds: Sequence[dict], iou_types: Sequence[str] = ("segm", "bbox")) -> dict[str, Any]:
    """Video cgF1 and pHOTA for each IoU type; "metrics" merges the official dataset-level keys."""
    out: dict[str, Any] = {"metrics": {}, "cgf1": {}, "phota": {}}
    for it in iou_types:
        c = evaluate_video_cgf1(gt, preds, it)
        h = evaluate_phota(gt, preds, it)
        out["cgf1"][it], out["phota"][it] = c, h
        out["metrics"].update(c["metrics"])
        out["metrics"].update(h["metrics"])
    return out
