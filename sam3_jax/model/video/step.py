"""One video frame of SAM 3 (detect, track, merge) as a pure function over a fixed-capacity state.

The official video model (`Sam3VideoBase._det_track_one_frame`) keeps its tracks in Python lists
of tracker "inference states" (one per batch of objects born on the same frame) and dicts keyed by
object id. Here the same bookkeeping lives in `VideoState`, a pytree of arrays over N object
*slots* (validity masks instead of list membership) and K memory slots per object, so that
`track_frame` compiles once per (video size, capacities) and serves every frame of any video:

  1. detections (`detect_frame`): the detector on the frame with the cached prompt; the joint
     score clamp(logit(sigmoid(class) * sigmoid(presence)), -10, 10) as the official video
     detector computes it, score threshold and greedy mask NMS (`merge.nms_masks`).
  2. propagation: every live object one tracker step onto the frame (`memory_bank_at`, with the
     video tracker's memory-selection filter), no memory written yet; an object whose memory
     already holds this frame as a conditioning frame (the prompted frame, visited again when
     propagation starts there) returns that frame's stored output instead, as the official tracker
     does. Low-res masks then get the official hole filling (`fill_holes_in_mask_scores`).
  3. association (`merge.associate`), births (new detections into free slots, ids max id + 1, ...),
     the hot-start removals (`merge.hotstart_step`).
  4. periodic reconditioning (every `recondition_every_nth_frame` frames): a track with a
     high-confidence matched detection and a tracker object score above 0.8 takes that detection's
     mask as a conditioning frame.
  5. occlusion-based suppression (`merge.occlusion_suppression`), then the memory of every live
     track from its (suppressed) mask: resized to the encoder's input, pixel-wise non-overlap with
     the 30 % shrinkage rule, object score +-10 by area; the new objects' memory from their
     detection masks (binarised) as a conditioning frame.
  6. outputs per slot: the mask at the video's size, the birth score, the tracker score, flags.

The predictor runs the frame as `encode_frame` (cached per frame), `detect_frame` and
`track_slots`: the tracking on the live slots plus the free slots births may take (`gather_slots` /
`scatter_slots`), so that its cost follows the objects held rather than the capacity; one compiled
size per power of two, and a frame with more births than its free slots runs again on the whole state.

Differences a fixed shape forces (each counted or documented, never silent):
  - capacity: a birth without a free slot is dropped (`VideoState.num_dropped`; the official
    `max_num_objects` rule: the highest-scoring new detections are kept);
  - memory: K slots per object; the oldest non-conditioning frames (and first those the selection
    filter can no longer pick) are evicted, conditioning frames never (`memory_dropped` counts
    writes that found no slot);
  - reconditioning and the "tracker state" grouping: the official memory-selection score of a
    frame is the mean over the objects of one tracker state; objects carry that grouping
    (`group`: objects born on one frame share it), and a reconditioned object turns the frame into a
    conditioning frame for its whole group, as there.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import flax.struct
import jax
import jax.numpy as jnp

from sam3_jax.layers.components import fill_holes_in_mask_scores
from sam3_jax.layers.resize import resize_bilinear, resize_bilinear_aa_exact
from sam3_jax.model.tracker.track_memory import (EMPTY, TrackMemory, add_memory, compact_bank, memory_bank_at,
                                                  spatial_capacity)
from sam3_jax.model.tracker.tracker import (MASK_BIAS, MASK_SCALE, MemoryBank, encode_memory, track_step,
                                            use_mask_as_output)
from sam3_jax.model.video import merge
from sam3_jax.model.video.merge import MergeConfig

NO_OBJ_SCORE = -1024.0
REMOVED_SCORE = -1e4  # the official tracker score of a removed object


@dataclasses.dataclass(frozen=True)
class VideoConfig:
    """The video model's settings, with the defaults of the official video build
    (`build_sam3_video_model`), and the state's capacities."""

    merge: MergeConfig = MergeConfig()
    max_objects: int = 16  # object slots N
    memory_slots: int = 20  # memory slots K per object (>= conditioning frames + max_obj_ptrs_in_encoder)
    fill_hole_area: int = 16
    occlusion_iou_threshold: float = 0.7  # suppress_overlapping_based_on_recent_occlusion_threshold
    recondition_every_nth_frame: int = 16
    recondition_min_obj_score: float = 0.8  # compared with the tracker's object-score logit, as there
    shrink_threshold: float = 0.3  # memory masks shrinking below this share under non-overlap are blanked
    memory_selection: bool = True  # the video tracker's frame filter (use_memory_selection)
    mf_threshold: float = 0.01
    # a click removes the clicked object's detector-given conditioning frames this close to it
    # (official refinement_detector_cond_frame_removal_window)
    refinement_cond_frame_window: int = 16


@flax.struct.dataclass
class VideoState:
    """Everything the video model carries from frame to frame, over N object slots.

    memory: TrackMemory (N, K, ...); obj_id (N,) int32 (-1: free); alive (N,) bool; group (N,)
    int32 (objects born together); score (N,) float32 (detection probability at birth); hot: the
    hot-start counters; last_occluded (N,) int32 and occ_record (N,) bool (the occlusion rule's
    per-object record); cond_mask (N, 4g, 4g) / cond_score (N,): the low-res output and object
    score of the latest conditioning frame (what a revisit of that frame returns); max_obj_id ()
    int32; num_dropped () int32: births dropped for lack of a free slot; memory_dropped () int32."""

    memory: TrackMemory
    obj_id: jax.Array
    alive: jax.Array
    group: jax.Array
    score: jax.Array
    hot: merge.HotstartState
    last_occluded: jax.Array
    occ_record: jax.Array
    cond_mask: jax.Array
    cond_score: jax.Array
    max_obj_id: jax.Array
    num_dropped: jax.Array
    memory_dropped: jax.Array

    @classmethod
    def empty(cls, cfg, vcfg: VideoConfig, dtype: Any = jnp.float32) -> "VideoState":
        n, g = vcfg.max_objects, cfg.image_size // cfg.vit.patch_size
        t = cfg.tracker
        memory = TrackMemory.empty(n, vcfg.memory_slots, g, t.mem_dim, cfg.d_model, dtype)
        z = jnp.zeros((n,), jnp.int32)
        return cls(memory=memory, obj_id=jnp.full((n,), -1, jnp.int32), alive=jnp.zeros((n,), bool), group=z,
                   score=jnp.zeros((n,), jnp.float32), hot=merge.HotstartState.empty(n),
                   last_occluded=jnp.full((n,), merge.NEVER_OCCLUDED, jnp.int32), occ_record=jnp.zeros((n,), bool),
                   cond_mask=jnp.full((n, 4 * g, 4 * g), NO_OBJ_SCORE, jnp.float32),
                   cond_score=jnp.zeros((n,), jnp.float32), max_obj_id=jnp.asarray(-1, jnp.int32),
                   num_dropped=jnp.asarray(0, jnp.int32), memory_dropped=jnp.asarray(0, jnp.int32))


# --------------------------------------------------------------------------------------------- detection


def inverse_sigmoid(x: jax.Array, eps: float = 1e-3) -> jax.Array:
    """The official `inverse_sigmoid` (clamped to [0, 1], then log(x / (1 - x)) with both at >= eps)."""
    x = jnp.clip(x, 0.0, 1.0)
    return jnp.log(jnp.maximum(x, eps) / jnp.maximum(1.0 - x, eps))


def detector_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The image model's params (everything but the tracker's)."""
    return {k: v for k, v in params.items() if k != "tracker"}


def encode_frame(params: Mapping[str, Any], cfg, image: jax.Array) -> dict[str, Any]:
    """The backbone on one frame (image (1, S, S, 3) normalised) -> the features both the detector
    ("backbone_fpn", "vision_pos_enc") and the tracker ("sam2_backbone_out") read."""
    from sam3_jax.model.sam3_image import Sam3Image

    return Sam3Image(cfg).apply({"params": detector_params(params)}, image, method=Sam3Image.forward_image)


def detect_frame(params: Mapping[str, Any], cfg, feats: Mapping[str, Any], text_out: Mapping[str, jax.Array],
                 mcfg: MergeConfig = MergeConfig(), allow_new: Any = True,
                 geo: Optional[tuple[jax.Array, jax.Array, jax.Array]] = None) -> tuple[dict, dict]:
    """The detector on one frame's features (`encode_frame`) with a cached text encoding and an
    optional geometric prompt geo = (boxes (1, K, 4) normalised cxcywh, labels (1, K) int, padding
    (1, K) bool, True = no box): the official video model's visual prompt, a box given on its
    prompted frame and padded away on the others. -> (detections, the tracker neck's output).
    Detections: probs (Q,) (the official video detector's joint score, through NMS), masks
    (Q, 4g, 4g) logits, boxes (Q, 4) normalised xyxy, valid (Q,) bool (kept: above the threshold
    and not suppressed; none when allow_new is False)."""
    from sam3_jax.model.sam3_image import Sam3Image

    image_out = {"backbone_fpn": feats["backbone_fpn"], "vision_pos_enc": feats["vision_pos_enc"]}
    if geo is None:
        geo = (jnp.zeros((1, 0, 4), jnp.float32), jnp.zeros((1, 0), jnp.int32), jnp.zeros((1, 0), bool))
    out = Sam3Image(cfg).apply({"params": detector_params(params)}, image_out, text_out, *geo,
                               method=Sam3Image.forward_grounding)
    prob = jax.nn.sigmoid(out["pred_logits"][0, :, 0]) * jax.nn.sigmoid(out["presence_logit_dec"][0, 0])
    probs = jax.nn.sigmoid(jnp.clip(inverse_sigmoid(prob), -10.0, 10.0))
    masks = out["pred_masks"][0].astype(jnp.float32)
    every = jnp.ones(probs.shape, bool)
    if mcfg.det_nms_thresh > 0:
        keep = merge.nms_masks(probs, masks, every, mcfg.score_threshold_detection, mcfg.det_nms_thresh)
    else:
        keep = probs > mcfg.score_threshold_detection
    keep = keep & jnp.asarray(allow_new, bool)
    det = {"probs": probs, "masks": masks, "boxes": out["pred_boxes_xyxy"][0], "valid": keep}
    return det, feats["sam2_backbone_out"]


# --------------------------------------------------------------------------------------------- helpers


def _nhwc(x: jax.Array) -> jax.Array:
    return x[..., None]


def _resize(masks: jax.Array, size: int | tuple[int, int], antialias: bool = False) -> jax.Array:
    """(B, H, W) -> (B, h, w), bilinear (torch `interpolate`, align_corners=False)."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    return resize_bilinear(_nhwc(masks.astype(jnp.float32)), hw, antialias=antialias)[..., 0]


def eff_iou_score(obj_logits: jax.Array, ious: jax.Array, group: jax.Array, alive: jax.Array) -> jax.Array:
    """Official `cal_mem_score` per object: the mean over the object's group (its tracker state)
    of (sigmoid(score) * 2 - 1 where the object score > 0, else 0) x its best predicted IoU."""
    norm = jnp.where(obj_logits > 0, jax.nn.sigmoid(obj_logits) * 2 - 1, 0.0)
    per = norm * jnp.max(ious, axis=-1)
    same = alive[None, :] & (group[:, None] == group[None, :])  # (N, N)
    total = jnp.sum(jnp.where(same, per[None, :], 0.0), axis=1)
    return total / jnp.maximum(jnp.sum(same, axis=1), 1)


def _cond_lowres(mask_in: jax.Array, video_hw: tuple[int, int], low: int, exclusive: bool = True) -> jax.Array:
    """What the official tracker keeps as the low-res output of a mask given on a frame
    (`add_new_mask` -> consolidation): the input mask (B, s, s) {0, 1} resized (antialiased) to the
    video's size, > 0.5, as +-1024, resized (antialiased) to the low-res size. Later rows win the
    pixels they share with earlier rows at the video's size (each new mask blanks the others) when
    `exclusive`; otherwise rows are independent."""
    video = resize_bilinear_aa_exact(mask_in, video_hw) > 0.5  # (B, H, W)
    if exclusive:
        v = video.astype(jnp.int32)
        video = video & ~((jnp.cumsum(v[::-1], axis=0)[::-1] - v) > 0)  # a later row holds the pixel
    return resize_bilinear_aa_exact(jnp.where(video, -NO_OBJ_SCORE, NO_OBJ_SCORE), (low, low))


def _reset_rows(memory: TrackMemory, rows: jax.Array) -> TrackMemory:
    """Empties the memory of the objects in `rows` (N,) bool (a slot taken by a new object)."""
    r2 = rows[:, None]
    return memory.replace(frame=jnp.where(r2, EMPTY, memory.frame), is_cond=memory.is_cond & ~r2,
                          order=jnp.where(r2, 0, memory.order), next_order=jnp.where(rows, 0, memory.next_order),
                          eff_score=jnp.where(r2, 0.0, memory.eff_score))


def frame_bank(cfg, vcfg: VideoConfig, mem: TrackMemory, frame_idx: jax.Array, num_frames: jax.Array, *,
               reverse: bool) -> MemoryBank:
    """The memory every object slot attends to on a frame: the official choice (`memory_bank_at`,
    with the video tracker's selection filter), cut to the spatial slots that choice can mark valid
    (`compact_bank`); a slot with no valid memory (free) gets its first one marked valid so that its
    attention is defined (its output is never read)."""
    t = cfg.tracker
    bank = memory_bank_at(mem, frame_idx, num_frames=num_frames, num_maskmem=t.num_maskmem,
                          max_cond_frames_in_attn=t.max_cond_frames_in_attn,
                          max_obj_ptrs_in_encoder=t.max_obj_ptrs_in_encoder, reverse=reverse,
                          memory_selection=vcfg.memory_selection, mf_threshold=vcfg.mf_threshold)
    bank = compact_bank(bank, spatial_capacity(mem.frame.shape[1], num_maskmem=t.num_maskmem,
                                               max_cond_frames_in_attn=t.max_cond_frames_in_attn))
    idle = ~jnp.any(bank.valid, axis=1)
    return bank.replace(valid=bank.valid.at[:, 0].set(bank.valid[:, 0] | idle))


def _only_if(pred: jax.Array, fn, *operands):
    """fn(*operands) where `pred`, else zeros of its result's shapes (`lax.cond`: the work runs only
    on frames that need it; callers read the result only where it applies)."""
    shapes = jax.eval_shape(fn, *operands)
    return jax.lax.cond(pred, fn, lambda *_: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes), *operands)


def _pw_shrink(masks: jax.Array, valid: jax.Array, obj_ids: jax.Array, threshold: float) -> jax.Array:
    """Official `_suppress_object_pw_area_shrinkage`: masks whose area falls below `threshold` of
    itself under the pixel-wise non-overlap are clamped to <= -10 (the rest unchanged)."""
    nonov = merge.non_overlapping(masks, valid, obj_ids)
    before = jnp.maximum(jnp.sum(masks > 0, axis=(1, 2)), 1).astype(jnp.float32)
    after = jnp.sum(nonov > 0, axis=(1, 2)).astype(jnp.float32)
    keep = after / before >= threshold
    return jnp.where(keep[:, None, None], masks, jnp.minimum(masks, -10.0))


# --------------------------------------------------------------------------------------------- the step


def track_frame(params: Mapping[str, Any], cfg, vcfg: VideoConfig, state: VideoState, det: Mapping[str, jax.Array],
                sam2_out: Mapping[str, Any], frame_idx: jax.Array, num_frames: jax.Array, *, reverse: bool,
                video_hw: tuple[int, int]) -> tuple[VideoState, dict[str, jax.Array]]:
    """Tracking and merging on one frame (steps 2-6 of the module docstring) -> (new state,
    outputs). `params` holds the tracker under "tracker"; `det` comes from `detect_frame`;
    reverse and video_hw (H, W) are static. Outputs over the N slots: obj_id, present (has an
    output: a live track or a birth), masks (N, H, W) bool at the video's size, low_res (N, 4g,
    4g) logits, score (birth probability), tracker_score, born, removed (by the hot-start rules on
    this frame), suppressed (hidden by the keep-alive rule), occluded (blanked before memory
    encoding), reconditioned, raw_low / raw_score (the tracker's own output of the frame, which
    click refinement reads); and the frame's counts."""
    mcfg = vcfg.merge
    tparams = params["tracker"]
    n = state.alive.shape[0]
    g = cfg.image_size // cfg.vit.patch_size
    low_size, in_size = 4 * g, 16 * g
    frame_idx = jnp.asarray(frame_idx, jnp.int32)
    alive, ids, mem = state.alive, state.obj_id, state.memory

    # 2. propagation
    bank = frame_bank(cfg, vcfg, mem, frame_idx, num_frames, reverse=reverse)
    prop = track_step(tparams, cfg, sam2_out, bank, is_init_cond_frame=False, multimask_output=True,
                      run_mem_encoder=False)
    here = (mem.frame == frame_idx) & (mem.frame != EMPTY)
    revisit = alive & jnp.any(here & mem.is_cond, axis=1)
    stored_ptr = jnp.sum(jnp.where(here[..., None], mem.obj_ptrs, 0), axis=1)
    trk_raw = jnp.where(revisit[:, None, None], state.cond_mask, prop["pred_masks"][:, 0].astype(jnp.float32))
    trk_logit = jnp.where(revisit, state.cond_score, prop["object_score_logits"][:, 0].astype(jnp.float32))
    trk_ptr = jnp.where(revisit[:, None], stored_ptr, prop["obj_ptr"])
    trk = fill_holes_in_mask_scores(trk_raw, vcfg.fill_hole_area)
    eff = eff_iou_score(trk_logit, prop["ious"].astype(jnp.float32), state.group, alive)

    # 3. association, births, hot-start rules
    a = merge.associate(det["masks"], det["probs"], det["valid"], trk, alive, ids, mcfg)
    new = a.is_new_det
    q = new.shape[0]
    free = ~alive
    n_new, n_free = jnp.sum(new), jnp.sum(free)
    overflow = n_new > n_free
    det_order = jnp.where(overflow, -det["probs"], jnp.arange(q, dtype=jnp.float32))
    det_rank = jnp.argsort(jnp.lexsort((jnp.arange(q), det_order, ~new)))  # rank of each det among the new ones
    slot_rank = jnp.argsort(jnp.argsort(~free, stable=True))  # rank of each free slot
    n_born = jnp.minimum(n_new, n_free)
    born = free & (slot_rank < n_born)
    # det row born into each slot
    match = new[None, :] & (det_rank[None, :] == slot_rank[:, None]) & born[:, None]  # (N, Q)
    born_det = jnp.argmax(match, axis=1)
    new_ids = jnp.where(born, state.max_obj_id + 1 + slot_rank, ids)
    hot, removed, suppressed = merge.hotstart_step(state.hot, frame_idx, reverse, a.matched, born, a.trk_unmatched,
                                                   a.trk_empty, new_ids, mcfg)

    # 4. periodic reconditioning (official `_recondition_masklets`)
    nth = vcfg.recondition_every_nth_frame
    rec_det = a.recondition_det
    recond = jnp.zeros((n,), bool)
    if nth > 0:
        periodic = (frame_idx % nth == 0) & jnp.any(rec_det >= 0)
        recond = periodic & alive & (rec_det >= 0) & (trk_logit > vcfg.recondition_min_obj_score)
    rec_group = alive & jnp.any(recond[None, :] & (state.group[None, :] == state.group[:, None]), axis=1)

    # 5. occlusion suppression and the tracks' memory
    record = jnp.where(state.occ_record, state.last_occluded,
                       jnp.where(removed, merge.ALWAYS_OCCLUDED, merge.NEVER_OCCLUDED))
    trk_out, occluded, last_occ = merge.occlusion_suppression(trk, alive, record, frame_idx, reverse,
                                                               vcfg.occlusion_iou_threshold)
    if vcfg.occlusion_iou_threshold <= 0:
        trk_out, occluded, last_occ = trk, jnp.zeros((n,), bool), record
    high = _pw_shrink(_resize(trk_out, in_size), alive, ids, vcfg.shrink_threshold)
    trk_mem_score = jnp.where(jnp.any(high > 0, axis=(1, 2)), 10.0, -10.0)
    trk_mem_in = jax.nn.sigmoid(high) * MASK_SCALE + MASK_BIAS

    # the masks given to the tracker (births, reconditioning): the detection's low-res mask resized
    # to the encoder's input size, binarised
    # (each part runs only on frames that need it: its values are read only where born / recond)
    src = jnp.take(det["masks"], jnp.where(born, born_det, jnp.maximum(rec_det, 0)), axis=0)
    mask_in = (_resize(src, in_size) > 0) & (born | recond)[:, None, None]
    birth_in = mask_in & born[:, None, None]

    def given_outputs(m):
        out = use_mask_as_output(tparams, cfg, sam2_out, _nhwc(m.astype(jnp.float32)))
        return out["obj_ptr"], out["object_score_logits"][:, 0].astype(jnp.float32)

    given_ptr, given_score = _only_if(jnp.any(born | recond), given_outputs, mask_in)

    def birth_outputs(b):
        # consolidated low-res outputs of the given masks (this frame's births: later ids win shared pixels)
        order = jnp.argsort(jnp.where(born, new_ids, jnp.iinfo(jnp.int32).max))
        low = _cond_lowres(b[order].astype(jnp.float32), video_hw, low_size)[jnp.argsort(order)]
        # births' memory: the consolidated mask at the image size, non-overlapping among this
        # frame's births, binarised (a frame given as a mask), resized to the encoder's input
        img = merge.non_overlapping(_resize(low, cfg.image_size), born, new_ids)
        mem_in = _resize((img > 0).astype(jnp.float32) * MASK_SCALE + MASK_BIAS, in_size, antialias=True)
        out = fill_holes_in_mask_scores(jnp.take(det["masks"], born_det, axis=0), vcfg.fill_hole_area)
        return low, mem_in, out

    birth_low, birth_mem_in, birth_out = _only_if(jnp.any(born), birth_outputs, birth_in)
    rec_low = _only_if(jnp.any(recond), lambda m: _cond_lowres(m.astype(jnp.float32), video_hw, low_size,
                                                                exclusive=False), mask_in)

    mem_in = jnp.where(born[:, None, None], birth_mem_in, trk_mem_in)
    mem_score = jnp.where(born, given_score, trk_mem_score)
    feats = encode_memory(tparams, cfg, sam2_out, _nhwc(mem_in), mem_score[:, None], prescaled=True)

    ptr = jnp.where(recond[:, None], given_ptr, trk_ptr)
    memory = _reset_rows(mem, born)
    memory, dropped_t = add_memory(memory, frame_idx, feats, jnp.where(born[:, None], given_ptr, ptr),
                                   revisit | rec_group | born, reverse=reverse,
                                   eff_score=jnp.where(born, 0.0, eff), write=alive | born,
                                   evict_below=vcfg.mf_threshold if vcfg.memory_selection else None)
    # conditioning-frame outputs kept for a revisit
    new_cond_mask = jnp.where(born[:, None, None], birth_low,
                              jnp.where(recond[:, None, None], rec_low,
                                        jnp.where((rec_group & ~revisit)[:, None, None], trk_raw, state.cond_mask)))
    new_cond_score = jnp.where(born, given_score, jnp.where(recond, given_score,
                                                            jnp.where(rec_group & ~revisit, trk_logit, state.cond_score)))

    # 6. outputs
    low_out = jnp.where(born[:, None, None], birth_out, trk_out)
    present = alive | born
    masks = (_resize(low_out, video_hw) > 0) & present[:, None, None]
    birth_prob = jnp.take(det["probs"], born_det)
    score = jnp.where(born, birth_prob, state.score)
    tracker_score = jnp.where(born, birth_prob, jax.nn.sigmoid(trk_logit))
    tracker_score = jnp.where(removed, REMOVED_SCORE, tracker_score)

    next_group = jnp.where(born, state.max_obj_id + 1, state.group)  # one group per birth event
    new_state = VideoState(
        memory=memory,
        obj_id=jnp.where(removed & ~born, -1, new_ids),
        alive=(alive & ~removed) | born,
        group=next_group,
        score=score,
        hot=hot,
        last_occluded=jnp.where(born, merge.NEVER_OCCLUDED, last_occ),
        occ_record=(alive & ~removed) & ~born,
        cond_mask=new_cond_mask,
        cond_score=new_cond_score,
        max_obj_id=state.max_obj_id + n_born.astype(jnp.int32),
        num_dropped=state.num_dropped + (n_new - n_born).astype(jnp.int32),
        memory_dropped=state.memory_dropped + jnp.sum(dropped_t).astype(jnp.int32),
    )
    outputs = {
        "obj_id": new_ids, "present": present, "masks": masks, "low_res": low_out, "score": score,
        "tracker_score": tracker_score, "born": born, "removed": removed, "suppressed": suppressed,
        "occluded": occluded, "reconditioned": recond, "num_detections": jnp.sum(det["valid"]),
        # what the official tracker keeps as this frame's output per object (read by clicks later):
        # a given mask's consolidated output, else the raw propagated mask and object score
        "raw_low": jnp.where(born[:, None, None], birth_low, jnp.where(recond[:, None, None], rec_low, trk_raw)),
        "raw_score": jnp.where(born | recond, given_score, trk_logit),
        "num_new": n_new, "num_born": n_born,
    }
    return new_state, outputs


# --------------------------------------------------------------------------------------------- slot subsets


def _without_dup(state: VideoState) -> VideoState:
    return state.replace(hot=state.hot._replace(dup=None))


def gather_slots(state: VideoState, slots: jax.Array) -> VideoState:
    """The state restricted to the slots `slots` (B,) int32 (ascending; every live slot and the
    free slots births may take), for `track_frame` to run on B slots instead of N. Free slots left
    out neither change nor act on the others in a step, except through the hot-start duplicate
    counts that a dead slot's past leaves on live ones: those are folded into the subset's diagonal
    (never counted otherwise: a track is not its own duplicate), so the removal rule sees them."""
    sub = jax.tree.map(lambda x: jnp.take(x, slots, axis=0) if x.ndim else x, _without_dup(state))
    dup = state.hot.dup
    outside = jnp.ones((dup.shape[0],), bool).at[slots].set(False)
    ghost = jnp.max(jnp.where(outside[:, None], dup, 0), axis=0)[slots]  # (B,)
    sub_dup = dup[slots][:, slots]
    sub_dup = jnp.where(jnp.eye(slots.shape[0], dtype=bool), ghost[:, None], sub_dup)
    return sub.replace(hot=sub.hot._replace(dup=sub_dup))


def scatter_slots(state: VideoState, slots: jax.Array, sub: VideoState, born: jax.Array) -> VideoState:
    """`sub` (from `track_frame` on `gather_slots(state, slots)`; born (B,) its births) written
    back into the N-slot state: what `track_frame` on the whole state would have given."""
    new = jax.tree.map(lambda x, y: x.at[slots].set(y) if x.ndim else y, _without_dup(state), _without_dup(sub))
    n = state.alive.shape[0]
    born_all = jnp.zeros((n,), bool).at[slots].set(born)
    dup = jnp.where(born_all[:, None] | born_all[None, :], 0, state.hot.dup)  # a new track starts from zero
    block = jnp.where(jnp.eye(slots.shape[0], dtype=bool), 0, sub.hot.dup)
    dup = dup.at[slots[:, None], slots[None, :]].set(block)
    return new.replace(hot=new.hot._replace(dup=dup))


def track_slots(params, cfg, vcfg: VideoConfig, state: VideoState, det, sam2_out, frame_idx, num_frames,
                slots: Optional[jax.Array] = None, *, reverse: bool, video_hw: tuple[int, int]):
    """`track_frame` on the slots `slots` only (None: all) -> (new state, outputs over those slots,
    with "fits"). The subset must hold every live slot; its free slots bound the births: when the
    frame has more new detections than that and there are free slots outside, the result would
    differ from the whole state's, so the state is returned unchanged and "fits" is False (run
    the frame again on every slot)."""
    if slots is None:
        new, out = track_frame(params, cfg, vcfg, state, det, sam2_out, frame_idx, num_frames, reverse=reverse,
                               video_hw=video_hw)
        return new, {**out, "fits": jnp.asarray(True)}
    sub_in = gather_slots(state, slots)
    sub, out = track_frame(params, cfg, vcfg, sub_in, det, sam2_out, frame_idx, num_frames, reverse=reverse,
                           video_hw=video_hw)
    free_in = jnp.sum(~sub_in.alive)
    fits = (out["num_new"] <= free_in) | (free_in == jnp.sum(~state.alive))
    new = jax.lax.cond(fits, lambda: scatter_slots(state, slots, sub, out["born"]), lambda: state)
    return new, {**out, "fits": fits}


def video_step(params, cfg, vcfg: VideoConfig, state: VideoState, image: jax.Array, text_out, frame_idx, num_frames,
               allow_new: Any = True, geo=None, *, reverse: bool, video_hw: tuple[int, int]):
    """`encode_frame` + `detect_frame` + `track_frame`: one whole frame, every slot, from its
    normalised image (1, S, S, 3) (what the memory planner compiles)."""
    det, sam2_out = detect_frame(params, cfg, encode_frame(params, cfg, image), text_out, vcfg.merge, allow_new, geo)
    return track_frame(params, cfg, vcfg, state, det, sam2_out, frame_idx, num_frames, reverse=reverse,
                       video_hw=video_hw)


def postprocess(outputs: Mapping[str, Any], hidden: Optional[Any] = None, *, low_res: bool = False) -> dict[str, Any]:
    """Host side, a frame's outputs as the official `_postprocess_output` gives them: present,
    non-empty, not hidden (removed / suppressed ids) objects in id order; boxes (normalised xywh)
    of their masks; then each pixel to the object with the highest tracker score (ties: lower id).
    -> {"obj_ids", "scores", "boxes_xywh", "masks"} numpy arrays (and, with low_res, the objects'
    low-res mask logits "low_res" (K, 4g, 4g) before the threshold)."""
    import numpy as np

    ids = np.asarray(outputs["obj_id"])
    present = np.asarray(outputs["present"])
    masks = np.asarray(outputs["masks"])
    keep = present & masks.any(axis=(1, 2))
    if hidden is not None:
        keep &= ~np.isin(ids, np.asarray(sorted(hidden), np.int64))
    sel = np.flatnonzero(keep)
    sel = sel[np.argsort(ids[sel], kind="stable")]
    h, w = masks.shape[1:]
    m = masks[sel]
    extra = {"low_res": np.asarray(outputs["low_res"])[sel]} if low_res else {}
    if len(sel) == 0:
        return {"obj_ids": np.zeros((0,), np.int64), "scores": np.zeros((0,), np.float32),
                "boxes_xywh": np.zeros((0, 4), np.float32), "masks": np.zeros((0, h, w), bool), **extra}
    boxes = np.asarray(merge.masks_to_boxes(jnp.asarray(m)))
    xywh = np.stack([boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)
    xywh = (xywh / np.array([w, h, w, h], np.float32)).astype(np.float32)
    if len(sel) > 1:
        tscore = np.asarray(outputs["tracker_score"])[sel].astype(np.float32)
        s = np.where(m, tscore[:, None, None], np.float32(0.0))
        win = np.argmax(s, axis=0)
        m = m & (win[None] == np.arange(len(sel))[:, None, None]) & (s > 0)
    return {"obj_ids": ids[sel].astype(np.int64), "scores": np.asarray(outputs["score"])[sel].astype(np.float32),
            "boxes_xywh": xywh, "masks": m, **extra}
