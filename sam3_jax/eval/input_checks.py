"""What every reader of evaluation inputs shares: the error type, JSON loading, and the checks on
ids, boxes and masks that name the file and the record.

Every problem in an input is reported as an `EvalInputError` (a `ValueError`) that names the file,
the record and what is wrong; errors of the mask codecs (`sam3_jax.formats.masks.MaskFormatError`)
are turned into it with the same message.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
from typing import Any

from sam3_jax.formats.masks import MaskFormatError, check_rles
from sam3_jax.formats.scalars import is_int, is_number


class EvalInputError(ValueError):
    """Bad evaluation input: malformed JSON, unknown ids, masks of the wrong size, ..."""


@contextlib.contextmanager
def mask_errors_as_input_errors():
    """A `MaskFormatError` raised inside becomes an `EvalInputError` with the same message."""
    try:
        yield
    except MaskFormatError as e:
        raise EvalInputError(str(e)) from None


@contextlib.contextmanager
def gc_paused():
    """Pauses Python's cyclic garbage collector: reading and scoring create millions of small,
    acyclic objects, and collector passes over them cost more than the work itself."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def load_json(path: str, what: str = "file") -> Any:
    """Reads JSON, turning the usual failures into one-line `EvalInputError`s."""
    if not isinstance(path, (str, os.PathLike)):
        raise EvalInputError(f"{what}: expected a path, got {type(path).__name__}")
    if not os.path.isfile(path):
        raise EvalInputError(f"{what} not found: {path}")
    try:
        with open(path, "r", encoding="utf-8") as f, gc_paused():
            return json.load(f)
    except json.JSONDecodeError as e:
        raise EvalInputError(f"{what} {path} is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise EvalInputError(f"{what} {path} is not UTF-8 text: {e.reason}") from None


# --------------------------------------------------------------------------------------------- records
def check_id(x: Any, where: str) -> Any:
    """An image / annotation / category id: an int or a str (numpy ints and str subclasses converted)."""
    t = type(x)
    if t is int or t is str:
        return x
    if is_int(x):
        return int(x)
    if isinstance(x, str):
        return str(x)
    raise EvalInputError(f"{where}: id must be an integer or a string, got {x!r}")


def box_ok(b: Any) -> bool:
    """A list of 4 finite numbers [x, y, w, h] with w, h >= 0 (the fast path of `check_box`)."""
    if type(b) is not list or len(b) != 4:
        return False
    x, y, w, h = b
    for v in b:
        t = type(v)
        if t is not float and t is not int and not is_number(v):
            return False
    return math.isfinite(x + y + w + h) and w >= 0 and h >= 0


def check_box(b: Any, where: str) -> list:
    """A valid xywh box as a list (converted from a tuple or numpy numbers), else an `EvalInputError`."""
    if box_ok(b):
        return b
    if isinstance(b, tuple) and box_ok(list(b)):
        return list(b)
    if not isinstance(b, (list, tuple)) or len(b) != 4 or not all(is_number(v) for v in b):
        raise EvalInputError(f"{where}: bbox must be 4 finite numbers [x, y, w, h], got {b!r}")
    if b[2] < 0 or b[3] < 0:
        raise EvalInputError(f"{where}: bbox {list(b)} has a negative width or height (expected [x, y, w, h])")
    return [float(v) for v in b]


def check_rles_named(rles: list, index: list, what: str) -> None:
    """`check_rles` on the masks of some records (`index`: their record numbers), as an `EvalInputError`
    that names the record."""
    try:
        check_rles(rles, what)
    except MaskFormatError as e:
        msg = str(e)
        if " #" in msg:  # name the record instead of its position among the masks
            head, rest = msg.split(" #", 1)
            k, tail = rest.split(":", 1)
            raise EvalInputError(f"{head} [{index[int(k)]}]:{tail}") from None
        raise EvalInputError(msg) from None
