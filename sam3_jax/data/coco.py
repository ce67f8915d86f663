"""Sources over real annotation files: COCO-format instances and SA-Co/Gold-style pairs.

Both return the example format of `sam3_jax.data.synthetic` (one (image, noun phrase) pair per index),
at the image's own resolution: `image` (H, W, 3) uint8, `masks` (M, H, W) bool, boxes cxcywh
normalised; the pipeline (`sam3_jax.data.pipeline`) resizes to the model resolution. Extra keys:
`image_id`, `category_id` (COCO; -1 for SA-Co), `file_name`.

* `CocoSource`: categories are the noun phrases (underscores become spaces). For every image, each
  category with at least one non-crowd instance gives a positive pair; `negatives_per_image` absent
  categories (sampled deterministically, or all of them with None) give negative pairs: COCO is
  exhaustive for its categories, so an absent category is truly absent. Crowd annotations are left
  out of the targets and make the pair non-exhaustive (`is_exhaustive` False); a category present only
  as crowd is neither positive nor negative. Images without annotations contribute negatives only.
* `SacoGoldSource`: every `images[]` entry of a SA-Co/Gold file is a pair (`text_input`,
  `is_instance_exhaustive`); a pair without annotations is a negative. Read through
  `sam3_jax.eval.io.load_image_gt`, so the formats agree with evaluation.

Pairs with more than M non-crowd instances keep the M largest and become non-exhaustive.

Bad data: `on_bad_data="raise"` raises `DataError` naming the file and the record; `"skip"` logs a
warning, counts the problem in `source.skipped` (reason -> count, in the process that saw it) and
leaves the image (COCO) or pair (SA-Co) out. Problems in the JSON and missing image files are found
when the source is built; a corrupt image (or one whose size disagrees with the JSON) only when it is
read: with "skip", `__getitem__` then returns None, which Grain drops from the stream. A file that is
not valid JSON, or lacks the required lists, always raises.

`write_saco_gold` turns examples (e.g. the synthetic val / test splits) into a SA-Co/Gold JSON file
(and optionally PNG images), so that the evaluation code scores them exactly like real data.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import numbers
import os
import warnings
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from sam3_jax.eval import io as eval_io

__all__ = ["DataError", "CocoSource", "SacoGoldSource", "load_rgb", "write_saco_gold", "BAD_DATA_MODES"]

log = logging.getLogger(__name__)
BAD_DATA_MODES = ("raise", "skip")
_BOX_TOL = 1.0  # pixels a COCO box may stick out of its image (rounding in the annotation tools)
_NORM_TOL = 1e-3  # the same for normalised SA-Co boxes
_MAX_LOGGED = 20


class DataError(ValueError):
    """Bad training data: the message names the file and the record."""


def _is_int(x: Any) -> bool:
    return not isinstance(x, bool) and isinstance(x, numbers.Integral)


def _is_number(x: Any) -> bool:
    return not isinstance(x, bool) and isinstance(x, numbers.Real) and math.isfinite(float(x))


def load_rgb(path: str) -> np.ndarray:
    """Image file -> (H, W, 3) uint8. Grayscale, palette, RGBA and 16-bit images are converted
    (16-bit / float by scaling the maximum to 255). Raises DataError for a missing or unreadable file."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise DataError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                a = np.asarray(im, dtype=np.float64)
                a = a / max(float(a.max()), 1.0) * 255.0
                g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
                return np.ascontiguousarray(np.repeat(g[..., None], 3, axis=2))
            return np.ascontiguousarray(np.asarray(im.convert("RGB")))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"corrupt or unreadable image file {path}: {e}") from None


def _decode_rles(rles: Sequence[dict], h: int, w: int) -> np.ndarray:
    import pycocotools.mask as mask_utils

    if not rles:
        return np.zeros((0, h, w), bool)
    enc = [{"size": [h, w], "counts": r["counts"].encode("ascii") if isinstance(r["counts"], str) else r["counts"]}
           for r in rles]
    with warnings.catch_warnings():  # pycocotools' RLEs object and numpy 2's __array__(copy=) protocol
        warnings.simplefilter("ignore", DeprecationWarning)
        out = mask_utils.decode(enc)
    return np.moveaxis(out.astype(bool), -1, 0)


def _pad_example(image: np.ndarray, text: str, boxes_xywh_norm: np.ndarray, masks: np.ndarray,
                 is_exhaustive: bool, M: int, N: int, pair_id: Any, extra: dict) -> dict:
    """Builds the padded example dict (boxes already normalised xywh, masks (K, H, W))."""
    h, w = image.shape[:2]
    k = len(boxes_xywh_norm)
    boxes = np.zeros((M, 4), np.float32)
    mk = np.zeros((M, h, w), bool)
    valid = np.zeros(M, bool)
    if k:
        b = np.asarray(boxes_xywh_norm, np.float32)
        boxes[:k] = np.stack([b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2, b[:, 2], b[:, 3]], 1)
        mk[:k] = masks
        valid[:k] = True
    return {
        "image": image,
        "text": text,
        "boxes": boxes,
        "masks": mk,
        "valid": valid,
        "mask_valid": valid.copy(),
        "prompt_boxes": np.zeros((N, 4), np.float32),
        "prompt_labels": np.zeros(N, np.int32),
        "prompt_mask": np.ones(N, bool),
        "is_exhaustive": np.bool_(is_exhaustive),
        "held_out": np.bool_(False),
        "pair_id": np.int64(pair_id),
        "height": np.int32(h),
        "width": np.int32(w),
        "num_instances": np.int32(k),
        "query_type": np.int32(0),
        "negative_kind": np.int32(0 if k else 2),
        "concept": text,
        **extra,
    }


def _keep_largest(areas: Sequence[float], M: int) -> list[int]:
    order = sorted(range(len(areas)), key=lambda i: -float(areas[i]))
    return sorted(order[:M])


def _add_exemplar(ex: dict, rng: np.random.Generator, p: float) -> dict:
    """With probability p, the box of one GT instance becomes a positive exemplar prompt."""
    k = int(ex["num_instances"])
    if k and p > 0 and rng.random() < p:
        j = int(rng.integers(k))
        ex["prompt_boxes"][0] = ex["boxes"][j]
        ex["prompt_labels"][0] = 1
        ex["prompt_mask"][0] = False
        ex["query_type"] = np.int32(1)
    return ex


class _BadData:
    """The raise / skip switch with counting and bounded logging."""

    def __init__(self, mode: str, owner: str):
        if mode not in BAD_DATA_MODES:
            raise ValueError(f"on_bad_data must be one of {BAD_DATA_MODES}, got {mode!r}")
        self.mode = mode
        self.owner = owner
        self.counts: collections.Counter = collections.Counter()

    def __call__(self, reason: str, message: str) -> None:
        if self.mode == "raise":
            raise DataError(message)
        self.counts[reason] += 1
        n = sum(self.counts.values())
        if n <= _MAX_LOGGED:
            log.warning("%s: skipping bad data (%s): %s", self.owner, reason, message)
        elif n == _MAX_LOGGED + 1:
            log.warning("%s: more bad data skipped; counts in .skipped", self.owner)


# --------------------------------------------------------------------------------------------- COCO
def _record_example(src: Any, rec: dict, index: int, described_by: str, where: str, image_id, category_id):
    """An indexed (image, phrase) record of a COCO / SA-Co source -> example dict, or None (counted,
    logged) when the image is unreadable or not the size the annotation file gives, per `on_bad_data`."""
    try:
        image = load_rgb(rec["image_path"])
        if image.shape[:2] != (rec["height"], rec["width"]):
            raise DataError(f"image {rec['image_path']} is {image.shape[0]}x{image.shape[1]} (HxW) but "
                            f"{described_by} says {rec['height']}x{rec['width']}{where}")
    except DataError as e:
        src._bad("unreadable image", str(e))
        return None
    masks = _decode_rles(rec["rles"], rec["height"], rec["width"])
    ex = _pad_example(image, rec["text"], rec["boxes_xywh"], masks, rec["is_exhaustive"], src.max_instances,
                      src.max_prompt_boxes, rec["pair_id"],
                      {"image_id": image_id, "category_id": category_id, "file_name": rec["file_name"]})
    return _add_exemplar(ex, np.random.default_rng([src.seed, index, 0xE7]), src.p_exemplar)


class CocoSource:
    """(image, category) pairs of a COCO-format instances file; see the module docstring.

    Args:
      annotation_file: instances JSON (images, annotations, categories).
      image_dir: folder the `file_name`s are relative to.
      max_instances (M), max_prompt_boxes (N): padding sizes.
      negatives_per_image: absent categories per image used as negative pairs (None = all).
      seed: negative sampling and exemplar seed.
      p_exemplar: probability that a positive pair also gets one GT box as a positive exemplar.
      on_bad_data: "raise" or "skip".
      check_files: look for every image file when the source is built.
    """

    def __init__(self, annotation_file: str, image_dir: str, *, max_instances: int = 32, max_prompt_boxes: int = 4,
                 negatives_per_image: Optional[int] = 2, seed: int = 0, p_exemplar: float = 0.0,
                 on_bad_data: str = "raise", check_files: bool = True):
        self.annotation_file = str(annotation_file)
        self.image_dir = str(image_dir)
        self.max_instances, self.max_prompt_boxes = int(max_instances), int(max_prompt_boxes)
        self.negatives_per_image = None if negatives_per_image is None else int(negatives_per_image)
        self.seed, self.p_exemplar = int(seed), float(p_exemplar)
        self.on_bad_data = on_bad_data
        self._bad = _BadData(on_bad_data, f"CocoSource({self.annotation_file})")
        self._index(check_files)

    @property
    def skipped(self) -> dict:
        return dict(self._bad.counts)

    def _index(self, check_files: bool) -> None:
        af = self.annotation_file
        try:
            data = eval_io.load_json(af, "annotation file")
        except eval_io.EvalInputError as e:
            raise DataError(str(e)) from None
        if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
                or not isinstance(data.get("categories"), list):
            raise DataError(f"{af}: a COCO instances file needs 'images' and 'categories' lists")
        anns = data.get("annotations")
        if not isinstance(anns, list):
            raise DataError(f"{af}: has no 'annotations' list")
        if not anns:
            self._bad("empty annotation list", f"{af}: the 'annotations' list is empty")
        cats: dict[int, str] = {}
        for i, c in enumerate(data["categories"]):
            if not isinstance(c, dict) or not _is_int(c.get("id")) or not isinstance(c.get("name"), str):
                raise DataError(f"{af}: categories[{i}] needs an integer 'id' and a string 'name', got {c!r}")
            cats[int(c["id"])] = c["name"].replace("_", " ").strip()
        if not cats:
            raise DataError(f"{af}: 'categories' is empty")
        images: dict[int, dict] = {}
        for i, im in enumerate(data["images"]):
            where = f"{af}: images[{i}]"
            if not isinstance(im, dict) or not _is_int(im.get("id")) or not isinstance(im.get("file_name"), str):
                raise DataError(f"{where} needs an integer 'id' and a string 'file_name', got {im!r}")
            for k in ("height", "width"):
                if not _is_int(im.get(k)) or im[k] <= 0:
                    raise DataError(f"{where} ({im['file_name']}): '{k}' must be a positive integer, got {im.get(k)!r}")
            if int(im["id"]) in images:
                raise DataError(f"{where}: duplicate image id {im['id']}")
            images[int(im["id"])] = im
        bad_images: set[int] = set()
        by_image: dict[int, list] = collections.defaultdict(list)
        for j, a in enumerate(anns):
            where = f"{af}: annotations[{j}]"
            if not isinstance(a, dict) or not _is_int(a.get("image_id")):
                raise DataError(f"{where} must be an object with an integer 'image_id'")
            iid = int(a["image_id"])
            aid = a.get("id", j)
            if iid not in images:
                self._bad("unknown image", f"{where} (id {aid}) refers to image_id {iid}, which is not in 'images'")
                continue
            im = images[iid]
            where = f"{where} (id {aid}, image {im['file_name']})"
            problem = self._check_ann(a, im, cats)
            if problem:
                reason, msg = problem
                self._bad(reason, f"{where}: {msg}")
                bad_images.add(iid)
                continue
            by_image[iid].append(a)
        self.categories = cats
        cat_ids = sorted(cats)
        self._images: list[dict] = []
        self._anns: list[list] = []
        pairs: list[tuple[int, int]] = []  # (image slot, category id)
        for iid in sorted(images):
            if iid in bad_images:
                continue
            im = images[iid]
            path = os.path.join(self.image_dir, im["file_name"])
            if check_files and not os.path.isfile(path):
                self._bad("missing image file", f"{af}: images entry id {iid}: image file not found: {path}")
                continue
            slot = len(self._images)
            self._images.append(im)
            a_list = by_image.get(iid, [])
            self._anns.append(a_list)
            present = {int(a["category_id"]) for a in a_list if not a.get("iscrowd", 0)}
            crowd_only = {int(a["category_id"]) for a in a_list} - present
            for c in sorted(present):
                pairs.append((slot, c))
            absent = [c for c in cat_ids if c not in present and c not in crowd_only]
            if self.negatives_per_image is not None and len(absent) > self.negatives_per_image:
                rng = np.random.default_rng([self.seed, iid, 0xC0C0])
                absent = sorted(rng.choice(absent, self.negatives_per_image, replace=False).tolist())
            for c in absent:
                pairs.append((slot, int(c)))
        self._pairs = np.array(pairs, dtype=np.int64).reshape(-1, 2)

    @staticmethod
    def _check_ann(a: dict, im: dict, cats: dict) -> Optional[tuple[str, str]]:
        if not _is_int(a.get("category_id")) or int(a["category_id"]) not in cats:
            return "unknown category", f"category_id {a.get('category_id')!r} is not in 'categories'"
        b = a.get("bbox")
        if not isinstance(b, (list, tuple)) or len(b) != 4 or not all(_is_number(v) for v in b):
            return "bad box", f"bbox must be 4 finite numbers [x, y, w, h], got {b!r}"
        x, y, w, h = (float(v) for v in b)
        W, H = im["width"], im["height"]
        if w <= 0 or h <= 0 or x < -_BOX_TOL or y < -_BOX_TOL or x + w > W + _BOX_TOL or y + h > H + _BOX_TOL:
            return "box outside the image", f"bbox {list(b)} is empty or outside the {W}x{H} image"
        seg = a.get("segmentation")
        if seg is None or (isinstance(seg, (list, dict)) and len(seg) == 0):
            return "empty segmentation", "has no segmentation (empty polygon list / RLE)"
        return None

    # -- protocol
    def __len__(self) -> int:
        return len(self._pairs)

    def __repr__(self) -> str:
        return (f"CocoSource(annotation_file={self.annotation_file!r}, image_dir={self.image_dir!r}, "
                f"max_instances={self.max_instances}, negatives_per_image={self.negatives_per_image}, "
                f"seed={self.seed}, on_bad_data={self.on_bad_data!r})")

    def record(self, index: int) -> dict:
        """The pair without decoding the image: image path, phrase, compressed RLEs (image size),
        normalised xywh boxes, exhaustiveness, ids. Raises DataError for a bad segmentation."""
        slot, cat = (int(v) for v in self._pairs[index])
        im = self._images[slot]
        h, w = int(im["height"]), int(im["width"])
        anns = [a for a in self._anns[slot] if int(a["category_id"]) == cat]
        crowd = any(a.get("iscrowd", 0) for a in anns)
        anns = [a for a in anns if not a.get("iscrowd", 0)]
        exhaustive = not crowd
        if len(anns) > self.max_instances:
            keep = _keep_largest([a.get("area", a["bbox"][2] * a["bbox"][3]) for a in anns], self.max_instances)
            anns = [anns[i] for i in keep]
            exhaustive = False
        rles, boxes = [], []
        for a in anns:
            where = f"{self.annotation_file}: annotation id {a.get('id')} (image {im['file_name']})"
            try:
                rles.append(eval_io.to_compressed_rle(a["segmentation"], h, w, where))
            except eval_io.EvalInputError as e:
                raise DataError(str(e)) from None
            x, y, bw, bh = (float(v) for v in a["bbox"])
            x0, y0 = min(max(x, 0.0), w), min(max(y, 0.0), h)
            x1, y1 = min(max(x + bw, 0.0), w), min(max(y + bh, 0.0), h)
            boxes.append([x0 / w, y0 / h, (x1 - x0) / w, (y1 - y0) / h])
        return {"image_path": os.path.join(self.image_dir, im["file_name"]), "file_name": im["file_name"],
                "text": self.categories[cat], "rles": rles, "boxes_xywh": np.array(boxes, np.float32).reshape(-1, 4),
                "is_exhaustive": exhaustive, "pair_id": int(index), "image_id": int(im["id"]), "category_id": cat,
                "height": h, "width": w}

    def __getitem__(self, index: int) -> Optional[dict]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {self!r}")
        try:
            rec = self.record(index)
        except DataError as e:
            self._bad("bad segmentation", str(e))
            return None
        return _record_example(self, rec, index, self.annotation_file, "",
                               np.int64(rec["image_id"]), np.int64(rec["category_id"]))


# --------------------------------------------------------------------------------------------- SA-Co/Gold
class SacoGoldSource:
    """(image, noun phrase) pairs of a SA-Co/Gold-style file (one `images[]` entry per pair).

    Args:
      gt_file: the JSON file (for Gold, one annotator's file, e.g. `..._merged_a_release_test.json`).
      image_dir: folder the `file_name`s are relative to.
      max_instances (M), max_prompt_boxes (N), seed, p_exemplar, on_bad_data, check_files: as `CocoSource`.
      only_exhaustive: leave out pairs with `is_instance_exhaustive` = 0.
    """

    def __init__(self, gt_file: str, image_dir: str, *, max_instances: int = 32, max_prompt_boxes: int = 4,
                 seed: int = 0, p_exemplar: float = 0.0, on_bad_data: str = "raise", check_files: bool = True,
                 only_exhaustive: bool = False):
        self.gt_file, self.image_dir = str(gt_file), str(image_dir)
        self.max_instances, self.max_prompt_boxes = int(max_instances), int(max_prompt_boxes)
        self.seed, self.p_exemplar = int(seed), float(p_exemplar)
        self.on_bad_data, self.only_exhaustive = on_bad_data, bool(only_exhaustive)
        self._bad = _BadData(on_bad_data, f"SacoGoldSource({self.gt_file})")
        self._index(check_files)

    @property
    def skipped(self) -> dict:
        return dict(self._bad.counts)

    def _index(self, check_files: bool) -> None:
        try:
            gt = eval_io.load_image_gt(self.gt_file)[0]
        except eval_io.EvalInputError as e:
            raise DataError(str(e)) from None
        catset = set(gt.cat_ids)
        self._pairs: list[dict] = []
        self._rles: list[list] = []
        self._boxes: list[np.ndarray] = []
        self._exh: list[bool] = []
        exists: dict[str, bool] = {}
        for iid in gt.image_ids:
            im = gt.images[iid]
            where = f"{self.gt_file}: images entry id {iid!r} ({im.get('file_name')!r}, {im.get('text_input')!r})"
            if not _is_int(iid):
                raise DataError(f"{where}: pair ids must be integers")
            if not isinstance(im.get("file_name"), str) or not isinstance(im.get("text_input"), str):
                raise DataError(f"{where}: needs string 'file_name' and 'text_input'")
            if self.only_exhaustive and not gt.exhaustive(iid):
                continue
            path = os.path.join(self.image_dir, im["file_name"])
            if check_files:
                if path not in exists:
                    exists[path] = os.path.isfile(path)
                if not exists[path]:
                    self._bad("missing image file", f"{where}: image file not found: {path}")
                    continue
            problem = None
            rles, boxes, areas, crowd = [], [], [], False
            for j in gt.anns_by_image[iid]:
                a = gt.anns[j]
                if gt.ann_cat[j] not in catset:
                    problem = ("unknown category", f"annotation id {a['id']!r}: category_id {gt.ann_cat[j]!r} "
                                                   "is not in 'categories'")
                    break
                if gt.ann_crowd[j]:
                    crowd = True
                    continue
                b = a.get("bbox")
                if b is None or gt.ann_seg[j] is None:
                    problem = ("empty segmentation", f"annotation id {a['id']!r} has no bbox or no segmentation")
                    break
                x, y, w, h = (float(v) for v in b)
                if w <= 0 or h <= 0 or x < -_NORM_TOL or y < -_NORM_TOL or x + w > 1 + _NORM_TOL \
                        or y + h > 1 + _NORM_TOL:
                    problem = ("box outside the image", f"annotation id {a['id']!r}: normalised bbox {list(b)} is "
                                                        "empty or outside [0, 1]")
                    break
                x0, y0 = min(max(x, 0.0), 1.0), min(max(y, 0.0), 1.0)
                boxes.append([x0, y0, min(x + w, 1.0) - x0, min(y + h, 1.0) - y0])
                rles.append(gt.ann_seg[j])
                areas.append(float(a.get("area", w * h)))
            if problem:
                self._bad(problem[0], f"{where}: {problem[1]}")
                continue
            exh = gt.exhaustive(iid) and not crowd
            if len(rles) > self.max_instances:
                keep = _keep_largest(areas, self.max_instances)
                rles, boxes, exh = [rles[i] for i in keep], [boxes[i] for i in keep], False
            self._pairs.append({"pair_id": int(iid), "file_name": im["file_name"], "text": im["text_input"],
                                "height": int(im["height"]), "width": int(im["width"])})
            self._rles.append(rles)
            self._boxes.append(np.array(boxes, np.float32).reshape(-1, 4))
            self._exh.append(bool(exh))

    def __len__(self) -> int:
        return len(self._pairs)

    def __repr__(self) -> str:
        return (f"SacoGoldSource(gt_file={self.gt_file!r}, image_dir={self.image_dir!r}, "
                f"max_instances={self.max_instances}, on_bad_data={self.on_bad_data!r})")

    def record(self, index: int) -> dict:
        p = self._pairs[index]
        return {"image_path": os.path.join(self.image_dir, p["file_name"]), "file_name": p["file_name"],
                "text": p["text"], "rles": self._rles[index], "boxes_xywh": self._boxes[index],
                "is_exhaustive": self._exh[index], "pair_id": p["pair_id"], "image_id": p["pair_id"],
                "category_id": -1, "height": p["height"], "width": p["width"]}

    def __getitem__(self, index: int) -> Optional[dict]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {self!r}")
        rec = self.record(index)
        return _record_example(self, rec, index, self.gt_file, f" for pair {rec['pair_id']}",
                               np.int64(rec["pair_id"]), np.int64(-1))


# --------------------------------------------------------------------------------------------- writer
def write_saco_gold(examples: Iterable[dict], path: str, *, image_dir: Optional[str] = None,
                    file_pattern: str = "{pair_id:07d}.png") -> dict:
    """Examples (the dict format of this package, at their own resolution) -> a SA-Co/Gold JSON file.

    Each example becomes one `images[]` pair (id = pair_id, `text_input` = text, `queried_category` =
    concept, `is_instance_exhaustive`, plus `held_out`), each valid instance an annotation with a
    compressed RLE mask, a normalised xywh box and a normalised area. With `image_dir`, images are
    written there as PNG under `file_pattern`. Returns the JSON dict."""
    from PIL import Image

    images, anns = [], []
    for ex in examples:
        if ex is None:
            continue
        pid = int(ex["pair_id"])
        h, w = int(ex["image"].shape[0]), int(ex["image"].shape[1])
        fn = ex.get("file_name") or file_pattern.format(pair_id=pid)
        if image_dir is not None:
            out = os.path.join(image_dir, fn)
            os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
            Image.fromarray(ex["image"]).save(out)
        images.append({"id": pid, "file_name": fn, "text_input": str(ex["text"]), "height": h, "width": w,
                       "queried_category": str(ex.get("concept", ex["text"])),
                       "is_instance_exhaustive": int(bool(ex["is_exhaustive"])), "is_pixel_exhaustive": 0,
                       "held_out": int(bool(ex.get("held_out", False)))})
        for k in np.flatnonzero(ex["valid"]):
            cx, cy, bw, bh = (float(v) for v in ex["boxes"][k])
            m = ex["masks"][k]
            anns.append({"id": len(anns) + 1, "image_id": pid, "category_id": 1, "iscrowd": 0, "source": "synthetic",
                         "segmentation": eval_io.encode_mask(m), "bbox": [cx - bw / 2, cy - bh / 2, bw, bh],
                         "area": float(m.sum()) / float(h * w)})
    data = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "object"}]}
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)
    return data
