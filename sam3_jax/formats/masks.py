"""Mask codecs: COCO run-length encoding (RLE) in both of its forms, and checks on RLE strings.

A COCO RLE is `{"size": [h, w], "counts": ...}`: run lengths over the column-major (Fortran-order)
pixel sequence, alternating background / foreground and starting with background (a mask whose
first pixel is set starts with a run of 0).

* uncompressed: `counts` is a list of ints (`rle_encode` / `rle_decode`, numpy only; the
  predictor CLI writes masks this way);
* compressed: `counts` is a string (`encode_mask`, `decode_rles` through pycocotools; the format of
  SA-Co and of the official results files). `to_compressed_rle` converts any COCO segmentation
  (either RLE form, or polygons) to it, `rle_counts` decodes many strings to their runs at once
  with numpy, `check_rles` checks strings cheaply before they reach pycocotools' C code.

Bad encodings raise `MaskFormatError` (a `ValueError`) naming the mask (`where`); the readers of
evaluation and training data turn it into their own error types with the same message.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional, Sequence

import numpy as np

from sam3_jax.formats.scalars import is_int, is_number

__all__ = [
    "MaskFormatError",
    "rle_encode",
    "rle_decode",
    "encode_mask",
    "decode_rles",
    "to_compressed_rle",
    "rle_counts",
    "check_rles",
]


class MaskFormatError(ValueError):
    """A mask encoding that cannot be read: wrong size, bad counts, characters outside the alphabet..."""


# --------------------------------------------------------------------------------------------- uncompressed
def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """COCO-style uncompressed RLE of a (H, W) bool mask: run lengths over the column-major
    (Fortran-order) pixel sequence, starting with a run of zeros (pycocotools' convention)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"RLE needs a 2D mask, got shape {mask.shape}")
    flat = mask.ravel(order="F")
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """Uncompressed COCO RLE -> (H, W) bool mask (the inverse of `rle_encode`)."""
    h, w = rle["size"]
    flat = np.zeros(h * w, dtype=bool)
    pos, val = 0, False
    for c in rle["counts"]:
        flat[pos : pos + c] = val
        pos += c
        val = not val
    return flat.reshape((h, w), order="F")


# --------------------------------------------------------------------------------------------- compressed
def encode_mask(mask: np.ndarray) -> dict:
    """(H, W) bool mask -> compressed COCO RLE with a `str` counts field (JSON-ready)."""
    import pycocotools.mask as mask_utils

    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"encode_mask needs a 2D mask, got shape {m.shape}")
    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": rle["counts"].decode("ascii")}


def decode_rles(rles: Sequence[dict], h: int, w: int) -> np.ndarray:
    """Compressed RLEs of one (h, w) image -> (K, h, w) bool masks (pycocotools)."""
    import pycocotools.mask as mask_utils

    if not rles:
        return np.zeros((0, h, w), bool)
    enc = [{"size": [h, w], "counts": r["counts"].encode("ascii") if isinstance(r["counts"], str) else r["counts"]}
           for r in rles]
    with warnings.catch_warnings():  # pycocotools' RLEs object and numpy 2's __array__(copy=) protocol
        warnings.simplefilter("ignore", DeprecationWarning)
        out = mask_utils.decode(enc)
    return np.moveaxis(out.astype(bool), -1, 0)


def to_compressed_rle(seg: Any, h: int, w: int, where: str) -> dict:
    """Any COCO segmentation (compressed RLE, uncompressed RLE, polygons) -> compressed RLE of size
    (h, w), the conversions pycocotools' `annToRLE` applies. Raises on a wrong size or bad encoding."""
    if type(seg) is dict:
        counts = seg.get("counts")
        if type(counts) is str:
            size = seg.get("size")
            if type(size) is list and len(size) == 2 and type(size[0]) is int and type(size[1]) is int \
                    and size[0] == h and size[1] == w:
                return seg
    import pycocotools.mask as mask_utils

    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if (not isinstance(size, (list, tuple)) or len(size) != 2 or not all(is_int(v) and v >= 0 for v in size)):
            raise MaskFormatError(f"{where}: RLE 'size' must be [height, width], got {size!r}")
        if [int(size[0]), int(size[1])] != [int(h), int(w)]:
            raise MaskFormatError(f"{where}: mask is {size[0]}x{size[1]} (HxW) but the image is {h}x{w}")
        if isinstance(counts, (str, bytes)):
            c = counts.decode("ascii") if isinstance(counts, bytes) else counts
            return {"size": [int(h), int(w)], "counts": c}
        if isinstance(counts, list):
            if not all(is_int(v) and v >= 0 for v in counts):
                raise MaskFormatError(f"{where}: uncompressed RLE counts must be non-negative integers")
            if sum(counts) != h * w:
                raise MaskFormatError(
                    f"{where}: RLE counts sum to {sum(counts)} but the mask has {h}x{w}={h * w} pixels")
            rle = mask_utils.frPyObjects({"size": [int(h), int(w)], "counts": [int(v) for v in counts]}, h, w)
            return {"size": [int(h), int(w)], "counts": rle["counts"].decode("ascii")}
        raise MaskFormatError(
            f"{where}: RLE 'counts' must be a string or a list of integers, got {type(counts).__name__}")
    if isinstance(seg, list):
        if not seg or not all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 and all(is_number(v) for v in p)
                              for p in seg):
            raise MaskFormatError(
                f"{where}: polygon segmentation must be a list of [x1, y1, x2, y2, ...] lists (>= 3 points)")
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
        return {"size": [int(h), int(w)], "counts": rle["counts"].decode("ascii")}
    raise MaskFormatError(f"{where}: segmentation must be an RLE dict or a polygon list, got {type(seg).__name__}")


def rle_counts(rles: Sequence[dict], where: str = "mask",
               hw: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """Decodes many compressed RLEs (`counts` str/bytes) to their run lengths in one vectorised pass.

    Returns (counts int64 (K,), ptr int64 (len(rles)+1,)): mask i has runs counts[ptr[i]:ptr[i+1]],
    alternating background / foreground and starting with background (pycocotools' convention).
    The string format: each count is a little-endian sequence of 5-bit groups stored as chr(48 + v),
    bit 0x20 = "more groups follow", bit 0x10 of the last group = negative; from the third count on
    a count is stored as the difference to the count two places before it. Each decoded mask must
    cover exactly its h*w pixels (`hw`, default: from each RLE's size).
    """
    n = len(rles)
    strings = [r["counts"] for r in rles]
    if hw is None:
        hw = np.array([int(r["size"][0]) * int(r["size"][1]) for r in rles], dtype=np.int64)
    try:
        joined = "".join(strings).encode("ascii")
    except (TypeError, UnicodeEncodeError):
        strings = [c.encode("ascii", "replace") if isinstance(c, str) else bytes(c) for c in strings]
        joined = b"".join(strings)
    lens = np.fromiter(map(len, strings), dtype=np.int64, count=n)
    v = np.frombuffer(joined, dtype=np.uint8) - np.uint8(48)  # chars below '0' wrap around to > 63
    N = v.size
    if N and v.max() > 63:
        bad = int(np.searchsorted(np.cumsum(lens), int(np.flatnonzero(v > 63)[0]), side="right"))
        raise MaskFormatError(f"{where} #{bad}: RLE counts string has characters outside the RLE alphabet")
    cont = (v & np.uint8(0x20)).astype(bool)  # another 5-bit group of the same count follows
    ends = np.cumsum(lens) - 1
    nz = lens > 0
    if N and cont[ends[nz]].any():
        bad = int(np.flatnonzero(nz)[cont[ends[nz]]][0])
        raise MaskFormatError(f"{where} #{bad}: RLE counts string is truncated")
    if not cont.any():  # every count fits one character (the usual case): sign-extend 5 bits
        x = ((v << np.uint8(3)).view(np.int8) >> np.int8(3)).astype(np.int64)
        gcount = lens
    else:
        low = (v & np.uint8(0x1F)).astype(np.int64)
        gstart = np.flatnonzero(np.concatenate([[True], ~cont[:-1]]))
        glen = np.diff(np.concatenate([gstart, [N]]))
        L = int(glen.max())
        if L > 12:
            raise MaskFormatError(f"{where}: RLE counts string holds a number that does not fit 64 bits")
        x = low[gstart]
        for k in range(1, L):
            sel = np.flatnonzero(glen > k)
            x[sel] |= low[gstart[sel] + k] << (5 * k)
        neg = np.flatnonzero(v[gstart + glen - 1] & np.uint8(0x10))
        x[neg] -= np.int64(1) << (5 * glen[neg])
        cl = np.concatenate([[0], np.cumsum(~cont)])
        starts = ends + 1 - lens
        gcount = cl[starts + lens] - cl[starts]
    ngroups = x.size
    ptr = np.concatenate([[0], np.cumsum(gcount)]).astype(np.int64)
    # Delta decoding, counts[m] = x[m] + counts[m - 2] for m > 2 within a mask: fold the sequence into
    # two columns (even / odd global index); down each column it is a running sum that restarts at
    # every mask's m = 0 element (alone), its m = 2 element and its m = 1 element.
    R = (ngroups + 1) // 2
    X = np.zeros(2 * R, dtype=np.int64)
    X[:ngroups] = x
    X = X.reshape(R, 2)
    C = np.cumsum(X, axis=0)
    ne = gcount > 0
    b, nk = ptr[:-1][ne], gcount[ne]
    seg = np.concatenate([b, (b + 1)[nk >= 2], (b + 2)[nk >= 3]])
    S = np.full(2 * R, -1, dtype=np.int64)
    S[seg] = seg >> 1
    first = np.maximum.accumulate(S.reshape(R, 2), axis=0)  # row where each element's run restarts
    counts = (C - np.take_along_axis(C - X, first, axis=0)).reshape(-1)[:ngroups]
    if counts.size and counts.min() < 0:
        bad = int(np.searchsorted(ptr, int(np.flatnonzero(counts < 0)[0]), side="right") - 1)
        raise MaskFormatError(f"{where} #{bad}: RLE decodes to a negative run length")
    cs = np.concatenate([[0], np.cumsum(counts)])
    sums = cs[ptr[1:]] - cs[ptr[:-1]]
    if not np.array_equal(sums, hw):
        bad = int(np.flatnonzero(sums != hw)[0])
        raise MaskFormatError(
            f"{where} #{bad}: RLE runs cover {int(sums[bad])} pixels but its size {rles[bad]['size']} "
            f"has {int(hw[bad])}"
        )
    return counts, ptr


def check_rles(rles: Sequence[dict], where: str = "mask") -> None:
    """Cheap checks of compressed RLE strings before they reach pycocotools' C code: the alphabet,
    and no count cut short. (Sizes are checked against the image on loading; whether the runs add
    up to height x width is only checked by `rle_counts`, i.e. the numpy backend.)"""
    strings = [r["counts"] for r in rles]
    try:
        joined = "".join(strings).encode("ascii")
    except (TypeError, UnicodeEncodeError):
        raise MaskFormatError(f"{where}: RLE counts must be ASCII strings") from None
    lens = np.fromiter(map(len, strings), np.int64, len(strings))
    v = np.frombuffer(joined, dtype=np.uint8)
    if v.size == 0:
        return
    if v.min() < 48 or v.max() > 111:
        bad = int(np.searchsorted(np.cumsum(lens), int(np.flatnonzero((v < 48) | (v > 111))[0]), side="right"))
        raise MaskFormatError(f"{where} #{bad}: RLE counts string has characters outside the RLE alphabet")
    ends = np.cumsum(lens) - 1
    cut = ((v[ends[lens > 0]] - 48) & 0x20) != 0
    if cut.any():
        bad = int(np.flatnonzero(lens > 0)[np.flatnonzero(cut)[0]])
        raise MaskFormatError(f"{where} #{bad}: RLE counts string is truncated")
