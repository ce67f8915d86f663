"""The video model end to end against the official `Sam3VideoInferenceWithInstanceInteractivity`
at the tiny config (fp32, seeded random weights plus noise, thresholds lowered so that random
weights create and drop tracks): a synthetic clip of moving objects, a text prompt on frame 0,
propagation forward (and backward from the last frame); every frame's object ids, scores, boxes
and masks. Also: the per-frame step compiles once per clip, bad input, capacity overflow."""

from __future__ import annotations

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sam3")

NUM_FRAMES = 12
TEXT = "a red circle"
# thresholds for random weights: every query is a detection candidate, NMS at IoU 0.5, short
# hot-start windows; room for every object these seeds create (30 at seed 7)
LOW = dict(score_threshold_detection=0.0, new_det_thresh=0.0, det_nms_thresh=0.5, hotstart_delay=4,
           hotstart_unmatch_thresh=2, hotstart_dup_thresh=2, max_objects=32)
# seed 1: two objects tracked through frames where their masks vanish and come back, others born
# and hidden; seed 7: two or three births on every frame, 30 objects in all
SEEDS = (1, 7)


@pytest.fixture(scope="module")
def vcfg():
    from sam3_jax.parity.video import video_config_for_random_weights

    return video_config_for_random_weights(**LOW)


@pytest.fixture(scope="module", params=SEEDS)
def official(request, tiny_cfg, vcfg):
    from sam3_jax.parity.oracle import state_dict_numpy
    from sam3_jax.parity.video import build_video_model

    model = build_video_model(tiny_cfg, request.param, vcfg)
    return model, state_dict_numpy(model)


@pytest.fixture(scope="module")
def params(official, tiny_cfg):
    from sam3_jax.convert.convert import convert_image_model

    params, report = convert_image_model(official[1], tiny_cfg, tracker=True)
    assert not report.pending
    return params


@pytest.fixture(scope="module")
def clip(tiny_cfg):
    from sam3_jax.data.synthetic_video import SyntheticVideoSource

    src = SyntheticVideoSource("val", seed=1, num_frames=NUM_FRAMES, canvas=tiny_cfg.image_size, max_objects=4,
                               min_objects=3)
    return [np.asarray(f) for f in src[0]["frames"]]


@pytest.fixture(scope="module")
def predictor(params, tiny_cfg, vcfg):
    from sam3_jax.predict.video import Sam3VideoPredictor

    return Sam3VideoPredictor(params, tiny_cfg, vcfg)


MARGIN = 1e-4  # a mask pixel may differ where an object's logit there is this close to 0


def _ours(predictor, clip, reverse=False, prompt_frame=0):
    predictor.start_session(clip)
    predictor.return_low_res = True
    with jax.default_matmul_precision("highest"):
        first = predictor.add_prompt(prompt_frame, TEXT)
        outs = dict(predictor.propagate("backward" if reverse else "forward"))
    return first, outs


def _compare(ours, ref, what):
    from sam3_jax.model.video.step import _resize

    assert ours["obj_ids"].tolist() == ref["obj_ids"].tolist(), f"{what}: ids {ours['obj_ids']} vs {ref['obj_ids']}"
    np.testing.assert_allclose(ours["scores"], ref["scores"], rtol=0, atol=1e-5, err_msg=f"{what}: scores")
    diff = ours["masks"] != ref["masks"]
    if diff.any():
        logits = np.asarray(_resize(jax.numpy.asarray(ours["low_res"]), ours["masks"].shape[1:]))
        near = np.any(np.abs(logits) <= MARGIN, axis=0)
        far = diff & ~near[None]
        assert not far.any(), f"{what}: {int(far.sum())} mask pixels differ away from the threshold"
        assert diff.sum() <= 4, f"{what}: {int(diff.sum())} mask pixels differ"
    else:
        np.testing.assert_allclose(ours["boxes_xywh"], ref["boxes_xywh"], rtol=0, atol=1e-6,
                                   err_msg=f"{what}: boxes")


def test_forward_matches_official(official, predictor, clip):
    from sam3_jax.parity.video import run_official

    ref_first, ref = run_official(official[0], clip, TEXT)
    first, ours = _ours(predictor, clip)
    _compare(first, ref_first, "add_prompt frame 0")
    assert sorted(ours) == sorted(ref) == list(range(NUM_FRAMES))
    for f in range(NUM_FRAMES):
        _compare(ours[f], ref[f], f"frame {f}")
    ids = set().union(*(set(o["obj_ids"].tolist()) for o in ref.values()))
    assert len(ids) >= 2, f"the clip should track several objects, got ids {sorted(ids)}"
    # objects are created after frame 0 and some present ones are hidden again
    assert predictor.counts["births_dropped"] == 0
    assert int(predictor._state.max_obj_id) + 1 > len(ref_first["obj_ids"])


def test_step_compiles_once_per_clip(predictor, clip):
    """add_prompt and a whole forward propagation of the 12-frame clip share one compiled step."""
    predictor._step.clear_cache()
    _ours(predictor, clip)
    assert predictor._step._cache_size() == 1


def test_capacity_overflow_is_counted(params, tiny_cfg, clip):
    """With a single object slot, later new detections find no room: they are counted, the ids
    stay consecutive, never a crash."""
    from sam3_jax.parity.video import video_config_for_random_weights
    from sam3_jax.predict.video import Sam3VideoPredictor

    small = video_config_for_random_weights(**{**LOW, "max_objects": 1})
    p = Sam3VideoPredictor(params, tiny_cfg, small)
    p.start_session(clip)
    first = p.add_prompt(0, TEXT)
    outs = dict(p.propagate())
    assert len(first["obj_ids"]) <= 1 and all(len(o["obj_ids"]) <= 1 for o in outs.values())
    assert p.counts["births_dropped"] > 0


def test_bad_input(predictor, clip, tmp_path):
    from sam3_jax.predict.video import Sam3VideoPredictor

    fresh = Sam3VideoPredictor(predictor.params, predictor.config, predictor.video_config)
    with pytest.raises(RuntimeError, match="start_session"):
        fresh.add_prompt(0, TEXT)
    with pytest.raises(ValueError, match="no frames"):
        fresh.start_session([])
    with pytest.raises(ValueError, match="one size"):
        fresh.start_session([clip[0], clip[1][:-8]])
    with pytest.raises(ValueError, match="uint8"):
        fresh.start_session([clip[0].astype(np.float32)])
    with pytest.raises(FileNotFoundError):
        fresh.start_session(str(tmp_path / "missing"))
    fresh.start_session(clip[:3])
    with pytest.raises(RuntimeError, match="add_prompt"):
        next(fresh.propagate())
    with pytest.raises(IndexError, match="out of range"):
        fresh.add_prompt(3, TEXT)
    with pytest.raises(ValueError, match="non-empty"):
        fresh.add_prompt(0, "  ")
    with pytest.raises(KeyError, match="unknown obj_id"):
        fresh.remove_object(12345)
    with pytest.raises(ValueError, match="direction"):
        fresh.add_prompt(0, TEXT)
        next(fresh.propagate("sideways"))
