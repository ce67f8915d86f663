"""SA-Co/Gold-style files: a source over their (image, noun phrase) pairs, and a writer.

* `SacoGoldSource`: every `images[]` entry of a SA-Co/Gold file is a pair (`text_input`,
  `is_instance_exhaustive`); a pair without annotations is a negative. Read through
  `sam3_jax.eval.image_inputs.load_image_gt`, so the formats agree with evaluation. Examples,
  instance limits and bad-data handling as `sam3_jax.data.coco.CocoSource` (extra keys: `image_id`
  = pair id, `category_id` -1, `file_name`).
* `write_saco_gold` turns examples (e.g. the synthetic val / test splits) into a SA-Co/Gold JSON file
  (and optionally PNG images), so that the evaluation code scores them exactly like real data.
"""

from __future__ import annotations

import json
import os
from typing import Iterable, Optional

import numpy as np

from sam3_jax.data.records import BadData, DataError, keep_largest, record_example
from sam3_jax.eval.image_inputs import load_image_gt
from sam3_jax.eval.input_checks import EvalInputError
from sam3_jax.formats.masks import encode_mask
from sam3_jax.formats.scalars import is_int

__all__ = ["SacoGoldSource", "write_saco_gold"]

_NORM_TOL = 1e-3  # how far a normalised SA-Co box may stick out of its image (rounding)


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
        self._bad = BadData(on_bad_data, f"SacoGoldSource({self.gt_file})")
        self._index(check_files)

    @property
    def skipped(self) -> dict:
        return dict(self._bad.counts)

    def _index(self, check_files: bool) -> None:
        try:
            gt = load_image_gt(self.gt_file)[0]
        except EvalInputError as e:
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
            if not is_int(iid):
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
                keep = keep_largest(areas, self.max_instances)
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
        return record_example(self, rec, index, self.gt_file, f" for pair {rec['pair_id']}",
                               np.int64(rec["pair_id"]), np.int64(-1))


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
                         "segmentation": encode_mask(m), "bbox": [cx - bw / 2, cy - bh / 2, bw, bh],
                         "area": float(m.sum()) / float(h * w)})
    data = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "object"}]}
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)
    return data
