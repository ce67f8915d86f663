"""Per-object track memory with a fixed number of slots, and the official frame choice under `jit`.

`select_memory_frames` (tracker.py) picks, on the host, which past frames the memory attention
sees. A video step compiled once needs the same choice as array operations over a fixed-size
store: `TrackMemory` keeps K slots per object (the memory-encoder features and the object pointer
of one past frame, its frame index, whether it is a conditioning frame, and an insertion counter),
and `memory_bank_at` turns it into the `MemoryBank` of the current frame (the slots themselves,
with validity masks and temporal positions), equal to `select_memory_frames` on the same history:

  conditioning frames: all of them when there are at most `max_cond_frames_in_attn`, else the
    closest one before the current frame, the closest one at or after it, then the others by
    distance (ties by insertion order, as the official dict keeps them); t = 0;
  recent frames: frame_idx -/+ t_rel for t_rel = 1 .. num_maskmem - 1 (t_pos = num_maskmem - t_rel)
    when that frame is a non-conditioning frame or an unselected conditioning frame;
  pointers: the selected conditioning frames not after the current frame (not before it when
    tracking in reverse), at distance |frame_idx - f|, and the non-conditioning or unselected
    conditioning frames at distance 1 .. min(num_frames, max_obj_ptrs_in_encoder) - 1.

With `memory_selection` (the video model's tracker: the official `use_memory_selection`, a
SAM2Long-style filter) the recent frames and pointers come instead from the official
`frame_filter`: walking back from the current frame (frame 0 excluded when tracking forward), the
nearest max_num - 1 non-conditioning frames whose stored `eff_score` exceeds `mf_threshold`
(max_num = min(num_frames, max_obj_ptrs_in_encoder)), plus the adjacent frame whatever its
score; ranked by nearness r = 1, 2, ... (the adjacent frame is r = 1), a frame is a spatial
memory when r <= num_maskmem - 1 (t_pos = num_maskmem - r) and a pointer when r < the list's
length (temporal distance r, not the frame distance). On the first frame in the tracking
direction the list is empty.

`add_memory` writes one frame's memory into a slot: the slot that already holds the frame, else a
free slot, else the non-conditioning slot farthest behind in the tracking direction (it can no
longer be chosen once it is farther back than both windows). Conditioning frames are never evicted;
a store full of them raises nothing under `jit` but reports `dropped`. With K >= (conditioning
frames) + min(num_frames, max_obj_ptrs_in_encoder) - 1 (the pointer window, the longest), nothing
the official tracker would attend to is ever evicted.

`condition_step` (a mask or clicks on a frame -> a conditioning memory) and `propagate_step` (one
tracked frame: choice, step, new memory) are the pure per-frame functions of the tracking half of
the video step.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from sam3_jax.model.tracker.tracker import MemoryBank

EMPTY = -1  # frame index of a free slot


@flax.struct.dataclass
class TrackMemory:
    """K memory slots of B objects.

    features (B, K, g, g, mem_dim); obj_ptrs (B, K, C); frame (B, K) int32 (EMPTY when free);
    is_cond (B, K) bool; order (B, K) int32 insertion counter (ties of the conditioning-frame
    choice); next_order (B,) int32; eff_score (B, K) float32: the frame's memory-selection score
    (official `eff_iou_score`; read only with `memory_selection`)."""

    features: jax.Array
    obj_ptrs: jax.Array
    frame: jax.Array
    is_cond: jax.Array
    order: jax.Array
    next_order: jax.Array
    eff_score: jax.Array

    @classmethod
    def empty(cls, batch: int, slots: int, grid: int, mem_dim: int, d_model: int, dtype: Any = jnp.float32):
        return cls(
            features=jnp.zeros((batch, slots, grid, grid, mem_dim), dtype),
            obj_ptrs=jnp.zeros((batch, slots, d_model), dtype),
            frame=jnp.full((batch, slots), EMPTY, jnp.int32),
            is_cond=jnp.zeros((batch, slots), bool),
            order=jnp.zeros((batch, slots), jnp.int32),
            next_order=jnp.zeros((batch,), jnp.int32),
            eff_score=jnp.zeros((batch, slots), jnp.float32),
        )


def _selected_cond(frame, is_cond, order, frame_idx, max_cond: int):
    """(B, K) bool: the conditioning slots the official `select_closest_cond_frames` keeps."""
    used = is_cond & (frame != EMPTY)
    if max_cond == -1:
        return used
    big = jnp.iinfo(jnp.int32).max
    n_cond = used.sum(-1, keepdims=True)
    before = used & (frame < frame_idx)
    after = used & (frame >= frame_idx)
    best_before = jnp.max(jnp.where(before, frame, -big), axis=-1, keepdims=True)
    best_after = jnp.min(jnp.where(after, frame, big), axis=-1, keepdims=True)
    first = (before & (frame == best_before)) | (after & (frame == best_after))
    rest = used & ~first
    # rank the rest by (distance, insertion order); keep the first max_cond - |first| of them
    dist = jnp.where(rest, jnp.abs(frame - frame_idx), big)
    perm = jnp.lexsort((order, dist), axis=-1)
    rank = jnp.argsort(perm, axis=-1)
    quota = max_cond - first.sum(-1, keepdims=True)
    chosen = first | (rest & (rank < quota))
    return jnp.where(n_cond <= max_cond, used, chosen)


def memory_bank_at(
    memory: TrackMemory,
    frame_idx: jax.Array,
    *,
    num_frames: jax.Array,
    num_maskmem: int,
    max_cond_frames_in_attn: int,
    max_obj_ptrs_in_encoder: int,
    reverse: bool = False,
    memory_selection: bool = False,
    mf_threshold: float = 0.01,
) -> MemoryBank:
    """The `MemoryBank` the memory attention sees at `frame_idx` (a traced int is fine): the K
    slots as K spatial and K pointer slots, with the official choice as validity masks."""
    frame, is_cond = memory.frame, memory.is_cond
    used = frame != EMPTY
    sel_cond = _selected_cond(frame, is_cond, memory.order, frame_idx, max_cond_frames_in_attn)
    other = used & ~sel_cond  # non-conditioning frames and unselected conditioning frames
    sign = -1 if reverse else 1
    t_rel = (frame_idx - frame) * sign  # frames back in the tracking direction
    max_ptrs = jnp.minimum(num_frames, max_obj_ptrs_in_encoder)
    if memory_selection:
        rank, length = _filtered_ranks(memory, frame_idx, num_frames, t_rel, other, max_ptrs, mf_threshold,
                                       reverse)
        recent = other & (rank >= 1) & (rank <= num_maskmem - 1)
        tpos_other = num_maskmem - rank
        ptr_other = other & (rank >= 1) & (rank < length) & (rank <= max_ptrs - 1)
        ptr_dist = rank
    else:
        recent = other & (t_rel >= 1) & (t_rel <= num_maskmem - 1)
        tpos_other = num_maskmem - t_rel
        ptr_other = other & (t_rel >= 1) & (t_rel <= max_ptrs - 1)
        ptr_dist = t_rel
    spatial_valid = sel_cond | recent
    tpos = jnp.where(sel_cond, 0, tpos_other).astype(jnp.int32)
    ptr_cond = sel_cond & (t_rel >= 0)
    ptr_valid = ptr_cond | ptr_other
    return MemoryBank(
        features=memory.features,
        tpos=jnp.where(spatial_valid, tpos, 0),
        valid=spatial_valid,
        obj_ptrs=memory.obj_ptrs,
        ptr_tpos=jnp.where(ptr_valid, jnp.where(ptr_cond, t_rel, ptr_dist), 0).astype(jnp.float32),
        ptr_valid=ptr_valid,
        ptr_max_pos=jnp.asarray(max_ptrs, jnp.float32),
    )


def spatial_capacity(num_slots: int, *, num_maskmem: int, max_cond_frames_in_attn: int) -> int:
    """How many spatial slots `memory_bank_at` can mark valid at once: the selected conditioning
    frames plus the num_maskmem - 1 recent ones (all K when every conditioning frame is used)."""
    if max_cond_frames_in_attn == -1:
        return num_slots
    return min(num_slots, max_cond_frames_in_attn + num_maskmem - 1)


def compact_bank(bank: MemoryBank, spatial: int) -> MemoryBank:
    """The same bank with only `spatial` spatial slots, the valid ones first (in slot order): the
    attention then reads spatial x g x g memory tokens instead of K x g x g, with the same valid
    set (invalid slots are masked out anyway). `spatial` must be >= the valid count
    (`spatial_capacity`)."""
    if spatial >= bank.valid.shape[1]:
        return bank
    order = jnp.argsort(~bank.valid, axis=1, stable=True)[:, :spatial]

    def take(x):
        idx = order.reshape(order.shape + (1,) * (x.ndim - 2))
        return jnp.take_along_axis(x, idx, axis=1)

    return bank.replace(features=take(bank.features), tpos=take(bank.tpos), valid=take(bank.valid))


def _filtered_ranks(memory, frame_idx, num_frames, t_rel, other, max_num, threshold, reverse):
    """The official `frame_filter` as ranks: (B, K) int32 rank of each slot in the filtered list
    (1 = the adjacent frame; 0 = not in it) and (B,) the list's length."""
    frame = memory.frame
    frame_idx = jnp.asarray(frame_idx, jnp.int32)
    first = (frame_idx == num_frames - 1) if reverse else (frame_idx == 0)
    in_walk = (t_rel >= 1) & ((frame >= 1) if not reverse else (frame <= num_frames - 1))
    cand = ~memory.is_cond & (frame != EMPTY) & in_walk & (memory.eff_score > threshold)
    # the nearest max_num - 1 candidates (at least the first one the walk meets)
    big = jnp.iinfo(jnp.int32).max
    near = jnp.where(cand, t_rel, big)
    cand_rank = jnp.sum(cand[:, None, :] & (near[:, None, :] < near[:, :, None]), axis=-1) + 1  # (B, K)
    picked = cand & (cand_rank <= jnp.maximum(max_num - 1, 1))
    adjacent = t_rel == 1
    # the adjacent frame joins the list last (rank 1) unless the filter picked it already
    shift = (~jnp.any(picked & adjacent, axis=-1, keepdims=True)).astype(jnp.int32)
    rank = jnp.where(picked, cand_rank + shift, 0)
    rank = jnp.where(other & adjacent & (shift == 1), 1, rank)
    length = jnp.sum(picked, axis=-1) + shift[:, 0]
    rank = jnp.where(first, 0, rank)
    length = jnp.where(first, 0, length)
    return rank.astype(jnp.int32), length[:, None].astype(jnp.int32)


def add_memory(
    memory: TrackMemory,
    frame_idx: jax.Array,
    features: jax.Array,
    obj_ptr: jax.Array,
    is_cond: jax.Array,
    *,
    reverse: bool = False,
    eff_score: jax.Array | None = None,
    write: jax.Array | None = None,
    evict_below: float | None = None,
) -> tuple[TrackMemory, jax.Array]:
    """Stores one frame's memory for every object: features (B, g, g, mem_dim), obj_ptr (B, C),
    is_cond (B,) bool (or a scalar), eff_score (B,) (memory selection; 0 if None), write (B,)
    bool: which objects store (default all). evict_below: with memory selection, a full store
    first evicts a non-conditioning frame whose score is at or below this threshold (the filter
    can no longer pick it once a newer frame is adjacent), else the one farthest behind. Returns
    (new memory, dropped (B,) bool: no slot could take it, every slot holding a conditioning frame)."""
    b, k = memory.frame.shape
    is_cond = jnp.broadcast_to(jnp.asarray(is_cond, bool), (b,))
    frame = memory.frame
    same = frame == frame_idx
    free = frame == EMPTY
    sign = -1 if reverse else 1
    behind = jnp.where(~memory.is_cond & ~free, (frame_idx - frame) * sign, jnp.iinfo(jnp.int32).min)
    if evict_below is not None:  # frames the selection filter rejects go first (ranked by age too)
        stale = ~memory.is_cond & ~free & (memory.eff_score <= evict_below)
        behind = jnp.where(stale, behind + (1 << 24), behind)
    has_same, has_free = same.any(-1), free.any(-1)
    evictable = (~memory.is_cond & ~free).any(-1)
    slot = jnp.where(has_same, jnp.argmax(same, -1),
                     jnp.where(has_free, jnp.argmax(free, -1), jnp.argmax(behind, -1)))
    ok = has_same | has_free | evictable
    if write is not None:
        ok = ok & jnp.broadcast_to(jnp.asarray(write, bool), (b,))
    hit = (jnp.arange(k)[None] == slot[:, None]) & ok[:, None]  # (B, K)
    score = jnp.zeros((b,), jnp.float32) if eff_score is None else jnp.broadcast_to(eff_score, (b,))
    # A conditioning frame written again keeps its place among the conditioning frames (an
    # official dict update); any other write counts as a new insertion.
    keep = hit & same & memory.is_cond & is_cond[:, None]
    order = jnp.where(hit & ~keep, memory.next_order[:, None], memory.order)
    new = memory.replace(
        features=jnp.where(hit[..., None, None, None], features[:, None].astype(memory.features.dtype),
                           memory.features),
        obj_ptrs=jnp.where(hit[..., None], obj_ptr[:, None].astype(memory.obj_ptrs.dtype), memory.obj_ptrs),
        frame=jnp.where(hit, frame_idx, frame),
        is_cond=jnp.where(hit, is_cond[:, None], memory.is_cond),
        order=order,
        next_order=memory.next_order + (ok & ~keep.any(-1)).astype(jnp.int32),
        eff_score=jnp.where(hit, score[:, None].astype(jnp.float32), memory.eff_score),
    )
    dropped = ~(has_same | has_free | evictable)
    return new, dropped if write is None else dropped & jnp.broadcast_to(jnp.asarray(write, bool), (b,))


def condition_step(params, cfg, sam2_backbone_out, memory: TrackMemory, frame_idx, *, mask=None, points=None,
                   labels=None, multimask_output: bool = False) -> tuple[dict[str, jax.Array], TrackMemory]:
    """Prompts B objects on a frame (a mask, used as the output, or clicks on an initial
    conditioning frame) and stores the result as a conditioning memory (official
    `add_new_mask` / first clicks, then the memory encoder). Pure; jit it with the flags static."""
    from sam3_jax.model.tracker.tracker import track_step

    out = track_step(params, cfg, sam2_backbone_out, None, points, labels, mask, None,
                     is_init_cond_frame=True, multimask_output=multimask_output)
    memory, dropped = add_memory(memory, frame_idx, out["maskmem_features"], out["obj_ptr"], True)
    return {**out, "dropped": dropped}, memory


def propagate_step(params, cfg, sam2_backbone_out, memory: TrackMemory, frame_idx, num_frames, *,
                   reverse: bool = False) -> tuple[dict[str, jax.Array], TrackMemory]:
    """Tracks B objects onto frame `frame_idx` (a traced int is fine): the memory the official
    tracker would attend to (`memory_bank_at`), one track step without prompts (multimask output,
    as the official tracker does for tracking), and the new memory written as a non-conditioning
    frame. One compiled function serves every frame of a video."""
    from sam3_jax.model.tracker.tracker import track_step

    t = cfg.tracker
    bank = memory_bank_at(memory, frame_idx, num_frames=num_frames, num_maskmem=t.num_maskmem,
                          max_cond_frames_in_attn=t.max_cond_frames_in_attn,
                          max_obj_ptrs_in_encoder=t.max_obj_ptrs_in_encoder, reverse=reverse)
    out = track_step(params, cfg, sam2_backbone_out, bank, is_init_cond_frame=False, multimask_output=True)
    memory, dropped = add_memory(memory, frame_idx, out["maskmem_features"], out["obj_ptr"], False, reverse=reverse)
    return {**out, "dropped": dropped}, memory
