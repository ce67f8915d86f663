"""Readers, validation and writers for SA-Co evaluation files.

* SA-Co/Gold (and Silver) image ground truth: COCO-like JSON where every `images[]` entry is one
  (image, noun phrase) pair with its own id, `text_input`, `height`, `width` and
  `is_instance_exhaustive`; `annotations[]` carry compressed RLE masks, normalised xywh boxes and
  `iscrowd`. One file per annotator (Gold has three).
* SA-Co/VEval video ground truth (YT-VIS-like): `videos[]`, `annotations[]` with per-frame
  `segmentations` / `bboxes` / `areas` (null where the object is absent) and `video_np_pairs[]`.
* Predictions in the official results format: images `[{image_id, category_id, segmentation, score,
  bbox?, area?}]`, videos `[{video_id, category_id, score, segmentations, bboxes, areas}]`.

Every problem in an input is reported as an `EvalInputError` (a `ValueError`) that names the file,
the record and what is wrong. Masks travel as COCO RLE (column-major runs, first run = zeros);
`rle_counts` decodes many compressed RLE strings at once with numpy.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import numbers
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

import numpy as np

__all__ = [
    "EvalInputError",
    "ImageGT",
    "VideoGT",
    "load_json",
    "load_image_gt",
    "load_image_predictions",
    "load_video_gt",
    "load_video_predictions",
    "validate_image_predictions",
    "validate_video_predictions",
    "encode_mask",
    "to_compressed_rle",
    "rle_counts",
    "image_prediction_records",
    "video_prediction_record",
    "write_predictions",
]


class EvalInputError(ValueError):
    """Bad evaluation input: malformed JSON, unknown ids, masks of the wrong size, ..."""


# --------------------------------------------------------------------------------------------- JSON
@contextlib.contextmanager
def gc_paused():
    """Pauses Python's cyclic garbage collector: reading and scoring create millions of small,
    acyclic objects, and collector passes over them cost more than the work itself."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def load_json(path: str, what: str = "file") -> Any:
    """Reads JSON, turning the usual failures into one-line `EvalInputError`s."""
    if not isinstance(path, (str, os.PathLike)):
        raise EvalInputError(f"{what}: expected a path, got {type(path).__name__}")
    if not os.path.isfile(path):
        raise EvalInputError(f"{what} not found: {path}")
    try:
        with open(path, "r", encoding="utf-8") as f, gc_paused():
            return json.load(f)
    except json.JSONDecodeError as e:
        raise EvalInputError(f"{what} {path} is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise EvalInputError(f"{what} {path} is not UTF-8 text: {e.reason}") from None


def _is_int(x: Any) -> bool:
    t = type(x)
    if t is int:
        return True
    return t is not bool and isinstance(x, numbers.Integral)


def _is_number(x: Any) -> bool:
    t = type(x)
    if t is float or t is int:
        return math.isfinite(x)
    return t is not bool and isinstance(x, numbers.Real) and math.isfinite(float(x))


def _check_id(x: Any, where: str) -> Any:
    t = type(x)
    if t is int or t is str:
        return x
    if _is_int(x):
        return int(x)
    if isinstance(x, str):
        return str(x)
    raise EvalInputError(f"{where}: id must be an integer or a string, got {x!r}")


def _box_ok(b: Any) -> bool:
    if type(b) is not list or len(b) != 4:
        return False
    x, y, w, h = b
    for v in b:
        t = type(v)
        if t is not float and t is not int and not _is_number(v):
            return False
    return math.isfinite(x + y + w + h) and w >= 0 and h >= 0


def _check_box(b: Any, where: str) -> list:
    if _box_ok(b):
        return b
    if isinstance(b, tuple) and _box_ok(list(b)):
        return list(b)
    if not isinstance(b, (list, tuple)) or len(b) != 4 or not all(_is_number(v) for v in b):
        raise EvalInputError(f"{where}: bbox must be 4 finite numbers [x, y, w, h], got {b!r}")
    if b[2] < 0 or b[3] < 0:
        raise EvalInputError(f"{where}: bbox {list(b)} has a negative width or height (expected [x, y, w, h])")
    return [float(v) for v in b]


# --------------------------------------------------------------------------------------------- RLE
def encode_mask(mask: np.ndarray) -> dict:
    """(H, W) bool mask -> compressed COCO RLE with a `str` counts field (JSON-ready)."""
    import pycocotools.mask as mask_utils

    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"encode_mask needs a 2D mask, got shape {m.shape}")
    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": rle["counts"].decode("ascii")}


def to_compressed_rle(seg: Any, h: int, w: int, where: str) -> dict:
    """Any COCO segmentation (compressed RLE, uncompressed RLE, polygons) -> compressed RLE of size
    (h, w), the conversions pycocotools' `annToRLE` applies. Raises on a wrong size or bad encoding."""
    if type(seg) is dict:
        counts = seg.get("counts")
        if type(counts) is str:
            size = seg.get("size")
            if type(size) is list and len(size) == 2 and type(size[0]) is int and type(size[1]) is int \
                    and size[0] == h and size[1] == w:
                return seg
    import pycocotools.mask as mask_utils

    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if (not isinstance(size, (list, tuple)) or len(size) != 2 or not all(_is_int(v) and v >= 0 for v in size)):
            raise EvalInputError(f"{where}: RLE 'size' must be [height, width], got {size!r}")
        if [int(size[0]), int(size[1])] != [int(h), int(w)]:
            raise EvalInputError(f"{where}: mask is {size[0]}x{size[1]} (HxW) but the image is {h}x{w}")
        if isinstance(counts, (str, bytes)):
            c = counts.decode("ascii") if isinstance(counts, bytes) else counts
            return {"size": [int(h), int(w)], "counts": c}
        if isinstance(counts, list):
            if not all(_is_int(v) and v >= 0 for v in counts):
                raise EvalInputError(f"{where}: uncompressed RLE counts must be non-negative integers")
            if sum(counts) != h * w:
                raise EvalInputError(
                    f"{where}: RLE counts sum to {sum(counts)} but the mask has {h}x{w}={h * w} pixels")
            rle = mask_utils.frPyObjects({"size": [int(h), int(w)], "counts": [int(v) for v in counts]}, h, w)
            return {"size": [int(h), int(w)], "counts": rle["counts"].decode("ascii")}
        raise EvalInputError(
            f"{where}: RLE 'counts' must be a string or a list of integers, got {type(counts).__name__}")
    if isinstance(seg, list):
        if not seg or not all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 and all(_is_number(v) for v in p)
                              for p in seg):
            raise EvalInputError(
                f"{where}: polygon segmentation must be a list of [x1, y1, x2, y2, ...] lists (>= 3 points)")
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
        return {"size": [int(h), int(w)], "counts": rle["counts"].decode("ascii")}
    raise EvalInputError(f"{where}: segmentation must be an RLE dict or a polygon list, got {type(seg).__name__}")


def rle_counts(rles: Sequence[dict], where: str = "mask",
               hw: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """Decodes many compressed RLEs (`counts` str/bytes) to their run lengths in one vectorised pass.

    Returns (counts int64 (K,), ptr int64 (len(rles)+1,)): mask i has runs counts[ptr[i]:ptr[i+1]],
    alternating background / foreground and starting with background (pycocotools' convention).
    The string format: each count is a little-endian sequence of 5-bit groups stored as chr(48 + v),
    bit 0x20 = "more groups follow", bit 0x10 of the last group = negative; from the third count on
    a count is stored as the difference to the count two places before it. Each decoded mask must
    cover exactly its h*w pixels (`hw`, default: from each RLE's size).
    """
    n = len(rles)
    strings = [r["counts"] for r in rles]
    if hw is None:
        hw = np.array([int(r["size"][0]) * int(r["size"][1]) for r in rles], dtype=np.int64)
    try:
        joined = "".join(strings).encode("ascii")
    except (TypeError, UnicodeEncodeError):
        strings = [c.encode("ascii", "replace") if isinstance(c, str) else bytes(c) for c in strings]
        joined = b"".join(strings)
    lens = np.fromiter(map(len, strings), dtype=np.int64, count=n)
    v = np.frombuffer(joined, dtype=np.uint8) - np.uint8(48)  # chars below '0' wrap around to > 63
    N = v.size
    if N and v.max() > 63:
        bad = int(np.searchsorted(np.cumsum(lens), int(np.flatnonzero(v > 63)[0]), side="right"))
        raise EvalInputError(f"{where} #{bad}: RLE counts string has characters outside the RLE alphabet")
    cont = (v & np.uint8(0x20)).astype(bool)  # another 5-bit group of the same count follows
    ends = np.cumsum(lens) - 1
    nz = lens > 0
    if N and cont[ends[nz]].any():
        bad = int(np.flatnonzero(nz)[cont[ends[nz]]][0])
        raise EvalInputError(f"{where} #{bad}: RLE counts string is truncated")
    if not cont.any():  # every count fits one character (the usual case): sign-extend 5 bits
        x = ((v << np.uint8(3)).view(np.int8) >> np.int8(3)).astype(np.int64)
        gcount = lens
    else:
        low = (v & np.uint8(0x1F)).astype(np.int64)
        gstart = np.flatnonzero(np.concatenate([[True], ~cont[:-1]]))
        glen = np.diff(np.concatenate([gstart, [N]]))
        L = int(glen.max())
        if L > 12:
            raise EvalInputError(f"{where}: RLE counts string holds a number that does not fit 64 bits")
        x = low[gstart]
        for k in range(1, L):
            sel = np.flatnonzero(glen > k)
            x[sel] |= low[gstart[sel] + k] << (5 * k)
        neg = np.flatnonzero(v[gstart + glen - 1] & np.uint8(0x10))
        x[neg] -= np.int64(1) << (5 * glen[neg])
        cl = np.concatenate([[0], np.cumsum(~cont)])
        starts = ends + 1 - lens
        gcount = cl[starts + lens] - cl[starts]
    ngroups = x.size
    ptr = np.concatenate([[0], np.cumsum(gcount)]).astype(np.int64)
    # Delta decoding, counts[m] = x[m] + counts[m - 2] for m > 2 within a mask: fold the sequence into
    # two columns (even / odd global index); down each column it is a running sum that restarts at
    # every mask's m = 0 element (alone), its m = 2 element and its m = 1 element.
    R = (ngroups + 1) // 2
    X = np.zeros(2 * R, dtype=np.int64)
    X[:ngroups] = x
    X = X.reshape(R, 2)
    C = np.cumsum(X, axis=0)
    ne = gcount > 0
    b, nk = ptr[:-1][ne], gcount[ne]
    seg = np.concatenate([b, (b + 1)[nk >= 2], (b + 2)[nk >= 3]])
    S = np.full(2 * R, -1, dtype=np.int64)
    S[seg] = seg >> 1
    first = np.maximum.accumulate(S.reshape(R, 2), axis=0)  # row where each element's run restarts
    counts = (C - np.take_along_axis(C - X, first, axis=0)).reshape(-1)[:ngroups]
    if counts.size and counts.min() < 0:
        bad = int(np.searchsorted(ptr, int(np.flatnonzero(counts < 0)[0]), side="right") - 1)
        raise EvalInputError(f"{where} #{bad}: RLE decodes to a negative run length")
    cs = np.concatenate([[0], np.cumsum(counts)])
    sums = cs[ptr[1:]] - cs[ptr[:-1]]
    if not np.array_equal(sums, hw):
        bad = int(np.flatnonzero(sums != hw)[0])
        raise EvalInputError(
            f"{where} #{bad}: RLE runs cover {int(sums[bad])} pixels but its size {rles[bad]['size']} "
            f"has {int(hw[bad])}"
        )
    return counts, ptr


def check_rles(rles: Sequence[dict], where: str = "mask") -> None:
    """Cheap checks of compressed RLE strings before they reach pycocotools' C code: the alphabet,
    and no count cut short. (Sizes are checked against the image on loading; whether the runs add
    up to height x width is only checked by `rle_counts`, i.e. the numpy backend.)"""
    strings = [r["counts"] for r in rles]
    try:
        joined = "".join(strings).encode("ascii")
    except (TypeError, UnicodeEncodeError):
        raise EvalInputError(f"{where}: RLE counts must be ASCII strings") from None
    lens = np.fromiter(map(len, strings), np.int64, len(strings))
    v = np.frombuffer(joined, dtype=np.uint8)
    if v.size == 0:
        return
    if v.min() < 48 or v.max() > 111:
        bad = int(np.searchsorted(np.cumsum(lens), int(np.flatnonzero((v < 48) | (v > 111))[0]), side="right"))
        raise EvalInputError(f"{where} #{bad}: RLE counts string has characters outside the RLE alphabet")
    ends = np.cumsum(lens) - 1
    cut = ((v[ends[lens > 0]] - 48) & 0x20) != 0
    if cut.any():
        bad = int(np.flatnonzero(lens > 0)[np.flatnonzero(cut)[0]])
        raise EvalInputError(f"{where} #{bad}: RLE counts string is truncated")


# --------------------------------------------------------------------------------------------- image GT
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
    with gc_paused():
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
        iid = _check_id(im["id"], f"{name}: images[{i}]")
        if iid in by_id:
            raise EvalInputError(f"{name}: images[{i}]: duplicate image id {iid!r}")
        h, w = im.get("height"), im.get("width")
        if type(h) is not int or type(w) is not int or h <= 0 or w <= 0:
            for k in ("height", "width"):
                if not _is_int(im.get(k)) or im[k] <= 0:
                    raise EvalInputError(
                        f"{name}: images[{i}] (id {iid!r}): '{k}' must be a positive integer, got {im.get(k)!r}")
        ex = im.get("is_instance_exhaustive", 1)
        if type(ex) is not int and not isinstance(ex, bool) and not _is_int(ex):
            raise EvalInputError(f"{name}: images[{i}] (id {iid!r}): 'is_instance_exhaustive' must be 0/1, got {ex!r}")
        by_id[iid] = im
        index[iid] = i
        order.append(iid)
        hs[i], ws[i] = int(h), int(w)
    cat_ids = []
    for i, c in enumerate(cats):
        if not isinstance(c, dict) or "id" not in c:
            raise EvalInputError(f"{name}: categories[{i}] must be an object with an 'id'")
        cat_ids.append(_check_id(c["id"], f"{name}: categories[{i}]"))
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
            aid = _check_id(aid, f"{name}: annotations[{j}]")
        if aid in ann_ids:
            raise EvalInputError(f"{name}: annotations[{j}]: duplicate annotation id {aid!r}")
        ann_ids.add(aid)
        k = index.get(iid)
        if k is None:
            iid = _check_id(iid, f"{name}: annotations[{j}]")
            raise EvalInputError(
                f"{name}: annotations[{j}] (id {aid!r}) refers to image_id {iid!r}, which is not in 'images'")
        crowd = a.get("iscrowd", 0)
        if type(crowd) is not int and not isinstance(crowd, bool) and not _is_int(crowd):
            raise EvalInputError(f"{name}: annotations[{j}] (id {aid!r}): 'iscrowd' must be 0/1, got {crowd!r}")
        if "bbox" in a and not _box_ok(a["bbox"]):
            _check_box(a["bbox"], f"{name}: annotations[{j}] (id {aid!r})")
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
    _check_rles_named([r for r in ann_seg if r is not None], [j for j, r in enumerate(ann_seg) if r is not None],
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


# --------------------------------------------------------------------------------------------- image predictions
def validate_image_predictions(preds: Any, gt: ImageGT, name: str = "predictions",
                               need_masks: bool = True, need_boxes: bool = False) -> list[dict]:
    """Checks a results list against the GT: known image ids, scores, category ids, mask sizes, boxes.
    Returns the records with segmentations normalised to compressed RLE (str counts); records that
    need no normalisation are returned as they are (not copied)."""
    with gc_paused():
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
            iid = _check_id(iid, f"{name}[{i}]")
            if iid not in images:
                unknown.append(iid)
                continue
            im = images[iid]
        if not ((type(score) is float or type(score) is int) and math.isfinite(score)) and not _is_number(score):
            raise EvalInputError(f"{name}[{i}] (image_id {iid!r}): score must be a finite number, got {score!r}")
        if type(cat) is not int and type(cat) is not str:
            _check_id(cat, f"{name}[{i}]")
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
            if not _box_ok(b):
                b2 = _check_box(b, f"{name}[{i}] (image_id {iid!r})")
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
    _check_rles_named([r for r in segs if r is not None], [i for i, r in enumerate(segs) if r is not None],
                      f"{name}: prediction")
    return out


def _check_rles_named(rles: list, index: list, what: str) -> None:
    try:
        check_rles(rles, what)
    except EvalInputError as e:
        msg = str(e)
        if " #" in msg:  # name the record instead of its position among the masks
            head, rest = msg.split(" #", 1)
            k, tail = rest.split(":", 1)
            raise EvalInputError(f"{head} [{index[int(k)]}]:{tail}") from None
        raise


def load_image_predictions(path: str, gt: ImageGT, need_masks: bool = True, need_boxes: bool = False) -> list[dict]:
    return validate_image_predictions(load_json(path, "predictions file"), gt, str(path), need_masks, need_boxes)


# --------------------------------------------------------------------------------------------- video GT
@dataclass
class VideoGT:
    """A validated SA-Co/VEval (YT-VIS-like) ground-truth file."""

    path: str
    videos: dict  # id -> video dict (+ "_T": number of frames)
    anns: list  # annotation dicts (file order), segmentations normalised to compressed RLE / None
    np_pairs: Optional[list]  # [(video_id, category_id)] from video_np_pairs, or None when absent
    raw: dict = field(default_factory=dict, repr=False)

    def num_frames(self, video_id) -> int:
        return self.videos[video_id]["_T"]


def _check_masklet(rec: dict, where: str, T: int, h: int, w: int, need_boxes: bool) -> None:
    segs = rec.get("segmentations")
    if not isinstance(segs, list):
        raise EvalInputError(f"{where} has no 'segmentations' list")
    if len(segs) != T:
        raise EvalInputError(f"{where} has {len(segs)} frames of segmentations but its video has {T}")
    rec["segmentations"] = [None if s is None else to_compressed_rle(s, h, w, f"{where} frame {t}")
                            for t, s in enumerate(segs)]
    boxes = rec.get("bboxes")
    if boxes is None:
        if need_boxes:
            raise EvalInputError(f"{where} has no 'bboxes' list")
    else:
        if not isinstance(boxes, list) or len(boxes) != T:
            raise EvalInputError(f"{where}: 'bboxes' must be a list of {T} boxes (null where absent)")
        rec["bboxes"] = [None if b is None else _check_box(b, f"{where} frame {t}") for t, b in enumerate(boxes)]
    areas = rec.get("areas")
    if areas is not None:
        if not isinstance(areas, list) or len(areas) != T or not all(a is None or _is_number(a) for a in areas):
            raise EvalInputError(f"{where}: 'areas' must be a list of {T} numbers (null where absent)")


def validate_video_gt(data: Any, name: str = "gt") -> VideoGT:
    if not isinstance(data, dict) or not isinstance(data.get("videos"), list):
        raise EvalInputError(f"{name}: video ground truth must be a JSON object with a 'videos' list")
    anns = data.get("annotations", [])
    if not isinstance(anns, list):
        raise EvalInputError(f"{name}: 'annotations' must be a list")
    videos: dict = {}
    for i, v in enumerate(data["videos"]):
        where = f"{name}: videos[{i}]"
        if not isinstance(v, dict) or not _is_int(v.get("id")):
            raise EvalInputError(f"{where} must be an object with an integer 'id'")
        vid = int(v["id"])
        if vid in videos:
            raise EvalInputError(f"{where}: duplicate video id {vid}")
        for k in ("height", "width"):
            if not _is_int(v.get(k)) or v[k] <= 0:
                raise EvalInputError(f"{where} (id {vid}): '{k}' must be a positive integer, got {v.get(k)!r}")
        fn = v.get("file_names")
        if isinstance(fn, list) and fn:
            T = len(fn)
        elif _is_int(v.get("length")) and v["length"] > 0:
            T = int(v["length"])
        else:
            raise EvalInputError(f"{where} (id {vid}): needs 'file_names' or a positive 'length'")
        videos[vid] = dict(v, _T=T)
    ids = set()
    out = []
    for j, a in enumerate(anns):
        where = f"{name}: annotations[{j}]"
        if not isinstance(a, dict):
            raise EvalInputError(f"{where} must be an object")
        for k in ("id", "video_id", "category_id"):
            if not _is_int(a.get(k)):
                raise EvalInputError(f"{where}: '{k}' must be an integer, got {a.get(k)!r}")
        if a["id"] in ids:
            raise EvalInputError(f"{where}: duplicate annotation id {a['id']}")
        ids.add(a["id"])
        if a["video_id"] not in videos:
            raise EvalInputError(f"{where} (id {a['id']}) refers to video_id {a['video_id']}, which is not in 'videos'")
        v = videos[a["video_id"]]
        rec = dict(a)
        _check_masklet(rec, f"{where} (id {a['id']})", v["_T"], int(a.get("height", v["height"])),
                       int(a.get("width", v["width"])), need_boxes=False)
        out.append(rec)
    pairs = None
    if "video_np_pairs" in data:
        if not isinstance(data["video_np_pairs"], list):
            raise EvalInputError(f"{name}: 'video_np_pairs' must be a list")
        pairs = []
        for j, p in enumerate(data["video_np_pairs"]):
            if not isinstance(p, dict) or not _is_int(p.get("video_id")) or not _is_int(p.get("category_id")):
                raise EvalInputError(f"{name}: video_np_pairs[{j}] needs integer 'video_id' and 'category_id'")
            if p["video_id"] not in videos:
                raise EvalInputError(f"{name}: video_np_pairs[{j}] refers to video_id {p['video_id']}, not in 'videos'")
            pairs.append((int(p["video_id"]), int(p["category_id"])))
    return VideoGT(path=name, videos=videos, anns=out, np_pairs=pairs, raw=data)


def load_video_gt(path: str) -> VideoGT:
    return validate_video_gt(load_json(path, "ground-truth file"), str(path))


def validate_video_predictions(preds: Any, gt: VideoGT, name: str = "predictions") -> list[dict]:
    """Known video ids, one score per track, T frames of masks (null = absent), boxes and areas
    (derived from the masks when missing)."""
    import pycocotools.mask as mask_utils

    if not isinstance(preds, list):
        raise EvalInputError(f"{name}: video predictions must be a JSON list of "
                             "{video_id, category_id, score, segmentations} records")
    out = []
    unknown = []
    for i, p in enumerate(preds):
        where = f"{name}[{i}]"
        if not isinstance(p, dict):
            raise EvalInputError(f"{where} must be an object")
        for k in ("video_id", "category_id"):
            if not _is_int(p.get(k)):
                raise EvalInputError(f"{where}: '{k}' must be an integer, got {p.get(k)!r}")
        if p["video_id"] not in gt.videos:
            unknown.append(p["video_id"])
            continue
        if not _is_number(p.get("score")):
            raise EvalInputError(f"{where}: score must be a finite number (one per track), got {p.get('score')!r}")
        v = gt.videos[p["video_id"]]
        rec = dict(p)
        _check_masklet(rec, f"{where} (video_id {p['video_id']})", v["_T"], v["height"], v["width"], need_boxes=False)
        if rec.get("bboxes") is None:
            rec["bboxes"] = [None if s is None else [float(x) for x in mask_utils.toBbox(s)]
                             for s in rec["segmentations"]]
        if rec.get("areas") is None:
            rec["areas"] = [None if s is None else int(mask_utils.area(s)) for s in rec["segmentations"]]
        for t, (s, b, a) in enumerate(zip(rec["segmentations"], rec["bboxes"], rec["areas"])):
            if s is None and b is not None and a not in (None, 0) and any(x != 0 for x in b):
                raise EvalInputError(f"{where} frame {t}: has a box and an area but no mask (use null for all three)")
        out.append(rec)
    if unknown:
        uniq = list(dict.fromkeys(unknown))
        raise EvalInputError(
            f"{name}: {len(unknown)} prediction(s) refer to video ids not in the ground truth: "
            f"{uniq[:5]}{' ...' if len(uniq) > 5 else ''}"
        )
    return out


def load_video_predictions(path: str, gt: VideoGT) -> list[dict]:
    return validate_video_predictions(load_json(path, "predictions file"), gt, str(path))


# --------------------------------------------------------------------------------------------- writers
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
