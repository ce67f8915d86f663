"""SA-Co evaluation: image cgF1 / IL_MCC / positive micro F1 (equal to the official
`sam3/eval/cgf1_eval.py`), COCO AP via pycocotools, video cgF1 and pHOTA, readers and writers for
the SA-Co/Gold, SA-Co/VEval and official prediction formats, and the report behind `evaluate.py`
(`python -m sam3_jax.eval`, the same command).

    from sam3_jax.eval import load_image_gt, load_image_predictions, evaluate_image
    gts = load_image_gt(["gold_a.json", "gold_b.json", "gold_c.json"])
    preds = load_image_predictions("preds.json", gts[0])
    evaluate_image(gts, preds, "segm")["metrics"]["cgF1_eval_segm_cgF1"]
"""

from sam3_jax.eval.cgf1 import IOU_THRESHOLDS, accumulate, evaluate_image, summarize
from sam3_jax.eval.coco import coco_ap
from sam3_jax.eval.image_inputs import load_image_gt, load_image_predictions
from sam3_jax.eval.input_checks import EvalInputError
from sam3_jax.eval.prediction_writers import (
    VideoTrackWriter,
    image_prediction_records,
    video_prediction_record,
    write_predictions,
)
from sam3_jax.eval.video import evaluate_phota, evaluate_video, evaluate_video_cgf1
from sam3_jax.eval.video_inputs import load_video_gt, load_video_predictions

__all__ = [
    "IOU_THRESHOLDS",
    "EvalInputError",
    "VideoTrackWriter",
    "accumulate",
    "coco_ap",
    "evaluate_image",
    "evaluate_phota",
    "evaluate_video",
    "evaluate_video_cgf1",
    "image_prediction_records",
    "load_image_gt",
    "load_image_predictions",
    "load_video_gt",
    "load_video_predictions",
    "summarize",
    "video_prediction_record",
    "write_predictions",
]
