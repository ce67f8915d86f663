"""`evaluate.py`: score saved predictions, or run the image predictor over a set and score it.

    evaluate.py --predictions preds.json --gt gold_a.json [--gt gold_b.json --gt gold_c.json] --out OUT/
    evaluate.py --predictions veval_preds.json --gt veval_gt.json --out OUT/          # video: cgF1 + pHOTA
    evaluate.py --checkpoint CONVERTED/ --gt gt.json --images IMAGE_DIR/ --out OUT/   # predict, then score

Image ground truth is SA-Co/Gold-style JSON (one `images[]` entry per image-phrase pair; several
files = several annotators, scored best-of like the official oracle); video ground truth is
SA-Co/VEval JSON (recognised by its `videos` list). Prints a table and, with --out, writes
OUT/report.json (every metric under the official key names, per-threshold curves, counts) and
OUT/report.png (F1 per IoU threshold, score histogram); in checkpoint mode also
OUT/predictions.json in the official results format. Exit status 1 on bad input.
"""

from __future__ import annotations

import os
import sys
import time
from collections import OrderedDict
from typing import Any, Optional, Sequence

from absl import app, flags, logging

from sam3_jax.eval.io import EvalInputError

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


# --------------------------------------------------------------------------------------------- scoring
def _split_paths(paths: Sequence[str]) -> list[str]:
    out = []
    for p in paths:
        out += [q for q in p.split(",") if q]
    return out


def load_gt(gt_paths: Sequence[str]):
    """('video', VideoGT) for a VEval-style file (a `videos` list), else ('image', [ImageGT, ...])."""
    from sam3_jax.eval.io import load_json, load_image_gt, validate_image_gt, validate_video_gt

    data = load_json(gt_paths[0], "ground-truth file")
    if isinstance(data, dict) and "videos" in data:
        if len(gt_paths) > 1:
            raise EvalInputError("video evaluation takes a single --gt file")
        return "video", validate_video_gt(data, str(gt_paths[0]))
    gts = [validate_image_gt(data, str(gt_paths[0]))]
    if len(gt_paths) > 1:
        gts += load_image_gt(list(gt_paths[1:]))
    return "image", gts


def _gt_boxes_normalized(gt) -> bool:
    boxes = [a["bbox"] for a in gt.anns if "bbox" in a]
    return bool(boxes) and all(0.0 <= v <= 1.0 + 1e-6 for b in boxes for v in (b[0], b[1], b[0] + b[2], b[1] + b[3]))


def evaluate_image_set(gt_paths: Sequence[str], preds: Any, iou_types: Sequence[str] = ("segm", "bbox"),
                       coco: bool = True, pred_name: str = "predictions", strict_masks: bool = False,
                       gts: Optional[list] = None) -> dict:
    """Scores predictions (a path or an already loaded list) against image GT file(s) (`gts`: the
    same files already loaded)."""
    from sam3_jax.eval.cgf1 import evaluate_image
    from sam3_jax.eval.coco import coco_ap
    from sam3_jax.eval.io import load_image_gt, load_json, validate_image_predictions

    iou_types = list(iou_types)
    for it in iou_types:
        if it not in ("segm", "bbox"):
            raise EvalInputError(f"unknown IoU type {it!r} (use segm and/or bbox)")
    t0 = time.time()
    if gts is None:
        gts = load_image_gt(list(gt_paths))
    raw = load_json(preds, "predictions file") if isinstance(preds, (str, os.PathLike)) else preds
    name = str(preds) if isinstance(preds, (str, os.PathLike)) else pred_name
    records = validate_image_predictions(raw, gts[0], name, need_masks="segm" in iou_types,
                                         need_boxes="bbox" in iou_types)
    for g in gts[1:]:
        missing = {r["image_id"] for r in records} - set(g.images)
        if missing:
            raise EvalInputError(f"{name}: image ids {sorted(missing, key=str)[:5]} are not in ground truth {g.path}")
    t_load = time.time() - t0
    results: dict[str, Any] = {"cgf1": OrderedDict(), "coco_ap": OrderedDict(), "metrics": OrderedDict()}
    t0 = time.time()
    per_pair = None
    for it in iou_types:
        r = evaluate_image(gts, records, it, backend="numpy" if strict_masks else "pycocotools")
        if per_pair is None:
            per_pair = r.pop("pairs")
        else:
            r.pop("pairs")
        results["cgf1"][it] = r
        results["metrics"].update(r["metrics"])
        results["num_pairs"] = r["num_pairs"]
        results["num_annotators"] = r["num_annotators"]
    t_cgf1 = time.time() - t0
    t0 = time.time()
    if coco:
        for it in iou_types:
            results["coco_ap"][it] = coco_ap(gts[0], records, it, image_ids=per_pair["image_id"])
            for k, v in results["coco_ap"][it].items():
                results["metrics"][f"coco_{it}_{k}"] = v
    t_coco = time.time() - t0

    notes = []
    scored = set(per_pair["image_id"])
    skipped = sum(1 for r in records if r["image_id"] not in scored)
    if skipped:
        notes.append(f"{skipped} prediction(s) on pairs that are not exhaustively annotated were ignored")
    cats = set(gts[0].cat_ids)
    other = sum(1 for r in records if r["category_id"] not in cats)
    if other:
        notes.append(f"{other} prediction(s) have a category_id missing from the GT categories and are not scored "
                     "(as in the official scorer)")
    for g in gts:
        if g.dropped_anns:
            notes.append(f"{g.path}: {g.dropped_anns} annotation(s) have a category_id missing from its categories "
                         "and are not scored (as in the official scorer)")
    pos = sum(1 for n in per_pair["num_gt"] if n > 0)
    if pos == len(per_pair["num_gt"]):
        notes.append("every scored pair has GT (no negative pairs): IL_MCC and cgF1 are 0 by construction")
    if "bbox" in iou_types and _gt_boxes_normalized(gts[0]):
        big = sum(1 for r in records
                  if "bbox" in r and max(r["bbox"][0] + r["bbox"][2], r["bbox"][1] + r["bbox"][3]) > 1.5)
        if big:
            notes.append(f"GT boxes are normalised xywh but {big} prediction box(es) exceed 1.5: pixel boxes? "
                         "(box metrics compare them as given)")
    if len(gts) == 1 and "gold" in os.path.basename(str(gt_paths[0])).lower():
        notes.append("a SA-Co/Gold file was given alone: the official protocol scores against all three annotator "
                     "files (pass --gt three times)")
    return {
        "task": "image",
        "inputs": {"gt": [str(p) for p in gt_paths], "predictions": name, "iou_types": iou_types},
        "num_predictions": len(records),
        "results": results,
        "per_pair": per_pair,
        "scores": [float(r["score"]) for r in records if r["image_id"] in scored],
        "notes": notes,
        "timing_s": {"load": t_load, "cgf1": t_cgf1, "coco_ap": t_coco},
    }


def evaluate_video_set(gt_path: str, preds: Any, iou_types: Sequence[str] = ("segm", "bbox"),
                       gt: Any = None) -> dict:
    from sam3_jax.eval.io import load_json, load_video_gt, validate_video_predictions
    from sam3_jax.eval.video import evaluate_video

    t0 = time.time()
    if gt is None:
        gt = load_video_gt(gt_path)
    raw = load_json(preds, "predictions file") if isinstance(preds, (str, os.PathLike)) else preds
    name = str(preds) if isinstance(preds, (str, os.PathLike)) else "predictions"
    records = validate_video_predictions(raw, gt, name)
    t_load = time.time() - t0
    t0 = time.time()
    r = evaluate_video(gt, records, list(iou_types))
    notes = []
    if gt.np_pairs is None:
        notes.append("the GT has no 'video_np_pairs': IL_MCC and cgF1 need negative pairs and are not reported "
                     "(as in the official evaluator); positive micro F1 and pHOTA are")
    first = next(iter(r["cgf1"].values()))
    res = {"metrics": r["metrics"], "cgf1": r["cgf1"], "phota": r["phota"], "num_pairs": first["num_pairs"]}
    return {
        "task": "video",
        "inputs": {"gt": [str(gt_path)], "predictions": name, "iou_types": list(iou_types)},
        "num_predictions": len(records),
        "results": res,
        "scores": [float(p["score"]) for p in records],
        "notes": notes,
        "timing_s": {"load": t_load, "metrics": time.time() - t0},
    }


# --------------------------------------------------------------------------------------------- prediction
def predict_image_set(checkpoint: str, gt_path: str, images_dir: str, *, batch_size: int = 16,
                      score_threshold: float = 0.3, box_format: str = "auto", progress: bool = True,
                      gt: Any = None) -> list[dict]:
    """Runs Sam3ImagePredictor over the exhaustive pairs of a GT file: each image is encoded once and
    its phrases are prompted in batches. Returns official result records."""
    import numpy as np
    from PIL import Image
    from tqdm import tqdm

    from sam3_jax import Sam3ImagePredictor
    from sam3_jax.eval.io import image_prediction_records, load_image_gt

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
    normalize = _gt_boxes_normalized(gt) if box_format == "auto" else box_format == "normalized"
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
                from sam3_jax.eval.io import write_predictions

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
