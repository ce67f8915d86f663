"""Scoring a whole prediction set against its ground truth, as `evaluate.py` reports it: every metric
under the official key names, per-threshold curves, counts, notes on what was not scored, timings.

    report = evaluate_image_set(["gold_a.json", "gold_b.json"], "preds.json")   # SA-Co/Gold-style images
    report = evaluate_video_set("veval_gt.json", "veval_preds.json")             # SA-Co/VEval videos

Image ground truth is SA-Co/Gold-style JSON (one `images[]` entry per image-phrase pair; several
files = several annotators, scored best-of like the official oracle); video ground truth is
SA-Co/VEval JSON (recognised by its `videos` list, `load_gt`). Bad input raises `EvalInputError`.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from typing import Any, Optional, Sequence

from sam3_jax.eval.input_checks import EvalInputError


def load_gt(gt_paths: Sequence[str]):
    """('video', VideoGT) for a VEval-style file (a `videos` list), else ('image', [ImageGT, ...])."""
    from sam3_jax.eval.image_inputs import load_image_gt, validate_image_gt
    from sam3_jax.eval.input_checks import load_json
    from sam3_jax.eval.video_inputs import validate_video_gt

    data = load_json(gt_paths[0], "ground-truth file")
    if isinstance(data, dict) and "videos" in data:
        if len(gt_paths) > 1:
            raise EvalInputError("video evaluation takes a single --gt file")
        return "video", validate_video_gt(data, str(gt_paths[0]))
    gts = [validate_image_gt(data, str(gt_paths[0]))]
    if len(gt_paths) > 1:
        gts += load_image_gt(list(gt_paths[1:]))
    return "image", gts


def gt_boxes_normalized(gt) -> bool:
    """Whether every GT box lies in [0, 1] (normalised xywh, as in SA-Co/Gold)."""
    boxes = [a["bbox"] for a in gt.anns if "bbox" in a]
    return bool(boxes) and all(0.0 <= v <= 1.0 + 1e-6 for b in boxes for v in (b[0], b[1], b[0] + b[2], b[1] + b[3]))


def evaluate_image_set(gt_paths: Sequence[str], preds: Any, iou_types: Sequence[str] = ("segm", "bbox"),
                       coco: bool = True, pred_name: str = "predictions", strict_masks: bool = False,
                       gts: Optional[list] = None) -> dict:
    """Scores predictions (a path or an already loaded list) against image GT file(s) (`gts`: the
    same files already loaded)."""
    from sam3_jax.eval.cgf1 import evaluate_image
    from sam3_jax.eval.coco import coco_ap
    from sam3_jax.eval.image_inputs import load_image_gt, validate_image_predictions
    from sam3_jax.eval.input_checks import load_json

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
    if "bbox" in iou_types and gt_boxes_normalized(gts[0]):
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
    from sam3_jax.eval.input_checks import load_json
    from sam3_jax.eval.video_inputs import load_video_gt, validate_video_predictions
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
