"""JSON number checks shared by the readers of annotation, prediction and mask files: a bool is
neither an integer nor a number; numpy scalars are; a number must be finite."""

from __future__ import annotations

import math
import numbers
from typing import Any


def is_int(x: Any) -> bool:
    t = type(x)
    if t is int:
        return True
    return t is not bool and isinstance(x, numbers.Integral)


def is_number(x: Any) -> bool:
    t = type(x)
    if t is float or t is int:
        return math.isfinite(x)
    return t is not bool and isinstance(x, numbers.Real) and math.isfinite(float(x))
