"""SA-Co/VEval video metrics: video cgF1 and phrase HOTA (pHOTA).

Both follow the official evaluators in `sam3/eval/saco_veval_evaluators.py`:

* **video cgF1** (`VideoCGF1Evaluator`): every (video_id, category_id) pair seen in predictions, in
  GT annotations or (when present) in `video_np_pairs` is one datapoint, in sorted order with the
  negative pairs appended. A predicted track is kept when its score >= 0.5; crowd GT masklets are
  dropped. The IoU of a predicted and a GT masklet is spatio-temporal, sum_t |p_t & g_t| /
  sum_t |p_t | g_t| (1 when both are empty on every frame); for boxes it is the same ratio of
  summed box intersections and unions, computed in float32 as the official code does. Then the
  image recipe: one Hungarian matching per pair, TP/FP/FN at IoU 0.50:0.05:0.95, positive micro
  F1, IL_MCC over pairs, cgF1 = pmF1 x IL_MCC.
* **pHOTA** (`VideoPhraseHotaEvaluator` + the vendored TrackEval HOTA): tracks with score > 0.5
  (strict) are kept and their frames with area 0 or an empty/null box are dropped; every
  (video, phrase) pair with GT or kept predictions is one single-class sequence; crowd GT counts as
  ordinary GT. Per sequence HOTA at alpha = 0.05..0.95 (global alignment from soft IoU counts,
  per-frame Hungarian on alignment x similarity), sequences combined by summing TP/FN/FP and
  TP-weighting AssA/AssRe/AssPr/LocA, each field averaged over alpha.

Video cgF1 lives in `sam3_jax.eval.video_cgf1`, pHOTA in `sam3_jax.eval.phota`; `evaluate_video` runs both.
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
