"""SA-Co image metrics: cgF1, positive micro F1, IL_MCC and friends, vectorised with numpy.

Definitions follow the official scorer `sam3/eval/cgf1_eval.py` (`CGF1Evaluator`) exactly, epsilons
and summary conventions included, so the numbers agree with it to floating-point rounding:

* a datapoint is one `images[]` entry (an image-phrase pair); only pairs with
  `is_instance_exhaustive` truthy in the first GT file, and not marked non-exhaustive in any other
  GT file, are scored;
* GT = the pair's annotations whose `category_id` is listed in `categories` (grouped by sorted
  category id, file order within), crowd ones removed; predictions = the pair's records whose
  category is listed, with score >= 0.5;
* IoU: mask IoU on RLE (pycocotools semantics: 0 when the intersection is empty) or xywh box IoU;
* one Hungarian assignment per pair maximising total IoU (`scipy.optimize.linear_sum_assignment`),
  then TP_t = #matches with IoU >= t for t in 0.50:0.05:0.95, FP_t = #dt - TP_t, FN_t = #gt - TP_t;
* counts are summed over pairs (micro); the positive micro precision only counts FPs of pairs that
  have GT and predictions; IL_MCC is the Matthews correlation of "has predictions" vs "has GT" over
  pairs; cgF1_t = pmF1_t * IL_MCC, reported as the mean over thresholds and at 0.5 / 0.75;
* with several GT files (SA-Co/Gold annotators) each pair keeps the annotator whose per-pair F1
  (mean over thresholds) is highest, the first on ties, and any annotator for which the pair is a
  true negative wins outright.

Mask IoU: by default each pair's (#dt, #gt) matrix comes from `pycocotools.mask.iou`, the official
scorer's own C primitive, after the RLE strings and sizes were checked; `backend="numpy"` instead
decodes every mask's runs with numpy (checking they cover exactly h x w pixels, which pycocotools
does not: a mask whose runs do not add up would make it loop forever) and intersects runs without
decoding to pixels (`RunSet`). Both give bit-identical IoUs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from sam3_jax.eval.image_inputs import ImageGT
from sam3_jax.eval.input_checks import EvalInputError, gc_paused, mask_errors_as_input_errors
from sam3_jax.formats.masks import rle_counts

IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
SCORE_THRESHOLD = 0.5


@dataclass(frozen=True)
class Metric:
    name: str
    image_level: bool
    iou_threshold: Optional[float]

    @property
    def key(self) -> str:
        return self.name if self.iou_threshold is None else f"{self.name}@{self.iou_threshold}"


_BOX_LEVEL = ["cgF1", "precision", "recall", "F1", "positive_macro_F1", "positive_micro_F1", "positive_micro_precision"]
_IMAGE_LEVEL = ["IL_precision", "IL_recall", "IL_F1", "IL_FPR", "IL_MCC"]
# Same order as the official CGF1_METRICS list.
METRICS = (
    [Metric(n, False, None) for n in _BOX_LEVEL]
    + [Metric(n, True, None) for n in _IMAGE_LEVEL]
    + [Metric(n, False, 0.5) for n in _BOX_LEVEL]
    + [Metric(n, False, 0.75) for n in _BOX_LEVEL]
)


# --------------------------------------------------------------------------------------------- mask kernels
class RunSet:
    """Foreground runs of many RLE masks laid end to end on one line (mask i starts where mask i-1
    ends), so that the pixels of any mask covered by any other mask of the same size can be counted
    with `searchsorted` over the runs, without decoding."""

    def __init__(self, rles: Sequence[dict], where: str = "mask", hw: Optional[np.ndarray] = None):
        n = len(rles)
        if hw is None:
            hw = np.array([int(r["size"][0]) * int(r["size"][1]) for r in rles], dtype=np.int64)
        hw = np.asarray(hw, dtype=np.int64).reshape(n)
        with mask_errors_as_input_errors():
            counts, ptr = rle_counts(rles, where, hw)
        self.offset = np.concatenate([[0], np.cumsum(hw)[:-1]]).astype(np.int64) if n else np.zeros(0, np.int64)
        cum = np.cumsum(counts)
        nper = np.diff(ptr)
        local = np.arange(counts.size) - np.repeat(ptr[:-1], nper)
        fg = ((local & 1) == 1) & (counts > 0)
        self.starts = (cum - counts)[fg]
        self.ends = cum[fg]
        cf = np.concatenate([[0], np.cumsum(fg)])
        self.nruns = (cf[ptr[1:]] - cf[ptr[:-1]]).astype(np.int64)
        self.rptr = np.concatenate([[0], np.cumsum(self.nruns)]).astype(np.int64)
        self.prefix = np.concatenate([[0], np.cumsum(self.ends - self.starts)]).astype(np.int64)
        self.area = self.prefix[self.rptr[1:]] - self.prefix[self.rptr[:-1]]
        # extent of each mask along its own column-major pixel line: [first fg pixel, last + 1)
        has = self.nruns > 0
        self.lo = np.zeros(n, dtype=np.int64)
        self.hi = np.zeros(n, dtype=np.int64)
        self.lo[has] = self.starts[self.rptr[:-1][has]] - self.offset[has]
        self.hi[has] = self.ends[self.rptr[1:][has] - 1] - self.offset[has]

    def _cover(self, x: np.ndarray) -> np.ndarray:
        """Number of foreground pixels (any mask) at line positions < x."""
        r = self.ends.size
        if r == 0:
            return np.zeros_like(x)
        k = np.searchsorted(self.ends, x, side="right")
        part = np.where(k < r, np.maximum(x - self.starts[np.minimum(k, r - 1)], 0), 0)
        return self.prefix[k] + part

    def intersections(self, a: np.ndarray, b: np.ndarray, max_runs: int = 1 << 22) -> np.ndarray:
        """|mask a[p] AND mask b[p]| for every pair p (same-size masks), as int64."""
        a = np.asarray(a, dtype=np.int64)
        b = np.asarray(b, dtype=np.int64)
        out = np.zeros(a.size, dtype=np.int64)
        # only pairs whose extents overlap can intersect
        live = np.flatnonzero(np.maximum(self.lo[a], self.lo[b]) < np.minimum(self.hi[a], self.hi[b]))
        if live.size == 0:
            return out
        if live.size < a.size:
            out[live] = self.intersections(a[live], b[live], max_runs)
            return out
        swap = self.nruns[a] < self.nruns[b]
        it = np.where(swap, a, b)  # walk the runs of the mask with fewer runs
        ot = np.where(swap, b, a)
        L = self.nruns[it]
        cs = np.cumsum(L)
        lo = 0
        while lo < a.size:
            base = int(cs[lo - 1]) if lo else 0
            hi = max(int(np.searchsorted(cs, base + max_runs, side="right")), lo + 1)
            sl = slice(lo, hi)
            Ls = L[sl]
            tot = int(Ls.sum())
            if tot:
                pid = np.repeat(np.arange(hi - lo), Ls)
                ridx = self.rptr[it[sl]][pid] + np.arange(tot) - np.repeat(np.cumsum(Ls) - Ls, Ls)
                shift = (self.offset[ot[sl]] - self.offset[it[sl]])[pid]
                v = self._cover(self.ends[ridx] + shift) - self._cover(self.starts[ridx] + shift)
                out[sl] = np.rint(np.bincount(pid, weights=v, minlength=hi - lo)).astype(np.int64)
            lo = hi
        return out


def mask_iou_pairs(rs: RunSet, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """pycocotools mask IoU (non-crowd) for pairs of masks: i / u, and 0 when i = 0."""
    inter = rs.intersections(a, b)
    union = rs.area[a] + rs.area[b] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(inter > 0, inter / np.where(union > 0, union, 1), 0.0)


def box_iou_pairs(d: np.ndarray, g: np.ndarray) -> np.ndarray:
    """pycocotools `bbIou` (non-crowd) for pairs of xywh boxes, float64, same operation order."""
    d = np.asarray(d, dtype=np.float64).reshape(-1, 4)
    g = np.asarray(g, dtype=np.float64).reshape(-1, 4)
    w = np.minimum(d[:, 2] + d[:, 0], g[:, 2] + g[:, 0]) - np.maximum(d[:, 0], g[:, 0])
    h = np.minimum(d[:, 3] + d[:, 1], g[:, 3] + g[:, 1]) - np.maximum(d[:, 1], g[:, 1])
    i = w * h
    u = d[:, 2] * d[:, 3] + g[:, 2] * g[:, 3] - i
    ok = (w > 0) & (h > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ok, i / np.where(ok, u, 1.0), 0.0)


# --------------------------------------------------------------------------------------------- matching
def block_pairs(nd: np.ndarray, ng: np.ndarray, dstart: np.ndarray, gstart: np.ndarray):
    """All (dt, gt) index pairs of every block (row-major dt x gt). Returns (di, gi, pstart, size)."""
    nd = np.asarray(nd, dtype=np.int64)
    ng = np.asarray(ng, dtype=np.int64)
    size = nd * ng
    pstart = np.concatenate([[0], np.cumsum(size)[:-1]]).astype(np.int64)
    blk = np.repeat(np.arange(nd.size), size)
    q = np.arange(int(size.sum()), dtype=np.int64) - pstart[blk]
    di = dstart[blk] + q // ng[blk]
    gi = gstart[blk] + q % ng[blk]
    return di, gi, pstart, size


def match_tp(nd: np.ndarray, ng: np.ndarray, iou: np.ndarray, pstart: np.ndarray,
             thresholds: np.ndarray = IOU_THRESHOLDS) -> np.ndarray:
    """TP counts (B, len(thresholds)) of one Hungarian matching per block.

    `iou` holds every block's (nd, ng) IoU matrix flattened row-major at `pstart`. A block with one
    row or one column matches its largest IoU (every optimal assignment does); the others go to
    `scipy.optimize.linear_sum_assignment(-iou)`, as the official scorer calls it."""
    from scipy.optimize import linear_sum_assignment

    nd = np.asarray(nd, dtype=np.int64)
    ng = np.asarray(ng, dtype=np.int64)
    tp = np.zeros((nd.size, len(thresholds)), dtype=np.int64)
    size = nd * ng
    single = np.minimum(nd, ng) == 1
    if single.any():
        # non-empty blocks tile `iou` exactly, so reduceat yields each block's own maximum
        nonempty = np.flatnonzero(size > 0)
        mx = np.zeros(nd.size)
        mx[nonempty] = np.maximum.reduceat(iou, pstart[nonempty])
        tp[single] = (mx[single][:, None] >= thresholds[None, :]).astype(np.int64)
    for b in np.flatnonzero(np.minimum(nd, ng) >= 2):
        m = iou[pstart[b]:pstart[b] + nd[b] * ng[b]].reshape(nd[b], ng[b])
        r, c = linear_sum_assignment(-m)
        tp[b] = (m[r, c][:, None] >= thresholds[None, :]).sum(0)
    return tp


def local_f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    precision = tp / (tp + fp + 1e-4)
    recall = tp / (tp + fn + 1e-4)
    return 2 * precision * recall / (precision + recall + 1e-4)


def select_best(ngt: np.ndarray, ndt: np.ndarray, tp: np.ndarray) -> np.ndarray:
    """Per datapoint, the annotator index the official oracle keeps (arrays (A, N[, T]))."""
    A, N = ngt.shape
    best = np.zeros(N, dtype=np.int64)
    if A == 1:
        return best
    tn = (ngt == 0) & (ndt == 0)
    f1 = local_f1(tp, ndt[..., None] - tp, ngt[..., None] - tp)
    mean = np.stack([f1[a].mean(axis=-1) for a in range(A)])
    cols = np.arange(N)
    for a in range(1, A):
        cur_tn = tn[a]
        best_tn = tn[best, cols]
        better = (~best_tn) & (~cur_tn) & (mean[a] > mean[best, cols])
        best = np.where(cur_tn | better, a, best)
    return best


# --------------------------------------------------------------------------------------------- accumulate
def accumulate(ngt: np.ndarray, ndt: np.ndarray, tp: np.ndarray) -> dict[str, Any]:
    """Official `CGF1Eval.accumulate` over per-datapoint (#gt, #dt kept, TP_t)."""
    ngt = np.asarray(ngt, dtype=np.int64)
    ndt = np.asarray(ndt, dtype=np.int64)
    tp = np.asarray(tp, dtype=np.int64).reshape(ngt.size, -1)
    fp = ndt[:, None] - tp
    fn = ngt[:, None] - tp
    pos, has = ngt > 0, ndt > 0
    il_tp, il_fn, il_fp, il_tn = pos & has, pos & ~has, ~pos & has, ~pos & ~has
    TPs, FPs, FNs = tp.sum(0), fp.sum(0), fn.sum(0)
    pmFPs = fp[il_tp].sum(0)
    local_sum = local_f1(tp[il_tp], fp[il_tp], fn[il_tp]).sum(0) if il_tp.any() else np.zeros(tp.shape[1])
    valid_f1 = int(il_tp.sum())
    TP, FP, TN, FN = int(il_tp.sum()), int(il_fp.sum()), int(il_tn.sum()), int(il_fn.sum())

    precision = TPs / (TPs + FPs + 1e-4)
    pm_precision = TPs / (TPs + pmFPs + 1e-4)
    recall = TPs / (TPs + FNs + 1e-4)
    F1 = 2 * precision * recall / (precision + recall + 1e-4)
    pmF1 = 2 * pm_precision * recall / (pm_precision + recall + 1e-4)
    il_rec = TP / (TP + FN + 1e-6)
    il_prec = TP / (TP + FP + 1e-6)
    il_f1 = 2 * il_prec * il_rec / (il_prec + il_rec + 1e-6)
    il_fpr = FP / (FP + TN + 1e-6)
    mcc = float(TP * TN - FP * FN) / (
        (float(TP + FP) * float(TP + FN) * float(TN + FP) * float(TN + FN)) ** 0.5 + 1e-6
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        macro = local_sum / valid_f1 if valid_f1 else np.full(tp.shape[1], np.nan)
    return {
        "TPs": TPs, "FPs": FPs, "positive_micro_FPs": pmFPs, "FNs": FNs,
        "precision": precision, "positive_micro_precision": pm_precision, "recall": recall, "F1": F1,
        "positive_micro_F1": pmF1, "positive_macro_F1": macro,
        "IL_recall": il_rec, "IL_precision": il_prec, "IL_F1": il_f1, "IL_FPR": il_fpr, "IL_MCC": mcc,
        "cgF1": pmF1 * mcc,
        "IL_counts": {"TP": TP, "FP": FP, "TN": TN, "FN": FN},
        "num_pairs": int(ngt.size),
    }


def _summarize(values: np.ndarray, thr: Optional[float]) -> float:
    s = np.asarray(values)
    if thr is not None:
        s = s[np.where(thr == IOU_THRESHOLDS)[0]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ok = s[s > -1]
    return -1.0 if len(ok) == 0 else float(np.mean(ok))


def summarize(acc: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The official summary (`CGF1Eval.summarize` + `CGF1Evaluator.evaluate` key names):
    box-level metrics averaged over thresholds ignoring NaN (all NaN -> -1), or taken at 0.5/0.75."""
    out = {}
    for m in METRICS:
        v = float(acc[m.name]) if m.image_level else _summarize(acc[m.name], m.iou_threshold)
        out[prefix + m.key] = v
    return out


# --------------------------------------------------------------------------------------------- image scorer
def _pair_sets(gts: Sequence[ImageGT]) -> list:
    gt0 = gts[0]
    excl = set()
    for g in gts[1:]:
        excl |= {i for i in g.image_ids if not g.exhaustive(i)}
    ids = [i for i in gt0.image_ids if gt0.exhaustive(i) and i not in excl]
    if not ids:
        raise EvalInputError(f"ground truth {gt0.path} has no exhaustively annotated image-phrase pair to score")
    for g in gts[1:]:
        missing = [i for i in ids if i not in g.images]
        if missing:
            raise EvalInputError(
                f"ground truth {g.path} lacks {len(missing)} datapoint(s) of {gt0.path}: {missing[:5]} "
                "(annotator files must list the same image-phrase pairs)"
            )
        diff = [i for i in ids if g.hw(i) != gt0.hw(i)]
        if diff:
            raise EvalInputError(f"ground truth {g.path} gives other image sizes than {gt0.path} for ids {diff[:5]}")
    return ids


def _score_annotator(gt: ImageGT, preds: Sequence[dict], pos_of_image: np.ndarray, n: int, iou_type: str,
                     pred_blk: np.ndarray, pred_cat: list, pred_score: np.ndarray, hw: np.ndarray, chunk: int,
                     backend: str):
    """(#gt, #dt kept, TP_t) per datapoint against one GT file. `pos_of_image` maps the GT's image
    index to the datapoint index (-1 = not scored); `hw` holds each datapoint's h * w. Datapoints
    with GT and predictions are processed `chunk` at a time (bounded memory)."""
    rank = {c: r for r, c in enumerate(gt.cat_ids)}
    p_rank = np.array([rank.get(c, -1) for c in pred_cat], dtype=np.int64)
    keep = (pred_blk >= 0) & (p_rank >= 0) & (pred_score >= SCORE_THRESHOLD)
    didx = np.flatnonzero(keep)
    didx = didx[np.lexsort((didx, p_rank[didx], pred_blk[didx]))]
    d_blk = pred_blk[didx]

    g_rank = np.array([rank.get(c, -1) for c in gt.ann_cat], dtype=np.int64)
    g_blk_all = pos_of_image[gt.ann_image] if gt.ann_image.size else np.zeros(0, np.int64)
    gsel = np.flatnonzero((g_blk_all >= 0) & (g_rank >= 0) & ~gt.ann_crowd)
    g_list = gsel[np.lexsort((gsel, g_rank[gsel], g_blk_all[gsel]))]
    g_blk = g_blk_all[g_list]

    ndt = np.bincount(d_blk, minlength=n).astype(np.int64)
    ngt = np.bincount(g_blk, minlength=n).astype(np.int64)
    dstart = np.concatenate([[0], np.cumsum(ndt)[:-1]]).astype(np.int64)
    gstart = np.concatenate([[0], np.cumsum(ngt)[:-1]]).astype(np.int64)
    tp = np.zeros((n, len(IOU_THRESHOLDS)), dtype=np.int64)
    both_all = np.flatnonzero((ndt > 0) & (ngt > 0))
    for lo in range(0, both_all.size, chunk):
        both = both_all[lo:lo + chunk]
        # the predictions / GT of these datapoints, packed contiguously
        dsel = _ranges(dstart[both], ndt[both])
        gsel2 = _ranges(gstart[both], ngt[both])
        nd_b, ng_b = ndt[both], ngt[both]
        d_off = np.concatenate([[0], np.cumsum(nd_b)[:-1]])
        g_off = np.concatenate([[0], np.cumsum(ng_b)[:-1]])
        di, gi, pstart, _ = block_pairs(nd_b, ng_b, d_off, g_off)
        if iou_type == "segm":
            rles = [preds[j]["segmentation"] for j in didx[dsel].tolist()]
            segs = gt.ann_seg
            gl = g_list[gsel2].tolist()
            grles = [segs[j] for j in gl]
            if any(r is None for r in grles):
                a = gt.anns[gl[grles.index(None)]]
                raise EvalInputError(f"{gt.path}: annotation id {a['id']!r} (image_id {a['image_id']!r}) has no "
                                     "'segmentation' (needed for mask metrics)")
            mhw = np.concatenate([np.repeat(hw[both], nd_b), np.repeat(hw[both], ng_b)])
            if backend == "numpy":
                rs = RunSet(rles + grles, "mask", mhw)
                iou = mask_iou_pairs(rs, di, int(nd_b.sum()) + gi)
            else:
                iou = _coco_block_ious(rles, grles, nd_b, ng_b, d_off, g_off)
        else:
            db = np.array([_pred_box(preds[j]) for j in didx[dsel].tolist()], dtype=np.float64).reshape(-1, 4)
            gb = []
            for j in g_list[gsel2].tolist():
                a = gt.anns[j]
                if "bbox" not in a:
                    raise EvalInputError(f"{gt.path}: annotation id {a['id']!r} has no 'bbox' (needed for box metrics)")
                gb.append(a["bbox"])
            gb = np.array(gb, dtype=np.float64).reshape(-1, 4)
            iou = box_iou_pairs(db[di], gb[gi])
        tp[both] = match_tp(nd_b, ng_b, iou, pstart)
    return ngt, ndt, tp


def _coco_block_ious(drles, grles, nd, ng, d_off, g_off) -> np.ndarray:
    """Every block's (nd, ng) mask IoU matrix via `pycocotools.mask.iou` (the official scorer's own
    primitive, in C), flattened row-major one block after another."""
    import pycocotools.mask as mask_utils

    out = np.empty(int((nd * ng).sum()), dtype=np.float64)
    o = 0
    for a, b, d0, g0 in zip(nd.tolist(), ng.tolist(), d_off.tolist(), g_off.tolist()):
        m = mask_utils.iou(drles[d0:d0 + a], grles[g0:g0 + b], [0] * b)
        out[o:o + a * b] = np.asarray(m, dtype=np.float64).reshape(a * b)
        o += a * b
    return out


def _ranges(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + l) for every (s, l)."""
    lens = np.asarray(lens, dtype=np.int64)
    tot = int(lens.sum())
    off = np.concatenate([[0], np.cumsum(lens)[:-1]])
    return np.repeat(np.asarray(starts, dtype=np.int64) - off, lens) + np.arange(tot)


def _pred_box(p: dict) -> list:
    if "bbox" in p:
        return p["bbox"]
    import pycocotools.mask as mask_utils

    return [float(v) for v in mask_utils.toBbox(p["segmentation"])]


def evaluate_image(gts: Sequence[ImageGT], preds: Sequence[dict], iou_type: str = "segm",
                   chunk: int = 512, backend: str = "pycocotools") -> dict[str, Any]:
    """cgF1 & co. of validated predictions against one or more GT files (oracle over annotators).

    Returns {"metrics": official keys -> float, "curves": per-threshold arrays, "IL_counts", "pairs":
    per-pair ids / selected annotator / #gt / #dt / TP_t}."""
    if iou_type not in ("segm", "bbox"):
        raise ValueError(f"iou_type must be 'segm' or 'bbox', got {iou_type!r}")
    if backend not in ("pycocotools", "numpy"):
        raise ValueError(f"backend must be 'pycocotools' or 'numpy', got {backend!r}")
    with gc_paused():
        return _evaluate_image(gts, preds, iou_type, chunk, backend)


def _evaluate_image(gts, preds, iou_type, chunk, backend):
    ids = _pair_sets(gts)
    n = len(ids)
    pos = {iid: k for k, iid in enumerate(ids)}
    pred_blk = np.array([pos.get(p["image_id"], -1) for p in preds], dtype=np.int64)
    pred_score = np.array([p["score"] for p in preds], dtype=np.float64)
    pred_cat = [p["category_id"] for p in preds]
    g0 = gts[0]
    idx0 = {iid: k for k, iid in enumerate(g0.image_ids)}
    k0 = np.array([idx0[i] for i in ids], dtype=np.int64)
    hw = (g0.heights[k0] * g0.widths[k0]).astype(np.int64)
    A = len(gts)
    ngt = np.zeros((A, n), np.int64)
    ndt = np.zeros((A, n), np.int64)
    tp = np.zeros((A, n, len(IOU_THRESHOLDS)), np.int64)
    for a, g in enumerate(gts):
        pos_of_image = np.array([pos.get(i, -1) for i in g.image_ids], dtype=np.int64)
        ngt[a], ndt[a], tp[a] = _score_annotator(g, preds, pos_of_image, n, iou_type, pred_blk, pred_cat,
                                                 pred_score, hw, chunk, backend)
    best = select_best(ngt, ndt, tp)
    cols = np.arange(n)
    sg, sd, st = ngt[best, cols], ndt[best, cols], tp[best, cols]
    acc = accumulate(sg, sd, st)
    metrics = summarize(acc, f"cgF1_eval_{iou_type}_")
    curve_keys = ("cgF1", "positive_micro_F1", "positive_micro_precision", "recall", "precision", "F1",
                  "positive_macro_F1")
    curves = {k: np.asarray(acc[k], dtype=np.float64).tolist() for k in curve_keys}
    return {
        "iou_type": iou_type,
        "metrics": metrics,
        "curves": curves,
        "iou_thresholds": IOU_THRESHOLDS.tolist(),
        "IL_counts": acc["IL_counts"],
        "num_pairs": n,
        "num_annotators": A,
        "pairs": {"image_id": ids, "annotator": best.tolist(), "num_gt": sg.tolist(), "num_dt": sd.tolist(),
                  "TP": st.tolist()},
    }
