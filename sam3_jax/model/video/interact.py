"""Click refinement in a video: the official instance-interactivity path as pure functions over `VideoState`.

The official `Sam3VideoInferenceWithInstanceInteractivity` refines one object on one frame with
clicks (or a box, given as its two corner points with labels 2 and 3):

  1. `click_output`: the tracker's SAM heads on the frame without memory (the official
     `use_prev_mem_frame=False`), the clicks, and the object's previous mask logits on that frame
     (clamped to +-32) as the mask prompt; several masks for at most one click, the best by
     predicted IoU.
  2. `commit_click` (the official `propagate_in_video_preflight` that follows): the frame becomes a
     conditioning frame of every object born together with the clicked one (the official tracker
     "state" = `VideoState.group`): their masks on the frame (the click's for the clicked object,
     their stored outputs for the others, an absent mask for one without an output there) are
     resized to the image size, left to the highest-scoring object per pixel, binarised and encoded
     as memory; pointers and object scores as stored.
  3. `downgrade_frames`: the clicked object's detector-given conditioning frames near the click
     stop being conditioning frames for its whole group (official
     `clear_detector_added_cond_frame_in_tracker`); they lose their memory-selection score, so the
     selection filter skips them as it skips outputs without one there.
  4. `track_partial`: the next propagation runs the tracker alone for the groups that were
     clicked (no detection, no merge): on a conditioning frame an object returns its stored output,
     elsewhere one track step with the memory encoded from its own mask (the official tracker's
     `propagate_in_video` with `run_mem_encoder=True`).

Host-side bookkeeping (which objects, which frames, cached outputs of the other objects) lives in
`sam3_jax.predict.video`.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp

from sam3_jax.layers.components import fill_holes_in_mask_scores
from sam3_jax.model.tracker.track_memory import EMPTY, add_memory
from sam3_jax.model.tracker.tracker import encode_memory, track_step, use_mask_as_output
from sam3_jax.model.video import merge
from sam3_jax.model.video.step import NO_OBJ_SCORE, VideoConfig, VideoState, _resize, eff_iou_score, frame_bank

NO_EFF_SCORE = -jnp.inf  # an output without a memory-selection score (never picked by the filter)
PREV_MASK_CLAMP = 32.0
MAX_PROMPT_POINTS = 16  # official max_point_num_in_prompt_enc: more clicks keep the first and last halves


def click_output(params: Mapping[str, Any], cfg, sam2_out: Mapping[str, Any], points: jax.Array, labels: jax.Array,
                 prev_low: Optional[jax.Array], *, multimask_output: bool) -> dict[str, jax.Array]:
    """One object's output on a frame from clicks: points (1, P, 2) in input-image pixels, labels
    (1, P) (1 positive, 0 negative, 2 / 3 box corners), prev_low (1, 4g, 4g) the object's previous
    low-res logits on the frame or None. -> low (4g, 4g), obj_ptr (C,), score () (object-score
    logit), ious (M,)."""
    prev = None if prev_low is None else jnp.clip(prev_low, -PREV_MASK_CLAMP, PREV_MASK_CLAMP)[..., None]
    out = track_step(params["tracker"], cfg, sam2_out, None, points, labels, None, prev,
                     is_init_cond_frame=True, multimask_output=multimask_output, run_mem_encoder=False)
    return {"low": out["pred_masks"][0, 0].astype(jnp.float32), "obj_ptr": out["obj_ptr"][0],
            "score": out["object_score_logits"][0, 0].astype(jnp.float32), "ious": out["ious"][0]}


def commit_click(params: Mapping[str, Any], cfg, state: VideoState, sam2_out: Mapping[str, Any], frame_idx: jax.Array,
                 slot: jax.Array, click: Mapping[str, jax.Array], stored_low: jax.Array, stored_score: jax.Array,
                 has_stored: jax.Array, *, reverse: bool = False) -> tuple[VideoState, jax.Array]:
    """Writes the clicked frame as a conditioning memory of the clicked object's group.

    slot () int: the clicked object's slot; click: `click_output`; stored_low (N, 4g, 4g),
    stored_score (N,), has_stored (N,) bool: the other objects' outputs kept for this frame. ->
    (new state, members (N,) bool)."""
    tparams = params["tracker"]
    n = state.alive.shape[0]
    rows = jnp.arange(n)
    this = rows == slot
    members = (state.alive & (state.group == state.group[slot])) | this
    mem = state.memory
    here = (mem.frame == frame_idx) & (mem.frame != EMPTY)  # (N, K)
    stored_ptr = jnp.sum(jnp.where(here[..., None], mem.obj_ptrs, 0), axis=1)
    has_ptr = jnp.any(here, axis=1)
    # an object without an output on this frame: absent mask, object score 10, the empty-mask pointer
    g = cfg.image_size
    empty_ptr = use_mask_as_output(tparams, cfg, sam2_out, jnp.zeros((1, g, g, 1), jnp.float32))["obj_ptr"][0]
    low = jnp.where(this[:, None, None], click["low"][None], jnp.where(has_stored[:, None, None], stored_low,
                                                                         NO_OBJ_SCORE))
    score = jnp.where(this, click["score"], jnp.where(has_stored, stored_score, 10.0))
    ptr = jnp.where(this[:, None], click["obj_ptr"][None],
                    jnp.where((has_stored & has_ptr)[:, None], stored_ptr, empty_ptr[None]))
    high = _resize(low, cfg.image_size)
    high = merge.non_overlapping(high, members, state.obj_id)
    feats = encode_memory(tparams, cfg, sam2_out, high[:, None], score[:, None], mask_from_points=True)
    memory, dropped = add_memory(mem, frame_idx, feats, ptr, True, reverse=reverse,
                                 eff_score=jnp.full((n,), NO_EFF_SCORE), write=members)
    new = state.replace(memory=memory, memory_dropped=state.memory_dropped + jnp.sum(dropped).astype(jnp.int32))
    return new, members


def downgrade_frames(state: VideoState, members: jax.Array, frames: jax.Array) -> VideoState:
    """The conditioning frames `frames` (F,) int (-1: padding) of the objects `members` (N,) become
    ordinary frames without a memory-selection score (official `clear_all_points_in_frame` on a
    frame left without inputs)."""
    mem = state.memory
    hit = members[:, None] & mem.is_cond & jnp.any(mem.frame[..., None] == frames[None, None, :], axis=-1) \
        & (mem.frame != EMPTY)
    return state.replace(memory=mem.replace(is_cond=mem.is_cond & ~hit,
                                            eff_score=jnp.where(hit, NO_EFF_SCORE, mem.eff_score)))


def track_partial(params: Mapping[str, Any], cfg, vcfg: VideoConfig, state: VideoState, sam2_out: Mapping[str, Any],
                  frame_idx: jax.Array, num_frames: jax.Array, active: jax.Array, stored_low: jax.Array,
                  stored_score: jax.Array, *, reverse: bool,
                  video_hw: tuple[int, int]) -> tuple[VideoState, dict[str, jax.Array]]:
    """The tracker alone on one frame for the objects `active` (N,) bool (whole groups): an object
    whose memory holds this frame as a conditioning frame returns its stored output (stored_low
    (N, 4g, 4g), stored_score (N,), from the host's cache), the others take one track step and
    store its self-encoded memory. -> (new state, outputs over the slots: raw_low / raw_score (what
    the tracker keeps for the frame), low (hole-filled), masks (N, H, W) bool at the video's size,
    score (the object-score logit, the official refined tracker score))."""
    mem = state.memory
    frame_idx = jnp.asarray(frame_idx, jnp.int32)
    bank = frame_bank(cfg, vcfg, mem, frame_idx, num_frames, reverse=reverse)
    out = track_step(params["tracker"], cfg, sam2_out, bank, is_init_cond_frame=False, multimask_output=True,
                     run_mem_encoder=True)
    here = (mem.frame == frame_idx) & (mem.frame != EMPTY)
    stored = jnp.any(here & mem.is_cond, axis=1)
    run = active & ~stored
    raw = out["pred_masks"][:, 0].astype(jnp.float32)
    logit = out["object_score_logits"][:, 0].astype(jnp.float32)
    eff = eff_iou_score(logit, out["ious"].astype(jnp.float32), state.group, state.alive & active)
    memory, dropped = add_memory(mem, frame_idx, out["maskmem_features"], out["obj_ptr"], False, reverse=reverse,
                                 eff_score=eff, write=run,
                                 evict_below=vcfg.mf_threshold if vcfg.memory_selection else None)
    raw_low = jnp.where(stored[:, None, None], stored_low, raw)
    raw_score = jnp.where(stored, stored_score, logit)
    low = fill_holes_in_mask_scores(raw_low, vcfg.fill_hole_area)
    masks = (_resize(low, video_hw) > 0) & active[:, None, None]
    new = state.replace(memory=memory, memory_dropped=state.memory_dropped + jnp.sum(dropped).astype(jnp.int32))
    return new, {"raw_low": raw_low, "raw_score": raw_score, "low": low, "masks": masks, "score": raw_score,
                 "stored": stored & active}


def click_video_mask(low: jax.Array, video_hw: tuple[int, int], fill_hole_area: int) -> jax.Array:
    """What a click returns on its frame (official `add_new_points` output): the low-res logits
    (4g, 4g) resized to the video's size, hole-filled there, > 0 -> (H, W) bool."""
    video = _resize(low[None], video_hw)
    return fill_holes_in_mask_scores(video, fill_hole_area)[0] > 0


def new_object(state: VideoState, slot: int, obj_id: int) -> VideoState:
    """A new object added by clicks into a free slot: its own group (a negative value: groups of
    detector births are ids >= 0), score 1, empty memory."""
    from sam3_jax.model.video.step import _reset_rows

    rows = jnp.arange(state.alive.shape[0]) == slot
    return state.replace(
        memory=_reset_rows(state.memory, rows), obj_id=state.obj_id.at[slot].set(obj_id),
        alive=state.alive.at[slot].set(True), group=state.group.at[slot].set(-(obj_id + 2)),
        score=state.score.at[slot].set(1.0), occ_record=state.occ_record.at[slot].set(False),
        cond_mask=state.cond_mask.at[slot].set(NO_OBJ_SCORE), cond_score=state.cond_score.at[slot].set(0.0),
        max_obj_id=jnp.maximum(state.max_obj_id, obj_id),
    )
