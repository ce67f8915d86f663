"""TFDS builders writing (image, noun phrase) pairs to ArrayRecord offline, without TensorFlow, and a
random-access source reading them back (`tfds.data_source` / `as_data_source`).

Builders (all `GeneratorBasedBuilder`, build with `file_format="array_record"`):

* `Sam3SyntheticPcs`: the synthetic val / test splits (`SyntheticSource`), configs by canvas size.
* `Sam3CocoPcs`: a COCO-format instances file + image folder per split (`CocoSource`).
* `Sam3SacoPcs`: SA-Co/Gold-style files + image folder per split (`SacoGoldSource`).

One record per pair (the image's encoded bytes, the phrase, the masks as compressed COCO RLE
strings, the boxes, exemplar prompts and flags):

    image          Image (encoded file bytes; decoded with PIL on reading)
    text, concept, file_name   Text
    rles           Sequence(Text)   compressed RLE counts of each GT instance (image size)
    boxes          Tensor (None, 4) float32, cxcywh normalised
    prompt_boxes   Tensor (None, 4) float32; prompt_labels Tensor (None,) int32 (only real exemplars)
    pair_id        int64; is_exhaustive, held_out bool; query_type, negative_kind int32

A pair's image is stored with every pair that uses it, so the size grows with the pairs per image
(COCO: positives + `negatives_per_image`). Without TensorFlow only `array_record` works, images must be
handed to `features.Image` as encoded bytes (never numpy arrays), and `as_dataset` / `tfds.load` are
unavailable: read with `TfdsPairSource` (or `builder.as_data_source(split)`).

    b = Sam3SyntheticPcs(data_dir=d, config="canvas64", file_format="array_record")
    b.download_and_prepare()
    src = TfdsPairSource(b.data_dir, "val")        # or TfdsPairSource.from_name("sam3_synthetic_pcs/canvas64", "val", data_dir=d)
"""

from __future__ import annotations

import io
import os
from typing import Any, Iterator, Mapping, Optional

import numpy as np
import tensorflow_datasets as tfds

from sam3_jax.data.coco import CocoSource
from sam3_jax.data.records import pad_example
from sam3_jax.data.saco import SacoGoldSource
from sam3_jax.data.synthetic import SyntheticSource
from sam3_jax.formats.masks import decode_rles, encode_mask

__all__ = ["Sam3SyntheticPcs", "Sam3CocoPcs", "Sam3SacoPcs", "TfdsPairSource", "pair_features", "build"]

_VERSION = tfds.core.Version("1.0.0")


def pair_features() -> "tfds.features.FeaturesDict":
    f = tfds.features
    return f.FeaturesDict({
        "image": f.Image(shape=(None, None, 3)),
        "text": f.Text(),
        "concept": f.Text(),
        "file_name": f.Text(),
        "rles": f.Sequence(f.Text()),
        "boxes": f.Tensor(shape=(None, 4), dtype=np.float32),
        "prompt_boxes": f.Tensor(shape=(None, 4), dtype=np.float32),
        "prompt_labels": f.Tensor(shape=(None,), dtype=np.int32),
        "pair_id": f.Scalar(dtype=np.int64),
        "is_exhaustive": f.Scalar(dtype=np.bool_),
        "held_out": f.Scalar(dtype=np.bool_),
        "query_type": f.Scalar(dtype=np.int32),
        "negative_kind": f.Scalar(dtype=np.int32),
    })


def _png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _example_record(ex: dict) -> dict:
    """An example dict (synthetic) -> a record: PNG image, RLE masks."""
    k = np.flatnonzero(ex["valid"])
    pk = np.flatnonzero(~ex["prompt_mask"])
    return {
        "image": _png_bytes(ex["image"]),
        "text": str(ex["text"]),
        "concept": str(ex.get("concept", ex["text"])),
        "file_name": str(ex.get("file_name", "")),
        "rles": [encode_mask(ex["masks"][i])["counts"] for i in k],
        "boxes": ex["boxes"][k].astype(np.float32).reshape(-1, 4),
        "prompt_boxes": ex["prompt_boxes"][pk].astype(np.float32).reshape(-1, 4),
        "prompt_labels": ex["prompt_labels"][pk].astype(np.int32),
        "pair_id": int(ex["pair_id"]),
        "is_exhaustive": bool(ex["is_exhaustive"]),
        "held_out": bool(ex["held_out"]),
        "query_type": int(ex["query_type"]),
        "negative_kind": int(ex["negative_kind"]),
    }


def _file_record(src, index: int) -> Optional[dict]:
    """A COCO / SA-Co pair -> a record with the image file's own bytes (no re-encoding)."""
    from sam3_jax.data.records import DataError

    try:
        rec = src.record(index)
    except DataError as e:
        src._bad("bad segmentation", str(e))
        return None
    path = rec["image_path"]
    if not os.path.isfile(path):
        src._bad("missing image file", f"image file not found: {path}")
        return None
    with open(path, "rb") as f:
        data = f.read()
    try:  # verify it decodes, so that a corrupt file is reported here rather than when training
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if (im.height, im.width) != (rec["height"], rec["width"]):
                raise ValueError(f"is {im.height}x{im.width} (HxW), the annotations say "
                                 f"{rec['height']}x{rec['width']}")
            if im.mode != "RGB":  # tfds' Image(shape=(None, None, 3)) needs 3 channels: re-encode
                from sam3_jax.data.records import load_rgb

                data = _png_bytes(load_rgb(path))
    except Exception as e:  # noqa: BLE001 - any decoder failure is bad data
        src._bad("unreadable image", f"corrupt or unreadable image file {path}: {e}")
        return None
    b = np.asarray(rec["boxes_xywh"], np.float32).reshape(-1, 4)
    boxes = np.stack([b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2, b[:, 2], b[:, 3]], 1) if len(b) else b
    return {
        "image": data,
        "text": rec["text"],
        "concept": rec["text"],
        "file_name": rec["file_name"],
        "rles": [r["counts"] for r in rec["rles"]],
        "boxes": boxes.astype(np.float32),
        "prompt_boxes": np.zeros((0, 4), np.float32),
        "prompt_labels": np.zeros((0,), np.int32),
        "pair_id": int(rec["pair_id"]),
        "is_exhaustive": bool(rec["is_exhaustive"]),
        "held_out": False,
        "query_type": 0,
        "negative_kind": 0 if len(b) else 2,
    }


class _PairBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = _VERSION
    # tfds looks for a checksums file next to the builder's code through `importlib_resources`, which
    # is not installed without TensorFlow; these builders download nothing and need none.
    code_path = None

    def _info(self) -> tfds.core.DatasetInfo:
        # DatasetInfo built directly: `dataset_info_from_configs` needs a package folder with README etc.
        return tfds.core.DatasetInfo(builder=self, description=self.__doc__, features=pair_features(),
                                     disable_shuffling=True)


# --------------------------------------------------------------------------------------------- synthetic
class Sam3SyntheticPcs(_PairBuilder):
    """Synthetic concept segmentation, the fixed val / test splits (sam3_jax.data.synthetic)."""

    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name=f"canvas{c}", description=f"{c}x{c} images") for c in (64, 96, 128)
    ]

    def __init__(self, *, seed: int = 0, num_examples: Optional[Mapping[str, int]] = None, **kwargs):
        self._seed = int(seed)
        self._num = dict(num_examples or {})
        super().__init__(**kwargs)

    def _split_generators(self, dl_manager):
        canvas = int(self.builder_config.name.replace("canvas", ""))
        out = {}
        for split in ("val", "test"):
            src = SyntheticSource(split, seed=self._seed, canvas=canvas, num_examples=self._num.get(split))
            out[split] = self._generate_examples(src)
        return out

    def _generate_examples(self, src) -> Iterator[tuple[Any, dict]]:
        for i in range(len(src)):
            yield i, _example_record(src[i])


# --------------------------------------------------------------------------------------------- COCO / SA-Co
class Sam3CocoPcs(_PairBuilder):
    """COCO-format instances as (image, category name) pairs with absent categories as negatives.

    `splits` maps a split name to (annotation_file, image_dir); other keyword arguments of `CocoSource`
    go in `source_kwargs` (e.g. negatives_per_image, max_instances, on_bad_data)."""

    def __init__(self, *, splits: Optional[Mapping[str, tuple[str, str]]] = None,
                 source_kwargs: Optional[Mapping[str, Any]] = None, **kwargs):
        self._splits = dict(splits or {})
        self._kw = dict(source_kwargs or {})
        super().__init__(**kwargs)

    def _make_source(self, ann: str, img_dir: str):
        kw = {"max_instances": 1000, **self._kw}
        return CocoSource(ann, img_dir, **kw)

    def _split_generators(self, dl_manager):
        if not self._splits:
            raise ValueError(f"{type(self).__name__} needs splits={{name: (annotation_file, image_dir)}}")
        return {name: self._generate_examples(self._make_source(*paths)) for name, paths in self._splits.items()}

    def _generate_examples(self, src) -> Iterator[tuple[Any, dict]]:
        for i in range(len(src)):
            rec = _file_record(src, i)
            if rec is not None:
                yield i, rec


class Sam3SacoPcs(Sam3CocoPcs):
    """SA-Co/Gold-style pairs: `splits` maps a split name to (gt_file, image_dir)."""

    def _make_source(self, ann: str, img_dir: str):
        kw = {"max_instances": 1000, **self._kw}
        return SacoGoldSource(ann, img_dir, **kw)


def build(builder_cls, data_dir: str, **kwargs):
    """Builds a dataset into `data_dir` as ArrayRecord and returns the builder."""
    b = builder_cls(data_dir=data_dir, file_format="array_record", **kwargs)
    b.download_and_prepare()
    return b


# --------------------------------------------------------------------------------------------- reading back
class TfdsPairSource:
    """Random-access source over a built split, returning the example dicts of `sam3_jax.data`
    (masks decoded from RLE at the image size, padded to M instances / N exemplar boxes).

    `builder_dir` is the folder holding dataset_info.json (`builder.data_dir`); the underlying
    `ArrayRecordDataSource` is opened lazily in each process, so the source pickles."""

    def __init__(self, builder_dir: str, split: str, *, max_instances: int = 32, max_prompt_boxes: int = 4):
        self.builder_dir, self.split = str(builder_dir), str(split)
        self.max_instances, self.max_prompt_boxes = int(max_instances), int(max_prompt_boxes)
        self._ds = None
        self._len = len(self._source())

    @classmethod
    def from_name(cls, name: str, split: str, *, data_dir: str, **kw) -> "TfdsPairSource":
        """By registered name ("sam3_synthetic_pcs/canvas64"), as `tfds.data_source` would find it."""
        b = tfds.builder(name, data_dir=data_dir)
        return cls(b.data_dir, split, **kw)

    def _source(self):
        if self._ds is None:
            self._ds = tfds.builder_from_directory(self.builder_dir).as_data_source(self.split)
        return self._ds

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_ds"] = None
        return d

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return (f"TfdsPairSource(builder_dir={self.builder_dir!r}, split={self.split!r}, "
                f"max_instances={self.max_instances}, max_prompt_boxes={self.max_prompt_boxes})")

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not 0 <= index < self._len:
            raise IndexError(f"index {index} out of range for {self!r}")
        r = self._source()[index]
        image = np.asarray(r["image"], np.uint8)
        h, w = image.shape[:2]
        dec = lambda s: s.decode("utf-8") if isinstance(s, bytes) else str(s)  # noqa: E731
        rles = [{"size": [h, w], "counts": dec(c)} for c in r["rles"]]
        boxes = np.asarray(r["boxes"], np.float32).reshape(-1, 4)[: self.max_instances]
        masks = decode_rles(rles[: self.max_instances], h, w)
        xywh = np.stack([boxes[:, 0] - boxes[:, 2] / 2, boxes[:, 1] - boxes[:, 3] / 2, boxes[:, 2], boxes[:, 3]], 1)
        ex = pad_example(image, dec(r["text"]), xywh, masks, bool(r["is_exhaustive"]) and len(rles) <= self.max_instances,
                          self.max_instances, self.max_prompt_boxes, int(r["pair_id"]),
                          {"file_name": dec(r["file_name"])})
        pb = np.asarray(r["prompt_boxes"], np.float32).reshape(-1, 4)[: self.max_prompt_boxes]
        pl = np.asarray(r["prompt_labels"], np.int32).reshape(-1)[: self.max_prompt_boxes]
        n = len(pb)
        ex["prompt_boxes"][:n], ex["prompt_labels"][:n], ex["prompt_mask"][:n] = pb, pl, False
        ex["held_out"] = np.bool_(bool(r["held_out"]))
        ex["query_type"] = np.int32(r["query_type"])
        ex["negative_kind"] = np.int32(r["negative_kind"])
        ex["concept"] = dec(r["concept"])
        return ex
