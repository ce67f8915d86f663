"""Connected components of binary masks in JAX (fixed shapes, jit- and vmap-able), and the mask
post-processing built on them: filling small background holes and removing small foreground
"sprinkles" (official: sam3/perflib/connected_components.py, which labels with skimage
`measure.label` on the CPU, and the two users `SAM2Transforms.postprocess_masks` in
sam3/model/utils/sam1_utils.py and `fill_holes_in_mask_scores` in sam3/model/sam3_tracker_utils.py).

Labelling (`connected_components`)
----------------------------------
Every foreground pixel holds a "parent": the flat index of a pixel of the same component, never
larger than its own index (it starts as its own index). One round of a `lax.while_loop`:

  1. propagate: each pixel takes the smallest parent among itself and its foreground neighbours
     (8-connectivity: the 3 x 3 square; 4-connectivity: the cross);
  2. hook: the pixel its parent points to also takes that minimum (a scatter-min), so a whole
     chain learns the smaller label at once instead of one pixel per round;
  3. compress: pointer jumping, parent <- parent[parent], twice.

Each step keeps the invariant (a parent is a pixel of the same component, with an index no larger
than the pixel's), and labels only decrease, so the loop ends when a round changes nothing; then
every pixel of a component points to the component's first pixel in raster order. Numbering the
components by those first pixels gives labels 1..n in raster order of first appearance: the same
numbering as `scipy.ndimage.label` and `skimage.measure.label`. Pixel areas come from one
scatter-add. The loop runs until convergence whatever the mask (no iteration cap, so the result
is exact); hooking and compression keep the round count small even on spirals, where plain
propagation would need as many rounds as the spiral is long.

Post-processing
---------------
`fill_holes(logits, max_hole_area, threshold, max_sprinkle_area)` is the image predictor's step:
background components (logit <= threshold) of area <= max_hole_area become threshold + 10, and
foreground components (logit > threshold) of area <= max_sprinkle_area become threshold - 10. Both
component maps are computed on the *input* logits, as the official code does.

`fill_holes_in_mask_scores(logits, max_area)` is the video tracker's variant: holes (area <=
max_area) become 0.1, then, on the hole-filled mask, foreground components no larger than both
max_area and half of that mask's foreground area become -0.1.

Masks are (..., H, W): leading axes are a batch of independent images.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_NEIGHBOURS = {
    4: ((-1, 0), (1, 0), (0, -1), (0, 1)),
    8: tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)),
}
_JUMPS_PER_ROUND = 2
# What the official post-processing writes into a filled hole / removed sprinkle, relative to the
# threshold (SAM2Transforms.postprocess_masks), and the video variant's absolute values.
HOLE_OFFSET = 10.0
VIDEO_HOLE_VALUE = 0.1
VIDEO_SPRINKLE_VALUE = -0.1


def _check_connectivity(connectivity: Any) -> int:
    if connectivity not in _NEIGHBOURS:
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity!r}")
    return int(connectivity)


def _check_mask(mask: Any, argname: str) -> jax.Array:
    mask = jnp.asarray(mask)
    if mask.ndim < 2:
        raise ValueError(f"{argname} must have shape (..., H, W), got {tuple(mask.shape)}")
    if mask.shape[-1] == 0 or mask.shape[-2] == 0:
        raise ValueError(f"{argname} must have a non-empty (H, W), got {tuple(mask.shape)}")
    return mask


def _label_one(fg: jax.Array, connectivity: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One (H, W) bool mask -> (dense labels, areas, number of rounds)."""
    h, w = fg.shape
    n = h * w
    none = jnp.int32(n)  # parent of background pixels (one past the last index)
    flat_fg = fg.reshape(n)
    idx = jnp.arange(n, dtype=jnp.int32)
    offsets = _NEIGHBOURS[connectivity]

    def propagate(parent: jax.Array) -> jax.Array:
        grid = parent.reshape(h, w)
        padded = jnp.pad(grid, 1, constant_values=none)
        m = grid
        for dy, dx in offsets:
            m = jnp.minimum(m, jax.lax.dynamic_slice(padded, (1 + dy, 1 + dx), (h, w)))
        return jnp.where(flat_fg, m.reshape(n), none)

    def jump(parent: jax.Array) -> jax.Array:
        return jnp.where(flat_fg, parent[jnp.minimum(parent, n - 1)], none)

    def body(state):
        parent, _, rounds = state
        m = propagate(parent)
        # Hook: the pixel each parent points to takes the neighbourhood minimum too.
        hooked = m.at[jnp.where(flat_fg, parent, n)].min(m, mode="drop")
        new = hooked
        for _ in range(_JUMPS_PER_ROUND):
            new = jump(new)
        return new, jnp.any(new != parent), rounds + 1

    init = (jnp.where(flat_fg, idx, none), jnp.any(flat_fg), jnp.int32(0))
    parent, _, rounds = jax.lax.while_loop(lambda s: s[1], body, init)

    roots = flat_fg & (parent == idx)
    rank = jnp.cumsum(roots.astype(jnp.int32))  # component number of each root, 1-based
    safe = jnp.minimum(parent, n - 1)
    labels = jnp.where(flat_fg, rank[safe], 0)
    counts = jnp.zeros((n + 1,), jnp.int32).at[parent].add(1)
    areas = jnp.where(flat_fg, counts[safe], 0)
    return labels.reshape(h, w), areas.reshape(h, w), rounds


def connected_components(
    mask: Any, connectivity: int = 8, *, return_rounds: bool = False
) -> tuple[jax.Array, ...]:
    """Labels the connected components of the non-zero pixels of `mask` (..., H, W).

    Returns (labels, areas), both int32 of mask's shape: labels 0 on the background and 1..n per
    image, numbered in raster order of each component's first pixel (as `scipy.ndimage.label` and
    `skimage.measure.label` number them); areas the pixel count of each pixel's component (0 on the
    background). connectivity 8 (the official default: skimage's full connectivity) or 4. With
    return_rounds, also the number of loop rounds per image (leading shape of mask).
    """
    connectivity = _check_connectivity(connectivity)
    mask = _check_mask(mask, "mask")
    lead, (h, w) = mask.shape[:-2], mask.shape[-2:]
    fg = (mask != 0).reshape((-1, h, w))
    labels, areas, rounds = jax.vmap(lambda m: _label_one(m, connectivity))(fg)
    out = (labels.reshape(lead + (h, w)), areas.reshape(lead + (h, w)))
    if return_rounds:
        out += (rounds.reshape(lead),)
    return out


def _check_area(value: Any, argname: str) -> float:
    if isinstance(value, (jax.Array, np.ndarray)) and np.ndim(value) != 0:
        raise ValueError(f"{argname} must be a number, got an array of shape {np.shape(value)}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{argname} must be a number, got {value!r}") from None
    if not np.isfinite(v):
        raise ValueError(f"{argname} must be finite, got {value!r}")
    return v


def fill_holes(
    logits: Any, max_hole_area: float, threshold: float = 0.0, max_sprinkle_area: float = 0.0,
    *, connectivity: int = 8,
) -> jax.Array:
    """The official image post-processing (`SAM2Transforms.postprocess_masks` before resizing) on
    mask logits (..., H, W): background components (logit <= threshold) with area <= max_hole_area
    are set to threshold + 10 when max_hole_area > 0; foreground components (logit > threshold)
    with area <= max_sprinkle_area are set to threshold - 10 when max_sprinkle_area > 0. Both
    component maps come from the input logits. The areas and the threshold are static numbers."""
    max_hole_area = _check_area(max_hole_area, "max_hole_area")
    max_sprinkle_area = _check_area(max_sprinkle_area, "max_sprinkle_area")
    threshold = _check_area(threshold, "threshold")
    logits = _check_mask(logits, "logits")
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise ValueError(f"logits must be a floating array, got dtype {logits.dtype}")
    out = logits
    if max_hole_area > 0:
        labels, areas = connected_components(logits <= threshold, connectivity)
        hole = (labels > 0) & (areas <= max_hole_area)
        out = jnp.where(hole, jnp.asarray(threshold + HOLE_OFFSET, logits.dtype), out)
    if max_sprinkle_area > 0:
        labels, areas = connected_components(logits > threshold, connectivity)
        sprinkle = (labels > 0) & (areas <= max_sprinkle_area)
        out = jnp.where(sprinkle, jnp.asarray(threshold - HOLE_OFFSET, logits.dtype), out)
    return out


def fill_holes_in_mask_scores(
    logits: Any, max_area: float, *, fill_holes: bool = True, remove_sprinkles: bool = True,
    connectivity: int = 8,
) -> jax.Array:
    """The video tracker's post-processing (official `fill_holes_in_mask_scores`) on mask logits
    (..., H, W), threshold 0: nothing when max_area <= 0; else background components of area <=
    max_area become 0.1, then, on that result, foreground components of area <= min(max_area,
    foreground area // 2) (per mask) become -0.1."""
    max_area = _check_area(max_area, "max_area")
    if not float(max_area).is_integer():
        # The official clamps an int32 area tensor in place with max_area, which torch refuses for
        # a fractional value.
        raise ValueError(f"max_area must be a whole number of pixels, got {max_area!r}")
    logits = _check_mask(logits, "logits")
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise ValueError(f"logits must be a floating array, got dtype {logits.dtype}")
    if max_area <= 0:
        return logits
    out = logits
    if fill_holes:
        bg = out <= 0
        _, areas = connected_components(bg, connectivity)
        out = jnp.where(bg & (areas <= max_area), jnp.asarray(VIDEO_HOLE_VALUE, logits.dtype), out)
    if remove_sprinkles:
        fg = out > 0
        fg_area = jnp.sum(fg, axis=(-2, -1), keepdims=True, dtype=jnp.int32)
        limit = jnp.minimum(fg_area // 2, jnp.int32(int(max_area)))
        _, areas = connected_components(fg, connectivity)
        out = jnp.where(fg & (areas <= limit), jnp.asarray(VIDEO_SPRINKLE_VALUE, logits.dtype), out)
    return out
