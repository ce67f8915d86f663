"""Procedural clips for tracker training: the objects, rendering and query rules of
`sam3_jax.data.synthetic.SyntheticSource`, moving over a fixed background.

Deterministic in (seed, split, index), picklable, random access (`__len__`, `__getitem__`,
`__repr__`) like the image source; `veval_gt` writes clips as SA-Co/VEval ground truth (and their
frames as image files: `python -m sam3_jax.data` writes such a video evaluation set to disk).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

import numpy as np

from sam3_jax.data.synthetic import (
    DEFAULT_HELD_OUT,
    SPLITS,
    Concept,
    SyntheticSource,
    box_from_mask,
    draw_background,
    render_objects,
)
from sam3_jax.formats.masks import encode_mask

__all__ = ["FRAME_FORMATS", "SyntheticVideoSource"]

_VIDEO_DEFAULT_LEN = {"train": 100_000, "val": 64, "test": 128}
FRAME_FORMATS = ("png", "jpg")  # how `veval_gt` can write frames


def _write_frames(frames: np.ndarray, paths: Sequence[str]) -> None:
    """(T, H, W, 3) uint8 -> one image file per frame (PNG, or JPEG at quality 95 by extension)."""
    from PIL import Image

    for frame, path in zip(frames, paths):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if path.endswith(".jpg"):
            Image.fromarray(frame).save(path, quality=95)
        else:
            Image.fromarray(frame).save(path)


class SyntheticVideoSource:
    """Short clips of moving objects for tracker training (constant velocity, bouncing off the borders).

    Stress cases: with probability `p_cross` two objects of the same concept are forced to cross at mid
    clip; each object enters late / leaves early with probability `p_enter_leave`; sizes change by up to
    +-10 % over the clip. The masklet id of an object is its slot.

    Example (T frames, S canvas, M = max_objects slots):

        frames        (T, S, S, 3) uint8
        masks         (T, M, S, S) bool   visible mask of each object in each frame
        boxes         (T, M, 4) float32   cxcywh normalised (zeros where absent)
        present       (T, M) bool         the object is visible in that frame
        obj_valid     (M,) bool
        obj_colour, obj_shape, obj_size   (M,) int32 (-1 for padding)
        text          str                 a query phrase (positive ~55 %, else a negative absent from the clip)
        matches       (M,) bool           objects the phrase refers to (all False for a negative)
        held_out      bool
        video_id      int64
    """

    def __init__(self, split: str = "train", *, seed: int = 0, num_examples: Optional[int] = None,
                 num_frames: int = 8, canvas: int = 64, max_objects: int = 6, min_objects: int = 2,
                 held_out: Sequence[tuple[str, str]] = DEFAULT_HELD_OUT, p_positive: float = 0.55,
                 p_cross: float = 0.5, p_enter_leave: float = 0.2):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        if num_frames < 2:
            raise ValueError("num_frames must be >= 2")
        self.split, self.seed = split, int(seed)
        self.num_examples = int(_VIDEO_DEFAULT_LEN[split] if num_examples is None else num_examples)
        self.num_frames, self.canvas = int(num_frames), int(canvas)
        self.max_objects, self.min_objects = int(max_objects), int(min_objects)
        self.p_positive, self.p_cross, self.p_enter_leave = float(p_positive), float(p_cross), float(p_enter_leave)
        # the image source supplies object sampling and the query rules
        self._img = SyntheticSource(split, seed=seed, canvas=canvas, max_instances=max_objects,
                                    held_out=held_out, min_objects=min_objects, max_objects=max_objects)
        self.held_out = self._img.held_out

    def __len__(self) -> int:
        return self.num_examples

    def __repr__(self) -> str:
        return (f"SyntheticVideoSource(split={self.split!r}, seed={self.seed}, num_examples={self.num_examples}, "
                f"num_frames={self.num_frames}, canvas={self.canvas}, max_objects={self.max_objects})")

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for {self!r}")
        rng = np.random.default_rng([self.seed, SPLITS[self.split], index, 0x71D])
        T, S, M = self.num_frames, self.canvas, self.max_objects
        src = self._img
        n = int(rng.integers(self.min_objects, M + 1))
        objs = [src._new_obj(rng) for _ in range(n)]
        pos = np.array([[o.cx, o.cy] for o in objs], np.float64)
        speed = rng.uniform(1.0, 3.0, n) * src._scale
        ang = rng.uniform(0, 2 * np.pi, n)
        vel = np.stack([np.cos(ang), np.sin(ang)], 1) * speed[:, None]
        if n >= 2 and rng.random() < self.p_cross:  # objects 0 and 1: same concept, meet at mid clip
            objs[1] = src._new_obj(rng, objs[0].shape, objs[0].colour, objs[0].size)
            tc = (T - 1) / 2.0
            reach = 3.0 * src._scale * tc
            lo = max(objs[0].r, objs[1].r) + reach
            meet = rng.uniform(min(lo, S / 2), max(S - lo, S / 2), 2)
            vel[0] *= 2.5 * src._scale / max(float(np.hypot(*vel[0])), 1e-6)  # fast enough to separate
            vel[1] = -vel[0] * rng.uniform(0.8, 1.2)
            pos[0] = meet - vel[0] * tc
            pos[1] = meet - vel[1] * tc
        t_in = np.zeros(n, int)
        t_out = np.full(n, T)
        for k in range(n):
            if rng.random() < self.p_enter_leave:
                if rng.random() < 0.5:
                    t_in[k] = int(rng.integers(1, T // 2 + 1))
                else:
                    t_out[k] = int(rng.integers(T // 2, T))
        grow = rng.uniform(-0.1, 0.1, n)
        background = draw_background(rng, S)
        frames = np.zeros((T, S, S, 3), np.uint8)
        masks = np.zeros((T, M, S, S), bool)
        boxes = np.zeros((T, M, 4), np.float32)
        p = pos.copy()
        for t in range(T):
            live = []
            for k, o in enumerate(objs):
                r = o.r * (1 + grow[k] * t / max(T - 1, 1))
                if t_in[k] <= t < t_out[k]:
                    live.append((k, dataclasses.replace(o, cx=float(p[k, 0]), cy=float(p[k, 1]), r=r)))
            img, vis = render_objects([o for _, o in live], S, rng, background=background)
            frames[t] = img
            for (k, _), m in zip(live, vis):
                if m.sum() >= 1:
                    masks[t, k] = m
                    boxes[t, k] = box_from_mask(m)
            # constant velocity, reflecting off the borders
            p += vel
            for d in range(2):
                for k, o in enumerate(objs):
                    lo, hi = o.r * 0.7, S - o.r * 0.7
                    if p[k, d] < lo:
                        p[k, d] = 2 * lo - p[k, d]
                        vel[k, d] = -vel[k, d]
                    elif p[k, d] > hi:
                        p[k, d] = 2 * hi - p[k, d]
                        vel[k, d] = -vel[k, d]
        present = masks.any(axis=(2, 3))
        on = [o for k, o in enumerate(objs) if present[:, k].any()]
        concept = None
        if on and rng.random() < self.p_positive:
            concept = src._sample_positive(rng, on)
        if concept is None:
            concept = src._sample_hard_negative(rng, objs) or src._sample_easy_negative(rng, objs)
        if concept is None:
            concept = Concept(None, None, None)  # unreachable in practice: every object is "object"
        matches = np.zeros(M, bool)
        for k, o in enumerate(objs):
            matches[k] = concept.matches(o) and bool(present[:, k].any())
        attrs = np.full((3, M), -1, np.int32)
        for k, o in enumerate(objs):
            attrs[:, k] = (o.colour, o.shape, o.size)
        obj_valid = np.zeros(M, bool)
        obj_valid[:n] = True
        return {
            "frames": frames,
            "masks": masks,
            "boxes": boxes,
            "present": present,
            "obj_valid": obj_valid,
            "obj_colour": attrs[0],
            "obj_shape": attrs[1],
            "obj_size": attrs[2],
            "text": concept.phrase(),
            "matches": matches,
            "held_out": np.bool_(src.is_held_out(concept)),
            "video_id": np.int64(index),
        }

    def veval_gt(self, indices: Optional[Sequence[int]] = None, *, frame_dir: Optional[str] = None,
                 frame_format: str = "png") -> dict:
        """SA-Co/VEval-format ground truth (one category per distinct phrase, video_np_pairs with
        num_masklets = 0 for negatives) for the given clips (default: all).

        Each clip is a video named `{split}_{index:06d}` whose `file_names` are
        `{video_name}/{t:03d}.{frame_format}`, relative to a frame root as SA-Co/VEval's are to its
        JPEGImages folder. With `frame_dir`, the frames are written there under those names (PNG, or
        JPEG at quality 95 for "jpg"), so that `frame_dir` is the root `evaluate.py --videos` reads."""
        if frame_format not in FRAME_FORMATS:
            raise ValueError(f"frame_format must be one of {FRAME_FORMATS}, got {frame_format!r}")
        indices = range(len(self)) if indices is None else indices
        videos, anns, pairs, cats = [], [], [], {}
        aid = 1
        for i in indices:
            ex = self[i]
            T, S = self.num_frames, self.canvas
            vid = int(ex["video_id"]) + 1
            name = f"{self.split}_{i:06d}"
            file_names = [f"{name}/{t:03d}.{frame_format}" for t in range(T)]
            if frame_dir is not None:
                _write_frames(ex["frames"], [os.path.join(frame_dir, fn) for fn in file_names])
            videos.append({"id": vid, "video_name": name, "height": S, "width": S, "length": T,
                           "file_names": file_names})
            cid = cats.setdefault(ex["text"], len(cats) + 1)
            ks = np.flatnonzero(ex["matches"])
            for k in ks:
                segs, bbs, areas = [], [], []
                for t in range(T):
                    m = ex["masks"][t, k]
                    if m.any():
                        segs.append(encode_mask(m))
                        cx, cy, w, h = ex["boxes"][t, k] * S
                        bbs.append([float(cx - w / 2), float(cy - h / 2), float(w), float(h)])
                        areas.append(int(m.sum()))
                    else:
                        segs.append(None), bbs.append(None), areas.append(None)
                anns.append({"id": aid, "video_id": vid, "category_id": cid, "noun_phrase": ex["text"],
                             "iscrowd": 0, "height": S, "width": S, "segmentations": segs, "bboxes": bbs,
                             "areas": areas})
                aid += 1
            pairs.append({"id": len(pairs) + 1, "video_id": vid, "category_id": cid, "noun_phrase": ex["text"],
                          "num_masklets": int(len(ks))})
        return {"videos": videos, "annotations": anns,
                "categories": [{"id": c, "name": n} for n, c in cats.items()], "video_np_pairs": pairs}
