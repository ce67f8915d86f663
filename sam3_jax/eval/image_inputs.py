"""Image evaluation inputs: SA-Co/Gold-style ground truth and predictions in the official results
format, read and validated.

* Ground truth (SA-Co/Gold and Silver): COCO-like JSON where every `images[]` entry is one (image,
  noun phrase) pair with its own id, `text_input`, `height`, `width` and `is_instance_exhaustive`;
  `annotations[]` carry compressed RLE masks, normalised xywh boxes and `iscrowd`. One file per
  annotator (Gold has three).
* Predictions: `[{image_id, category_id, segmentation, score, bbox?, area?}]`; segmentations are
  normalised to compressed RLE (`sam3_jax.formats.masks`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from sam3_jax.eval.input_checks import (
    EvalInputError,
    box_ok,
    check_box,
    check_id,
    check_rles_named,
    gc_paused,
    load_json,
    mask_errors_as_input_errors,
)
from sam3_jax.formats.masks import to_compressed_rle
from sam3_jax.formats.scalars import is_int, is_number

__all__ = [
    "ImageGT",
    "validate_image_gt",
    "load_image_gt",
    "validate_image_predictions",
    "load_image_predictions",
]


# --------------------------------------------------------------------------------------------- ground truth
@dataclass
class ImageGT:
    """One validated SA-Co/COCO image ground-truth file. Every `images[]` entry is a datapoint."""

    path: str
    image_ids: list  # file order
    images: dict  # id -> image dict
    cat_ids: list  # sorted category ids of `categories[]`
    anns: list  # annotation dicts, file order
    anns_by_image: dict  # id -> list of indices into anns (file order)
    ann_image: np.ndarray  # (n_anns,) index of each annotation's image in image_ids
    ann_crowd: np.ndarray  # (n_anns,) bool
    ann_cat: list  # category id per annotation
    ann_seg: list  # per annotation: compressed RLE (str counts) of the image size, or None
    heights: np.ndarray  # per image (image_ids order)
    widths: np.ndarray
    dropped_anns: int = 0  # annotations whose category_id is not in categories (the official scorer skips them)
    raw: dict = field(default_factory=dict, repr=False)

    def exhaustive(self, image_id) -> bool:
        return bool(self.images[image_id].get("is_instance_exhaustive", 1))

    def hw(self, image_id) -> tuple[int, int]:
        im = self.images[image_id]
        return int(im["height"]), int(im["width"])


def validate_image_gt(data: Any, name: str = "gt") -> ImageGT:
    with gc_paused(), mask_errors_as_input_errors():
        return _validate_image_gt(data, name)


def _validate_image_gt(data: Any, name: str) -> ImageGT:
    if not isinstance(data, dict):
        raise EvalInputError(f"{name}: ground truth must be a JSON object with 'images', 'annotations', 'categories'")
    images = data.get("images")
    if not isinstance(images, list):
        raise EvalInputError(f"{name}: ground truth has no 'images' list")
    cats = data.get("categories")
    if not isinstance(cats, list):
        raise EvalInputError(
            f"{name}: ground truth has no 'categories' list (SA-Co files carry a placeholder such as "
            "[{'id': 1, 'name': 'object'}]; annotations and predictions of other categories are not scored)"
        )
    anns = data.get("annotations", [])
    if not isinstance(anns, list):
        raise EvalInputError(f"{name}: 'annotations' must be a list")
    by_id: dict = {}
    index: dict = {}
    order = []
    hs = np.empty(len(images), dtype=np.int64)
    ws = np.empty(len(images), dtype=np.int64)
    for i, im in enumerate(images):
        if type(im) is not dict or "id" not in im:
            raise EvalInputError(f"{name}: images[{i}] must be an object with an 'id'")
        iid = check_id(im["id"], f"{name}: images[{i}]")
        if iid in by_id:
            raise EvalInputError(f"{name}: images[{i}]: duplicate image id {iid!r}")
        h, w = im.get("height"), im.get("width")
        if type(h) is not int or type(w) is not int or h <= 0 or w <= 0:
            for k in ("height", "width"):
                if not is_int(im.get(k)) or im[k] <= 0:
                    raise EvalInputError(
                        f"{name}: images[{i}] (id {iid!r}): '{k}' must be a positive integer, got {im.get(k)!r}")
        ex = im.get("is_instance_exhaustive", 1)
        if type(ex) is not int and not isinstance(ex, bool) and not is_int(ex):
            raise EvalInputError(f"{name}: images[{i}] (id {iid!r}): 'is_instance_exhaustive' must be 0/1, got {ex!r}")
        by_id[iid] = im
        index[iid] = i
        order.append(iid)
        hs[i], ws[i] = int(h), int(w)
    cat_ids = []
    for i, c in enumerate(cats):
        if not isinstance(c, dict) or "id" not in c:
            raise EvalInputError(f"{name}: categories[{i}] must be an object with an 'id'")
        cat_ids.append(check_id(c["id"], f"{name}: categories[{i}]"))
    try:
        cat_ids = sorted(set(cat_ids))
    except TypeError:
        raise EvalInputError(f"{name}: category ids mix integers and strings") from None
    catset = set(cat_ids)
    ann_ids = set()
    by_img: dict = {iid: [] for iid in order}
    n = len(anns)
    ann_image = np.empty(n, dtype=np.int64)
    ann_crowd = np.zeros(n, dtype=bool)
    ann_cat = [None] * n
    ann_seg = [None] * n
    dropped = 0
    for j, a in enumerate(anns):
        if type(a) is not dict:
            raise EvalInputError(f"{name}: annotations[{j}] must be an object")
        try:
            aid, iid, cat = a["id"], a["image_id"], a["category_id"]
        except KeyError as e:
            raise EvalInputError(f"{name}: annotations[{j}] has no {e.args[0]!r}") from None
        if type(aid) is not int:
            aid = check_id(aid, f"{name}: annotations[{j}]")
        if aid in ann_ids:
            raise EvalInputError(f"{name}: annotations[{j}]: duplicate annotation id {aid!r}")
        ann_ids.add(aid)
        k = index.get(iid)
        if k is None:
            iid = check_id(iid, f"{name}: annotations[{j}]")
            raise EvalInputError(
                f"{name}: annotations[{j}] (id {aid!r}) refers to image_id {iid!r}, which is not in 'images'")
        crowd = a.get("iscrowd", 0)
        if type(crowd) is not int and not isinstance(crowd, bool) and not is_int(crowd):
            raise EvalInputError(f"{name}: annotations[{j}] (id {aid!r}): 'iscrowd' must be 0/1, got {crowd!r}")
        if "bbox" in a and not box_ok(a["bbox"]):
            check_box(a["bbox"], f"{name}: annotations[{j}] (id {aid!r})")
        if cat not in catset:
            dropped += 1
        seg = a.get("segmentation")
        if seg is not None:
            h, w = images[k]["height"], images[k]["width"]
            if not (type(seg) is dict and type(seg.get("counts")) is str and seg.get("size") == [h, w]):
                seg = to_compressed_rle(seg, h, w, f"{name}: annotations[{j}] (id {aid!r}, image_id {iid!r})")
            ann_seg[j] = seg
        ann_image[j] = k
        ann_crowd[j] = bool(crowd)
        ann_cat[j] = cat
        by_img[iid].append(j)
    check_rles_named([r for r in ann_seg if r is not None], [j for j, r in enumerate(ann_seg) if r is not None],
                      f"{name}: annotations")
    return ImageGT(path=name, image_ids=order, images=by_id, cat_ids=cat_ids, anns=anns, anns_by_image=by_img,
                   ann_image=ann_image, ann_crowd=ann_crowd, ann_cat=ann_cat, ann_seg=ann_seg, heights=hs, widths=ws,
                   dropped_anns=dropped, raw=data)


def load_image_gt(paths: Sequence[str] | str) -> list[ImageGT]:
    """One or more annotator files (Gold: a, b, c). All must list the same datapoints."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise EvalInputError("no ground-truth file given")
    gts = [validate_image_gt(load_json(p, "ground-truth file"), str(p)) for p in paths]
    return gts


# --------------------------------------------------------------------------------------------- predictions
def validate_image_predictions(preds: Any, gt: ImageGT, name: str = "predictions",
                               need_masks: bool = True, need_boxes: bool = False) -> list[dict]:
    """Checks a results list against the GT: known image ids, scores, category ids, mask sizes, boxes.
    Returns the records with segmentations normalised to compressed RLE (str counts); records that
    need no normalisation are returned as they are (not copied)."""
    with gc_paused(), mask_errors_as_input_errors():
        return _validate_image_predictions(preds, gt, name, need_masks, need_boxes)


def _validate_image_predictions(preds: Any, gt: ImageGT, name: str, need_masks: bool, need_boxes: bool) -> list[dict]:
    if isinstance(preds, dict) and isinstance(preds.get("annotations"), list):
        raise EvalInputError(
            f"{name}: expected a JSON list of prediction records, got an object with 'annotations' "
            "(is this a ground-truth file?)"
        )
    if not isinstance(preds, list):
        raise EvalInputError(
            f"{name}: predictions must be a JSON list of {{image_id, category_id, segmentation, score}} records")
    images = gt.images
    out = []
    unknown = []
    for i, p in enumerate(preds):
        if type(p) is not dict:
            raise EvalInputError(f"{name}[{i}] must be an object")
        try:
            iid, score, cat = p["image_id"], p["score"], p["category_id"]
        except KeyError as e:
            raise EvalInputError(f"{name}[{i}] has no {e.args[0]!r}") from None
        im = images.get(iid) if type(iid) is int or type(iid) is str else None
        if im is None:
            iid = check_id(iid, f"{name}[{i}]")
            if iid not in images:
                unknown.append(iid)
                continue
            im = images[iid]
        if not ((type(score) is float or type(score) is int) and math.isfinite(score)) and not is_number(score):
            raise EvalInputError(f"{name}[{i}] (image_id {iid!r}): score must be a finite number, got {score!r}")
        if type(cat) is not int and type(cat) is not str:
            check_id(cat, f"{name}[{i}]")
        rec = p
        seg = p.get("segmentation")
        if seg is not None:
            h, w = im["height"], im["width"]
            s2 = to_compressed_rle(seg, h, w, f"{name}[{i}] (image_id {iid!r})")
            if s2 is not seg:
                rec = dict(p, segmentation=s2)
        elif need_masks:
            raise EvalInputError(f"{name}[{i}] (image_id {iid!r}) has no 'segmentation' (needed for mask metrics)")
        b = p.get("bbox")
        if b is not None and not (type(b) is list and len(b) == 0):
            if not box_ok(b):
                b2 = check_box(b, f"{name}[{i}] (image_id {iid!r})")
                rec = dict(rec, bbox=b2)
        elif "bbox" in p:
            rec = {k: v for k, v in rec.items() if k != "bbox"}
        if rec.get("segmentation") is None and rec.get("bbox") is None and need_boxes:
            raise EvalInputError(f"{name}[{i}] (image_id {iid!r}) has neither 'bbox' nor 'segmentation'")
        if iid is not p["image_id"]:
            rec = dict(rec, image_id=iid)
        out.append(rec)
    if unknown:
        uniq = list(dict.fromkeys(unknown))
        raise EvalInputError(
            f"{name}: {len(unknown)} prediction(s) refer to image ids not in the ground truth "
            f"{gt.path}: {uniq[:5]}{' ...' if len(uniq) > 5 else ''}"
        )
    segs = [r.get("segmentation") for r in out]
    check_rles_named([r for r in segs if r is not None], [i for i, r in enumerate(segs) if r is not None],
                      f"{name}: prediction")
    return out


def load_image_predictions(path: str, gt: ImageGT, need_masks: bool = True, need_boxes: bool = False) -> list[dict]:
    return validate_image_predictions(load_json(path, "predictions file"), gt, str(path), need_masks, need_boxes)
