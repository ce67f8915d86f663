"""`evaluate.py` (also `python -m sam3_jax.eval`): score saved predictions, or run the image predictor
over a set and score it.

    evaluate.py --predictions preds.json --gt gold_a.json [--gt gold_b.json --gt gold_c.json] --out OUT/
    evaluate.py --predictions veval_preds.json --gt veval_gt.json --out OUT/          # video: cgF1 + pHOTA
    evaluate.py --checkpoint CONVERTED/ --gt gt.json --images IMAGE_DIR/ --out OUT/   # predict, then score

Image ground truth is SA-Co/Gold-style JSON (one `images[]` entry per image-phrase pair; several
files = several annotators, scored best-of like the official oracle); video ground truth is
SA-Co/VEval JSON (recognised by its `videos` list). Prints a table and, with --out, writes
OUT/report.json (every metric under the official key names, per-threshold curves, counts) and
OUT/report.png (F1 per IoU threshold, score histogram); in checkpoint mode also
OUT/predictions.json in the official results format. Exit status 1 on bad input.

An entry module: checkpoint mode runs the predictor (`sam3_jax.predict`), which the evaluation
package itself never imports.
"""

from __future__ import annotations

import os
import sys
import time
from collections import OrderedDict
from typing import Any, Optional, Sequence

from absl import app, flags, logging

from sam3_jax.eval.input_checks import EvalInputError
from sam3_jax.eval.score_sets import evaluate_image_set, evaluate_video_set, gt_boxes_normalized, load_gt

_PRED = flags.DEFINE_string("predictions", None, "Predictions JSON in the official results format.")
_GT = flags.DEFINE_multi_string("gt", [], "Ground-truth JSON; repeat (or comma-separate) for several annotators.")
_CKPT = flags.DEFINE_string("checkpoint", None,
                            "Converted checkpoint directory: predict with Sam3ImagePredictor first.")
_IMAGES = flags.DEFINE_string("images", None, "Image root for --checkpoint (GT `file_name`s are relative to it).")
_OUT = flags.DEFINE_string("out", None, "Output directory for report.json, report.png (and predictions.json).")
_IOU = flags.DEFINE_list("iou_types", ["segm", "bbox"], "IoU types to score: segm, bbox.")
_COCO = flags.DEFINE_bool("coco_ap", True, "Also report COCO AP (pycocotools) for image sets.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Text prompts per predict_batch call (checkpoint mode).")
_THR = flags.DEFINE_float("score_threshold", 0.3, "Keep predicted queries with score above this when dumping "
                          "(checkpoint mode; cgF1 itself uses >= 0.5, the official eval configs dump at 0.3).")
_BOXES = flags.DEFINE_enum("box_format", "auto", ["auto", "normalized", "pixels"],
                           "Box convention of written predictions: 'auto' follows the GT (normalised xywh when "
                           "every GT box lies in [0, 1], as in SA-Co/Gold).")
_STRICT = flags.DEFINE_bool("strict_masks", False,
                            "Decode every mask's runs with numpy and check they cover exactly height x width pixels, "
                            "and compute mask IoU from the runs (slower). By default RLE strings and sizes are checked "
                            "and IoU comes from pycocotools, as in the official scorer.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar in checkpoint mode.")


# --------------------------------------------------------------------------------------------- paths
def _split_paths(paths: Sequence[str]) -> list[str]:
    out = []
    for p in paths:
        out += [q for q in p.split(",") if q]
    return out


# --------------------------------------------------------------------------------------------- prediction
def predict_image_set(checkpoint: str, gt_path: str, images_dir: str, *, batch_size: int = 16,
                      score_threshold: float = 0.3, box_format: str = "auto", progress: bool = True,
                      gt: Any = None) -> list[dict]:
    """Runs Sam3ImagePredictor over the exhaustive pairs of a GT file: each image is encoded once and
    its phrases are prompted in batches. Returns official result records."""
    import numpy as np
    from PIL import Image
    from tqdm import tqdm

    from sam3_jax.eval.image_inputs import load_image_gt
    from sam3_jax.eval.prediction_writers import image_prediction_records
    from sam3_jax.predict.predictor import Sam3ImagePredictor

    if gt is None:
        gt = load_image_gt([gt_path])[0]
    if not os.path.isdir(images_dir):
        raise EvalInputError(f"image directory not found: {images_dir}")
    if batch_size < 1:
        raise EvalInputError(f"--batch_size must be >= 1, got {batch_size}")
    by_file: "OrderedDict[str, list]" = OrderedDict()
    for iid in gt.image_ids:
        if not gt.exhaustive(iid):
            continue
        im = gt.images[iid]
        if not isinstance(im.get("file_name"), str) or not im["file_name"]:
            raise EvalInputError(f"{gt.path}: image id {iid!r} has no 'file_name'")
        text = im.get("text_input")
        if not isinstance(text, str) or not text.strip():
            raise EvalInputError(f"{gt.path}: image id {iid!r} has no 'text_input' phrase")
        by_file.setdefault(im["file_name"], []).append(iid)
    normalize = gt_boxes_normalized(gt) if box_format == "auto" else box_format == "normalized"
    for fn in by_file:
        p = os.path.join(images_dir, fn)
        if not os.path.isfile(p):
            raise EvalInputError(f"image file not found: {p} (file_name {fn!r} of {gt.path})")
    if not os.path.isdir(checkpoint):
        raise EvalInputError(f"checkpoint directory not found: {checkpoint}")
    predictor = Sam3ImagePredictor.from_checkpoint(checkpoint)
    records: list[dict] = []
    total = sum(len(v) for v in by_file.values())
    with tqdm(total=total, unit="pair", disable=not progress, desc="predict", file=sys.stderr) as bar:
        for fn, ids in by_file.items():
            path = os.path.join(images_dir, fn)
            try:
                image = np.asarray(Image.open(path).convert("RGB"))
            except OSError as e:
                raise EvalInputError(f"cannot read image {path}: {e}") from None
            h, w = image.shape[:2]
            for iid in ids:
                if gt.hw(iid) != (h, w):
                    raise EvalInputError(
                        f"image {path} is {h}x{w} (HxW) but {gt.path} says {gt.hw(iid)} for id {iid!r}")
            predictor.set_image(image)
            for k in range(0, len(ids), batch_size):
                chunk = ids[k:k + batch_size]
                outs = predictor.predict_batch([gt.images[i]["text_input"] for i in chunk], threshold=score_threshold)
                for iid, out in zip(chunk, outs):
                    records += image_prediction_records(iid, out["masks"], out["boxes"], out["scores"], h, w,
                                                        normalize_boxes=normalize)
                bar.update(len(chunk))
    return records


# --------------------------------------------------------------------------------------------- CLI
def write_outputs(report: dict, out_dir: Optional[str]) -> None:
    from sam3_jax.eval.report import format_table, save_figure, write_json

    print(format_table(report))
    if not out_dir:
        return
    os.makedirs(out_dir, exist_ok=True)
    scores = report.pop("scores", [])
    title = f"{report['task']}: {os.path.basename(report['inputs']['predictions'])}"
    report["figure_backend"] = save_figure(os.path.join(out_dir, "report.png"), report, scores, title=title)
    write_json(os.path.join(out_dir, "report.json"), report)
    print(f"wrote {os.path.join(out_dir, 'report.json')} and {os.path.join(out_dir, 'report.png')}")


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    gt_paths = _split_paths(_GT.value)
    if not gt_paths:
        raise app.UsageError("--gt is required")
    if bool(_PRED.value) == bool(_CKPT.value):
        raise app.UsageError("give exactly one of --predictions (score a file) or --checkpoint (predict, then score)")
    if _CKPT.value and not _IMAGES.value:
        raise app.UsageError("--checkpoint needs --images (the image directory)")
    if _CKPT.value and not _OUT.value:
        raise app.UsageError("--checkpoint needs --out (where predictions.json is written)")
    try:
        task, gt = load_gt(gt_paths)
        if task == "video":
            if _CKPT.value:
                raise EvalInputError("--checkpoint runs the image predictor; video ground truth needs --predictions")
            report = evaluate_video_set(gt_paths[0], _PRED.value, _IOU.value, gt=gt)
        else:
            preds = _PRED.value
            if _CKPT.value:
                from sam3_jax.eval.prediction_writers import write_predictions

                t0 = time.time()
                records = predict_image_set(_CKPT.value, gt_paths[0], _IMAGES.value, batch_size=_BATCH.value,
                                            score_threshold=_THR.value, box_format=_BOXES.value,
                                            progress=_PROGRESS.value, gt=gt[0])
                preds = os.path.join(_OUT.value, "predictions.json")
                write_predictions(preds, records)
                print(f"wrote {len(records)} predictions to {preds} ({time.time() - t0:.1f} s)")
            report = evaluate_image_set(gt_paths, preds, _IOU.value, coco=_COCO.value, strict_masks=_STRICT.value,
                                        gts=gt)
            if _CKPT.value:
                report["inputs"].update(checkpoint=_CKPT.value, images=_IMAGES.value, score_threshold=_THR.value)
        write_outputs(report, _OUT.value)
    except (EvalInputError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
