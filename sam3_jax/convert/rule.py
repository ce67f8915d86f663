"""One row of the converter's key table: an official module prefix, the Flax module it fills, and
the layout transform between them. The part tables (`rules_*.py`) are lists of these."""

from __future__ import annotations

import dataclasses

from sam3_jax.convert.layouts import Layout


@dataclasses.dataclass(frozen=True)
class Rule:
    src: str  # official module prefix (dot-separated), may contain '{i}'
    dst: str  # Flax module path ('/'-separated), relative to the model root
    layout: Layout

    @property
    def stacked(self) -> bool:
        return "{i}" in self.src
