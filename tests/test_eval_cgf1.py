"""SA-Co image metrics (`sam3_jax.eval`): RLE kernels, the golden example of the evaluation document,
edge cases, COCO AP, writers, bad input, and parity with the official `CGF1Evaluator` on random
generated sets (masks and boxes, several annotators, crowd GT, empty pairs, scores of exactly 0.5)."""

import contextlib
import copy
import io
import json
import math

import numpy as np
import pycocotools.mask as mask_utils
import pytest

from sam3_jax.eval import (
    EvalInputError,
    coco_ap,
    evaluate_image,
    image_prediction_records,
    load_image_gt,
    load_image_predictions,
    write_predictions,
)
from sam3_jax.formats.masks import encode_mask
from sam3_jax.eval.cgf1 import RunSet, box_iou_pairs, mask_iou_pairs, select_best
from sam3_jax.eval.image_inputs import validate_image_gt, validate_image_predictions
from sam3_jax.formats.masks import rle_counts

BACKENDS = ("pycocotools", "numpy")
# pycocotools' numpy-2 copy warning and the official scorer's 0/0 divisions
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::RuntimeWarning")


# --------------------------------------------------------------------------------------------- helpers
def rect(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def box_of(m):
    ys, xs = np.nonzero(m)
    if len(ys) == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def score(gt_dicts, preds, iou_type="segm", backend="pycocotools"):
    gts = [validate_image_gt(copy.deepcopy(g), f"gt{i}") for i, g in enumerate(gt_dicts)]
    p = validate_image_predictions(copy.deepcopy(preds), gts[0], need_masks=iou_type == "segm")
    return evaluate_image(gts, p, iou_type, backend=backend)


def simple_set(pairs, size=20):
    """pairs: list of (gt masks, [(mask, score)]) -> (gt dict, predictions)."""
    images, anns, preds = [], [], []
    for i, (gms, dts) in enumerate(pairs):
        images.append({"id": i + 1, "height": size, "width": size, "text_input": f"p{i}", "is_instance_exhaustive": 1})
        for m in gms:
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "segmentation": encode_mask(m), "bbox": box_of(m),
                         "category_id": 1, "iscrowd": 0})
        for m, s in dts:
            preds.append({"image_id": i + 1, "category_id": 1, "segmentation": encode_mask(m), "bbox": box_of(m),
                          "score": s})
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "object"}]}, preds


# --------------------------------------------------------------------------------------------- kernels
def _random_masks(rng, n):
    out = []
    for _ in range(n):
        h, w = (int(v) for v in rng.integers(1, 50, size=2))
        k = rng.integers(0, 4)
        if k == 0:
            m = rng.random((h, w)) < rng.random()
        elif k == 1:
            m = np.zeros((h, w), bool)
        elif k == 2:
            m = np.ones((h, w), bool)
        else:
            y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
            m = rect(h, w, y0, y0 + int(rng.integers(1, h + 1)), x0, x0 + int(rng.integers(1, w + 1)))
        out.append(m)
    return out


def test_rle_counts_decode_like_pycocotools():
    rng = np.random.default_rng(0)
    masks = _random_masks(rng, 400)
    big = np.zeros((1500, 2100), bool)
    big[3:1400, 700:2000] = True
    big[1450:, :5] = True
    masks.append(big)
    rles = [encode_mask(m) for m in masks]
    counts, ptr = rle_counts(rles)
    for i, m in enumerate(masks):
        c = counts[ptr[i]:ptr[i + 1]]
        flat = np.repeat(np.arange(len(c)) % 2, c).astype(bool)
        np.testing.assert_array_equal(flat.reshape(m.shape[::-1]).T, m)
        np.testing.assert_array_equal(mask_utils.decode(rles[i]).astype(bool), m)


def test_mask_and_box_iou_bit_exact():
    rng = np.random.default_rng(1)
    for _ in range(150):
        h, w = (int(v) for v in rng.integers(1, 40, size=2))
        n = int(rng.integers(1, 7))
        masks = [rng.random((h, w)) < rng.random() if rng.random() < 0.5 else
                 rect(h, w, *sorted(rng.integers(0, h + 1, 2)), *sorted(rng.integers(0, w + 1, 2))) for _ in range(n)]
        rles = [encode_mask(m) for m in masks]
        a, b = (x.ravel() for x in np.meshgrid(np.arange(n), np.arange(n), indexing="ij"))
        ours = mask_iou_pairs(RunSet(rles), a, b).reshape(n, n)
        assert np.array_equal(ours, mask_utils.iou(rles, rles, [0] * n))  # bit-identical
        boxes = rng.random((n, 4)) * 10
        boxes[rng.random(n) < 0.2, 2] = 0
        ob = box_iou_pairs(boxes[a], boxes[b]).reshape(n, n)
        assert np.array_equal(ob, mask_utils.iou(boxes.tolist(), boxes.tolist(), [0] * n))


# --------------------------------------------------------------------------------------------- golden numbers
def golden_set():
    r = lambda *a: rect(20, 20, *a)  # noqa: E731
    return simple_set([
        ([r(0, 10, 0, 10), r(10, 20, 10, 20)],
         [(r(0, 10, 0, 8), 0.9), (r(0, 5, 12, 20), 0.7), (r(10, 20, 10, 20), 0.3)]),
        ([], []),
        ([], [(r(0, 4, 0, 4), 0.6)]),
        ([r(5, 15, 5, 15)], []),
        ([r(2, 8, 2, 8)], [(r(2, 8, 2, 8), 0.95)]),
    ])


@pytest.mark.parametrize("backend", BACKENDS)
def test_golden_example_of_the_evaluation_document(backend):
    gt, preds = golden_set()
    r = score([gt], preds, backend=backend)
    m = {k.replace("cgF1_eval_segm_", ""): v for k, v in r["metrics"].items()}
    expected = {
        "cgF1": 0.080942, "IL_MCC": 0.166667, "positive_micro_F1": 0.485651, "positive_macro_F1": 0.674899,
        "precision": 0.424989, "recall": 0.424989, "F1": 0.424939, "positive_micro_precision": 0.566648,
        "IL_precision": 0.666666, "IL_recall": 0.666666, "IL_F1": 0.666666, "IL_FPR": 0.5,
        "cgF1@0.5": 0.095227, "cgF1@0.75": 0.095227, "positive_micro_F1@0.5": 0.571363,
        "positive_micro_F1@0.75": 0.571363, "positive_macro_F1@0.5": 0.749888,
    }
    for k, v in expected.items():
        assert abs(m[k] - v) < 1.5e-6, (k, m[k], v)
    assert r["IL_counts"] == {"TP": 2, "FP": 1, "TN": 1, "FN": 1}
    np.testing.assert_allclose(r["curves"]["positive_micro_F1"][7:], 0.285657, atol=1e-6)


def test_edge_cases_of_the_evaluation_document():
    r = lambda *a: rect(20, 20, *a)  # noqa: E731
    g1, g2 = r(0, 10, 0, 10), r(10, 20, 10, 20)
    key = "cgF1_eval_segm_"

    def run(pairs):
        gt, preds = simple_set(pairs)
        return score([gt], preds)["metrics"]

    m = run([([g1, g2], [(g1, 0.9), (g2, 0.9)]), ([], [])])  # perfect, one positive + one negative
    assert abs(m[key + "cgF1"] - 0.999899) < 1e-6 and abs(m[key + "IL_MCC"] - 0.999999) < 1e-6
    m = run([([g1, g2], [(g1, 0.9), (g2, 0.9)])])  # all positive: MCC (and cgF1) are 0 by construction
    assert m[key + "cgF1"] == 0 and m[key + "IL_MCC"] == 0 and abs(m[key + "positive_micro_F1"] - 0.9999) < 1e-4
    m = run([([g1], []), ([], [])])  # no predictions at all
    assert m[key + "cgF1"] == 0 and m[key + "positive_micro_F1"] == 0 and m[key + "positive_macro_F1"] == -1
    m = run([([g1], [(g1, 0.9)]), ([], [(g2, 0.9)])])  # predictions on the positive and the negative
    assert m[key + "IL_MCC"] == 0 and abs(m[key + "positive_micro_F1"] - 0.99985) < 1e-5
    m = run([([], []), ([], [])])  # all negatives, no predictions
    assert m[key + "cgF1"] == 0 and m[key + "positive_macro_F1"] == -1
    m = run([([g1], [(g1, 0.5)]), ([], [])])  # a score of exactly 0.5 is kept
    assert m[key + "cgF1"] > 0.99
    m = run([([g1], [(g1, 0.4999999)]), ([], [])])
    assert m[key + "cgF1"] == 0


def test_crowd_gt_is_removed_and_non_exhaustive_pairs_are_skipped():
    r = lambda *a: rect(20, 20, *a)  # noqa: E731
    gt, preds = simple_set([([r(0, 10, 0, 10)], [(r(0, 10, 0, 10), 0.9)]), ([r(0, 5, 0, 5)], []), ([], [])])
    gt["annotations"][1]["iscrowd"] = 1  # pair 2 becomes a negative (crowd only)
    res = score([gt], preds)
    assert res["IL_counts"] == {"TP": 1, "FP": 0, "TN": 2, "FN": 0}
    gt["images"][0]["is_instance_exhaustive"] = 0
    res = score([gt], preds)
    assert res["num_pairs"] == 2 and res["IL_counts"] == {"TP": 0, "FP": 0, "TN": 2, "FN": 0}


def test_oracle_keeps_the_best_annotator_and_true_negatives_win():
    # annotator a: pair has GT, annotator b: the same GT as the prediction, annotator c: no GT
    ngt = np.array([[1, 1], [1, 0], [0, 2]])
    ndt = np.array([[1, 0], [1, 0], [1, 0]])
    tp = np.zeros((3, 2, 10), np.int64)
    tp[1, 0] = 1  # annotator b is perfect on pair 0
    best = select_best(ngt, ndt, tp)
    assert best.tolist() == [1, 1]  # pair 1: annotator b makes it a true negative


# --------------------------------------------------------------------------------------------- writers, AP
def test_writer_round_trip_and_gt_as_predictions(tmp_path):
    rng = np.random.default_rng(5)
    pairs = []
    for i in range(6):
        gms = [rect(24, 32, y, y + 6, x, x + 9) for y, x in rng.integers(0, 16, size=(int(rng.integers(0, 3)), 2))]
        pairs.append((gms, []))
    gt, _ = simple_set(pairs, size=24)
    for im in gt["images"]:
        im["width"] = 32
    for a in gt["annotations"]:
        m = mask_utils.decode(a["segmentation"]).astype(bool)
        a["segmentation"] = encode_mask(m)
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt))
    records = []
    for im in gt["images"]:
        ms = [mask_utils.decode(a["segmentation"]).astype(bool) for a in gt["annotations"] if a["image_id"] == im["id"]]
        boxes = np.array([[b[0], b[1], b[0] + b[2], b[1] + b[3]] for b in (box_of(m) for m in ms)]).reshape(-1, 4)
        records += image_prediction_records(im["id"], np.array(ms).reshape(-1, 24, 32), boxes, np.full(len(ms), 0.9),
                                            24, 32, normalize_boxes=False)
    write_predictions(str(tmp_path / "preds.json"), records)
    gts = load_image_gt([str(gt_path)])
    preds = load_image_predictions(str(tmp_path / "preds.json"), gts[0])
    assert all(isinstance(p["segmentation"]["counts"], str) for p in preds)
    for it in ("segm", "bbox"):
        m = evaluate_image(gts, preds, it)["metrics"]
        assert 0.9998 < m[f"cgF1_eval_{it}_cgF1"] < 1.0
        ap = coco_ap(gts[0], preds, it)
        assert ap["AP"] == pytest.approx(1.0) and ap["AP50"] == pytest.approx(1.0)
    assert coco_ap(gts[0], [], "segm")["AP"] == 0.0


# --------------------------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_clear_errors(tmp_path):
    gt, preds = golden_set()
    g = validate_image_gt(copy.deepcopy(gt))
    (tmp_path / "bad.json").write_text('{"images": [1, 2,')
    with pytest.raises(EvalInputError, match="not valid JSON"):
        load_image_gt([str(tmp_path / "bad.json")])
    with pytest.raises(EvalInputError, match="not found"):
        load_image_gt([str(tmp_path / "missing.json")])
    bad = copy.deepcopy(preds) + [dict(preds[0], image_id=999)]
    with pytest.raises(EvalInputError, match=r"image ids not in the ground truth.*999"):
        validate_image_predictions(bad, g)
    bad = copy.deepcopy(preds)
    bad[0]["segmentation"] = encode_mask(np.zeros((10, 20), bool))
    with pytest.raises(EvalInputError, match=r"mask is 10x20 \(HxW\) but the image is 20x20"):
        validate_image_predictions(bad, g)
    bad = copy.deepcopy(preds)
    bad[1]["score"] = float("nan")
    with pytest.raises(EvalInputError, match="score must be a finite number"):
        validate_image_predictions(bad, g)
    bad = copy.deepcopy(preds)
    del bad[2]["category_id"]
    with pytest.raises(EvalInputError, match="has no 'category_id'"):
        validate_image_predictions(bad, g)
    with pytest.raises(EvalInputError, match="expected a JSON list"):
        validate_image_predictions(gt, g)
    bad = copy.deepcopy(preds)
    bad[0]["segmentation"] = {"size": [20, 20], "counts": list(range(10))}
    with pytest.raises(EvalInputError, match="RLE counts sum to 45"):
        validate_image_predictions(bad, g)
    bad = copy.deepcopy(preds)
    bad[0]["bbox"] = [1, 2, -3, 4]
    with pytest.raises(EvalInputError, match="negative width or height"):
        validate_image_predictions(bad, g)
    # RLE strings: outside the alphabet or cut short (checked on loading), runs that do not cover the
    # image (checked by the numpy backend; pycocotools, like the official scorer, would loop forever)
    cut = encode_mask(rect(20, 20, 2, 5, 2, 5))["counts"][:-1] + "o"  # ends inside a multi-character count
    for counts, msg in (("0 1~", r"prediction \[0\]: RLE counts string has characters outside the RLE alphabet"),
                        (cut, r"prediction \[0\]: RLE counts string is truncated")):
        bad = copy.deepcopy(preds)
        bad[0]["segmentation"] = {"size": [20, 20], "counts": counts}
        with pytest.raises(EvalInputError, match=msg):
            validate_image_predictions(bad, g)
    bad = copy.deepcopy(preds)
    bad[0]["segmentation"] = {"size": [20, 20], "counts": encode_mask(rect(10, 20, 2, 5, 2, 5))["counts"]}
    with pytest.raises(EvalInputError, match="RLE runs cover 200 pixels but its size"):
        evaluate_image([g], validate_image_predictions(bad, g), "segm", backend="numpy")

    for mutate, msg in (
        (lambda d: d.pop("categories"), "no 'categories' list"),
        (lambda d: d["images"].append(dict(d["images"][0])), "duplicate image id 1"),
        (lambda d: d["annotations"][0].update(image_id=77), "refers to image_id 77"),
        (lambda d: d["annotations"][1].update(id=1), "duplicate annotation id 1"),
        (lambda d: d["images"][0].pop("height"), "'height' must be a positive integer"),
        (lambda d: d["annotations"][0].update(segmentation=encode_mask(np.zeros((5, 5), bool))), "mask is 5x5"),
    ):
        d = copy.deepcopy(gt)
        mutate(d)
        with pytest.raises(EvalInputError, match=msg):
            validate_image_gt(d, "gt.json")
    d = copy.deepcopy(gt)
    for im in d["images"]:
        im["is_instance_exhaustive"] = 0
    with pytest.raises(EvalInputError, match="no exhaustively annotated"):
        evaluate_image([validate_image_gt(d)], [], "segm")
    d = copy.deepcopy(gt)
    d["images"] = d["images"][:3]
    d["annotations"] = [a for a in d["annotations"] if a["image_id"] <= 3]
    with pytest.raises(EvalInputError, match="lacks 2 datapoint"):
        evaluate_image([g, validate_image_gt(d, "gt_b.json")], [], "segm")


# --------------------------------------------------------------------------------------------- parity
def _rand_mask(rng, h, w, like=None):
    if like is not None and rng.random() < 0.7:
        m = like.copy()
        k = rng.integers(0, 3)
        if k == 0:
            m = np.roll(m, int(rng.integers(-2, 3)), axis=int(rng.integers(0, 2)))
        elif k == 1:
            y, x = rng.integers(0, h), rng.integers(0, w)
            m[y:y + int(rng.integers(1, 6)), x:x + int(rng.integers(1, 6))] = True
        else:
            m &= rng.random((h, w)) < 0.9
        return m
    if rng.random() < 0.15:
        return rng.random((h, w)) < 0.3
    if rng.random() < 0.05:
        return np.zeros((h, w), bool)
    y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
    return rect(h, w, y0, min(h, y0 + int(rng.integers(1, h))), x0, min(w, x0 + int(rng.integers(1, w))))


def random_case(seed):
    """A random SA-Co/Gold-like set: 1-8 pairs, 30% without GT, crowd GT, 1 or 3 annotators that
    disagree (and mark pairs non-exhaustive), extra categories (listed or not), predictions near the
    GT or random, 15% of scores exactly 0.5, normalised boxes."""
    rng = np.random.default_rng(seed)
    A = 3 if rng.random() < 0.35 else 1
    multi_cat = rng.random() < 0.2
    cats = [{"id": 1, "name": "object"}] + ([{"id": 3, "name": "thing"}] if multi_cat else [])
    images, base = [], []
    for i in range(int(rng.integers(1, 9))):
        h, w = int(rng.integers(8, 28)), int(rng.integers(8, 28))
        images.append({"id": 100 + i, "file_name": f"img{i % 3}.jpg", "text_input": f"np{i}", "height": h, "width": w,
                       "is_instance_exhaustive": int(rng.random() < 0.9)})
        base.append([_rand_mask(rng, h, w) for _ in range(0 if rng.random() < 0.3 else int(rng.integers(1, 5)))])
    gts, aid = [], 1
    for a in range(A):
        imgs, anns = copy.deepcopy(images), []
        for i, im in enumerate(imgs):
            ms = base[i]
            if a > 0:
                im["is_instance_exhaustive"] = int(im["is_instance_exhaustive"] and rng.random() > 0.1)
                ms = [m for m in ms if rng.random() < 0.8]
                if rng.random() < 0.3:
                    ms.append(_rand_mask(rng, im["height"], im["width"]))
                ms = [_rand_mask(rng, im["height"], im["width"], like=m) if rng.random() < 0.3 else m for m in ms]
            for m in ms:
                h, w = m.shape
                b = box_of(m)
                cat = 3 if (multi_cat and rng.random() < 0.4) else (2 if rng.random() < 0.05 else 1)
                anns.append({"id": aid, "image_id": im["id"], "segmentation": encode_mask(m), "category_id": cat,
                             "iscrowd": int(rng.random() < 0.15), "area": float(m.sum()) / (h * w),
                             "bbox": [b[0] / w, b[1] / h, b[2] / w, b[3] / h]})
                aid += 1
        gts.append({"info": {}, "images": imgs, "annotations": anns, "categories": cats})
    preds = []
    for i, im in enumerate(images):
        h, w = im["height"], im["width"]
        for _ in range(int(rng.integers(0, 6)) if rng.random() > 0.25 else 0):
            m = _rand_mask(rng, h, w, like=base[i][int(rng.integers(len(base[i])))] if base[i] else None)
            b = box_of(m)
            preds.append({"image_id": im["id"], "category_id": 3 if (multi_cat and rng.random() < 0.3) else
                          (2 if rng.random() < 0.05 else 1), "segmentation": encode_mask(m),
                          "score": 0.5 if rng.random() < 0.15 else float(np.float32(rng.random())),
                          "bbox": [b[0] / w, b[1] / h, b[2] / w, b[3] / h]})
    rng.shuffle(preds)
    return gts, preds


def _coverage(gts, preds):
    g0 = gts[0]
    ids = {im["id"] for im in g0["images"]}
    with_gt = {a["image_id"] for a in g0["annotations"] if not a["iscrowd"]}
    crowd_only = {a["image_id"] for a in g0["annotations"]} - with_gt
    with_dt = {p["image_id"] for p in preds if p["score"] >= 0.5}
    return {"no_gt": bool(ids - with_gt), "no_pred": bool(ids - with_dt), "both_empty": bool(ids - with_gt - with_dt),
            "crowd_only": bool(crowd_only), "score_half": any(p["score"] == 0.5 for p in preds),
            "annotators": len(gts) > 1}


def test_parity_with_the_official_scorer_on_random_sets(tmp_path):
    pytest.importorskip("sam3")
    from sam3.eval.cgf1_eval import CGF1Evaluator

    n_cases, worst, seen = 0, 0.0, {}
    for seed in range(240):
        gts, preds = random_case(seed)
        paths = []
        for a, g in enumerate(gts):
            paths.append(str(tmp_path / f"gt_{a}.json"))
            with open(paths[-1], "w") as f:
                json.dump(g, f)
        with open(tmp_path / "pred.json", "w") as f:
            json.dump(preds, f)
        for it in ("segm", "bbox"):
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    ref = CGF1Evaluator(gt_path=list(paths), iou_type=it).evaluate(str(tmp_path / "pred.json"))
            except ValueError:  # the official scorer cannot handle a set without exhaustive pairs
                with pytest.raises(EvalInputError, match="no exhaustively annotated"):
                    score(gts, preds, it)
                continue
            for backend in BACKENDS:
                ours = score(gts, preds, it, backend)["metrics"]
                assert set(ours) == set(ref)
                for k, v in ref.items():
                    d = abs(v - ours[k])
                    assert d <= 1e-9 or (math.isnan(v) and math.isnan(ours[k])), (seed, it, backend, k, v, ours[k])
                    worst = max(worst, d)
            n_cases += 1
            for k, v in _coverage(gts, preds).items():
                seen[k] = seen.get(k, 0) + int(v)
    assert n_cases >= 400, n_cases  # >= 200 sets x {segm, bbox}
    assert worst == 0.0  # in practice bit-identical
    assert all(v >= 20 for v in seen.values()), seen
