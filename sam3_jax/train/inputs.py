"""What training and evaluation feed the model: the config's `data` block (`data_config`), the
sources it names (`make_sources`), the Grain pipeline settings, and batches flattened for the step
(model inputs plus loss targets under `tgt_` keys) and placed as global arrays on the mesh.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import ml_collections


def synthetic_options() -> ml_collections.ConfigDict:
    """The SyntheticSource keyword options a config may set (`--config.data.synthetic.noise=4`), with
    their defaults; the split, seed, length, canvas and padding sizes come from the data block itself."""
    import inspect

    from sam3_jax.data.synthetic import SyntheticSource

    skip = {"self", "split", "seed", "num_examples", "canvas", "max_instances", "max_prompt_boxes", "held_out_rate"}
    params = inspect.signature(SyntheticSource.__init__).parameters
    return ml_collections.ConfigDict({k: p.default for k, p in params.items() if k not in skip})


def data_config(**overrides) -> ml_collections.ConfigDict:
    """The `data` block of a training config (read by `make_sources`).

    source: synthetic | coco | saco | tfds. The file fields are placeholders, so any of them can be
    set from the command line (`--config.data.train_annotations=...`).
    """
    p = ml_collections.config_dict.placeholder
    d = ml_collections.ConfigDict(dict(
        source="synthetic",
        seed=0,
        train_batch=16,
        eval_examples=256,  # validation keeps its first N pairs
        num_workers=0,  # Grain worker processes
        on_bad_data="raise",  # or "skip": bad records are counted and logged
        max_instances=8,
        max_exemplars=2,
        # synthetic
        canvas=64,
        synthetic=synthetic_options(),  # further SyntheticSource options (sampling rates, objects, rendering)
        # coco / saco: annotation JSON + image folder per split
        train_annotations=p(str), train_images=p(str), val_annotations=p(str), val_images=p(str),
        negatives_per_image=2, p_exemplar=0.0,
        # tfds: a folder written by sam3_jax.data.tfds_builders, and its split names
        tfds_dir=p(str), train_split="train", val_split="val",
        eval_mask_size=p(int),  # non-synthetic sources: evaluation frame side (default 4 x patch grid)
    ))
    d.update(overrides)
    return d


SOURCES = ("synthetic", "coco", "saco", "tfds")


class Head:
    """The first `n` examples of a source (a fixed evaluation subset); picklable like its source."""

    def __init__(self, source, n: Optional[int]):
        self.source, self.n = source, len(source) if not n else min(int(n), len(source))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        if not 0 <= int(index) < self.n:
            raise IndexError(f"index {index} out of range for the first {self.n} of {self.source!r}")
        return self.source[index]

    def __repr__(self) -> str:
        return f"Head({self.source!r}, {self.n})"


def _need(d, *names: str) -> None:
    missing = [n for n in names if not d.get(n)]
    if missing:
        raise ValueError(f"data.source={d.source!r} needs " + ", ".join(f"--config.data.{n}" for n in missing))


def make_sources(cfg) -> tuple[Any, Any, Any]:
    """(train, validation, held-out) sources of the configured kind; held-out is None where the data has
    no held-out concepts (the synthetic source's held-out colour-shape combinations).

    data.source:
      synthetic: the procedural source (`data.synthetic` holds further SyntheticSource options);
      coco:      COCO instances JSON + image folder: data.train_annotations / train_images,
                 data.val_annotations / val_images (negatives_per_image, p_exemplar optional);
      saco:      SA-Co/Gold-style JSON + image folder, the same four fields;
      tfds:      ArrayRecord splits built by sam3_jax.data.tfds_builders: data.tfds_dir (the builder's
                 data_dir with dataset_info.json), data.train_split, data.val_split.
    Validation keeps its first data.eval_examples pairs. Bad records follow data.on_bad_data.
    """
    d = cfg.data
    if d.source not in SOURCES:
        raise ValueError(f"unknown data.source {d.source!r}; expected one of {SOURCES}")
    pad = dict(max_instances=d.max_instances, max_prompt_boxes=d.max_exemplars)
    if d.source == "synthetic":
        from sam3_jax.data.synthetic import SyntheticSource

        kw = dict(seed=d.seed, canvas=d.canvas, **pad)
        extra = d.get("synthetic", None) or {}  # further SyntheticSource options (sampling rates, objects)
        kw.update(extra.to_dict() if hasattr(extra, "to_dict") else dict(extra))
        train = SyntheticSource("train", **kw)
        val = SyntheticSource("val", num_examples=d.eval_examples, held_out_rate=0.0, **kw)
        held = SyntheticSource("test", num_examples=d.eval_examples, held_out_rate=1.0, **kw)
        return train, val, held
    if d.source in ("coco", "saco"):
        from sam3_jax.data.coco import CocoSource
        from sam3_jax.data.saco import SacoGoldSource

        _need(d, "train_annotations", "train_images", "val_annotations", "val_images")
        kw = dict(seed=d.seed, on_bad_data=d.get("on_bad_data", "raise"), p_exemplar=d.get("p_exemplar", 0.0), **pad)
        if d.source == "coco":
            cls = CocoSource
            kw["negatives_per_image"] = d.get("negatives_per_image", 2)
        else:
            cls = SacoGoldSource
        train = cls(d.train_annotations, d.train_images, **kw)
        val = cls(d.val_annotations, d.val_images, **kw)
    else:
        from sam3_jax.data.tfds_builders import TfdsPairSource

        _need(d, "tfds_dir", "train_split", "val_split")
        train = TfdsPairSource(d.tfds_dir, d.train_split, **pad)
        val = TfdsPairSource(d.tfds_dir, d.val_split, **pad)
    if len(train) == 0:
        raise ValueError(f"the training source {train!r} holds no examples")
    return train, Head(val, d.eval_examples), None


def eval_mask_size(cfg) -> int:
    """Side of the square frame evaluation happens in: the synthetic canvas (its native size), else
    data.eval_mask_size (default 4 x the patch grid, the mask head's own resolution)."""
    if cfg.data.source == "synthetic":
        return cfg.data.canvas
    return int(cfg.data.get("eval_mask_size", None) or mask_size(cfg.model))


def mask_size(model_cfg) -> int:
    return 4 * (model_cfg.image_size // model_cfg.vit.patch_size)


def pipeline_config(cfg, *, train: bool, batch: int):
    """The Grain pipeline settings for training (shuffled, augmented) or evaluation (one pass, padded)."""
    from sam3_jax.data.pipeline import PipelineConfig

    m = cfg.model
    if train:
        return PipelineConfig(resolution=m.image_size, mask_size=mask_size(m), batch_size=batch, seed=cfg.data.seed,
                              worker_count=cfg.data.num_workers, context_length=m.text.context_length)
    return PipelineConfig.for_eval(m.image_size, batch, mask_size=eval_mask_size(cfg),
                                   context_length=m.text.context_length)


TARGET_PREFIX = "tgt_"  # flattened batches carry the loss targets under these keys


def flatten_batch(batch: dict) -> dict:
    """Pipeline batch -> one dict: the model inputs plus the loss targets under `tgt_` keys."""
    from sam3_jax.data.pipeline import to_model_batch

    inputs, targets = to_model_batch(batch)
    return {**inputs, **{TARGET_PREFIX + k: v for k, v in targets.items()}}


def input_specs(batch: dict) -> list:
    """Shape / dtype structs of the model inputs of a flattened batch (what the step is traced with)."""
    from sam3_jax.train.step import MODEL_INPUTS

    return [jax.ShapeDtypeStruct(batch[k].shape, batch[k].dtype) for k in MODEL_INPUTS]


def global_batch(batch: dict, shardings: dict) -> dict:
    """Process-local numpy batch -> global jax arrays in `shardings` (one process: plain device_put)."""
    if jax.process_count() == 1:
        return {k: jax.device_put(v, shardings[k]) for k, v in batch.items()}
    return {k: jax.make_array_from_process_local_data(shardings[k], v) for k, v in batch.items()}
