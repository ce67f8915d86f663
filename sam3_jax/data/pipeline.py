"""Grain input pipeline: source -> per-process shard -> seeded shuffle / repeat -> resize + augment ->
tokenise -> batch -> optional worker processes, with exact, checkpointable iterator state.

    cfg = PipelineConfig(resolution=224, batch_size=8, seed=0)
    it = make_iterator(SyntheticSource("train", canvas=64), cfg)     # a grain DatasetIterator
    batch = next(it)
    inputs, targets = to_model_batch(batch)                           # model inputs / loss targets
    state = it.get_state()   # JSON-able dict; save it with the model (grain.checkpoint.CheckpointSave)
    it.set_state(state)      # resumes exactly (also with worker processes)
    it.close()               # needed with worker_count > 0 (see close_iterator)

Per-example work (`ResizeAugment`, in `sam3_jax.data.transforms`): a window of the source image
(the whole image, or with `augment` a scale-jittered one and an optional flip) is resized to
(resolution, resolution) with the official processor's uint8 resize, masks to (mask_size, mask_size);
boxes follow, instances left empty are dropped.

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

from sam3_jax.data.transforms import ResizeAugment
from sam3_jax.formats.image import normalize_images

__all__ = [
    "PipelineConfig",
    "BATCH_KEYS",
    "Tokenize",
    "enable_worker_processes",
    "make_dataset",
    "make_iterator",
    "close_iterator",
    "shard",
    "to_model_batch",
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
