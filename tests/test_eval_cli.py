"""`evaluate.py` end to end: scoring saved image and video predictions (table, report.json,
report.png), running a tiny converted checkpoint over a small image set and scoring it, and clear
errors on bad input."""

import json
import os
import subprocess

import numpy as np
import pytest

from sam3_jax.formats.masks import encode_mask

H, W = 30, 40


def rect(y0, y1, x0, x1, h=H, w=W):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def nbox(m):
    ys, xs = np.nonzero(m)
    h, w = m.shape
    return [xs.min() / w, ys.min() / h, (xs.max() - xs.min() + 1) / w, (ys.max() - ys.min() + 1) / h]


def evaluate(repo_root, python, *args, timeout=300):
    return subprocess.run([python, "evaluate.py", *args], cwd=repo_root, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def image_set(tmp_path_factory):
    """Two annotator files (SA-Co/Gold style, normalised boxes) and predictions for 5 pairs."""
    d = tmp_path_factory.mktemp("img")
    objs = {1: [rect(2, 12, 3, 15), rect(15, 28, 20, 38)], 2: [], 3: [rect(5, 9, 5, 30)], 4: [],
            5: [rect(0, 30, 0, 10)]}
    images = [{"id": i, "file_name": f"im{(i - 1) // 3}.png", "text_input": f"phrase {i}", "height": H, "width": W,
               "is_instance_exhaustive": 1} for i in objs]
    gts = []
    for a in range(2):
        anns = []
        for i, ms in objs.items():
            for m in ms:
                m = np.roll(m, a, axis=1)
                anns.append({"id": len(anns) + 1, "image_id": i, "segmentation": encode_mask(m), "bbox": nbox(m),
                             "area": float(m.mean()), "iscrowd": 0, "category_id": 1})
        gts.append({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "object"}]})
    preds = []
    for i, m, s in ((1, rect(2, 12, 3, 14), 0.9), (1, rect(20, 25, 0, 5), 0.6), (2, rect(0, 3, 0, 3), 0.55),
                    (3, rect(5, 9, 5, 30), 0.5), (5, rect(0, 30, 0, 10), 0.3)):
        preds.append({"image_id": i, "category_id": 1, "segmentation": encode_mask(m), "bbox": nbox(m), "score": s})
    paths = {}
    for name, obj in (("gt_a", gts[0]), ("gt_b", gts[1]), ("preds", preds)):
        paths[name] = str(d / f"{name}.json")
        with open(paths[name], "w") as f:
            json.dump(obj, f)
    return paths, gts, preds


def test_score_saved_image_predictions(repo_root, python, image_set, tmp_path):
    from PIL import Image

    from sam3_jax.eval.score_sets import evaluate_image_set

    paths, _, _ = image_set
    out = tmp_path / "out"
    r = evaluate(repo_root, python, "--predictions", paths["preds"], "--gt", f"{paths['gt_a']},{paths['gt_b']}",
                 "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "cgF1" in r.stdout and "IL_MCC" in r.stdout and "COCO" in r.stdout and "2 GT file(s)" in r.stdout
    rep = json.loads((out / "report.json").read_text())
    ref = evaluate_image_set([paths["gt_a"], paths["gt_b"]], paths["preds"])
    for k, v in ref["results"]["metrics"].items():
        assert rep["results"]["metrics"][k] == pytest.approx(v, abs=1e-12), k
    assert rep["results"]["num_annotators"] == 2 and rep["results"]["num_pairs"] == 5
    assert len(rep["results"]["cgf1"]["segm"]["curves"]["positive_micro_F1"]) == 10
    with Image.open(out / "report.png") as im:
        assert im.format == "PNG" and im.size[0] > 500
    # the numpy RLE path gives the same numbers; --gt may also be repeated
    r = evaluate(repo_root, python, "--predictions", paths["preds"], "--gt", paths["gt_a"], "--gt", paths["gt_b"],
                 "--strict_masks", "--nococo_ap", "--out", str(tmp_path / "out2"))
    assert r.returncode == 0, r.stderr
    rep2 = json.loads((tmp_path / "out2" / "report.json").read_text())
    for k, v in rep2["results"]["metrics"].items():
        assert v == pytest.approx(rep["results"]["metrics"][k], abs=1e-12), k


def test_score_saved_video_predictions(repo_root, python, tmp_path):
    a, b = rect(0, 10, 0, 10), rect(12, 25, 20, 35)
    T = 3

    def mk(frames, **kw):
        return {"segmentations": [None if m is None else encode_mask(m) for m in frames],
                "bboxes": [None if m is None else [float(v) for v in np.array(nbox(m)) * [W, H, W, H]] for m in frames],
                "areas": [None if m is None else int(m.sum()) for m in frames], **kw}

    gt = {"videos": [{"id": 0, "file_names": [f"v/{t}.jpg" for t in range(T)], "height": H, "width": W}],
          "annotations": [mk([a, a, None], id=1, video_id=0, category_id=5, iscrowd=0),
                          mk([b, b, b], id=2, video_id=0, category_id=5, iscrowd=0)],
          "categories": [{"id": 5, "name": "thing"}, {"id": 6, "name": "other"}],
          "video_np_pairs": [{"id": 1, "video_id": 0, "category_id": 5}, {"id": 2, "video_id": 0, "category_id": 6}]}
    preds = [mk([a, a, None], video_id=0, category_id=5, score=0.9),
             mk([b, None, b], video_id=0, category_id=5, score=0.8)]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "p.json").write_text(json.dumps(preds))
    r = evaluate(repo_root, python, "--predictions", str(tmp_path / "p.json"), "--gt", str(tmp_path / "gt.json"),
                 "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert "video" in r.stdout and "pHOTA" in r.stdout
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    m = rep["results"]["metrics"]
    assert m["video_mask_demo_ilmcc_50_95"] == pytest.approx(1.0, abs=1e-5)
    assert 0 < m["video_mask_all_phrase_HOTA"] < 1 and m["video_mask_all_phrase_DetPr"] == pytest.approx(1.0)
    assert (tmp_path / "out" / "report.png").is_file()


def test_bad_input_gives_clear_errors(repo_root, python, image_set, tmp_path):
    paths, gts, preds = image_set
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('[{"image_id": 1, "score": 0.5,')
    r = evaluate(repo_root, python, "--predictions", str(bad_json), "--gt", paths["gt_a"])
    assert r.returncode == 1 and "is not valid JSON" in r.stderr and "Traceback" not in r.stderr

    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps(preds + [dict(preds[0], image_id=42)]))
    r = evaluate(repo_root, python, "--predictions", str(unknown), "--gt", paths["gt_a"])
    assert r.returncode == 1 and "image ids not in the ground truth" in r.stderr and "42" in r.stderr

    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps([dict(preds[0], segmentation=encode_mask(np.zeros((H // 2, W), bool)))]))
    r = evaluate(repo_root, python, "--predictions", str(wrong), "--gt", paths["gt_a"])
    assert r.returncode == 1 and "mask is 15x40 (HxW) but the image is 30x40" in r.stderr

    r = evaluate(repo_root, python, "--predictions", paths["preds"], "--gt", str(tmp_path / "nope.json"))
    assert r.returncode == 1 and "not found" in r.stderr
    r = evaluate(repo_root, python, "--predictions", paths["preds"])
    assert r.returncode != 0 and "--gt is required" in r.stderr
    r = evaluate(repo_root, python, "--predictions", paths["preds"], "--checkpoint", str(tmp_path),
                 "--gt", paths["gt_a"])
    assert r.returncode != 0 and "exactly one of --predictions" in r.stderr
    r = evaluate(repo_root, python, "--checkpoint", str(tmp_path), "--gt", paths["gt_a"], "--out", str(tmp_path))
    assert r.returncode != 0 and "--images" in r.stderr
    r = evaluate(repo_root, python, "--checkpoint", str(tmp_path / "none"), "--gt", paths["gt_a"],
                 "--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "o"))
    assert r.returncode == 1 and "image directory not found" in r.stderr


def test_checkpoint_mode_predicts_then_scores(repo_root, python, image_set, tmp_path, tiny_cfg):
    pytest.importorskip("sam3")
    import torch
    from PIL import Image

    from sam3_jax.convert import convert_image_model, load_state_dict
    from sam3_jax.convert.checkpoint import build_manifest, save_converted
    from sam3_jax.eval.score_sets import evaluate_image_set
    from sam3_jax.parity import oracle

    model = oracle.random_image_model(tiny_cfg, seed=3)
    ckpt = tmp_path / "sam3.pt"
    torch.save({f"detector.{k}": v for k, v in model.state_dict().items()}, ckpt)
    params, report = convert_image_model(load_state_dict(str(ckpt)), tiny_cfg)
    conv = tmp_path / "converted"
    save_converted(str(conv), params, build_manifest(source=str(ckpt), cfg=tiny_cfg, report=report, dtype="float32",
                                                     params=params))
    paths, gts, _ = image_set
    imgs = tmp_path / "images"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for name in ("im0.png", "im1.png"):
        Image.fromarray((rng.random((H, W, 3)) * 255).astype(np.uint8)).save(imgs / name)
    out = tmp_path / "out"
    r = evaluate(repo_root, python, "--checkpoint", str(conv), "--gt", paths["gt_a"], "--images", str(imgs),
                 "--out", str(out), "--batch_size", "2", "--score_threshold", "0.0", "--noprogress", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "wrote" in r.stdout and "cgF1" in r.stdout
    recs = json.loads((out / "predictions.json").read_text())
    ids = {im["id"] for im in gts[0]["images"]}
    assert {p["image_id"] for p in recs} == ids  # threshold 0: every query of every pair is kept
    assert len(recs) == len(ids) * tiny_cfg.num_queries
    assert all(p["segmentation"]["size"] == [H, W] and 0 <= p["score"] <= 1 and len(p["bbox"]) == 4 for p in recs)
    # normalised xywh like the GT, not pixels (random-model boxes may overhang the image a little)
    assert all(abs(v) <= 2 for p in recs for v in p["bbox"]) and max(p["bbox"][2] for p in recs) > 0.05
    rep = json.loads((out / "report.json").read_text())
    assert rep["inputs"]["checkpoint"] == str(conv)
    ref = evaluate_image_set([paths["gt_a"]], str(out / "predictions.json"))
    for k, v in ref["results"]["metrics"].items():
        assert rep["results"]["metrics"][k] == pytest.approx(v, abs=1e-12), k
    # a missing image file is a clear error
    os.remove(imgs / "im1.png")
    r = evaluate(repo_root, python, "--checkpoint", str(conv), "--gt", paths["gt_a"], "--images", str(imgs),
                 "--out", str(tmp_path / "o2"))
    assert r.returncode == 1 and "image file not found" in r.stderr and "im1.png" in r.stderr
