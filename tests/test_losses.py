"""Matchers and training losses: parity with the official sam3.train code on seeded random batches.

The official focal losses default to Triton kernels (GPU only); here every official call goes
through the module's PyTorch fallback (`triton=False`). `torchmetrics` (only used by the official
IABCEMdetr for its logged F1 metric) is not installed: a stub stands in for it.
"""

import functools
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from sam3_jax.train import box_ops as jbo
from sam3_jax.train.losses import (
    BOX_ONLY_CONFIG,
    LossConfig,
    bce_with_logits,
    box_losses,
    classification_losses,
    compute_matches,
    compute_num_boxes,
    dice_per_row,
    mask_losses,
    sam3_loss,
    semantic_seg_losses,
    sigmoid_focal_loss,
)
from sam3_jax.train.matcher import Matches, hungarian_match, one_to_many_match

TOL = 1e-5


# ---------------------------------------------------------------------------- official modules
@pytest.fixture(scope="module")
def off():
    if "torchmetrics" not in sys.modules:
        try:
            import torchmetrics  # noqa: F401
        except ImportError:
            tm, tmf = types.ModuleType("torchmetrics"), types.ModuleType("torchmetrics.functional")
            tmf.f1_score = lambda *a, **k: torch.tensor(0.0)
            tm.functional = tmf
            sys.modules["torchmetrics"], sys.modules["torchmetrics.functional"] = tm, tmf
    import sam3.model.box_ops as box_ops
    import sam3.train.loss.loss_fns as loss_fns
    import sam3.train.loss.sam3_loss as sam3_loss_mod
    import sam3.train.matcher as matcher
    from sam3.model.model_misc import SAM3Output

    original = loss_fns.sigmoid_focal_loss
    loss_fns.sigmoid_focal_loss = functools.partial(original, triton=False)
    yield types.SimpleNamespace(box_ops=box_ops, L=loss_fns, W=sam3_loss_mod, M=matcher, SAM3Output=SAM3Output,
                                focal=original)
    loss_fns.sigmoid_focal_loss = original


def _hungarian(off):
    return off.M.BinaryHungarianMatcherV2(focal=True, cost_class=2.0, cost_bbox=5.0, cost_giou=2.0,
                                          alpha=0.25, gamma=2, stable=False)


def _o2m(off):
    return off.M.BinaryOneToManyMatcher(alpha=0.3, threshold=0.4, topk=4)


# ---------------------------------------------------------------------------- random batches
def _boxes(rng, shape):
    cxcy = rng.uniform(0.2, 0.8, shape + (2,))
    wh = rng.uniform(0.05, 0.5, shape + (2,))
    return np.concatenate([cxcy, wh], -1).astype(np.float32)


def make_batch(seed, counts=(3, 0, 6), q=16, m=6, layers=3, hw=(8, 8), gt_hw=(20, 28), o2m=True):
    """Random outputs (numpy, JAX layout) and padded targets. Some queries sit near the GT boxes
    (so the one-to-many matcher fires) and row 2 holds two near-identical GT boxes (a query can
    then match both)."""
    rng = np.random.default_rng(seed)
    b = len(counts)
    valid = np.arange(m)[None] < np.asarray(counts)[:, None]
    tb = _boxes(rng, (b, m))
    if counts[-1] >= 2:
        tb[-1, 1] = tb[-1, 0] + rng.normal(0, 0.01, 4).astype(np.float32)
    tb = np.where(valid[..., None], tb, 0).astype(np.float32)

    def level_boxes():
        pb = _boxes(rng, (b, q))
        for i in range(b):
            for j in range(counts[i]):
                for k in rng.choice(q, 3, replace=False):
                    pb[i, k] = tb[i, j] + rng.normal(0, 0.02, 4)
        return np.clip(pb, 0.02, 0.98).astype(np.float32)

    def xyxy(x):
        return np.array(jbo.box_cxcywh_to_xyxy(jnp.asarray(x)))

    n_heads = 2 if o2m else 1
    logits = [rng.normal(0, 2, (layers, b, q, 1)).astype(np.float32) for _ in range(n_heads)]
    boxes = [np.stack([level_boxes() for _ in range(layers)]) for _ in range(n_heads)]
    out = {"aux": {}}
    for h, tag in enumerate(["", "_o2m"][:n_heads]):
        out["aux"]["pred_logits" + tag] = logits[h]
        out["aux"]["pred_boxes" + tag] = boxes[h]
        out["aux"]["pred_boxes_xyxy" + tag] = xyxy(boxes[h])
        for k in ("pred_logits", "pred_boxes", "pred_boxes_xyxy"):
            out[k + tag] = out["aux"][k + tag][-1]
        out["pred_masks" + tag] = rng.normal(0, 3, (b, q) + hw).astype(np.float32)
    out["aux"]["presence_logit_dec"] = rng.normal(0, 2, (layers, b, 1)).astype(np.float32)
    out["presence_logit_dec"] = out["aux"]["presence_logit_dec"][-1]
    out["semantic_seg"] = rng.normal(0, 3, (b,) + hw + (1,)).astype(np.float32)

    masks = rng.uniform(size=(b, m) + gt_hw) < rng.uniform(0.1, 0.6, (b, m, 1, 1))
    masks &= valid[..., None, None]
    mask_valid = valid.copy()
    if counts[0] >= 2:
        mask_valid[0, 1] = False  # a box without a mask
        masks[0, 1] = False
    targets = {"boxes": tb, "valid": valid, "masks": masks, "mask_valid": mask_valid,
               "is_exhaustive": np.array([i % 2 == 0 for i in range(b)])}
    return out, targets


def to_official(out, targets, off, matcher=True):
    """The same batch in the official layout (packed targets as `Sam3Image.back_convert` gives)."""
    t = torch.from_numpy
    valid = targets["valid"]
    counts = valid.sum(1)
    n_max = max(int(counts.max()), 0)
    boxes = t(targets["boxes"][valid].reshape(-1, 4))
    tg = {
        "boxes": boxes,
        "boxes_xyxy": off.box_ops.box_cxcywh_to_xyxy(boxes),
        "boxes_padded": t(np.ascontiguousarray(targets["boxes"][:, :n_max])),
        "num_boxes": t(counts.astype(np.int64)),
        "masks": t(targets["masks"][valid]),
        "is_valid_mask": t(targets["mask_valid"][valid]),
        "is_exhaustive": t(targets["is_exhaustive"]),
        "object_ids_padded": t(np.where(valid, np.arange(valid.shape[1])[None], -1)[:, :n_max].astype(np.int64)),
        "semantic_masks": None,
    }
    if "semantic_masks" in targets:
        tg["semantic_masks"] = t(targets["semantic_masks"])

    def level(i):
        d = {}
        for k, v in out["aux"].items():
            d[k] = t(np.ascontiguousarray(v[i]))
        return d

    layers = out["aux"]["pred_logits"].shape[0]
    main = level(layers - 1)
    for k in ("pred_masks", "pred_masks_o2m"):
        if k in out:
            main[k] = t(out[k])
    main["semantic_seg"] = t(np.ascontiguousarray(out["semantic_seg"].transpose(0, 3, 1, 2)))
    main["presence_logit"] = None
    main["aux_outputs"] = [level(i) for i in range(layers - 1)]
    if matcher:
        hm = _hungarian(off)
        main["indices"] = hm(main, tg)
        for a in main["aux_outputs"]:
            a["indices"] = hm(a, tg)
    return main, tg


def official_to_matches(indices, targets, k_slots=1):
    """Official (batch_idx, src_idx, tgt_idx) -> `Matches` over the padded slots."""
    valid = targets["valid"]
    b, m = valid.shape
    counts = valid.sum(1)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    bi, si, ti = (None if x is None else np.asarray(x) for x in indices)
    idx = np.zeros((b, m, k_slots), np.int32)
    ok = np.zeros((b, m, k_slots), bool)
    fill = np.zeros((b, m), int)
    seen = np.zeros(b, int)
    for n in range(len(bi)):
        r = bi[n]
        slot = ti[n] - offsets[r] if ti is not None else seen[r]
        seen[r] += 1
        idx[r, slot, fill[r, slot]] = si[n]
        ok[r, slot, fill[r, slot]] = True
        fill[r, slot] += 1
    return Matches(jnp.asarray(idx), jnp.asarray(ok))


def matches_to_triples(mt: Matches):
    idx, ok = np.asarray(mt.query_idx), np.asarray(mt.valid)
    return sorted((int(b), int(idx[b, m, k]), int(m)) for b, m, k in zip(*np.nonzero(ok)))


def official_triples(indices, targets):
    valid = targets["valid"]
    counts = valid.sum(1)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    bi, si, ti = (None if x is None else np.asarray(x) for x in indices)
    res, seen = [], np.zeros(len(counts), int)
    for n in range(len(bi)):
        r = int(bi[n])
        slot = int(ti[n] - offsets[r]) if ti is not None else int(seen[r])
        seen[r] += 1
        res.append((r, int(si[n]), slot))
    return sorted(res)


def _close(a, b, tol=TOL):
    a, b = float(a), float(b)
    assert abs(a - b) <= tol * max(1.0, abs(b)), (a, b)
    return abs(a - b)


# ---------------------------------------------------------------------------- tests
def test_box_ops(off):
    rng = np.random.default_rng(0)
    a, b = _boxes(rng, (2, 7)), _boxes(rng, (2, 5))
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    xa, xb = off.box_ops.box_cxcywh_to_xyxy(ta), off.box_ops.box_cxcywh_to_xyxy(tb)
    ja, jb = jbo.box_cxcywh_to_xyxy(jnp.asarray(a)), jbo.box_cxcywh_to_xyxy(jnp.asarray(b))
    np.testing.assert_allclose(ja, xa.numpy(), atol=1e-7)
    np.testing.assert_allclose(jbo.box_xyxy_to_cxcywh(ja), a, atol=1e-6)
    iou, union = off.box_ops.box_iou(xa, xb)
    jiou, junion = jbo.box_iou(ja, jb)
    np.testing.assert_allclose(jiou, iou.numpy(), atol=1e-6)
    np.testing.assert_allclose(junion, union.numpy(), atol=1e-6)
    np.testing.assert_allclose(jbo.generalized_box_iou(ja, jb), off.box_ops.generalized_box_iou(xa, xb).numpy(),
                               atol=1e-6)
    ea, eb = xa.reshape(-1, 4)[:10], xb.reshape(-1, 4)
    np.testing.assert_allclose(jbo.elementwise_box_iou(jnp.asarray(ea.numpy()), jnp.asarray(eb.numpy())),
                               off.box_ops.fast_diag_box_iou(ea, eb).numpy(), atol=1e-6)
    np.testing.assert_allclose(jbo.elementwise_generalized_box_iou(jnp.asarray(ea.numpy()), jnp.asarray(eb.numpy())),
                               off.box_ops.fast_diag_generalized_box_iou(ea, eb).numpy(), atol=1e-6)


def test_focal_bce_dice_elementwise(off):
    rng = np.random.default_rng(1)
    x = (rng.normal(0, 4, (4, 50))).astype(np.float32)
    y = (rng.uniform(size=(4, 50)) < 0.4).astype(np.float32)
    y[0] = rng.uniform(size=50)  # soft targets
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    for alpha, gamma in ((0.25, 2.0), (0.5, 0.0), (0.6, 2.0), (-1, 1.5)):
        ref = off.focal(tx, ty, 1, alpha=alpha, gamma=gamma, reduce=False, triton=False).numpy()
        np.testing.assert_allclose(sigmoid_focal_loss(jnp.asarray(x), jnp.asarray(y), alpha, gamma), ref, atol=1e-6)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(tx, ty, reduction="none").numpy()
    np.testing.assert_allclose(bce_with_logits(jnp.asarray(x), jnp.asarray(y)), ref, atol=1e-6)
    ref = off.L.dice_loss(tx, ty, 1, reduce=False).numpy()
    np.testing.assert_allclose(dice_per_row(jnp.asarray(x), jnp.asarray(y)), ref, atol=1e-6)


@pytest.mark.parametrize("seed,counts,q", [(0, (3, 0, 6), 16), (1, (5, 2, 1, 0), 16), (2, (6, 4), 4), (3, (0, 0), 8)])
def test_hungarian_matcher(off, seed, counts, q):
    out, targets = make_batch(seed, counts=counts, q=q, o2m=False)
    t_out, t_tg = to_official(out, targets, off, matcher=False)
    ref = _hungarian(off)(t_out, t_tg)
    mt = jax.jit(hungarian_match)(out["pred_logits"], out["pred_boxes"], targets["boxes"], targets["valid"])
    assert mt.query_idx.shape == (len(counts), targets["valid"].shape[1], 1)
    assert matches_to_triples(mt) == official_triples(ref, targets)
    if q >= max(counts):  # every GT matched, images without GT unmatched
        np.testing.assert_array_equal(np.asarray(mt.valid[..., 0]), targets["valid"])
    # stacked layers share one host call and equal per-layer matching
    stacked = hungarian_match(out["aux"]["pred_logits"], out["aux"]["pred_boxes"], targets["boxes"], targets["valid"])
    for i, a in enumerate(t_out["aux_outputs"]):
        assert matches_to_triples(Matches(stacked.query_idx[i], stacked.valid[i])) == official_triples(
            _hungarian(off)(a, t_tg), targets)


@pytest.mark.parametrize("seed,counts", [(0, (3, 0, 6)), (4, (2, 5, 6))])
def test_one_to_many_matcher(off, seed, counts):
    out, targets = make_batch(seed, counts=counts)
    t_out, t_tg = to_official(out, targets, off, matcher=False)
    o2m_out = {k[:-4]: v for k, v in t_out.items() if k.endswith("_o2m")}
    ref = _o2m(off)(o2m_out, t_tg)
    mt = jax.jit(one_to_many_match)(out["pred_logits_o2m"], out["pred_boxes_o2m"], targets["boxes"], targets["valid"])
    got, want = matches_to_triples(mt), official_triples(ref, targets)
    assert got == want
    assert len(want) > sum(counts)  # several queries per target
    assert len({(b, q) for b, q, _ in want}) < len(want)  # and a query matched to two targets


@pytest.mark.parametrize("seed", [0, 5])
def test_loss_terms_with_official_indices(off, seed):
    out, targets = make_batch(seed)
    t_out, t_tg = to_official(out, targets, off)
    nb = float(max(targets["valid"].sum(), 1))
    L = off.L
    boxes = L.Boxes(weight_dict={"loss_bbox": 5.0, "loss_giou": 2.0})
    iabce = L.IABCEMdetr(weak_loss=False, weight_dict={"loss_ce": 20.0, "presence_loss": 20.0}, pos_weight=10.0,
                         alpha=0.25, gamma=2, use_presence=True, pos_focal=False, pad_n_queries=200, pad_scale_pos=1.0)
    masks = L.Masks(focal_alpha=0.25, focal_gamma=2.0, weight_dict={"loss_mask": 200.0, "loss_dice": 10.0},
                    compute_aux=False)
    o2m_out = {k[:-4]: v for k, v in t_out.items() if k.endswith("_o2m")}
    o2m_ref = _o2m(off)(o2m_out, t_tg)
    cases = [("o2o", t_out, t_out["indices"], 1, ""), ("o2m", o2m_out, o2m_ref, 4, "_o2m")]
    jt = {k: jnp.asarray(v) for k, v in targets.items()}
    cfg = LossConfig()
    for name, t_level, ind, k_slots, tag in cases:
        mt = official_to_matches(ind, targets, k_slots)
        ref = boxes(outputs=t_level, targets=t_tg, indices=ind, num_boxes=nb)
        got = box_losses(out["pred_boxes" + tag], out["pred_boxes_xyxy" + tag], jt, mt, nb)
        for k in ("loss_bbox", "loss_giou"):
            _close(got[k], ref[k])
        ref = iabce(outputs=t_level, targets=t_tg, indices=ind, num_boxes=nb)
        pres = out["presence_logit_dec"] if not tag else None
        got = classification_losses(out["pred_logits" + tag], out["pred_boxes_xyxy" + tag], jt, mt, pres, cfg)
        for k in ("loss_ce", "presence_loss"):
            _close(got[k], ref[k])
        ref = masks(outputs=t_level, targets=t_tg, indices=ind, num_boxes=nb)
        got = mask_losses(out["pred_masks" + tag], jt, mt, nb, cfg)
        for k in ("loss_mask", "loss_dice"):
            _close(got[k], ref[k])

    # IABCE variants: weak loss (is_exhaustive), pos_focal, no query padding
    mt = official_to_matches(t_out["indices"], targets)
    for kw in ({"weak_loss": True}, {"pos_focal": True}, {"pad_n_queries": None}):
        ref_kw = dict(weak_loss=False, pos_weight=10.0, alpha=0.25, gamma=2, use_presence=True,
                      pad_n_queries=200, weight_dict={"loss_ce": 20.0, "presence_loss": 20.0})
        ref_kw.update(kw)
        ref = L.IABCEMdetr(**ref_kw)(outputs=t_out, targets=t_tg, indices=t_out["indices"], num_boxes=nb)
        got = classification_losses(out["pred_logits"], out["pred_boxes_xyxy"], jt, mt, out["presence_logit_dec"],
                                    LossConfig(**kw))
        _close(got["loss_ce"], ref["loss_ce"])


@pytest.mark.parametrize("variant", ["released", "given_semantic", "downsample", "bce_no_presence", "empty"])
def test_semantic_seg_criterion(off, variant):
    counts = (0, 0, 0) if variant == "empty" else (3, 0, 6)
    out, targets = make_batch(7, counts=counts, o2m=False)
    if variant == "given_semantic":
        targets["semantic_masks"] = np.random.default_rng(3).uniform(size=(3, 20, 28)) < 0.3
    kw = dict(presence_head=True, presence_loss=False, focal=True, focal_alpha=0.6, focal_gamma=2.0, downsample=False)
    cfg_kw = {}
    if variant == "downsample":
        kw["downsample"], cfg_kw["sem_downsample"] = True, True
    if variant in ("bce_no_presence", "empty"):
        kw.update(presence_head=False, focal=False)
        cfg_kw.update(sem_presence_head=False, sem_focal=False)
    t_out, t_tg = to_official(out, targets, off, matcher=False)
    weights = {"loss_semantic_seg": 20.0, "loss_semantic_dice": 30.0}
    if kw["presence_head"]:
        weights["loss_semantic_presence"] = 1.0
    crit = off.L.SemanticSegCriterion(weight_dict=weights, **kw)
    ref = crit(t_out, t_tg)
    jt = {k: jnp.asarray(v) for k, v in targets.items()}
    got = jax.jit(semantic_seg_losses, static_argnums=2)(jnp.asarray(out["semantic_seg"]), jt, LossConfig(**cfg_kw))
    for k in ("loss_semantic_seg", "loss_semantic_dice"):
        _close(got[k], ref[k])


def _official_wrapper(off, with_masks=True, with_sem=True):
    L = off.L
    fns = [
        L.Boxes(weight_dict={"loss_bbox": 5.0, "loss_giou": 2.0}),
        L.IABCEMdetr(weak_loss=False, weight_dict={"loss_ce": 20.0, "presence_loss": 20.0}, pos_weight=10.0,
                     alpha=0.25, gamma=2, use_presence=True, pos_focal=False, pad_n_queries=200, pad_scale_pos=1.0),
    ]
    if with_masks:
        fns.append(L.Masks(focal_alpha=0.25, focal_gamma=2.0, weight_dict={"loss_mask": 200.0, "loss_dice": 10.0},
                           compute_aux=False))
    sem = None
    if with_sem:
        sem = L.SemanticSegCriterion(presence_head=True, presence_loss=False, focal=True, focal_alpha=0.6,
                                     focal_gamma=2.0, downsample=False,
                                     weight_dict={"loss_semantic_seg": 20.0, "loss_semantic_presence": 1.0,
                                                  "loss_semantic_dice": 30.0})
    # normalization="local" = "global" at world size 1 (no process group on this CPU test)
    return off.W.Sam3LossWrapper(loss_fns_find=fns, normalization="local", matcher=_hungarian(off),
                                 o2m_matcher=_o2m(off), o2m_weight=2.0, use_o2m_matcher_on_o2m_aux=False,
                                 loss_fn_semantic_seg=sem, scale_by_find_batch_size=True)


@pytest.mark.parametrize("seed,counts,box_only", [(11, (3, 0, 6), False), (12, (2, 4), True), (13, (0, 0), False)])
def test_full_wrapper_vs_official(off, seed, counts, box_only):
    out, targets = make_batch(seed, counts=counts)
    t_out, t_tg = to_official(out, targets, off)
    wrapper = _official_wrapper(off, with_masks=not box_only, with_sem=not box_only)
    ref = wrapper(off.SAM3Output([[t_out]]), [t_tg])
    ref = {k: float(v) for k, v in ref.items() if k.startswith("loss") or k.endswith("loss") or "presence_loss" in k}

    cfg = BOX_ONLY_CONFIG if box_only else LossConfig()
    jt = {k: jnp.asarray(v) for k, v in targets.items()}

    @jax.jit
    def run(o, t):
        return sam3_loss(o, t, compute_num_boxes(t["valid"]), cfg)

    jo = jax.tree_util.tree_map(jnp.asarray, out)
    total, terms = run(jo, jt)
    mts = compute_matches(jo, jt, cfg)  # what sam3_loss matched internally = the model's official indices
    assert matches_to_triples(mts[""]) == official_triples(t_out["indices"], targets)
    assert matches_to_triples(mts["_aux_0"]) == official_triples(t_out["aux_outputs"][0]["indices"], targets)
    got = {k: float(v) for k, v in terms.items()}
    assert set(got) == set(ref), sorted(set(got) ^ set(ref))
    assert any(k.endswith("_aux_1_o2m") for k in got) and ("loss_mask_o2m" in got) != box_only
    for k in ref:
        _close(got[k], ref[k])
    _close(total, ref["core_loss"], tol=2e-6)


def test_grad_and_num_boxes(off):
    out, targets = make_batch(21)
    jo = jax.tree_util.tree_map(jnp.asarray, out)
    jt = {k: jnp.asarray(v) for k, v in targets.items()}
    jt["boxes"] = jnp.where(jt["valid"][..., None], jt["boxes"], jnp.nan)  # padding must not leak
    grads = jax.jit(jax.grad(lambda o: sam3_loss(o, jt, 9.0)[0]))(jo)
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert float(jnp.abs(grads["pred_masks"]).sum()) > 0 and float(jnp.abs(grads["aux"]["pred_boxes"]).sum()) > 0
    # the official all-reduce: sum over replicas / number of replicas, at least 1
    valid = jnp.asarray(np.array([[[1, 1, 0], [0, 0, 0]], [[1, 1, 1], [1, 0, 0]]], bool))
    per_replica = jax.vmap(functools.partial(compute_num_boxes, axis_name="dp"), axis_name="dp")(valid)
    np.testing.assert_allclose(per_replica, [3.0, 3.0])
    assert float(compute_num_boxes(jnp.zeros((2, 3), bool))) == 1.0
    assert float(compute_num_boxes(valid.reshape(4, 3), num_replicas=2)) == 6.0


def test_image_model_dac_outputs_feed_the_o2m_losses():
    """Sam3Image(dac=True): the o2o outputs equal the eval forward, the o2m outputs have the same
    shapes, and sam3_loss adds finite o2m terms (times o2m_weight) to the total."""
    from conftest import synthetic_model_config
    from sam3_jax.model.sam3_image import Sam3Image
    from sam3_jax.train.losses import LossConfig

    cfg = synthetic_model_config()
    model = Sam3Image(cfg)
    rng = np.random.default_rng(0)
    b, s = 2, cfg.image_size
    inputs = (jnp.asarray(rng.normal(size=(b, s, s, 3)), jnp.float32),
              jnp.asarray(rng.integers(1, 400, (b, cfg.text.context_length)), jnp.int32),
              jnp.zeros((b, 1, 4)), jnp.zeros((b, 1), jnp.int32), jnp.ones((b, 1), bool))
    params = jax.jit(model.init)(jax.random.key(0), *inputs)["params"]
    plain, dac = (jax.jit(lambda p, d=d: model.apply({"params": p}, *inputs, dac=d))(params) for d in (False, True))
    for k in ("pred_logits", "pred_boxes", "pred_masks", "presence_logit_dec"):
        np.testing.assert_allclose(np.asarray(dac[k]), np.asarray(plain[k]), atol=1e-5, err_msg=k)
    for k in ("pred_logits", "pred_boxes", "pred_boxes_xyxy", "pred_masks"):
        assert dac[k + "_o2m"].shape == plain[k].shape, k
    assert dac["aux"]["pred_logits_o2m"].shape == plain["aux"]["pred_logits"].shape
    assert "pred_logits_o2m" not in plain
    m = 3
    h = dac["pred_masks"].shape[-1]
    targets = {"boxes": jnp.asarray(rng.uniform(0.3, 0.6, (b, m, 4)), jnp.float32),
               "valid": jnp.asarray([[True, True, False], [True, False, False]]),
               "masks": jnp.asarray(rng.random((b, m, h, h)) > 0.5)}
    cfg_loss = LossConfig(use_semantic_seg=False)
    loss = jax.jit(lambda out: sam3_loss(out, targets, 3.0, cfg_loss))  # (eager: minutes of op-by-op)
    total_dac, terms = loss(dac)
    total_plain, _ = loss(plain)
    for k in ("loss_ce_o2m", "loss_bbox_o2m", "loss_giou_o2m", "loss_mask_o2m", "loss_dice_o2m"):
        assert np.isfinite(float(terms[k])) and float(terms[k]) > 0, k
    assert float(total_dac) > float(total_plain)
