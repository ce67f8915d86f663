"""Procedural "concept segmentation" data (evaluation_and_data.md §4.1), pure numpy.

Images hold 2-6 shapes (circle, square, triangle, ring, cross) in 6 colours and 2 sizes on a noisy
gradient background with low-contrast clutter. Each example is one (image, query) pair:

* a *text* query "[size] [colour] shape|object" whose ground truth is *every* object satisfying it
  (positive, ~55 %), or a phrase absent from the image: a *hard* negative (its attributes occur in the
  image, never together on one object) or an *easy* negative (an attribute absent from the image);
* optional exemplar boxes on text queries (a positive box on a GT instance, a negative box on a
  non-matching object);
* *visual* (exemplar-only) queries: text "visual" + one positive box; the target is every object with
  the exemplar's colour and shape.

Held-out colour-shape combinations never appear as a phrase (positive or negative) nor as a visual
concept in the train split; the objects themselves do appear. In val/test a share of the queries
(`held_out_rate`) is about a held-out combination, flagged by `held_out`.

Everything is deterministic in (seed, split, index). `SyntheticSource` is a picklable random-access
source (`__len__`, `__getitem__`, `__repr__`) for Grain; the clips of `SyntheticVideoSource`
(`sam3_jax.data.synthetic_video`) are drawn with the same objects, rendering and query rules.

Image example (S = canvas size, M = max_instances, N = max_prompt_boxes), the format every source of
`sam3_jax.data` returns:

    image          (S, S, 3) uint8
    text           str        prompt text for the tokenizer ("visual" for exemplar-only queries)
    boxes          (M, 4) float32  GT boxes, cxcywh normalised to [0, 1], real ones first
    masks          (M, S, S) bool  GT visible masks, padding zero
    valid          (M,) bool       real GT instance
    mask_valid     (M,) bool       GT instance with a mask
    prompt_boxes   (N, 4) float32  exemplar boxes, cxcywh normalised
    prompt_labels  (N,) int32      1 positive / 0 negative exemplar
    prompt_mask    (N,) bool       True = padding (the model's box_mask convention)
    is_exhaustive  bool            every instance of the phrase is annotated
    held_out       bool            the query's colour-shape combination is held out
    pair_id        int64          datapoint id (= index here)
    height, width  int32           size of `image` (what the GT masks refer to)
    num_instances  int32           number of real GT instances
    query_type     int32           0 text, 1 text + exemplars, 2 visual (exemplar-only)
    negative_kind  int32           0 positive, 1 hard negative, 2 easy negative
    concept        str            the concept in words (for visual queries too)
    objects        (M, 3) int32   (size, colour, shape) indices of every object drawn, -1 padding
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

__all__ = [
    "SHAPES",
    "COLOURS",
    "SIZES",
    "DEFAULT_HELD_OUT",
    "VISUAL_TEXT",
    "SPLITS",
    "Concept",
    "SyntheticSource",
    "box_from_mask",
    "draw_background",
    "render_objects",
]

SHAPES = ("circle", "square", "triangle", "ring", "cross")
COLOURS = ("red", "green", "blue", "yellow", "purple", "white")
_RGB = np.array(
    [[215, 40, 40], [40, 175, 60], [45, 85, 225], [235, 210, 40], [150, 55, 190], [240, 240, 240]],
    dtype=np.float32,
)
SIZES = ("small", "large")
_PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles", "ring": "rings",
           "cross": "crosses", "object": "objects"}
DEFAULT_HELD_OUT = (("purple", "triangle"), ("white", "ring"), ("green", "cross"))
VISUAL_TEXT = "visual"  # what the official processor encodes for a box-only prompt
SPLITS = {"train": 0, "val": 1, "test": 2}
_DEFAULT_LEN = {"train": 1_000_000, "val": 512, "test": 1024}


@dataclasses.dataclass(frozen=True)
class Concept:
    """Attribute indices; None = unspecified."""

    size: Optional[int] = None
    colour: Optional[int] = None
    shape: Optional[int] = None

    def matches(self, obj: "_Obj") -> bool:
        return ((self.size is None or self.size == obj.size) and (self.colour is None or self.colour == obj.colour)
                and (self.shape is None or self.shape == obj.shape))

    def phrase(self, plural: bool = False) -> str:
        words = []
        if self.size is not None:
            words.append(SIZES[self.size])
        if self.colour is not None:
            words.append(COLOURS[self.colour])
        noun = SHAPES[self.shape] if self.shape is not None else "object"
        words.append(_PLURAL[noun] if plural else noun)
        return " ".join(words)

    def combo(self) -> Optional[tuple[int, int]]:
        if self.colour is None or self.shape is None:
            return None
        return (self.colour, self.shape)


@dataclasses.dataclass
class _Obj:
    shape: int
    colour: int
    size: int
    cx: float
    cy: float
    r: float
    rgb: np.ndarray


# --------------------------------------------------------------------------------------------- rendering
def _shape_mask(shape: int, cx: float, cy: float, r: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    dx, dy = xx - cx, yy - cy
    name = SHAPES[shape]
    if name == "circle":
        return dx * dx + dy * dy <= r * r
    if name == "square":
        h = 0.85 * r
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if name == "triangle":  # apex up; base at +0.8 r
        base = 0.8 * r
        half = 0.95 * r * (dy + r) / (base + r)  # half width grows linearly from the apex
        return (dy >= -r) & (dy <= base) & (np.abs(dx) <= half)
    if name == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if name == "cross":
        t = 0.34 * r
        return ((np.abs(dx) <= t) & (np.abs(dy) <= r)) | ((np.abs(dy) <= t) & (np.abs(dx) <= r))
    raise ValueError(name)


def box_from_mask(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> cxcywh normalised box of its pixels (pixel i covers [i, i + 1)); zeros if empty."""
    h, w = mask.shape
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return np.zeros(4, np.float32)
    cols = np.flatnonzero(mask.any(axis=0))
    x0, x1, y0, y1 = cols[0], cols[-1] + 1, rows[0], rows[-1] + 1
    return np.array([(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h], np.float32)


def draw_background(rng: np.random.Generator, S: int, clutter: bool = True) -> np.ndarray:
    """(S, S, 3) float background: a gradient between two muted colours, plus low-contrast clutter blobs."""
    # muted (greyish) colours, so that no background looks like a saturated palette colour
    c0 = np.clip(rng.uniform(30, 190) + rng.uniform(-35, 35, 3), 0, 255)
    c1 = np.clip(c0 + rng.uniform(-50, 50, 3), 0, 255)
    ang = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32) / max(S - 1, 1)
    t = (np.cos(ang) * xx + np.sin(ang) * yy)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
    # low-contrast clutter blobs that match no phrase
    for _ in range(int(rng.integers(0, 4)) if clutter else 0):
        bx, by = rng.uniform(0, S, 2)
        ax, ay = rng.uniform(0.05, 0.2, 2) * S
        blob = ((xx * (S - 1) - bx) / ax) ** 2 + ((yy * (S - 1) - by) / ay) ** 2 <= 1.0
        img[blob] += rng.uniform(-25, 25, 3)
    return img


def render_objects(objs: Sequence[_Obj], S: int, rng: np.random.Generator,
                   background: Optional[np.ndarray] = None, noise: float = 8.0,
                   clutter: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Paints objects in z-order (list order) on `background` (default: a fresh gradient, with clutter
    blobs when `clutter`), adds Gaussian pixel noise of std `noise`. Returns the uint8 image and the
    (K, S, S) visible masks."""
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32) + 0.5
    img = draw_background(rng, S, clutter) if background is None else background.copy()
    full = np.stack([_shape_mask(o.shape, o.cx, o.cy, o.r, yy, xx) for o in objs]) if objs else \
        np.zeros((0, S, S), bool)
    for o, m in zip(objs, full):
        img[m] = o.rgb
    img += rng.normal(0, noise, img.shape)
    vis = full.copy()
    for k in range(len(objs) - 2, -1, -1):  # what lies above hides what lies below
        vis[k] &= ~full[k + 1:].any(axis=0)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), vis


def _visible_only(objs: list, S: int, min_pixels: int) -> tuple[list, np.ndarray]:
    """Drops objects with fewer than `min_pixels` visible pixels until all remaining are visible enough."""
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32) + 0.5
    full = [_shape_mask(o.shape, o.cx, o.cy, o.r, yy, xx) for o in objs]
    while True:
        vis = []
        cover = np.zeros((S, S), bool)
        for m in full[::-1]:
            vis.append(m & ~cover)
            cover |= m
        vis = vis[::-1]
        bad = [k for k, v in enumerate(vis) if v.sum() < min_pixels]
        if not bad:
            return objs, (np.stack(vis) if vis else np.zeros((0, S, S), bool))
        k = bad[0]
        objs = objs[:k] + objs[k + 1:]
        full = full[:k] + full[k + 1:]


def _negative_kind(c: Concept, objs: Sequence[_Obj]) -> int:
    """1 (hard) when every attribute of an absent concept occurs in the image, else 2 (easy)."""
    for attr in ("size", "colour", "shape"):
        v = getattr(c, attr)
        if v is not None and not any(getattr(o, attr) == v for o in objs):
            return 2
    return 1


# --------------------------------------------------------------------------------------------- the image source
class SyntheticSource:
    """Random-access source of synthetic (image, query) examples; see the module docstring.

    Args:
      split: "train", "val" or "test" (different seeds; held-out combinations are never phrases in train).
      seed: base seed; an example depends only on (seed, split, index).
      num_examples: length (default: train 1e6, val 512, test 1024).
      canvas: image side S in pixels (default 64); object sizes scale with it.
      max_instances (M), max_prompt_boxes (N): padding sizes.
      held_out: colour-shape combinations (names) kept out of train phrases.
      held_out_rate: share of val/test queries forced to be about a held-out combination.
      p_positive, p_visual, p_exemplar_pos, p_exemplar_neg, p_repeat, p_plural: query sampling rates.
      min_objects, max_objects: objects per image (max_objects <= M).
      object_scale: multiplies the object radii (small 4-6.5, large 8-12 pixels at canvas 64).
      clutter: low-contrast background blobs; noise: std of the Gaussian pixel noise.
      colours, shapes: the palette and shapes objects are drawn from (subsets of COLOURS / SHAPES, in
        any order; default all); every held-out combination must be made of them.
      size_words: phrases may name the size ("small" / "large"); False: never (sizes still vary).
    """

    def __init__(self, split: str = "train", *, seed: int = 0, num_examples: Optional[int] = None,
                 canvas: int = 64, max_instances: int = 8, max_prompt_boxes: int = 4,
                 held_out: Sequence[tuple[str, str]] = DEFAULT_HELD_OUT, held_out_rate: float = 0.2,
                 p_positive: float = 0.55, p_visual: float = 0.1, p_exemplar_pos: float = 0.3,
                 p_exemplar_neg: float = 0.1, p_repeat: float = 0.5, p_plural: float = 0.2,
                 min_objects: int = 2, max_objects: int = 6, object_scale: float = 1.0, clutter: bool = True,
                 noise: float = 8.0, colours: Sequence[str] = COLOURS, shapes: Sequence[str] = SHAPES,
                 size_words: bool = True):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        if canvas < 24:
            raise ValueError(f"canvas must be >= 24 pixels, got {canvas}")
        if not 1 <= min_objects <= max_objects <= max_instances:
            raise ValueError(f"need 1 <= min_objects <= max_objects <= max_instances, got "
                             f"{min_objects}, {max_objects}, {max_instances}")
        if max_prompt_boxes < 2:
            raise ValueError("max_prompt_boxes must be >= 2 (a positive and a negative exemplar)")
        self.split = split
        self.seed = int(seed)
        self.num_examples = int(_DEFAULT_LEN[split] if num_examples is None else num_examples)
        self.canvas = int(canvas)
        self.max_instances = int(max_instances)
        self.max_prompt_boxes = int(max_prompt_boxes)
        for name, given, known in (("colours", colours, COLOURS), ("shapes", shapes, SHAPES)):
            unknown = [x for x in given if x not in known]
            if unknown or not given or len(set(given)) != len(given):
                raise ValueError(f"{name} must be distinct names out of {known}, got {tuple(given)}")
        self.colours, self.shapes = tuple(colours), tuple(shapes)
        self._colour_ids = np.array([COLOURS.index(c) for c in self.colours])
        self._shape_ids = np.array([SHAPES.index(x) for x in self.shapes])
        combos = []
        for c, s in held_out:
            if c not in self.colours or s not in self.shapes:
                raise ValueError(f"held-out combination ({c!r}, {s!r}) is not a (colour, shape) pair of "
                                 f"colours {self.colours} and shapes {self.shapes}")
            combos.append((COLOURS.index(c), SHAPES.index(s)))
        if len(combos) >= len(self.colours) * len(self.shapes):
            raise ValueError("every colour-shape combination is held out; nothing is left to train on")
        self.held_out = tuple(held_out)
        self._held = frozenset(combos)
        self.held_out_rate = float(held_out_rate)
        self.p_positive, self.p_visual = float(p_positive), float(p_visual)
        self.p_exemplar_pos, self.p_exemplar_neg = float(p_exemplar_pos), float(p_exemplar_neg)
        self.p_repeat, self.p_plural = float(p_repeat), float(p_plural)
        self.min_objects, self.max_objects = int(min_objects), int(max_objects)
        self.object_scale, self.clutter, self.noise = float(object_scale), bool(clutter), float(noise)
        self.size_words = bool(size_words)
        if not 0.25 <= self.object_scale <= 2.5:
            raise ValueError(f"object_scale must be in [0.25, 2.5], got {object_scale}")
        self._scale = self.canvas / 64.0
        self._min_pixels = max(4, int(round(12 * self._scale ** 2)))

    # -- protocol
    def __len__(self) -> int:
        return self.num_examples

    def __repr__(self) -> str:
        return (f"SyntheticSource(split={self.split!r}, seed={self.seed}, num_examples={self.num_examples}, "
                f"canvas={self.canvas}, max_instances={self.max_instances}, "
                f"max_prompt_boxes={self.max_prompt_boxes}, held_out={self.held_out!r})")

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for {self!r}")
        rng = np.random.default_rng([self.seed, SPLITS[self.split], index, 0x5A3])
        return self._example(rng, index)

    # -- helpers
    def is_held_out(self, concept: Concept) -> bool:
        return concept.combo() in self._held

    def _allowed(self, concept: Concept) -> bool:
        return self.split != "train" or not self.is_held_out(concept)

    def _size_word(self, rng) -> Optional[int]:
        """The size a sampled phrase names (30 %), or None."""
        size = int(rng.integers(2)) if rng.random() < 0.3 else None
        return size if self.size_words else None

    def _any_colour(self, rng) -> int:
        return int(self._colour_ids[rng.integers(len(self._colour_ids))])

    def _any_shape(self, rng) -> int:
        return int(self._shape_ids[rng.integers(len(self._shape_ids))])

    def _new_obj(self, rng, shape=None, colour=None, size=None) -> _Obj:
        S, sc = self.canvas, self._scale
        shape = self._any_shape(rng) if shape is None else shape
        colour = self._any_colour(rng) if colour is None else colour
        size = int(rng.integers(2)) if size is None else size
        r = float(rng.uniform(4.0, 6.5) if size == 0 else rng.uniform(8.0, 12.0)) * sc * self.object_scale
        cx, cy = rng.uniform(r * 0.7, S - r * 0.7, 2)
        rgb = np.clip(_RGB[colour] + rng.normal(0, 10, 3), 0, 255).astype(np.float32)
        return _Obj(shape, colour, size, float(cx), float(cy), r, rgb)

    def _objects(self, rng, must: Optional[Concept] = None, forbid: Optional[Concept] = None) -> list[_Obj]:
        n = int(rng.integers(self.min_objects, self.max_objects + 1))
        objs: list[_Obj] = []
        if rng.random() < self.p_repeat:
            shape, colour = self._any_shape(rng), self._any_colour(rng)
            for _ in range(int(rng.integers(2, 5))):
                objs.append(self._new_obj(rng, shape, colour))
        while len(objs) < n:
            objs.append(self._new_obj(rng))
        objs = objs[: self.max_objects]
        if must is not None:
            k = int(rng.integers(len(objs)))
            objs[k] = self._new_obj(rng, must.shape, must.colour, must.size)
        if forbid is not None:  # re-draw anything that matches the forbidden concept
            for k, o in enumerate(objs):
                while forbid.matches(o):
                    o = self._new_obj(rng)
                objs[k] = o
        order = rng.permutation(len(objs))
        return [objs[i] for i in order]

    def _sample_positive(self, rng, objs) -> Optional[Concept]:
        for _ in range(12):
            o = objs[int(rng.integers(len(objs)))]
            use = rng.random(3) < (0.4, 0.75, 0.75)
            use[0] &= self.size_words
            if not (use[1] or use[2]):
                use[1 + int(rng.integers(2))] = True
            c = Concept(o.size if use[0] else None, o.colour if use[1] else None, o.shape if use[2] else None)
            if self._allowed(c):
                return c
        return None

    def _sample_hard_negative(self, rng, objs) -> Optional[Concept]:
        sizes = sorted({o.size for o in objs})
        colours = sorted({o.colour for o in objs})
        shapes = sorted({o.shape for o in objs})
        cands = []
        for co in colours:
            for sh in shapes:
                cands.append(Concept(None, co, sh))
                for si in sizes:
                    cands.append(Concept(si, co, sh))
            for si in sizes:
                cands.append(Concept(si, co, None))
        for sh in shapes:
            for si in sizes:
                cands.append(Concept(si, None, sh))
        cands = [c for c in cands if self._allowed(c) and not any(c.matches(o) for o in objs)
                 and (self.size_words or c.size is None)]
        if not cands:
            return None
        return cands[int(rng.integers(len(cands)))]

    def _sample_easy_negative(self, rng, objs) -> Optional[Concept]:
        colours = {o.colour for o in objs}
        shapes = {o.shape for o in objs}
        for _ in range(20):
            c = Concept(self._size_word(rng),
                        self._any_colour(rng) if rng.random() < 0.75 else None,
                        self._any_shape(rng) if rng.random() < 0.75 else None)
            absent = (c.colour is not None and c.colour not in colours) or (c.shape is not None and c.shape not in shapes)
            if absent and self._allowed(c):
                return c
        return None

    def _example(self, rng: np.random.Generator, index: int) -> dict:
        S, M, N = self.canvas, self.max_instances, self.max_prompt_boxes
        held_query = self.split != "train" and self._held and rng.random() < self.held_out_rate
        visual = (not held_query) and rng.random() < self.p_visual
        positive = visual or rng.random() < self.p_positive
        forced: Optional[Concept] = None
        if held_query:
            co, sh = sorted(self._held)[int(rng.integers(len(self._held)))]
            forced = Concept(self._size_word(rng), co, sh)
        for _ in range(50):  # (an image whose objects all hide each other is drawn again)
            objs = self._objects(rng, must=forced if positive else None, forbid=None if positive else forced)
            objs, vis = _visible_only(objs, S, self._min_pixels)
            if objs:
                break
        else:
            raise RuntimeError(f"{self!r}: could not draw a visible object; is the canvas too small?")
        concept, qtype = None, 0
        if forced is not None and (not positive or any(forced.matches(o) for o in objs)):
            concept = forced
        elif visual:
            cands = [k for k, o in enumerate(objs) if self._allowed(Concept(None, o.colour, o.shape))]
            if cands:
                vis_k = cands[int(rng.integers(len(cands)))]
                o = objs[vis_k]
                concept, qtype = Concept(None, o.colour, o.shape), 2
        if concept is None and positive:
            concept = self._sample_positive(rng, objs)
        if concept is None:
            if rng.random() < 0.6:
                concept = self._sample_hard_negative(rng, objs)
            if concept is None:
                concept = self._sample_easy_negative(rng, objs)
            if concept is None:  # an unusual image where everything allowed is present: any absent concept
                concept = next(Concept(None, co, sh) for co in self._colour_ids.tolist() for sh in self._shape_ids.tolist()
                               if self._allowed(Concept(None, co, sh))
                               and not any(Concept(None, co, sh).matches(o) for o in objs))
        image, vis = render_objects(objs, S, rng, noise=self.noise, clutter=self.clutter)
        match = [k for k, o in enumerate(objs) if concept.matches(o)]
        boxes = np.zeros((M, 4), np.float32)
        masks = np.zeros((M, S, S), bool)
        valid = np.zeros(M, bool)
        for j, k in enumerate(match[:M]):
            masks[j] = vis[k]
            boxes[j] = box_from_mask(vis[k])
            valid[j] = True
        objects = np.full((M, 3), -1, np.int32)
        objects[: len(objs)] = [(o.size, o.colour, o.shape) for o in objs]
        pboxes = np.zeros((N, 4), np.float32)
        plabels = np.zeros(N, np.int32)
        pmask = np.ones(N, bool)
        n_p = 0
        if qtype == 2:
            pboxes[0], plabels[0], pmask[0], n_p = box_from_mask(vis[vis_k]), 1, False, 1
            text = VISUAL_TEXT
        else:
            text = concept.phrase(plural=bool(rng.random() < self.p_plural))
            if match and rng.random() < self.p_exemplar_pos:
                k = match[int(rng.integers(len(match)))]
                pboxes[n_p], plabels[n_p], pmask[n_p] = box_from_mask(vis[k]), 1, False
                n_p += 1
            others = [k for k in range(len(objs)) if k not in match]
            if others and rng.random() < self.p_exemplar_neg:
                k = others[int(rng.integers(len(others)))]
                pboxes[n_p], plabels[n_p], pmask[n_p] = box_from_mask(vis[k]), 0, False
                n_p += 1
            qtype = 1 if n_p else 0
        return {
            "image": image,
            "text": text,
            "boxes": boxes,
            "masks": masks,
            "valid": valid,
            "mask_valid": valid.copy(),
            "prompt_boxes": pboxes,
            "prompt_labels": plabels,
            "prompt_mask": pmask,
            "is_exhaustive": np.bool_(True),
            "held_out": np.bool_(self.is_held_out(concept)),
            "pair_id": np.int64(index),
            "height": np.int32(S),
            "width": np.int32(S),
            "num_instances": np.int32(valid.sum()),
            "query_type": np.int32(qtype),
            "negative_kind": np.int32(0 if match else _negative_kind(concept, objs)),
            "concept": concept.phrase(),
            "objects": objects,
        }
