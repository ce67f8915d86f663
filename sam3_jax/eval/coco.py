"""COCO box / mask AP through pycocotools' `COCOeval` (standard 12-number summary).

On SA-Co files every image-phrase pair is a COCO "image" and `category_id` is the placeholder 1,
so this is a phrase-level AP over the scored pairs (exhaustive ones only, first GT file). Areas of
SA-Co/Gold are normalised, so the small/medium/large splits are not meaningful there; AP, AP50,
AP75 and the ARs are.
"""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any, Optional, Sequence

import numpy as np

from sam3_jax.eval.image_inputs import ImageGT
from sam3_jax.eval.input_checks import EvalInputError

STAT_NAMES = ["AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
              "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large"]


def coco_ap(gt: ImageGT, preds: Sequence[dict], iou_type: str = "segm",
            image_ids: Optional[Sequence[Any]] = None, use_cats: bool = True) -> dict[str, float]:
    """AP of validated predictions against one GT file; `image_ids` restricts the scored images
    (default: the exhaustively annotated ones). Returns {"AP": ..., "AP50": ..., ...} (-1 = no data)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if iou_type not in ("segm", "bbox"):
        raise ValueError(f"iou_type must be 'segm' or 'bbox', got {iou_type!r}")
    if image_ids is None:
        image_ids = [i for i in gt.image_ids if gt.exhaustive(i)]
    keep = set(image_ids)
    data = {
        "images": [gt.images[i] for i in gt.image_ids],
        "categories": copy.deepcopy(gt.raw.get("categories", [])),
        "annotations": [],
    }
    for j, a in enumerate(gt.anns):
        a = dict(a)
        a.setdefault("iscrowd", 0)
        if iou_type == "segm":
            if gt.ann_seg[j] is None:
                raise EvalInputError(f"{gt.path}: annotation id {a['id']!r} has no 'segmentation' (needed for mask AP)")
            a["segmentation"] = gt.ann_seg[j]
        elif "bbox" not in a:
            raise EvalInputError(f"{gt.path}: annotation id {a['id']!r} has no 'bbox' (needed for box AP)")
        if "area" not in a:
            if iou_type == "segm":
                import pycocotools.mask as mask_utils

                a["area"] = float(mask_utils.area(a["segmentation"]))
            else:
                a["area"] = float(a["bbox"][2] * a["bbox"][3])
        data["annotations"].append(a)
    dets = []
    for p in preds:
        if p["image_id"] not in keep:
            continue
        d = {"image_id": p["image_id"], "category_id": p["category_id"], "score": float(p["score"])}
        if iou_type == "segm":
            d["segmentation"] = dict(p["segmentation"])
        else:
            d["bbox"] = list(p["bbox"]) if "bbox" in p else _mask_box(p["segmentation"])
        dets.append(d)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = data
        coco_gt.createIndex()
        if dets:
            coco_dt = coco_gt.loadRes(dets)
        else:  # pycocotools cannot load an empty results list
            coco_dt = COCO()
            coco_dt.dataset = {"images": data["images"], "categories": data["categories"], "annotations": []}
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.params.imgIds = sorted(keep, key=lambda x: (isinstance(x, str), x))
        ev.params.useCats = int(bool(use_cats))
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: float(v) for name, v in zip(STAT_NAMES, np.asarray(ev.stats, dtype=np.float64))}


def _mask_box(seg: dict) -> list[float]:
    import pycocotools.mask as mask_utils

    return [float(v) for v in mask_utils.toBbox(seg)]
