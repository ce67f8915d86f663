"""One compared stage of the parity check: the error measures and the tolerance rule shared by the
detector (`run.py`) and the tracker (`tracker.py`) comparisons."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


def allowed_error(tolerance: float, scale: float) -> float:
    """The max abs error a stage may show: `tolerance` for values of magnitude up to 1, and
    `tolerance` x max |official| above that.

    fp32 rounding error grows with the magnitude of what is summed: two correct fp32 programs that
    sum in another order (another kernel, another ISA: AVX2 against AVX-512 tiles a conv or a norm's
    reduction differently) differ by a few ulp of the largest values, so a bound on values of
    magnitude 5 must be 5x the bound on values of magnitude 1 for the same precision."""
    return float(tolerance) * max(1.0, float(scale))


@dataclasses.dataclass
class StageResult:
    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float  # max |a - b| / max |b|
    tolerance: float
    exact: bool = False  # integer / boolean stage compared for equality
    scale: float = 0.0  # max |official|

    @property
    def ok(self) -> bool:
        if self.exact:
            return self.max_abs == 0
        return self.max_abs <= allowed_error(self.tolerance, self.scale)

    def row(self) -> str:
        status = "ok" if self.ok else "FAIL"
        return (
            f"{self.name:<46} {str(self.shape):<22} {self.max_abs:>11.3e} {self.max_rel:>11.3e} "
            f"{self.tolerance:>9.1e}  {status}"
        )


def compare(name: str, ours: Any, ref: Any, tolerance: float) -> StageResult:
    """Max abs / rel error of one stage; within tolerance when max abs <= allowed_error(tolerance,
    max |official|). Integer and boolean stages must be identical."""
    a, b = np.asarray(ours), np.asarray(ref)
    if a.shape != b.shape:
        raise ValueError(f"stage {name}: shape {a.shape} differs from the official {b.shape}")
    if a.dtype.kind in "biu" or b.dtype.kind in "biu":
        diff = float(np.count_nonzero(a.astype(np.int64) != b.astype(np.int64)))
        return StageResult(name, a.shape, diff, diff / max(a.size, 1), 0.0, exact=True)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    if not (np.all(np.isfinite(a64)) and np.all(np.isfinite(b64))):
        return StageResult(name, a.shape, float("inf"), float("inf"), tolerance)
    err = float(np.max(np.abs(a64 - b64))) if a.size else 0.0
    scale = float(np.max(np.abs(b64))) if b.size else 0.0
    return StageResult(name, a.shape, err, err / scale if scale > 0 else err, tolerance, scale=scale)
