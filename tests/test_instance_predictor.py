"""`Sam3ImagePredictor.predict_instance` (clicks / box / mask prompts with the tracker's SAM heads)
against the official `Sam3Image.predict_inst` after `Sam3Processor.set_image`, on the tiny config
with seeded random weights plus noise; batching, compile reuse, bad input, the CLI."""

from __future__ import annotations

import json
import subprocess
import time

import numpy as np
import pytest

pytest.importorskip("sam3")
torch = pytest.importorskip("torch")

from sam3_jax.formats.masks import rle_decode  # noqa: E402
from tests.conftest import assert_parity  # noqa: E402

SEED = 5
TOL = 1e-5
UNDECIDED = 1e-4  # mask pixels whose official logit is this close to 0 may differ
OFFICIAL_PREFIX = "inst_interactive_predictor.model"


@pytest.fixture(scope="module")
def official(tiny_cfg):
    """(official image model with instance interactivity, its state dict) for one seeded model."""
    from sam3_jax.parity import oracle

    model = oracle.random_image_model(tiny_cfg, seed=SEED, enable_inst_interactivity=True)
    return model, oracle.state_dict_numpy(model)


@pytest.fixture(scope="module")
def converted(official, tiny_cfg):
    """(params with the detector and the `tracker` subtree, the conversion report): the image-model
    layout with the tracker under `inst_interactive_predictor.model.*`, converted whole."""
    from sam3_jax.convert import convert_image_model

    _, state = official
    assert any(k.startswith(OFFICIAL_PREFIX + ".") for k in state)
    params, report = convert_image_model(state, tiny_cfg)
    assert report.pending == {} and "tracker" in params
    return params, report


@pytest.fixture(scope="module")
def params(converted):
    return converted[0]


@pytest.fixture(scope="module")
def photo():
    import skimage.data as sk

    return sk.chelsea()  # 300 x 451 x 3 uint8


@pytest.fixture(scope="module")
def official_state(official, photo, tiny_cfg):
    from PIL import Image
    from sam3.model.sam3_image_processor import Sam3Processor

    from sam3_jax.parity.oracle import cuda_to_cpu

    model, _ = official
    with cuda_to_cpu():
        proc = Sam3Processor(model, resolution=tiny_cfg.image_size, device="cpu")
        return proc.set_image(Image.fromarray(photo))


@pytest.fixture(scope="module")
def predictor(params, tiny_cfg, photo):
    from sam3_jax import Sam3ImagePredictor

    p = Sam3ImagePredictor(params, tiny_cfg)
    p.set_image(photo)
    return p


def _official(model, state, points=None, labels=None, box=None, mask_input=None, multimask_output=True):
    """Official predict_inst: (masks, ious, low-res logits) and the upsampled hole-filled logits."""
    from sam3_jax.parity.oracle import cuda_to_cpu

    with cuda_to_cpu():
        # With return_logits the official masks are these logits, before the final `> mask_threshold`.
        logits, ious, low_res = model.predict_inst(
            state, point_coords=points, point_labels=labels, box=box, mask_input=mask_input,
            multimask_output=multimask_output, return_logits=True,
        )
    return {"masks": logits > 0, "iou": ious, "low_res_logits": low_res, "logits": logits}


def _compare(ours: dict, ref: dict, what: str) -> dict:
    assert ours["masks"].dtype == bool and ours["iou"].dtype == np.float32
    assert ours["low_res_logits"].dtype == np.float32
    for k in ("masks", "iou", "low_res_logits"):
        assert ours[k].shape == ref[k].shape, (what, k, ours[k].shape, ref[k].shape)
    e_iou = float(np.max(np.abs(ours["iou"] - ref["iou"])))
    assert e_iou <= TOL, f"{what}: iou error {e_iou:.3g}"
    e_low = assert_parity(ours["low_res_logits"], ref["low_res_logits"], TOL, f"{what} low_res_logits")
    undecided = np.abs(ref["logits"]) < UNDECIDED
    differ = ours["masks"] != ref["masks"]
    assert not (differ & ~undecided).any(), f"{what}: {int((differ & ~undecided).sum())} decided mask pixels differ"
    return {"iou": e_iou, "low_res": e_low, "undecided_differ": int(differ.sum()),
            "max_abs_low_res": float(np.abs(ref["low_res_logits"]).max())}


CLICK = np.array([[200.0, 150.0]])
CLICKS = np.array([[200.0, 150.0], [120.5, 90.25], [60.0, 240.0], [330.0, 40.0]])
CLICK_LABELS = np.array([1, 1, 0, 0])
BOX = np.array([110.0, 45.5, 330.0, 290.0])
# Cases with the same number of prompt points (clicks + box corners) and multimask flag share one
# compiled function: 1 click | 2 points (edge clicks, box) | 4 points (4 clicks, box + 2 clicks).
CASES = {
    "click_multimask": dict(points=CLICK, labels=np.array([1]), multimask_output=True),
    "click_single": dict(points=CLICK, labels=np.array([1]), multimask_output=False),
    "clicks_pos_neg": dict(points=CLICKS, labels=CLICK_LABELS, multimask_output=False),
    "box": dict(box=BOX, multimask_output=True),
    "box_and_clicks": dict(points=CLICKS[:2], labels=np.array([1, 0]), box=BOX, multimask_output=False),
    "edge_clicks": dict(points=np.array([[0.0, 0.0], [451.0, 300.0]]), labels=np.array([1, 0]),
                        multimask_output=True),
}


def _ours(predictor, spec):
    return predictor.predict_instance(points=spec.get("points"), point_labels=spec.get("labels"),
                                      box=spec.get("box"), mask_input=spec.get("mask_input"),
                                      multimask_output=spec["multimask_output"])


@pytest.mark.parametrize("case", list(CASES))
def test_predict_instance_equals_official(case, official, official_state, predictor, photo):
    spec = CASES[case]
    model, _ = official
    ref = _official(model, official_state, spec.get("points"), spec.get("labels"), spec.get("box"),
                    multimask_output=spec["multimask_output"])
    ours = _ours(predictor, spec)
    k = 3 if spec["multimask_output"] else 1
    assert ours["masks"].shape == (k,) + photo.shape[:2] and ours["low_res_logits"].shape == (k, 64, 64)
    errs = _compare(ours, ref, case)
    print(f"{case}: {errs}")


def test_second_round_with_previous_logits(official, official_state, predictor):
    """A click, then the best low-res logits of that round fed back (as the official demo does)
    with three clicks."""
    model, _ = official
    first = _ours(predictor, CASES["click_multimask"])
    mask_input = first["low_res_logits"][[int(np.argmax(first["iou"]))]]  # (1, 4g, 4g)
    spec = dict(points=CLICKS[:3], labels=np.array([1, 1, 0]), mask_input=mask_input, multimask_output=False)
    ref = _official(model, official_state, spec["points"], spec["labels"], mask_input=mask_input,
                    multimask_output=False)
    errs = _compare(_ours(predictor, spec), ref, "second round")
    # The mask prompt matters: without it the answer differs.
    no_mask = _official(model, official_state, spec["points"], spec["labels"], multimask_output=False)
    assert np.abs(no_mask["low_res_logits"] - ref["low_res_logits"]).max() > 1e-3
    print(f"second round: {errs}")


def test_mask_only_prompt(official, official_state, predictor):
    model, _ = official
    rng = np.random.default_rng(1)
    mask_input = (rng.standard_normal((1, 64, 64)) * 5).astype(np.float32)
    ref = _official(model, official_state, mask_input=mask_input, multimask_output=True)
    errs = _compare(predictor.predict_instance(mask_input=mask_input), ref, "mask only")
    print(f"mask only: {errs}")


def test_batched_equals_official_and_single_calls(official, official_state, predictor):
    """B = 3 prompts (2 clicks + a box each) in one call: equal to the official batched call (one
    image repeated per prompt) and to three single calls; outputs keep the batch axis."""
    model, _ = official
    points = np.array([[[200.0, 150.0], [120.5, 90.25]], [[30.0, 40.0], [400.0, 200.0]],
                       [[250.0, 100.0], [260.0, 110.0]]])
    labels = np.array([[1, 0], [1, 1], [0, 1]])
    boxes = np.array([[110.0, 45.5, 330.0, 290.0], [0.0, 0.0, 451.0, 300.0], [200.0, 60.0, 300.0, 160.0]])
    ours = predictor.predict_instance(points=points, point_labels=labels, box=boxes, multimask_output=False)
    assert ours["masks"].shape == (3, 1, 300, 451) and ours["iou"].shape == (3, 1)
    assert ours["low_res_logits"].shape == (3, 1, 64, 64)
    ref = _official(model, official_state, points, labels, boxes, multimask_output=False)
    errs = _compare(ours, ref, "batched vs official batched")
    for i in range(3):
        mine = predictor.predict_instance(points=points[i], point_labels=labels[i], box=boxes[i],
                                          multimask_output=False)
        np.testing.assert_allclose(mine["low_res_logits"], ours["low_res_logits"][i], atol=1e-5, rtol=0)
        np.testing.assert_allclose(mine["iou"], ours["iou"][i], atol=1e-6, rtol=0)
        undecided = np.abs(ref["logits"][i]) < UNDECIDED
        assert not ((mine["masks"] != ours["masks"][i]) & ~undecided).any()
    print(f"batched: {errs}")


def test_hole_filling_is_exercised(official, official_state, predictor):
    """The random model's masks have background holes of <= 256 low-res pixels: the official
    post-processing fills them (so the comparisons above cover it), and so do we."""
    model, _ = official
    spec = CASES["click_multimask"]
    ref = _official(model, official_state, spec["points"], spec["labels"])
    low_res = torch.from_numpy(ref["low_res_logits"])[None]  # clamping keeps the sign: same holes
    with torch.no_grad():
        unfilled = torch.nn.functional.interpolate(low_res, (300, 451), mode="bilinear", align_corners=False)
    unfilled = unfilled[0].numpy() > 0
    filled = int((ref["masks"] & ~unfilled).sum())
    assert filled > 0, "no hole filled: the case does not exercise the post-processing"
    assert not (unfilled & ~ref["masks"]).any()  # filling only turns pixels on
    assert _ours(predictor, spec)["masks"][ref["masks"] & ~unfilled].all()
    print(f"hole filling turned {filled} pixels on")


def test_compiled_function_is_reused(predictor):
    predictor.predict_instance(points=[[10.0, 20.0]], point_labels=[1])
    n = predictor._segment_instances._cache_size()
    t0 = time.perf_counter()
    out = predictor.predict_instance(points=[[300.0, 120.0]], point_labels=[0])
    dt = time.perf_counter() - t0
    predictor.predict_instance(points=[[0.0, 300.0]], point_labels=[1])
    assert predictor._segment_instances._cache_size() == n
    assert out["masks"].shape == (3, 300, 451)
    print(f"one click (tiny config, warm): {dt * 1e3:.1f} ms")


def test_from_checkpoint_restores_tracker(params, tiny_cfg, ckpt_dir):
    import jax

    from sam3_jax import Sam3ImagePredictor

    p = Sam3ImagePredictor.from_checkpoint(ckpt_dir)
    assert {"sam_prompt_encoder", "sam_mask_decoder", "no_mem_embed", "maskmem_backbone"} <= set(p.params["tracker"])
    same = jax.tree_util.tree_map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))),
                                  p.params["tracker"], params["tracker"])
    assert all(jax.tree_util.tree_leaves(same))


BAD = [
    (dict(points=[[500.0, 10.0]], point_labels=[1]), ValueError, r"outside the 451x300 image"),
    (dict(points=[[10.0, -0.5]], point_labels=[1]), ValueError, r"outside the 451x300 image"),
    (dict(points=[[10.0, 300.5]], point_labels=[1]), ValueError, "outside"),
    (dict(points=[[10.0, float("nan")]], point_labels=[1]), ValueError, "points contains NaN"),
    (dict(points=[[10.0, 20.0]], point_labels=[4]), ValueError, r"point_labels must hold -1 .*got \[4\]"),
    (dict(points=[[10.0, 20.0]], point_labels=[0.5]), ValueError, r"point_labels must hold"),
    (dict(points=[[10.0, 20.0], [5.0, 5.0]], point_labels=[1]), ValueError, r"point_labels must have shape \(2,\)"),
    (dict(points=[[10.0, 20.0, 1.0]], point_labels=[1]), ValueError, r"points must have shape \(N, 2\)"),
    (dict(points=np.zeros((0, 2)), point_labels=np.zeros(0, int)), ValueError, "at least one point"),
    (dict(points=[[10.0, 20.0]]), ValueError, "points given without point_labels"),
    (dict(point_labels=[1]), ValueError, "point_labels given without points"),
    (dict(box=[50.0, 10.0, 40.0, 20.0]), ValueError, "x1 < x0"),
    (dict(box=[10.0, 30.0, 40.0, 20.0]), ValueError, "y1 < y0"),
    (dict(box=[10.0, 10.0, 452.0, 20.0]), ValueError, "outside the 451x300 image"),
    (dict(box=[1.0, 2.0, 3.0]), ValueError, r"box must have shape \(4,\) or \(B, 4\)"),
    (dict(), ValueError, "empty prompt"),
    (dict(mask_input=np.zeros((1, 32, 32))), ValueError, r"mask_input must have shape \(1, 64, 64\)"),
    (dict(mask_input=np.zeros((64, 64))), ValueError, r"mask_input must have shape"),
    (dict(points=[[10.0, 20.0]], point_labels=[1], mask_input=np.zeros((2, 1, 64, 64))), ValueError,
     "same form"),
    (dict(points=np.zeros((2, 1, 2)), point_labels=np.ones((2, 1), int), box=np.array([[0.0, 0, 5, 5]] * 3)),
     ValueError, "disagree on the batch size"),
    (dict(points=[[10.0, 20.0]], point_labels=[1], box=np.array([[0.0, 0, 5, 5]] * 2)), ValueError, "same form"),
    (dict(points=[[10.0, 20.0]], point_labels=[1], multimask_output="yes"), TypeError, "multimask_output must be"),
    (dict(points=[["a", "b"]], point_labels=[1]), ValueError, "points must be a numeric array"),
]


@pytest.mark.parametrize("kwargs,exc,match", BAD)
def test_bad_prompts(predictor, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        predictor.predict_instance(**kwargs)


def test_needs_image_and_tracker(params, tiny_cfg):
    from sam3_jax import Sam3ImagePredictor

    p = Sam3ImagePredictor(params, tiny_cfg)
    with pytest.raises(RuntimeError, match=r"set_image\(image\) before predict_instance"):
        p.predict_instance(points=[[10.0, 20.0]], point_labels=[1])
    detector_only = Sam3ImagePredictor({k: v for k, v in params.items() if k != "tracker"}, tiny_cfg)
    with pytest.raises(ValueError, match="no tracker params .*convert the official checkpoint again with the tracker"):
        detector_only.predict_instance(points=[[10.0, 20.0]], point_labels=[1])
    partial = dict(params, tracker={"no_mem_embed": params["tracker"]["no_mem_embed"]})
    with pytest.raises(ValueError, match="missing tracker/sam_prompt_encoder, tracker/sam_mask_decoder"):
        Sam3ImagePredictor(partial, tiny_cfg).predict_instance(box=[0.0, 0.0, 5.0, 5.0])


@pytest.fixture(scope="module")
def ckpt_dir(converted, tiny_cfg, tmp_path_factory):
    """A converted checkpoint directory holding the tracker subtree next to the detector."""
    from sam3_jax.convert.checkpoint import build_manifest, save_converted

    params, report = converted
    d = tmp_path_factory.mktemp("inst_ckpt")
    source = d / "source.txt"  # the manifest records a source file; the params were converted in-process
    source.write_text("official tiny image model with instance interactivity (random weights)\n")
    out = d / "converted"
    save_converted(str(out), params, build_manifest(source=str(source), cfg=tiny_cfg, report=report,
                                                    dtype="float32", params=params))
    return str(out)


def test_predict_cli_instance(ckpt_dir, predictor, photo, tmp_path, repo_root, python):
    from PIL import Image

    img = tmp_path / "cat.png"
    Image.fromarray(photo).save(img)
    out = tmp_path / "out"
    cmd = [python, "-m", "sam3_jax.predict", "--checkpoint", ckpt_dir, "--image", str(img), "--out", str(out)]
    r = subprocess.run(cmd + ["--points", "200,150", "--points", "120.5,90.25", "--point_labels", "1,0",
                              "--instance_box", "110,45.5,330,290", "--nomultimask"],
                       cwd=repo_root, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.loads((out / "predictions.json").read_text())
    ref = predictor.predict_instance(points=CLICKS[:2], point_labels=[1, 0], box=BOX, multimask_output=False)
    assert len(rec["instances"]) == 1 and rec["best"] == 0 and rec["multimask_output"] is False
    for inst, m, s in zip(rec["instances"], ref["masks"], ref["iou"]):
        assert np.array_equal(rle_decode(inst["mask_rle"]), m)
        assert abs(inst["iou"] - float(s)) < 1e-6
    overlay = Image.open(out / "overlay.png")
    assert overlay.size == (451, 300) and np.abs(np.asarray(overlay).astype(int) - photo).max() > 0

    # Flag errors (reported before the model is loaded).
    for extra, message in [(["--points", "5,10", "--text", "a cat"], "cannot be mixed"),
                           (["--points", "5,10", "--points", "6,7", "--point_labels", "1"], "1 labels for 2 --points"),
                           (["--points", "5;10"], "--points expects 'x,y'"),
                           (["--instance_box", "1,2,3"], "--instance_box expects 'x0,y0,x1,y1'")]:
        bad = subprocess.run(cmd + extra, cwd=repo_root, capture_output=True, text=True, timeout=600)
        assert bad.returncode == 1 and message in bad.stderr, (extra, bad.stderr[-2000:])
