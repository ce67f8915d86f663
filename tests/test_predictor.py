"""Sam3ImagePredictor vs the official Sam3Processor (tiny config, random weights plus noise), the
predict CLI, and bad input."""

import json
import subprocess

import numpy as np
import pytest

pytest.importorskip("sam3")

from sam3_jax.formats.masks import rle_decode  # noqa: E402


@pytest.fixture(scope="module")
def converted(tmp_path_factory, tiny_cfg):
    """(official model, converted checkpoint dir, sam3.pt path) for one seeded random model."""
    import torch

    from sam3_jax.convert import convert_image_model
    from sam3_jax.convert.checkpoint import build_manifest, save_converted
    from sam3_jax.parity import oracle

    d = tmp_path_factory.mktemp("ckpt")
    model = oracle.random_image_model(tiny_cfg, seed=3)
    ckpt = d / "sam3.pt"
    torch.save({f"detector.{k}": v for k, v in model.state_dict().items()}, ckpt)
    from sam3_jax.convert import load_state_dict

    params, report = convert_image_model(load_state_dict(str(ckpt)), tiny_cfg)
    out = d / "converted"
    save_converted(str(out), params, build_manifest(source=str(ckpt), cfg=tiny_cfg, report=report,
                                                   dtype="float32", params=params))
    return model, str(out), str(ckpt)


@pytest.fixture(scope="module")
def photo():
    import skimage.data as sk

    return sk.chelsea()  # 300 x 451 x 3 uint8


@pytest.fixture(scope="module")
def predictor(converted, photo):
    from sam3_jax import Sam3ImagePredictor

    p = Sam3ImagePredictor.from_checkpoint(converted[1])
    p.set_image(photo)
    return p


def _official(model, photo, *, text=None, boxes=None, labels=None, threshold=0.5):
    from PIL import Image
    from sam3.model.sam3_image_processor import Sam3Processor

    from sam3_jax.parity.oracle import cuda_to_cpu

    h, w = photo.shape[:2]
    with cuda_to_cpu():
        proc = Sam3Processor(model, resolution=224, device="cpu", confidence_threshold=threshold)
        state = proc.set_image(Image.fromarray(photo))
        if text is not None:
            state = proc.set_text_prompt(text, state)
        for box, label in zip(boxes if boxes is not None else [], labels if labels is not None else []):
            x0, y0, x1, y1 = box
            cxcywh = [(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h]
            state = proc.add_geometric_prompt(cxcywh, bool(label), state)
    return {
        "masks": state["masks"][:, 0].numpy(),
        "probs": state["masks_logits"][:, 0].numpy(),
        "boxes": state["boxes"].numpy(),
        "scores": state["scores"].numpy(),
    }


BOXES = np.array([[120.0, 40.5, 300.0, 250.0], [10.0, 200.0, 90.0, 290.0]])


@pytest.mark.parametrize(
    "kind,threshold",
    [("text", 0.0), ("text", "median"), ("text", 0.5), ("boxes", 0.0), ("boxes", "median"),
     ("text+boxes", 0.0), ("text+boxes", "median")],
)
def test_predictor_equals_official_processor(converted, photo, predictor, kind, threshold):
    model = converted[0]
    text = "a cat" if "text" in kind else None
    boxes = BOXES if "boxes" in kind else None
    labels = np.array([True, False]) if boxes is not None else None
    if threshold == "median":  # random weights: a threshold that keeps about half of the queries
        all_scores = _official(model, photo, text=text, boxes=boxes, labels=labels, threshold=0.0)["scores"]
        threshold = float(np.median(all_scores))
    ref = _official(model, photo, text=text, boxes=boxes, labels=labels, threshold=threshold)
    ours = predictor.predict(text=text, boxes=boxes, box_labels=labels, threshold=threshold)
    assert ours["masks"].dtype == bool and ours["scores"].dtype == np.float32
    assert ours["masks"].shape[1:] == photo.shape[:2]
    assert len(ours["scores"]) == len(ref["scores"]), "different detection count"
    if threshold == 0.0:
        assert len(ours["scores"]) == 16  # every query
    elif threshold < 0.5:
        assert 0 < len(ours["scores"]) < 16
    np.testing.assert_allclose(ours["scores"], ref["scores"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(ours["boxes"], ref["boxes"], atol=1e-3, rtol=0)
    # Masks equal except where the official logit is within 1e-4 of the threshold (prob 0.5 +- 2.5e-5).
    undecided = np.abs(ref["probs"] - 0.5) < 2.5e-5
    assert np.array_equal(ours["masks"] & ~undecided, ref["masks"] & ~undecided)


def test_predict_batch_equals_single_prompts(predictor):
    texts = ["a cat", "an ear", "the green background"]
    batch = predictor.predict_batch(texts=texts, threshold=0.0)
    for t, b in zip(texts, batch):
        single = predictor.predict(text=t, threshold=0.0)
        np.testing.assert_allclose(b["scores"], single["scores"], atol=1e-6)
        np.testing.assert_allclose(b["boxes"], single["boxes"], atol=1e-4)
        assert np.mean(b["masks"] != single["masks"]) < 1e-4
    # Two prompts per compiled call: the last chunk is padded (one compiled shape for both calls).
    from sam3_jax import Sam3ImagePredictor

    chunked = Sam3ImagePredictor(predictor.params, predictor.config, prompt_chunk=2)
    chunked.set_image(predictor._image)
    for b, c in zip(batch, chunked.predict_batch(texts=texts, threshold=0.0)):
        np.testing.assert_allclose(c["scores"], b["scores"], atol=1e-6)
        np.testing.assert_allclose(c["boxes"], b["boxes"], atol=1e-4)
        assert np.mean(c["masks"] != b["masks"]) < 1e-4
    assert chunked._ground._cache_size() == 1
    assert chunked._encode_text._cache_size() == 1  # the three texts in one batch (padded to 4)
    with pytest.raises(ValueError, match="prompt_chunk must be a positive int"):
        Sam3ImagePredictor(predictor.params, predictor.config, prompt_chunk=0)


def test_compiled_functions_are_reused(predictor):
    predictor.predict(text="a cat", threshold=0.0)
    n_ground = predictor._ground._cache_size()
    for t in ["a dog", "a very long prompt about a small grey cat sitting on a mat", "x"]:
        predictor.predict(text=t, threshold=0.0)
    predictor.predict(text="a cat", boxes=BOXES[:1], box_labels=np.array([True]), threshold=0.0)
    n_after_box = predictor._ground._cache_size()
    predictor.predict(text="a cat", boxes=BOXES, box_labels=np.array([True, True]), threshold=0.0)
    assert predictor._ground._cache_size() == n_after_box <= n_ground + 1


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(), ValueError, "empty prompt"),
        (dict(text="   "), ValueError, "empty prompt"),
        (dict(text=3), TypeError, "text must be a string"),
        (dict(boxes=[[10, 10, 500, 20]]), ValueError, "outside the 451x300 image"),
        (dict(boxes=[[-1, 10, 50, 20]]), ValueError, "outside"),
        (dict(boxes=[[50, 10, 40, 20]]), ValueError, "x1 < x0"),
        (dict(boxes=[[1, 2, 3]]), ValueError, r"shape \(M, 4\)"),
        (dict(boxes=[[1, 2, 3, 4]], box_labels=[1]), TypeError, "booleans"),
        (dict(boxes=[[1, 2, 3, 4]], box_labels=np.array([True, False])), ValueError, r"shape \(1,\)"),
    ],
)
def test_bad_prompts(predictor, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        predictor.predict(**kwargs)


@pytest.mark.parametrize(
    "image,exc,match",
    [
        (np.zeros((10, 10, 3), np.float32), TypeError, "dtype uint8"),
        (np.zeros((10, 10), np.uint8), ValueError, r"shape \(H, W, 3\)"),
        (np.zeros((10, 10, 4), np.uint8), ValueError, r"shape \(H, W, 3\)"),
        (np.zeros((0, 10, 3), np.uint8), ValueError, "empty"),
        ("photo.jpg", TypeError, "numpy array or a PIL image"),
    ],
)
def test_bad_images(converted, image, exc, match):
    from sam3_jax import Sam3ImagePredictor

    p = Sam3ImagePredictor.from_checkpoint(converted[1])
    with pytest.raises(exc, match=match):
        p.set_image(image)
    with pytest.raises(RuntimeError, match="set_image"):
        p.predict(text="a cat")


def test_checkpoint_errors(tmp_path):
    from sam3_jax import Sam3ImagePredictor

    with pytest.raises(FileNotFoundError, match="manifest.json"):
        Sam3ImagePredictor.from_checkpoint(str(tmp_path))


def test_predict_cli(converted, photo, tmp_path, repo_root, python):
    from PIL import Image

    img_path = tmp_path / "cat.png"
    Image.fromarray(photo).save(img_path)
    out = tmp_path / "out"
    r = subprocess.run(
        [python, "-m", "sam3_jax.predict", "--checkpoint", converted[1], "--image", str(img_path), "--text", "a cat",
         "--boxes", "120,40.5,300,250", "--boxes", "10,200,90,290", "--negative", "1", "--threshold", "0",
         "--out", str(out)],
        cwd=repo_root, capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.loads((out / "predictions.json").read_text())
    assert rec["height"] == 300 and rec["width"] == 451 and len(rec["detections"]) == 16
    det = rec["detections"][0]
    assert rle_decode(det["mask_rle"]).shape == (300, 451)
    overlay = Image.open(out / "overlay.png")
    assert overlay.size == (451, 300)
    assert np.abs(np.asarray(overlay).astype(int) - photo).max() > 0  # something was drawn
    bad = subprocess.run(
        [python, "-m", "sam3_jax.predict", "--checkpoint", converted[1], "--image", str(img_path),
         "--boxes", "10,10,5,20", "--out", str(out)],
        cwd=repo_root, capture_output=True, text=True, timeout=600,
    )
    assert bad.returncode == 1 and "x1 < x0" in bad.stderr


# Bounds of the bf16 path against the official float32 model, every query (tiny config, this file's
# photo (451 x 300) and model). Measured: scores within 1.5e-3, boxes within 0.37 px, mask IoU >= 0.88
# (mean 0.95), no keep decision flipped for a score more than 0.01 from the threshold; the bounds
# leave about 3x room for other CPUs. Full-config figures: README (benchmarks/accuracy.py).
BF16_BOUNDS = {"score_abs_max": 5e-3, "box_err_px_max": 1.0, "mask_iou_min": 0.8, "mask_iou_mean": 0.9,
               "keep_flips_clear": 0}


def test_bf16_path_meets_documented_bounds(converted, photo, tmp_path):
    """A checkpoint stored in bf16 runs the bf16 path (compute dtype from the manifest) and stays
    within the documented bounds of the official float32 model, query by query."""
    import jax
    import jax.numpy as jnp

    from sam3_jax import Sam3ImagePredictor
    from sam3_jax.convert.checkpoint import load_converted, read_manifest, save_converted
    from sam3_jax.model.sam3_image import image_model_target_shapes
    from sam3_jax.parity.detections import agreement, official_detections

    model, ckpt_dir, _ = converted
    manifest = read_manifest(ckpt_dir)
    import ml_collections

    cfg = ml_collections.ConfigDict(manifest["model_config"])
    params, _ = load_converted(ckpt_dir, image_model_target_shapes(cfg))
    bf16 = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), params)
    out_dir = tmp_path / "bf16"
    save_converted(str(out_dir), bf16, {**manifest, "dtype": "bfloat16"})
    pred = Sam3ImagePredictor.from_checkpoint(str(out_dir))
    assert pred.config.dtype == "bfloat16"
    assert {x.dtype for x in jax.tree_util.tree_leaves(pred.params)} == {jnp.dtype(jnp.bfloat16)}
    pred.set_image(photo)
    texts = ["a cat", "an ear"]
    outs = pred.predict_batch(texts, threshold=0.0)
    for ref, ours in zip(official_detections(model, cfg, photo, texts), outs):
        a = agreement(ref, ours, float(np.median(ref["scores"])))
        assert a["score_abs_max"] <= BF16_BOUNDS["score_abs_max"], a
        assert a["box_err_px_max"] <= BF16_BOUNDS["box_err_px_max"], a
        assert a["mask_iou_min"] >= BF16_BOUNDS["mask_iou_min"], a
        assert a["mask_iou_mean"] >= BF16_BOUNDS["mask_iou_mean"], a
        assert a["keep_flips_clear"] <= BF16_BOUNDS["keep_flips_clear"], a

    # The predictor keeps the scanned bf16 stacks as uint16 bits (layers/stack.py); plain bf16
    # applies (the same two jitted steps, image encoding with the cached first self-attention, then
    # grounding) give the same scores.
    bits = [x for x in jax.tree_util.tree_leaves(pred._detector_params) if x.dtype == jnp.uint16]
    assert len(bits) > 20 and all(x.ndim >= 2 for x in bits)
    m = pred.model
    params = {k: v for k, v in pred.params.items() if k != "tracker"}
    image_out = jax.jit(lambda p, img: m.apply({"params": p}, img, method=type(m).forward_image_for_grounding))(
        params, pred._prepare_image(np.asarray(photo)))
    assert "encoder_self_attn" in image_out

    @jax.jit
    def ground(p, io, *a):
        out = m.apply({"params": p}, io, *a, method=type(m).forward_detections)
        return jax.nn.sigmoid(out["pred_logits"][..., 0]) * jax.nn.sigmoid(out["presence_logit_dec"])

    for text, ours in zip(texts, outs):
        ref = ground(params, image_out, pred._tokens([text]), *pred._boxes(None, None))
        np.testing.assert_array_equal(ours["scores"], np.asarray(ref[0]).astype(np.float32))
