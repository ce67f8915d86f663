"""What the sources over annotation files share: the error type and the raise / skip switch for
bad data, image reading, and the padded example dict that an annotated (image, phrase) record
becomes (`pad_example`, `record_example`), with an optional exemplar prompt drawn from its boxes."""

from __future__ import annotations

import collections
import logging
import os
from typing import Any, Sequence

import numpy as np

from sam3_jax.formats.masks import decode_rles

__all__ = ["BAD_DATA_MODES", "BadData", "DataError", "add_exemplar", "keep_largest", "load_rgb", "pad_example",
           "record_example"]

log = logging.getLogger(__name__)
BAD_DATA_MODES = ("raise", "skip")
_MAX_LOGGED = 20


class DataError(ValueError):
    """Bad training data: the message names the file and the record."""


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


def pad_example(image: np.ndarray, text: str, boxes_xywh_norm: np.ndarray, masks: np.ndarray,
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


def keep_largest(areas: Sequence[float], M: int) -> list[int]:
    order = sorted(range(len(areas)), key=lambda i: -float(areas[i]))
    return sorted(order[:M])


def add_exemplar(ex: dict, rng: np.random.Generator, p: float) -> dict:
    """With probability p, the box of one GT instance becomes a positive exemplar prompt."""
    k = int(ex["num_instances"])
    if k and p > 0 and rng.random() < p:
        j = int(rng.integers(k))
        ex["prompt_boxes"][0] = ex["boxes"][j]
        ex["prompt_labels"][0] = 1
        ex["prompt_mask"][0] = False
        ex["query_type"] = np.int32(1)
    return ex


class BadData:
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


def record_example(src: Any, rec: dict, index: int, described_by: str, where: str, image_id, category_id):
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
    masks = decode_rles(rec["rles"], rec["height"], rec["width"])
    ex = pad_example(image, rec["text"], rec["boxes_xywh"], masks, rec["is_exhaustive"], src.max_instances,
                      src.max_prompt_boxes, rec["pair_id"],
                      {"image_id": image_id, "category_id": category_id, "file_name": rec["file_name"]})
    return add_exemplar(ex, np.random.default_rng([src.seed, index, 0xE7]), src.p_exemplar)
