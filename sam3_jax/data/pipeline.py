"""Grain input pipeline: source -> per-process shard -> seeded shuffle / repeat -> resize + augment ->
tokenise -> batch -> optional worker processes, with exact, checkpointable iterator state.

    cfg = PipelineConfig(resolution=224, batch_size=8, seed=0)
    it = make_iterator(SyntheticSource("train", canvas=64), cfg)     # a grain DatasetIterator
    batch = next(it)
    inputs, targets = to_model_batch(batch)                           # model inputs / loss targets
    state = it.get_state()   # JSON-able dict; save it with the model (grain.checkpoint.CheckpointSave)
    it.set_state(state)      # resumes exactly (also with worker processes)
    it.close()               # needed with worker_count > 0 (see close_iterator)

Per-example work (all numpy, in `ResizeAugment`):

* a window of the source image is chosen: the whole image, or with `augment` a scale-jittered one
  (zoom factor s ~ U(scale_range), s > 1 crops, s < 1 pads with grey 128 / mask 0) at a random
  position, in whole pixels; then an optional horizontal flip;
* the window is squashed to (resolution, resolution) with the official processor's antialiased
  bilinear uint8 resize (`sam3_jax.predict.preprocess.resize_uint8`: without augmentation the images
  are bit-identical to inference preprocessing; with augmentation Pillow's equivalent, which is 8-20x
  faster and differs by at most 2 levels), masks with nearest neighbour to (mask_size, mask_size);
* GT boxes follow analytically (normalised cxcywh is invariant under the squash); a box clipped by the
  window is recomputed from its cropped mask; instances left with an empty box or an empty mask are
  dropped (real instances stay first); exemplar boxes are clipped and dropped likewise (a window that
  would lose every positive exemplar is redrawn, then the whole image is used).

Normalisation to float ((x / 255 - 0.5) / 0.5) happens in `to_model_batch`, so batches travel between
processes as uint8.

Batch keys (B = batch size, S = resolution, m = mask size, M / N from the source):
`image` (B,S,S,3) uint8, `tokens` (B,32) int32, `text` (B,) str, `boxes` (B,M,4), `valid` (B,M),
`masks` (B,M,m,m) bool, `mask_valid` (B,M), `prompt_boxes` (B,N,4), `prompt_labels` (B,N) int32,
`prompt_mask` (B,N) bool, `is_exhaustive` (B,), `held_out` (B,), `pair_id` (B,) int64, `height` /
`width` (B,) int32 (the source image size), `num_instances` (B,) int32, `row_valid` (B,) bool (False
only for the padding rows of `pad_final_batch`).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Optional

import numpy as np

import grain

from sam3_jax.predict import preprocess as _pre
from sam3_jax.predict.preprocess import MEAN, STD

__all__ = [
    "PipelineConfig",
    "BATCH_KEYS",
    "ResizeAugment",
    "Tokenize",
    "enable_worker_processes",
    "make_dataset",
    "make_iterator",
    "close_iterator",
    "shard",
    "to_model_batch",
    "normalize_images",
    "transform_example",
]

log = logging.getLogger(__name__)

BATCH_KEYS = ("image", "tokens", "text", "boxes", "valid", "masks", "mask_valid", "prompt_boxes", "prompt_labels",
              "prompt_mask", "is_exhaustive", "held_out", "pair_id", "height", "width", "num_instances", "row_valid")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Input pipeline settings.

    resolution: model input side S. mask_size: GT mask side (default S; the loss upsamples the predicted
    masks to it). batch_size: per-process batch. seed: shuffle and augmentation seed. shuffle: global,
    per-epoch reshuffled order. num_epochs: None = repeat forever. augment: random window + flip.
    hflip_prob / scale_range: augmentation strengths (zoom factor range, 1 = whole image).
    context_length: text tokens per row. drop_remainder: drop a last incomplete batch.
    pad_final_batch: instead pad it (and every process's shard to one length) with rows whose
    `row_valid` is False (for evaluation; implies drop_remainder=False). worker_count: Grain worker
    processes (0 = in-process). worker_buffer_size: batches buffered per worker. read_threads /
    prefetch: threads and element buffer of the in-process reader. exact_resize: the official
    processor's bit-exact resize (slow at 1008) or Pillow's (same filter, +-2 levels); default exact
    without augmentation, Pillow with it.
    """

    resolution: int = 1008
    mask_size: Optional[int] = None
    batch_size: int = 8
    seed: int = 0
    shuffle: bool = True
    num_epochs: Optional[int] = None
    augment: bool = True
    hflip_prob: float = 0.5
    scale_range: tuple[float, float] = (0.75, 1.25)
    context_length: int = 32
    drop_remainder: bool = True
    pad_final_batch: bool = False
    worker_count: int = 0
    worker_buffer_size: int = 2
    read_threads: int = 1
    prefetch: int = 8
    exact_resize: Optional[bool] = None

    def __post_init__(self):
        if self.resolution <= 0 or self.batch_size <= 0:
            raise ValueError("resolution and batch_size must be positive")
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must be 0 < low <= high, got {self.scale_range}")
        if self.num_epochs is not None and self.num_epochs <= 0:
            raise ValueError("num_epochs must be positive or None")

    @classmethod
    def for_eval(cls, resolution: int, batch_size: int, **kw) -> "PipelineConfig":
        """One pass in source order, no augmentation, the last batch padded (row_valid False)."""
        return cls(resolution=resolution, batch_size=batch_size, shuffle=False, num_epochs=1, augment=False,
                   drop_remainder=False, pad_final_batch=True, **kw)


# --------------------------------------------------------------------------------------------- geometry
resize_uint8 = _pre.resize_uint8  # the official processor's resize (weights memoised there)


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


class Tokenize(grain.transforms.Map):
    """Adds `tokens` (context_length,) int32: the CLIP BPE ids of `text` (SOT ... EOT, zero padded).
    The tokenizer is built lazily in each process and memoises phrases."""

    def __init__(self, context_length: int = 32, bpe_path: Optional[str] = None):
        self.context_length, self.bpe_path = int(context_length), bpe_path
        self._tok = None
        self._cache: dict = {}

    def __getstate__(self):
        return {"context_length": self.context_length, "bpe_path": self.bpe_path}

    def __setstate__(self, state):
        self.__init__(**state)

    def map(self, element):
        if element is None:
            return None
        text = str(element["text"])
        ids = self._cache.get(text)
        if ids is None:
            if self._tok is None:
                from sam3_jax.model.tokenizer import ClipTokenizer

                self._tok = ClipTokenizer(self.bpe_path)
            ids = self._tok(text, context_length=self.context_length)[0]
            if len(self._cache) < 100_000:
                self._cache[text] = ids
        element = dict(element)
        element["tokens"] = ids.copy()
        return element


class _SelectKeys(grain.transforms.Map):
    def map(self, element):
        if element is None:
            return None
        return {k: element[k] for k in BATCH_KEYS}


class _Padded:
    """Random-access view of a MapDataset padded to `length` with invalid copies of its first element."""

    def __init__(self, ds, length: int):
        self.ds, self.length = ds, int(length)
        self._filler = None

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        return f"_Padded({self.ds!r}, {self.length})"

    def __getitem__(self, i: int):
        i = int(i)
        if i < len(self.ds):
            return self.ds[i]
        if self._filler is None:
            first = next((e for e in (self.ds[j] for j in range(len(self.ds))) if e is not None), None)
            if first is None:
                raise ValueError("cannot pad an evaluation shard that has no readable example")
            f = dict(first)
            f["valid"] = np.zeros_like(f["valid"])
            f["mask_valid"] = np.zeros_like(f["mask_valid"])
            f["masks"] = np.zeros_like(f["masks"])
            f["num_instances"] = np.int32(0)
            f["pair_id"] = np.int64(-1)
            f["row_valid"] = np.bool_(False)
            self._filler = f
        return self._filler


# --------------------------------------------------------------------------------------------- the pipeline
def enable_worker_processes() -> None:
    """grain 0.2.18 + jax: `mp_prefetch` reads an absl flag and fails with UnparsedFlagAccessError
    outside `absl.app` (google/grain#1355). Marks the flags as parsed (harmless when they already are)."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def shard(ds: "grain.MapDataset", process_index: int, process_count: int) -> "grain.MapDataset":
    """Every `process_count`-th element starting at `process_index`: disjoint shards covering the data."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    return ds[process_index::process_count] if process_count > 1 else ds


def make_dataset(source: Any, cfg: PipelineConfig, *, process_index: Optional[int] = None,
                 process_count: Optional[int] = None) -> "grain.IterDataset":
    """The Grain pipeline over a random-access source (see the module docstring). `process_index` /
    `process_count` default to jax.process_index() / jax.process_count()."""
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    n = len(source)
    ds = grain.MapDataset.source(source)
    ds = shard(ds, process_index, process_count)
    ds = ds.seed(cfg.seed)
    if cfg.shuffle:
        ds = ds.shuffle()
    if cfg.num_epochs != 1:
        ds = ds.repeat(cfg.num_epochs)
    ds = ds.random_map(ResizeAugment(cfg.resolution, cfg.mask_size, cfg.augment, cfg.hflip_prob, cfg.scale_range,
                                     exact_resize=cfg.exact_resize))
    ds = ds.map(Tokenize(cfg.context_length)).map(_SelectKeys())
    drop = cfg.drop_remainder
    if cfg.pad_final_batch:
        if cfg.num_epochs is None:
            raise ValueError("pad_final_batch needs a finite num_epochs")
        per_process = -(-n // process_count) * cfg.num_epochs  # the longest shard
        length = -(-per_process // cfg.batch_size) * cfg.batch_size
        ds = grain.MapDataset.source(_Padded(ds, length))
        drop = False
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=cfg.read_threads, prefetch_buffer_size=cfg.prefetch))
    it_ds = it_ds.batch(cfg.batch_size, drop_remainder=drop)
    if cfg.worker_count > 0:
        enable_worker_processes()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.worker_count,
                                                               per_worker_buffer_size=cfg.worker_buffer_size))
    return it_ds


def make_iterator(source: Any, cfg: PipelineConfig, *, process_index: Optional[int] = None,
                  process_count: Optional[int] = None, state: Optional[dict] = None):
    """`iter(make_dataset(...))`, optionally restored to a saved `get_state()`."""
    it = iter(make_dataset(source, cfg, process_index=process_index, process_count=process_count))
    if state is not None:
        it.set_state(state)
    return it


def close_iterator(it) -> None:
    """Stops an iterator's worker processes (no-op without workers). Call it before exiting, else
    interpreter exit prints SharedMemoryArray / leaked shared_memory warnings."""
    close = getattr(it, "close", None)
    if callable(close):
        close()


# --------------------------------------------------------------------------------------------- to the model
def normalize_images(images: np.ndarray) -> np.ndarray:
    """uint8 (..., 3) -> float32 ((x / 255 - 0.5) / 0.5), the arithmetic of `predict.preprocess`."""
    x = np.asarray(images).astype(np.float32) * np.float32(1.0 / 255.0)
    return ((x - np.float32(MEAN)) / np.float32(STD)).astype(np.float32)


def to_model_batch(batch: dict) -> tuple[dict, dict]:
    """A pipeline batch -> (model inputs, loss targets).

    inputs:  images (B,S,S,3) float32 normalised, tokens (B,L) int32, boxes (B,N,4) float32 cxcywh,
             box_labels (B,N) int32 (1 positive), box_mask (B,N) bool (True = padding): the arguments of
             Sam3Image.__call__ / `train.step.MODEL_INPUTS`.
    targets: boxes (B,M,4) float32 cxcywh, valid (B,M) bool, masks (B,M,m,m) bool, mask_valid (B,M) bool,
             is_exhaustive (B,) bool: the padded target format of `train.losses`. Padding rows
             (row_valid False) have no valid box.
    """
    row = np.asarray(batch.get("row_valid", np.ones(len(batch["image"]), bool)), bool)
    inputs = {
        "images": normalize_images(batch["image"]),
        "tokens": np.asarray(batch["tokens"], np.int32),
        "boxes": np.asarray(batch["prompt_boxes"], np.float32),
        "box_labels": np.asarray(batch["prompt_labels"], np.int32),
        "box_mask": np.asarray(batch["prompt_mask"], bool),
    }
    targets = {
        "boxes": np.asarray(batch["boxes"], np.float32),
        "valid": np.asarray(batch["valid"], bool) & row[:, None],
        "masks": np.asarray(batch["masks"], bool),
        "mask_valid": np.asarray(batch["mask_valid"], bool) & row[:, None],
        "is_exhaustive": np.asarray(batch["is_exhaustive"], bool),
    }
    return inputs, targets
