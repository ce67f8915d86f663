"""Source over a COCO-format instances file: one (image, category) pair per index.

It returns the example format of `sam3_jax.data.synthetic` at the image's own resolution: `image`
(H, W, 3) uint8, `masks` (M, H, W) bool, boxes cxcywh normalised; the pipeline
(`sam3_jax.data.pipeline`) resizes to the model resolution. Extra keys: `image_id`, `category_id`,
`file_name`.

Categories are the noun phrases (underscores become spaces). For every image, each category with at
least one non-crowd instance gives a positive pair; `negatives_per_image` absent categories (sampled
deterministically, or all of them with None) give negative pairs: COCO is exhaustive for its
categories, so an absent category is truly absent. Crowd annotations are left out of the targets and
make the pair non-exhaustive (`is_exhaustive` False); a category present only as crowd is neither
positive nor negative. Images without annotations contribute negatives only. Pairs with more than M
non-crowd instances keep the M largest and become non-exhaustive.

Bad data: `on_bad_data="raise"` raises `DataError` naming the file and the record; `"skip"` logs a
warning, counts the problem in `source.skipped` (reason -> count, in the process that saw it) and
leaves the image out. Problems in the JSON and missing image files are found when the source is built;
a corrupt image (or one whose size disagrees with the JSON) only when it is read: with "skip",
`__getitem__` then returns None, which Grain drops from the stream. A file that is not valid JSON, or
lacks the required lists, always raises. The SA-Co/Gold source (`sam3_jax.data.saco`) follows the
same rules.
"""

from __future__ import annotations

import collections
import os
from typing import Optional

import numpy as np

from sam3_jax.data.records import BAD_DATA_MODES, BadData, DataError, keep_largest, load_rgb, record_example
from sam3_jax.eval.input_checks import EvalInputError, load_json
from sam3_jax.formats.masks import MaskFormatError, to_compressed_rle
from sam3_jax.formats.scalars import is_int, is_number

__all__ = ["BAD_DATA_MODES", "CocoSource", "DataError", "load_rgb"]

_BOX_TOL = 1.0  # pixels a COCO box may stick out of its image (rounding in the annotation tools)


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
        self._bad = BadData(on_bad_data, f"CocoSource({self.annotation_file})")
        self._index(check_files)

    @property
    def skipped(self) -> dict:
        return dict(self._bad.counts)

    def _index(self, check_files: bool) -> None:
        af = self.annotation_file
        try:
            data = load_json(af, "annotation file")
        except EvalInputError as e:
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
            if not isinstance(c, dict) or not is_int(c.get("id")) or not isinstance(c.get("name"), str):
                raise DataError(f"{af}: categories[{i}] needs an integer 'id' and a string 'name', got {c!r}")
            cats[int(c["id"])] = c["name"].replace("_", " ").strip()
        if not cats:
            raise DataError(f"{af}: 'categories' is empty")
        images: dict[int, dict] = {}
        for i, im in enumerate(data["images"]):
            where = f"{af}: images[{i}]"
            if not isinstance(im, dict) or not is_int(im.get("id")) or not isinstance(im.get("file_name"), str):
                raise DataError(f"{where} needs an integer 'id' and a string 'file_name', got {im!r}")
            for k in ("height", "width"):
                if not is_int(im.get(k)) or im[k] <= 0:
                    raise DataError(f"{where} ({im['file_name']}): '{k}' must be a positive integer, got {im.get(k)!r}")
            if int(im["id"]) in images:
                raise DataError(f"{where}: duplicate image id {im['id']}")
            images[int(im["id"])] = im
        bad_images: set[int] = set()
        by_image: dict[int, list] = collections.defaultdict(list)
        for j, a in enumerate(anns):
            where = f"{af}: annotations[{j}]"
            if not isinstance(a, dict) or not is_int(a.get("image_id")):
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
        if not is_int(a.get("category_id")) or int(a["category_id"]) not in cats:
            return "unknown category", f"category_id {a.get('category_id')!r} is not in 'categories'"
        b = a.get("bbox")
        if not isinstance(b, (list, tuple)) or len(b) != 4 or not all(is_number(v) for v in b):
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
            keep = keep_largest([a.get("area", a["bbox"][2] * a["bbox"][3]) for a in anns], self.max_instances)
            anns = [anns[i] for i in keep]
            exhaustive = False
        rles, boxes = [], []
        for a in anns:
            where = f"{self.annotation_file}: annotation id {a.get('id')} (image {im['file_name']})"
            try:
                rles.append(to_compressed_rle(a["segmentation"], h, w, where))
            except MaskFormatError as e:
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
        return record_example(self, rec, index, self.annotation_file, "",
                               np.int64(rec["image_id"]), np.int64(rec["category_id"]))
