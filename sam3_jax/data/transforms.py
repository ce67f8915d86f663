"""The per-example transform of the input pipeline: resize to the model resolution, with optional
scale-jitter / flip augmentation, boxes and masks carried along.

Per-example work (all numpy, in `ResizeAugment`):

* a window of the source image is chosen: the whole image, or with `augment` a scale-jittered one
  (zoom factor s ~ U(scale_range), s > 1 crops, s < 1 pads with grey 128 / mask 0) at a random
  position, in whole pixels; then an optional horizontal flip;
* the window is squashed to (resolution, resolution) with the official processor's antialiased
  bilinear uint8 resize (`sam3_jax.formats.image.resize_uint8`: without augmentation the images
  are bit-identical to inference preprocessing; with augmentation Pillow's equivalent, which is 8-20x
  faster and differs by at most 2 levels), masks with nearest neighbour to (mask_size, mask_size);
* GT boxes follow analytically (normalised cxcywh is invariant under the squash); a box clipped by the
  window is recomputed from its cropped mask; instances left with an empty box or an empty mask are
  dropped (real instances stay first); exemplar boxes are clipped and dropped likewise (a window that
  would lose every positive exemplar is redrawn, then the whole image is used).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

import grain

from sam3_jax.formats.image import resize_uint8

__all__ = ["ResizeAugment", "resize_uint8_fast", "transform_example"]


def resize_uint8_fast(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pillow's antialiased bilinear resize: the same filter as `resize_uint8` in a different fixed-point
    precision (a few % of the pixels differ by 1-2 levels), 8-20x faster. Used for augmented training."""
    from PIL import Image

    h, w = size
    if image.shape[:2] == (h, w):
        return image
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((w, h), Image.BILINEAR))


def _crop_pad(a: np.ndarray, x0: int, y0: int, x1: int, y1: int, fill, axis0: int) -> np.ndarray:
    """Window [y0, y1) x [x0, x1) of the (H, W) axes starting at `axis0`, padding outside with `fill`."""
    H, W = a.shape[axis0], a.shape[axis0 + 1]
    if (x0, y0, x1, y1) == (0, 0, W, H):
        return a
    shape = list(a.shape)
    shape[axis0], shape[axis0 + 1] = y1 - y0, x1 - x0
    out = np.full(shape, fill, a.dtype)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)
    if sx1 > sx0 and sy1 > sy0:
        src = [slice(None)] * a.ndim
        dst = [slice(None)] * a.ndim
        src[axis0], src[axis0 + 1] = slice(sy0, sy1), slice(sx0, sx1)
        dst[axis0], dst[axis0 + 1] = slice(sy0 - y0, sy1 - y0), slice(sx0 - x0, sx1 - x0)
        out[tuple(dst)] = a[tuple(src)]
    return out


def _nearest_idx(n_in: int, n_out: int) -> np.ndarray:
    return np.minimum(((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64), n_in - 1)


def _resize_masks(masks: np.ndarray, size: int) -> np.ndarray:
    """(K, h, w) bool -> (K, size, size) by nearest neighbour (pixel centres)."""
    if masks.shape[1:] == (size, size):
        return masks
    return masks[:, _nearest_idx(masks.shape[1], size)][:, :, _nearest_idx(masks.shape[2], size)]


def _mask_box(m: np.ndarray) -> Optional[np.ndarray]:
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(m.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float64)


def _window_boxes(boxes: np.ndarray, W: int, H: int, win: tuple) -> tuple[np.ndarray, np.ndarray]:
    """cxcywh normalised to the image -> xyxy in window pixels (unclipped, clipped)."""
    x0, y0, x1, y1 = win
    b = boxes.astype(np.float64)
    xyxy = np.stack([(b[:, 0] - b[:, 2] / 2) * W - x0, (b[:, 1] - b[:, 3] / 2) * H - y0,
                     (b[:, 0] + b[:, 2] / 2) * W - x0, (b[:, 1] + b[:, 3] / 2) * H - y0], 1)
    ww, wh = x1 - x0, y1 - y0
    clipped = np.stack([np.clip(xyxy[:, 0], 0, ww), np.clip(xyxy[:, 1], 0, wh),
                        np.clip(xyxy[:, 2], 0, ww), np.clip(xyxy[:, 3], 0, wh)], 1)
    return xyxy, clipped


def _to_cxcywh(xyxy: np.ndarray, ww: int, wh: int, flip: bool) -> np.ndarray:
    x0, y0, x1, y1 = xyxy[:, 0] / ww, xyxy[:, 1] / wh, xyxy[:, 2] / ww, xyxy[:, 3] / wh
    if flip:
        x0, x1 = 1.0 - x1, 1.0 - x0
    return np.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], 1).astype(np.float32)


def _draw_window(H: int, W: int, rng: np.random.Generator, scale_range) -> tuple[int, int, int, int]:
    s = float(rng.uniform(*scale_range))
    ww, wh = max(1, int(round(W / s))), max(1, int(round(H / s)))
    x0 = int(rng.integers(min(0, W - ww), max(0, W - ww) + 1))
    y0 = int(rng.integers(min(0, H - wh), max(0, H - wh) + 1))
    return x0, y0, x0 + ww, y0 + wh


def transform_example(ex: dict, resolution: int, mask_size: Optional[int] = None, *,
                      window: Optional[tuple[int, int, int, int]] = None, flip: bool = False,
                      exact_resize: bool = True) -> Optional[dict]:
    """Crops / pads `ex` to `window` (x0, y0, x1, y1 in source pixels; None = the whole image), flips,
    resizes to the model resolution (`resize_uint8`, or `resize_uint8_fast` without `exact_resize`) and
    updates boxes, masks and exemplar boxes consistently. Returns None when the window loses every
    positive exemplar of a query that had one."""
    img = ex["image"]
    H, W = img.shape[:2]
    ms = resolution if mask_size is None else int(mask_size)
    win = (0, 0, W, H) if window is None else tuple(int(v) for v in window)
    x0, y0, x1, y1 = win
    ww, wh = x1 - x0, y1 - y0
    M = ex["boxes"].shape[0]
    valid, mvalid = ex["valid"].astype(bool), ex["mask_valid"].astype(bool)

    # exemplar prompts first: a window may be rejected
    pvalid = ~ex["prompt_mask"].astype(bool)
    pxy, pcl = _window_boxes(ex["prompt_boxes"], W, H, win)
    pkeep = pvalid & (pcl[:, 2] > pcl[:, 0]) & (pcl[:, 3] > pcl[:, 1])
    if window is not None and np.any(pvalid & (ex["prompt_labels"] == 1)) and \
            not np.any(pkeep & (ex["prompt_labels"] == 1)):
        return None

    image = _crop_pad(img, x0, y0, x1, y1, 128, 0)
    if flip:
        image = image[:, ::-1]
    image = (resize_uint8 if exact_resize else resize_uint8_fast)(np.ascontiguousarray(image),
                                                                   (resolution, resolution))

    idx = np.flatnonzero(valid)
    masks_w = _crop_pad(ex["masks"][idx], x0, y0, x1, y1, False, 1)
    gxy, gcl = _window_boxes(ex["boxes"][idx], W, H, win)
    keep = (gcl[:, 2] > gcl[:, 0]) & (gcl[:, 3] > gcl[:, 1])
    was_clipped = np.any(np.abs(gxy - gcl) > 1e-6, axis=1)
    for r, i in enumerate(idx):
        if not keep[r] or not mvalid[i]:
            continue
        mb = _mask_box(masks_w[r])
        if mb is None:
            keep[r] = False
        elif was_clipped[r]:
            gcl[r] = mb
    sel = np.flatnonzero(keep)
    k = len(sel)
    boxes = np.zeros((M, 4), np.float32)
    masks = np.zeros((M, ms, ms), bool)
    nvalid = np.zeros(M, bool)
    nmvalid = np.zeros(M, bool)
    if k:
        boxes[:k] = _to_cxcywh(gcl[sel], ww, wh, flip)
        mk = masks_w[sel]
        if flip:
            mk = mk[:, :, ::-1]
        masks[:k] = _resize_masks(mk, ms)
        nvalid[:k] = True
        nmvalid[:k] = mvalid[idx[sel]]
        masks[:k] &= nmvalid[:k, None, None]

    N = ex["prompt_boxes"].shape[0]
    psel = np.flatnonzero(pkeep)
    pboxes = np.zeros((N, 4), np.float32)
    plabels = np.zeros(N, np.int32)
    pmask = np.ones(N, bool)
    if len(psel):
        pboxes[:len(psel)] = _to_cxcywh(pcl[psel], ww, wh, flip)
        plabels[:len(psel)] = ex["prompt_labels"][psel]
        pmask[:len(psel)] = False

    out = {key: ex[key] for key in ("text", "is_exhaustive", "held_out", "pair_id", "height", "width")}
    out.update(image=image, boxes=boxes, masks=masks, valid=nvalid, mask_valid=nmvalid, prompt_boxes=pboxes,
               prompt_labels=plabels, prompt_mask=pmask, num_instances=np.int32(k), row_valid=np.bool_(True))
    out["height"], out["width"] = np.int32(H), np.int32(W)
    return out


class ResizeAugment(grain.transforms.RandomMap):
    """Resize (+ random window and flip when `augment`) to the model resolution; see the module doc."""

    def __init__(self, resolution: int, mask_size: Optional[int] = None, augment: bool = True,
                 hflip_prob: float = 0.5, scale_range: tuple[float, float] = (0.75, 1.25), max_tries: int = 5,
                 exact_resize: Optional[bool] = None):
        self.resolution, self.mask_size, self.augment = int(resolution), mask_size, bool(augment)
        self.hflip_prob, self.scale_range, self.max_tries = float(hflip_prob), tuple(scale_range), int(max_tries)
        self.exact = (not self.augment) if exact_resize is None else bool(exact_resize)

    def random_map(self, element, rng: np.random.Generator):
        if element is None:
            return None
        kw = {"exact_resize": self.exact}
        if not self.augment:
            return transform_example(element, self.resolution, self.mask_size, **kw)
        H, W = element["image"].shape[:2]
        flip = bool(rng.random() < self.hflip_prob)
        for _ in range(self.max_tries):
            out = transform_example(element, self.resolution, self.mask_size,
                                    window=_draw_window(H, W, rng, self.scale_range), flip=flip, **kw)
            if out is not None:
                return out
        return transform_example(element, self.resolution, self.mask_size, flip=flip, **kw)
