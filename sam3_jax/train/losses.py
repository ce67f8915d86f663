"""SAM 3 training losses on padded, static-shape targets (official: sam3/train/loss/loss_fns.py,
sam3/train/loss/sam3_loss.py, sam3/train/matcher.py; the settings of the released fine-tuning
configs are the defaults of `LossConfig`).

Padded target format (one row per find query = one image + one prompt, B rows, at most M boxes):

    targets = {
        "boxes":          (B, M, 4) float, cxcywh normalised to [0, 1]; padding slots: anything
        "valid":          (B, M) bool, True for a real ground-truth box. Put the real boxes first
                          (slot order = the official packed order): the matcher then sees exactly
                          the official cost matrix. Row b's box count is valid[b].sum().
        "masks":          (B, M, H, W) bool or float {0, 1}, instance masks at the GT resolution,
                          padding slots zero (optional: without it the mask losses are skipped,
                          like the official `targets["masks"] is None` case)
        "mask_valid":     (B, M) bool, the official `is_valid_mask` (a box without a mask);
                          optional, default `valid`
        "is_exhaustive":  (B,) bool, only read when `LossConfig.weak_loss` (off in the configs)
        "semantic_masks": (B, H, W) bool, optional; without it the semantic target is the union of
                          the row's valid instance masks (official `instance_masks_to_semantic_masks`)
    }

A row "has a GT" (official `keep_loss`, the presence target) when some valid box has w > 0 and h > 0.

Model outputs (sam3_jax/model/sam3_image.py `forward_grounding`, batch-first): `pred_logits` (B, Q, 1),
`pred_boxes` (B, Q, 4) cxcywh, `pred_boxes_xyxy`, `pred_masks` (B, Q, h, w) logits, `semantic_seg`
(B, h, w, 1), `presence_logit_dec` (B, 1) and `aux` with the per-decoder-layer stacks `pred_logits`
(L, B, Q, 1), `pred_boxes`, `pred_boxes_xyxy`, `presence_logit_dec` (L, B, 1); entry L - 1 is the
final layer (= the top-level outputs), entries 0 .. L - 2 are the official `aux_outputs`. A
training model with DAC (duplicated one-to-many queries) adds the same keys with an `_o2m` suffix
(top level: `pred_logits_o2m`, `pred_boxes_o2m`, `pred_boxes_xyxy_o2m`, `pred_masks_o2m`; in `aux`:
the first three) and the o2m losses are then computed, as in the official wrapper; without them
they are skipped (the current JAX model runs the eval path, without DAC).

What `sam3_loss` computes, per output level (final, then aux layer i with suffix `_aux_{i}`):

* matching: Hungarian (sam3_jax.train.matcher; final and aux share one host callback);
* `loss_bbox` (weight 5) = sum over matched pairs of |box - gt|_1 / num_boxes, `loss_giou` (2) =
  sum of 1 - GIoU / num_boxes;
* `loss_ce` (20): IoU-aware BCE over queries. Matched queries: BCE against the soft target
  t = max(p^0.25 IoU^0.75, 0.01) (gradient-stopped) times pos_weight 10; other queries: BCE against 0
  times p^2. Rows without a GT contribute 0. Reduced by sum / (200 B) while Q < pad_n_queries = 200,
  else by the mean;
* `presence_loss` (20) = sigmoid focal (alpha 0.5, gamma 0, i.e. alpha-weighted BCE) of
  `presence_logit_dec` against "has a GT", summed / B;
* final level only: `loss_mask` (200) = sigmoid focal (0.25, 2) mean over pixels, summed over
  matched pairs with a valid mask / num_boxes, and `loss_dice` (10) = sum of 1 - (2 sum(s y) + 1) /
  (sum s + sum y + 1) / num_boxes, both after bilinear upsampling (torch align_corners=False) of the
  matched mask logits to the GT size;
* with DAC outputs: the same box / ce / mask terms on the o2m queries, suffix `_o2m`, each times
  o2m_weight 2. The final level uses the one-to-many matcher, aux levels the Hungarian matcher
  (`use_o2m_matcher_on_o2m_aux=False`); o2m outputs have no presence loss (reported as 0).

Then the semantic-segmentation criterion on `semantic_seg` (`loss_semantic_seg` 20,
`loss_semantic_dice` 30, `loss_semantic_presence` 1; the commented-out segmentation config:
focal 0.6 / 2, upsampling the prediction to the target size, presence-masked per-row averaging,
no presence BCE), and the whole weighted sum is multiplied by sqrt(B) (scale_by_find_batch_size).

Normalisation: `num_boxes` is an argument. The official wrapper all-reduces the number of GT boxes
over the data-parallel ranks and divides by the world size (min 1); see `compute_num_boxes`.

Ported options beyond the configs: `weak_loss` (is_exhaustive), `pos_focal`, `pad_n_queries=None`,
the semantic criterion's downsampling / BCE / no-presence-head variants. Not ported: point-sampled
mask losses (`num_sample_points`, unused by the configs), the video / tracking options of the
official losses (det/trk query split, Det2TrkAssoc), `normalize_by_valid_object_num` and
`normalize_by_stage_num` (both off), and the logged metrics (`ce_f1`, `presence_dec_acc`,
`miou_semantic_seg`, `presence_acc`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from sam3_jax.layers.resize import resize_bilinear
from sam3_jax.train.box_ops import (
    box_cxcywh_to_xyxy,
    elementwise_box_iou,
    elementwise_generalized_box_iou,
)
from sam3_jax.train.matcher import Matches, hungarian_match, one_to_many_match

CORE_LOSS_KEY = "core_loss"
_DUMMY_BOX = (0.5, 0.5, 1.0, 1.0)  # stands in for padding slots so no NaN reaches a gradient


@dataclasses.dataclass(frozen=True)
class LossConfig:
    # Hungarian matcher (BinaryHungarianMatcherV2, focal cost)
    cost_class: float = 2.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    match_alpha: float = 0.25
    match_gamma: float = 2.0
    # one-to-many (DAC) matcher and weighting
    o2m_alpha: float = 0.3
    o2m_threshold: float = 0.4
    o2m_topk: int = 4
    o2m_weight: float = 2.0
    use_o2m_matcher_on_o2m_aux: bool = False
    # Boxes
    weight_bbox: float = 5.0
    weight_giou: float = 2.0
    # IABCEMdetr
    weight_ce: float = 20.0
    weight_presence: float = 20.0
    pos_weight: float = 10.0
    ce_alpha: float = 0.25
    ce_gamma: float = 2.0
    pos_focal: bool = False
    weak_loss: bool = False
    use_presence: bool = True
    presence_alpha: float = 0.5
    presence_gamma: float = 0.0
    pad_n_queries: Optional[int] = 200
    pad_scale_pos: float = 1.0
    # Masks (final level only: compute_aux=False)
    use_masks: bool = True
    weight_mask: float = 200.0
    weight_dice: float = 10.0
    mask_alpha: float = 0.25
    mask_gamma: float = 2.0
    # SemanticSegCriterion
    use_semantic_seg: bool = True
    sem_focal: bool = True
    sem_alpha: float = 0.6
    sem_gamma: float = 2.0
    sem_downsample: bool = False
    sem_presence_head: bool = True
    sem_presence_loss: bool = False
    weight_semantic_seg: float = 20.0
    weight_semantic_dice: float = 30.0
    weight_semantic_presence: float = 1.0
    # wrapper
    aux_loss: bool = True
    scale_by_find_batch_size: bool = True


BOX_ONLY_CONFIG = LossConfig(use_masks=False, use_semantic_seg=False)  # the released box-only config


# ---------------------------------------------------------------------------- elementwise pieces
def _pow(x: jax.Array, gamma: float) -> jax.Array:
    """x ** gamma with torch's value at 0 ** 0 = 1 and a finite gradient there."""
    if gamma == 0:
        return jnp.ones_like(x)
    if float(gamma).is_integer():
        return jax.lax.integer_pow(x, int(gamma))
    return jnp.power(x, gamma)


def bce_with_logits(x: jax.Array, y: jax.Array) -> jax.Array:
    """Elementwise binary cross-entropy on logits (torch `binary_cross_entropy_with_logits`)."""
    return jnp.maximum(x, 0.0) - x * y + jnp.log1p(jnp.exp(-jnp.abs(x)))


def sigmoid_focal_loss(x: jax.Array, y: jax.Array, alpha: float = 0.25, gamma: float = 2.0) -> jax.Array:
    """Elementwise sigmoid focal loss (the official PyTorch fallback; alpha < 0 disables alpha_t)."""
    p = jax.nn.sigmoid(x)
    p_t = p * y + (1 - p) * (1 - y)
    loss = bce_with_logits(x, y) * _pow(1 - p_t, gamma)
    if alpha >= 0:
        loss = (alpha * y + (1 - alpha) * (1 - y)) * loss
    return loss


def dice_per_row(x: jax.Array, y: jax.Array) -> jax.Array:
    """1 - (2 sum(s y) + 1) / (sum s + sum y + 1) over the last axis, s = sigmoid(x)."""
    s = jax.nn.sigmoid(x)
    return 1 - (2 * jnp.sum(s * y, axis=-1) + 1) / (jnp.sum(s, axis=-1) + jnp.sum(y, axis=-1) + 1)


def compute_num_boxes(valid: jax.Array, *, axis_name: Optional[str] = None, num_replicas: int = 1) -> jax.Array:
    """The box-count normaliser of the official wrapper (normalization="global").

    * Inside shard_map / pmap with per-replica targets, pass `axis_name`: the count is summed over
      that axis and divided by its size, min 1 -- the official all-reduce / world size, so each
      replica's loss equals its rank's official loss.
    * In a jit over the whole global batch standing for `num_replicas` data-parallel ranks, the
      result is num_replicas * max(total / num_replicas, 1); with it (and `find_batch_size` = the
      per-rank batch) the global loss equals the mean over ranks of their official losses, i.e. the
      objective DDP's gradient averaging optimises (except per-rank ratios: weak_loss, the
      presence-masked semantic averages).
    * Single device: max(total, 1)."""
    n = jnp.sum(valid).astype(jnp.float32)
    if axis_name is not None:
        n = jax.lax.psum(n, axis_name)
        r = jax.lax.psum(jnp.float32(1.0), axis_name)
        return jnp.maximum(n / r, 1.0)
    return jnp.maximum(n / num_replicas, 1.0) * num_replicas


# ---------------------------------------------------------------------------- helpers
def _safe_boxes(boxes: jax.Array, valid: jax.Array) -> jax.Array:
    return jnp.where(valid[..., None], boxes.astype(jnp.float32), jnp.asarray(_DUMMY_BOX, jnp.float32))


def _gather_queries(x: jax.Array, query_idx: jax.Array) -> jax.Array:
    """x (B, Q, ...) and query_idx (B, M, K) -> (B, M, K, ...)."""
    b, m, k = query_idx.shape
    flat = query_idx.reshape(b, m * k)
    out = jnp.take_along_axis(x, flat.reshape((b, m * k) + (1,) * (x.ndim - 2)), axis=1)
    return out.reshape((b, m, k) + x.shape[2:])


def _has_gt(targets: Mapping[str, jax.Array]) -> jax.Array:
    """(B,) float: the row has a valid box of positive width and height (official keep_loss)."""
    b = targets["boxes"]
    visible = targets["valid"] & (b[..., 2] > 0) & (b[..., 3] > 0)
    return jnp.any(visible, axis=-1).astype(jnp.float32)


# ---------------------------------------------------------------------------- loss terms
def box_losses(pred_boxes, pred_boxes_xyxy, targets, matches: Matches, num_boxes) -> dict[str, jax.Array]:
    """Official `Boxes`: loss_bbox (L1 on cxcywh) and loss_giou (1 - GIoU on xyxy), summed over
    the matched pairs and divided by num_boxes."""
    tb = _safe_boxes(targets["boxes"], targets["valid"])[:, :, None, :]  # (B, M, 1, 4)
    pb = _gather_queries(pred_boxes.astype(jnp.float32), matches.query_idx)  # (B, M, K, 4)
    pbx = _gather_queries(pred_boxes_xyxy.astype(jnp.float32), matches.query_idx)
    v = matches.valid
    l1 = jnp.sum(jnp.abs(pb - tb), axis=-1)
    giou = elementwise_generalized_box_iou(pbx, box_cxcywh_to_xyxy(tb))
    return {
        "loss_bbox": jnp.sum(jnp.where(v, l1, 0.0)) / num_boxes,
        "loss_giou": jnp.sum(jnp.where(v, 1 - giou, 0.0)) / num_boxes,
    }


def classification_losses(
    pred_logits,
    pred_boxes_xyxy,
    targets,
    matches: Matches,
    presence_logit=None,
    cfg: LossConfig = LossConfig(),
) -> dict[str, jax.Array]:
    """Official `IABCEMdetr`: loss_ce (IoU-aware BCE over the queries) and presence_loss.

    A query matched to several targets (possible with the one-to-many matcher) takes its soft
    target from the last of them in target order (the official index_put writes them in that order)."""
    x = pred_logits.astype(jnp.float32)[..., 0]  # (B, Q)
    bsz, nq = x.shape
    p = jax.nn.sigmoid(x)
    m = matches.query_idx.shape[1]
    hit = jnp.any((matches.query_idx[..., None] == jnp.arange(nq)) & matches.valid[..., None], axis=2)  # (B, M, Q)
    is_pos = jnp.any(hit, axis=1)  # (B, Q)
    target_classes = is_pos.astype(jnp.float32)
    winner = jnp.max(jnp.where(hit, jnp.arange(m)[None, :, None], 0), axis=1)  # (B, Q)

    sg = jax.lax.stop_gradient
    tgt_xyxy = box_cxcywh_to_xyxy(_safe_boxes(targets["boxes"], targets["valid"]))
    win_box = jnp.take_along_axis(tgt_xyxy, winner[..., None], axis=1)  # (B, Q, 4)
    iou = elementwise_box_iou(sg(pred_boxes_xyxy.astype(jnp.float32)), win_box)
    t = jnp.maximum(_pow(sg(p), cfg.ce_alpha) * _pow(jnp.where(is_pos, iou, 1.0), 1 - cfg.ce_alpha), 0.01)
    soft = sg(jnp.where(is_pos, t, 0.0))

    if cfg.pos_focal:
        pos = sigmoid_focal_loss(x, soft, alpha=0.5, gamma=cfg.ce_gamma)
    else:
        pos = bce_with_logits(x, soft)
    loss = pos * target_classes * cfg.pos_weight
    padded = cfg.pad_n_queries is not None and nq < cfg.pad_n_queries
    if padded:
        loss = loss * cfg.pad_scale_pos
    loss = loss + bce_with_logits(x, target_classes) * (1 - target_classes) * _pow(p, cfg.ce_gamma)

    presence_loss = jnp.float32(0.0)
    if cfg.use_presence:
        keep = _has_gt(targets)[:, None]  # (B, 1)
        loss = loss * keep
        if presence_logit is not None:
            pl = presence_logit.astype(jnp.float32).reshape(bsz, 1)
            presence_loss = jnp.sum(
                sigmoid_focal_loss(pl, keep, alpha=cfg.presence_alpha, gamma=cfg.presence_gamma)
            ) / bsz

    if cfg.weak_loss:
        ignored = (~targets["is_exhaustive"].astype(bool))[:, None] & (target_classes < 0.5)
        weight = (~ignored).astype(jnp.float32)
        loss_ce = jnp.sum(loss * weight) / (jnp.sum(weight) + 1e-6)
    elif padded:
        loss_ce = jnp.sum(loss) / (cfg.pad_n_queries * bsz)
    else:
        loss_ce = jnp.mean(loss)
    return {"loss_ce": loss_ce, "presence_loss": presence_loss}


def _mask_losses_impl(pred_masks, tgt_masks, pair_valid, query_idx, num_boxes, alpha, gamma):
    b, nq, h, w = pred_masks.shape
    _, m, k = query_idx.shape
    hh, ww = tgt_masks.shape[-2:]
    src = _gather_queries(pred_masks.astype(jnp.float32), query_idx)  # (B, M, K, h, w)
    src = jnp.moveaxis(src.reshape(b, m * k, h, w), 1, -1)  # (B, h, w, M*K)
    if (h, w) != (hh, ww):
        src = resize_bilinear(src, (hh, ww))
    src = jnp.moveaxis(src, -1, 1).reshape(b, m, k, hh * ww)
    tgt = tgt_masks.astype(jnp.float32).reshape(b, m, 1, hh * ww)
    focal = jnp.mean(sigmoid_focal_loss(src, tgt, alpha=alpha, gamma=gamma), axis=-1)  # (B, M, K)
    dice = dice_per_row(src, tgt)
    return (
        jnp.sum(jnp.where(pair_valid, focal, 0.0)) / num_boxes,
        jnp.sum(jnp.where(pair_valid, dice, 0.0)) / num_boxes,
    )


_mask_losses_remat = jax.checkpoint(_mask_losses_impl, static_argnums=(5, 6))


def mask_losses(
    pred_masks, targets, matches: Matches, num_boxes, cfg: LossConfig = LossConfig()
) -> dict[str, jax.Array]:
    """Official `Masks` (without point sampling): matched mask logits (B, Q, h, w) upsampled
    bilinearly to the GT size, focal (mean over pixels) and dice per pair, pairs whose GT has no
    mask dropped, sums / num_boxes. Memory grows with B * M * K * H * W; the computation is
    rematerialised in the backward pass so only the small logits are kept."""
    mask_valid = targets.get("mask_valid", targets["valid"])
    pair_valid = matches.valid & (mask_valid & targets["valid"])[..., None]
    loss_mask, loss_dice = _mask_losses_remat(
        pred_masks, targets["masks"], pair_valid, matches.query_idx, num_boxes, cfg.mask_alpha, cfg.mask_gamma
    )
    return {"loss_mask": loss_mask, "loss_dice": loss_dice}


def semantic_seg_losses(
    semantic_seg, targets, cfg: LossConfig = LossConfig(), presence_logit=None
) -> dict[str, jax.Array]:
    """Official `SemanticSegCriterion` on `semantic_seg` (B, h, w, 1) logits.

    Target: `semantic_masks` (B, H, W) if given, else the union of the row's valid instance masks.
    sem_downsample: the target is bilinearly resized to (h, w) and binarised (!= 0); otherwise the
    logits are bilinearly resized to (H, W). When no semantic masks are given and the batch has no
    instance at all, the official code builds a (B, 1, 1) all-zero target: reproduced here for the
    upsampling path (with the presence head the result is 0 either way)."""
    logits = semantic_seg.astype(jnp.float32)  # (B, h, w, 1)
    bsz, h, w, _ = logits.shape
    given = targets.get("semantic_masks")
    if given is not None:
        sem = given.astype(bool)
        degenerate = None
    else:
        inst = targets["masks"].astype(bool) & targets["valid"][:, :, None, None]
        if cfg.sem_downsample:
            inst = jnp.moveaxis(inst.astype(jnp.float32), 1, -1)  # (B, H, W, M)
            inst = jnp.moveaxis(resize_bilinear(inst, (h, w)), -1, 1) != 0
        sem = jnp.any(inst, axis=1)
        degenerate = jnp.sum(targets["valid"]) == 0
    if cfg.sem_downsample and given is not None:
        sem = resize_bilinear(sem.astype(jnp.float32)[..., None], (h, w))[..., 0] != 0

    def terms(lg, tgt):
        hh, ww = tgt.shape[-2:]
        if not cfg.sem_downsample and (hh, ww) != (lg.shape[1], lg.shape[2]):
            lg = resize_bilinear(lg, (hh, ww))
        x = lg[..., 0].reshape(bsz, -1)
        y = tgt.reshape(bsz, -1).astype(jnp.float32)
        if cfg.sem_focal:
            per = jnp.mean(sigmoid_focal_loss(x, y, alpha=cfg.sem_alpha, gamma=cfg.sem_gamma), axis=-1)
        else:
            per = jnp.mean(bce_with_logits(x, y), axis=-1)
        dice = dice_per_row(x, y)
        present = jnp.any(y > 0, axis=-1)
        if cfg.sem_presence_head:
            nv = jnp.sum(present).astype(jnp.float32)
            seg = jnp.sum(per * present) / (nv + 1e-6)
            dsc = jnp.sum(dice * present) / (nv + 1e-6)
        else:
            seg = jnp.sum(per) / bsz  # = the official global means (all rows have H*W pixels)
            dsc = jnp.sum(dice) / bsz
        return seg, dsc, present

    seg, dsc, present = terms(logits, sem)
    if degenerate is not None and not cfg.sem_downsample:
        seg0, dsc0, _ = terms(logits, jnp.zeros((bsz, 1, 1), bool))
        seg = jnp.where(degenerate, seg0, seg)
        dsc = jnp.where(degenerate, dsc0, dsc)
    out = {"loss_semantic_seg": seg, "loss_semantic_dice": dsc}
    if cfg.sem_presence_head:
        if cfg.sem_presence_loss:
            if presence_logit is None:
                raise ValueError("sem_presence_loss needs the segmentation head's `presence_logit`")
            out["loss_semantic_presence"] = jnp.mean(
                bce_with_logits(presence_logit.astype(jnp.float32).reshape(-1), present.astype(jnp.float32))
            )
        else:
            out["loss_semantic_presence"] = jnp.float32(0.0)
    return out


# ---------------------------------------------------------------------------- the wrapper
def _weighted(terms: Mapping[str, jax.Array], weights: Mapping[str, float]) -> jax.Array:
    total = jnp.float32(0.0)
    for k, wgt in weights.items():
        if wgt != 0:
            total = total + wgt * terms[k]
    return total


def _levels(outputs: Mapping[str, Any], cfg: LossConfig) -> list[tuple[str, dict, bool]]:
    """[(suffix, level outputs, is_aux)]: the final outputs, then the official aux_outputs."""
    keys = ("pred_logits", "pred_boxes", "pred_boxes_xyxy", "presence_logit_dec",
            "pred_logits_o2m", "pred_boxes_o2m", "pred_boxes_xyxy_o2m", "pred_masks", "pred_masks_o2m")
    levels = [("", {k: outputs[k] for k in keys if k in outputs}, False)]
    aux = outputs.get("aux")
    if cfg.aux_loss and aux is not None:
        n_layers = aux["pred_logits"].shape[0]
        for i in range(n_layers - 1):
            lv = {k: aux[k][i] for k in keys if k in aux and not k.startswith("pred_masks")}
            levels.append((f"_aux_{i}", lv, True))
    for _, lv, _ in levels:
        if "pred_boxes_xyxy" not in lv:
            lv["pred_boxes_xyxy"] = box_cxcywh_to_xyxy(lv["pred_boxes"])
        if "pred_logits_o2m" in lv and "pred_boxes_xyxy_o2m" not in lv:
            lv["pred_boxes_xyxy_o2m"] = box_cxcywh_to_xyxy(lv["pred_boxes_o2m"])
    return levels


def compute_matches(
    outputs: Mapping[str, Any], targets: Mapping[str, jax.Array], cfg: LossConfig = LossConfig()
) -> dict[str, Matches]:
    """All matchings `sam3_loss` needs, keyed by level suffix ("", "_aux_0", ...; o2m ones with a
    trailing "_o2m"). Every Hungarian matching of equal query count goes through one host call."""
    levels = _levels(outputs, cfg)
    tb, tv = targets["boxes"], targets["valid"]
    jobs = []  # (key, logits, boxes) for the Hungarian matcher
    out: dict[str, Matches] = {}
    for suffix, lv, is_aux in levels:
        jobs.append((suffix, lv["pred_logits"], lv["pred_boxes"]))
        if "pred_logits_o2m" in lv:
            if cfg.use_o2m_matcher_on_o2m_aux or not is_aux:
                out[suffix + "_o2m"] = one_to_many_match(
                    lv["pred_logits_o2m"], lv["pred_boxes_o2m"], tb, tv,
                    alpha=cfg.o2m_alpha, threshold=cfg.o2m_threshold, topk=cfg.o2m_topk,
                )
            else:
                jobs.append((suffix + "_o2m", lv["pred_logits_o2m"], lv["pred_boxes_o2m"]))
    cost_kw = dict(cost_class=cfg.cost_class, cost_bbox=cfg.cost_bbox, cost_giou=cfg.cost_giou,
                   alpha=cfg.match_alpha, gamma=cfg.match_gamma)
    groups: dict[tuple, list] = {}
    for job in jobs:
        groups.setdefault(tuple(job[1].shape), []).append(job)
    for group in groups.values():
        logits = jnp.stack([j[1] for j in group])
        boxes = jnp.stack([j[2] for j in group])
        mt = hungarian_match(logits, boxes, tb, tv, **cost_kw)
        for i, job in enumerate(group):
            out[job[0]] = Matches(mt.query_idx[i], mt.valid[i])
    return out


def sam3_loss(
    outputs: Mapping[str, Any],
    targets: Mapping[str, jax.Array],
    num_boxes,
    config: LossConfig = LossConfig(),
    *,
    matches: Optional[Mapping[str, Matches]] = None,
    find_batch_size: Optional[int] = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Total SAM 3 training loss (official `Sam3LossWrapper` for one find stage) and its terms.

    outputs: the model's output dict (see the module docstring); targets: the padded targets;
    num_boxes: the normaliser (`compute_num_boxes`); matches: optional precomputed matchings
    (`compute_matches` format), computed here otherwise; find_batch_size: the batch size of the
    sqrt scaling (default: B; in a global-batch jit, the per-replica batch).
    Returns (total, terms): terms holds the unweighted loss values under the official names
    (`loss_bbox`, `loss_giou`, `loss_ce`, `presence_loss`, `loss_mask`, `loss_dice` with the
    level suffix, then `_o2m` for the one-to-many ones, those already times o2m_weight;
    `loss_semantic_*`) and `core_loss` = total."""
    cfg = config
    num_boxes = jnp.asarray(num_boxes, jnp.float32)
    if matches is None:
        matches = compute_matches(outputs, targets, cfg)
    have_masks = cfg.use_masks and targets.get("masks") is not None
    box_w = {"loss_bbox": cfg.weight_bbox, "loss_giou": cfg.weight_giou}
    ce_w = {"loss_ce": cfg.weight_ce, "presence_loss": cfg.weight_presence}
    mask_w = {"loss_mask": cfg.weight_mask, "loss_dice": cfg.weight_dice}

    terms: dict[str, jax.Array] = {}
    total = jnp.float32(0.0)
    for suffix, lv, is_aux in _levels(outputs, cfg):
        has_o2m = "pred_logits_o2m" in lv
        for kind in ("boxes", "ce", "masks"):
            for o2m in ((False, True) if has_o2m else (False,)):
                tag = "_o2m" if o2m else ""
                sfx = "_o2m" if o2m else ""
                mt = matches[suffix + sfx]
                if kind == "boxes":
                    t = box_losses(lv["pred_boxes" + tag], lv["pred_boxes_xyxy" + tag], targets, mt, num_boxes)
                    wts = box_w
                elif kind == "ce":
                    presence = None if o2m else lv.get("presence_logit_dec")
                    t = classification_losses(lv["pred_logits" + tag], lv["pred_boxes_xyxy" + tag], targets, mt,
                                              presence, cfg)
                    wts = ce_w
                else:
                    if is_aux or not have_masks or ("pred_masks" + tag) not in lv:
                        continue
                    t = mask_losses(lv["pred_masks" + tag], targets, mt, num_boxes, cfg)
                    wts = mask_w
                scale = cfg.o2m_weight if o2m else 1.0
                total = total + scale * _weighted(t, wts)
                terms.update({f"{k}{suffix}{sfx}": scale * v for k, v in t.items()})

    if cfg.use_semantic_seg and "semantic_seg" in outputs and (
        targets.get("semantic_masks") is not None or targets.get("masks") is not None
    ):
        t = semantic_seg_losses(outputs["semantic_seg"], targets, cfg, outputs.get("presence_logit"))
        sem_w = {"loss_semantic_seg": cfg.weight_semantic_seg, "loss_semantic_dice": cfg.weight_semantic_dice}
        if "loss_semantic_presence" in t:
            sem_w["loss_semantic_presence"] = cfg.weight_semantic_presence
        total = total + _weighted(t, sem_w)
        terms.update(t)

    if cfg.scale_by_find_batch_size:
        bs = find_batch_size if find_batch_size is not None else targets["boxes"].shape[0]
        total = total * np.float32(np.sqrt(bs))
    terms[CORE_LOSS_KEY] = total
    return total, terms
