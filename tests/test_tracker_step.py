"""The assembled tracker (`Sam3Tracker`) against the official `Sam3TrackerBase.track_step` at the
tiny config (seeded + perturbed weights, converted with `tracker_rules`): a click on an initial
conditioning frame, tracked frames with memory (more than num_maskmem of them, so the bank rolls),
a mask given as a conditioning frame, a refinement click with the previous logits; the memory-bank
padding; the official frame selection; the full-size key set; init and bad input."""

from __future__ import annotations


import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam3_jax.convert.convert import convert
from sam3_jax.convert.rules_tracker import tracker_rules
from sam3_jax.layers.core import count_params
from sam3_jax.model.tracker.tracker import (
    MemoryBank,
    Sam3Tracker,
    memory_bank_from_outputs,
    select_memory_frames,
    tracker_target_shapes,
)
from sam3_jax.parity import tracker as PT
from tests.conftest import assert_parity, official_key_table

torch = pytest.importorskip("torch")
pytest.importorskip("sam3")

TOL = 1e-5
SEED = 8  # at this seed the click on frame 0 finds an object (score > 0)
NUM_FRAMES = 10
# Official full-size tracker: 309 tensors, 11,743,618 parameters (sam3_reference_architecture.md 3).
FULL_TRACKER_KEYS = 309
FULL_TRACKER_PARAMS = 11_743_618


def _grid(cfg) -> int:
    return cfg.image_size // cfg.vit.patch_size


@pytest.fixture(scope="module")
def official(tiny_cfg):
    from sam3_jax.parity.oracle import build_tracker, perturb_all_, state_dict_numpy

    torch.manual_seed(SEED)
    model = build_tracker(tiny_cfg)
    perturb_all_(model, SEED)
    state = {f"tracker.{k}": v for k, v in state_dict_numpy(model).items()}
    return model, state


@pytest.fixture(scope="module")
def params(official, tiny_cfg):
    _, state = official
    converted, report = convert(state, {"tracker": tracker_target_shapes(tiny_cfg)}, tracker_rules(tiny_cfg),
                                pending_parts={})
    assert len(report.consumed) == len(state) and not report.pending
    return converted["tracker"]


@pytest.fixture(scope="module")
def frames(official, tiny_cfg):
    return PT.random_frames(official[0], tiny_cfg, NUM_FRAMES, seed=11)


def _official_step(model, cfg, frames, outputs, frame_idx, *, is_init, **kw):
    return PT.official_step(model, cfg, frames[frame_idx], outputs, frame_idx, NUM_FRAMES, is_init=is_init, **kw)


def _ours_step(params, cfg, frames, official_outputs, frame_idx, *, is_init, multimask, mask=None, pad_slots=0,
               **kw):
    bank = None
    if not is_init and mask is None:
        bank = PT.bank_from_official(cfg, official_outputs, frame_idx, NUM_FRAMES, pad_slots=pad_slots)
        if pad_slots:  # garbage in the invalid slots must not matter
            bank = bank.replace(
                features=jnp.where(bank.valid[..., None, None, None], bank.features, 7.0),
                obj_ptrs=jnp.where(bank.ptr_valid[..., None], bank.obj_ptrs, -3.0),
                tpos=jnp.where(bank.valid, bank.tpos, 2),
            )
    with jax.default_matmul_precision("highest"):
        return PT.ours_step(params, cfg, frames[frame_idx], bank, is_init=is_init, multimask=multimask, mask=mask,
                            **kw)


def _compare(ours, ref, what, *, params=None, cfg=None, frame=None, mask_from_points=False):
    """Every output within TOL (PT.compare_step: with clicks, a mask pixel within 1e-4 of 0 may
    flip; the memory encoder is then checked on the official mask)."""
    stages = PT.compare_step(ours, ref, TOL, what, params=params, cfg=cfg, frame=frame,
                             mask_from_points=mask_from_points)
    bad = [s.row() for s in stages if not s.ok]
    assert not bad, "\n".join(bad)
    return {s.name: s.max_abs for s in stages}


@pytest.fixture(scope="module")
def video_run(official, params, frames, tiny_cfg):
    """Runs a 10-frame sequence through both trackers, comparing every step; returns the official
    output dict and the per-step errors."""
    model, _ = official
    s = tiny_cfg.image_size
    outputs = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    errs = {}
    click = np.array([[[0.4 * s, 0.55 * s]]], np.float32)
    one = np.array([[1]], np.int32)
    # frame 0: one click on an initial conditioning frame (multimask: one point)
    ref = _official_step(model, tiny_cfg, frames, outputs, 0, is_init=True, points=click, labels=one)
    ours = _ours_step(params, tiny_cfg, frames, outputs, 0, is_init=True, multimask=True, points=click, labels=one)
    assert float(ref["object_score_logits"][0, 0]) > 0  # an object: the masks are real logits, not -1024
    errs[0] = _compare(ours, ref, "frame 0 (click)", params=params, cfg=tiny_cfg, frame=frames[0],
                       mask_from_points=True)
    outputs["cond_frame_outputs"][0] = ref
    for f in range(1, NUM_FRAMES):
        if f == 4:  # a mask given on frame 4 (a conditioning frame)
            mask = np.zeros((1, 1, s, s), np.float32)
            mask[:, :, s // 4: s // 2, s // 3: 3 * s // 4] = 1
            ref = _official_step(model, tiny_cfg, frames, outputs, f, is_init=False, mask=mask)
            ours = _ours_step(params, tiny_cfg, frames, outputs, f, is_init=False, multimask=False, mask=mask)
            outputs["cond_frame_outputs"][f] = ref
        else:  # tracked (no prompt: zero points -> multimask output for tracking)
            ref = _official_step(model, tiny_cfg, frames, outputs, f, is_init=False)
            ours = _ours_step(params, tiny_cfg, frames, outputs, f, is_init=False, multimask=True)
            outputs["non_cond_frame_outputs"][f] = ref
        errs[f] = _compare(ours, ref, f"frame {f}")
    return outputs, errs


def test_track_steps_match_official(video_run):
    _, errs = video_run
    assert sorted(errs) == list(range(NUM_FRAMES))


def test_refinement_click_with_previous_logits(official, params, frames, video_run, tiny_cfg):
    """Clicks on a tracked frame with its previous low-res logits as the mask prompt (official
    `prev_sam_mask_logits`), several points (no multimask)."""
    model, _ = official
    outputs, _ = video_run
    s = tiny_cfg.image_size
    f = 7
    prev = PT.np32(outputs["non_cond_frame_outputs"][f]["pred_masks"])
    pts = np.array([[[0.3 * s, 0.3 * s], [0.7 * s, 0.6 * s], [0.5 * s, 0.9 * s]]], np.float32)
    lab = np.array([[1, 0, 1]], np.int32)
    rest = {"cond_frame_outputs": outputs["cond_frame_outputs"],
            "non_cond_frame_outputs": {k: v for k, v in outputs["non_cond_frame_outputs"].items() if k < f}}
    ref = _official_step(model, tiny_cfg, frames, rest, f, is_init=False, points=pts, labels=lab, prev_logits=prev)
    ours = _ours_step(params, tiny_cfg, frames, rest, f, is_init=False, multimask=False, points=pts, labels=lab,
                      prev_logits=prev)
    _compare(ours, ref, "refinement", params=params, cfg=tiny_cfg, frame=frames[f], mask_from_points=True)


def test_empty_mask_input_means_no_object(official, params, frames, tiny_cfg):
    """An empty mask given as a conditioning frame: object score -10, `no_obj_ptr`, and
    `no_obj_embed_spatial` added to the memory, as the official."""
    model, _ = official
    s = tiny_cfg.image_size
    mask = np.zeros((1, 1, s, s), np.float32)
    outputs = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    ref = _official_step(model, tiny_cfg, frames, outputs, 2, is_init=True, mask=mask)
    ours = _ours_step(params, tiny_cfg, frames, outputs, 2, is_init=True, multimask=False, mask=mask)
    assert float(ref["object_score_logits"]) == -10.0
    _compare(ours, ref, "empty mask")


def test_padded_bank_equals_exact_bank(official, params, frames, video_run, tiny_cfg):
    """Extra invalid slots holding garbage change nothing (the fixed-capacity bank)."""
    outputs, _ = video_run
    f = 9
    rest = {"cond_frame_outputs": outputs["cond_frame_outputs"],
            "non_cond_frame_outputs": {k: v for k, v in outputs["non_cond_frame_outputs"].items() if k < f}}
    exact = _ours_step(params, tiny_cfg, frames, rest, f, is_init=False, multimask=True)
    padded = _ours_step(params, tiny_cfg, frames, rest, f, is_init=False, multimask=True, pad_slots=3)
    for k in ("pred_masks", "obj_ptr", "maskmem_features"):
        np.testing.assert_allclose(np.asarray(padded[k]), np.asarray(exact[k]), atol=1e-5, rtol=1e-5, err_msg=k)


def test_frame_selection():
    sel = dict(num_maskmem=7, max_cond_frames_in_attn=4, max_obj_ptrs_in_encoder=16)
    spatial, pointers, max_pos = select_memory_frames(9, [0, 4], [1, 2, 3, 5, 6, 7, 8], num_frames=10, **sel)
    assert sorted(f for f, t in spatial if t == 0) == [0, 4]
    # t_pos = num_maskmem - (frame_idx - f); frame 4 (a conditioning frame) is not taken twice
    assert [(f, t) for f, t in spatial if t] == [(3, 1), (5, 3), (6, 4), (7, 5), (8, 6)]
    assert max_pos == 10
    assert sorted(pointers) == [(0, 9), (1, 8), (2, 7), (3, 6), (4, 5), (5, 4), (6, 3), (7, 2), (8, 1)]
    # more conditioning frames than max_cond_frames_in_attn: the closest before and after, then by
    # distance; the unselected ones (0, 20) serve as recent frames when they are recent
    spatial, _, _ = select_memory_frames(10, [0, 2, 5, 8, 12, 20], [9], num_frames=30, **sel)
    assert sorted(f for f, t in spatial if t == 0) == [2, 5, 8, 12]
    assert [(f, t) for f, t in spatial if t] == [(9, 6)]
    # reverse tracking: frames after the current one
    spatial, pointers, _ = select_memory_frames(5, [9], [6, 7, 8], num_frames=10, reverse=True, **sel)
    assert [(f, t) for f, t in spatial if t] == [(8, 4), (7, 5), (6, 6)]
    assert sorted(pointers) == [(6, 1), (7, 2), (8, 3), (9, 4)]


def test_full_size_key_set_converts(full_cfg):
    table = official_key_table("tracker.")
    assert len(table) == FULL_TRACKER_KEYS
    shapes = tracker_target_shapes(full_cfg)
    assert count_params(shapes) == FULL_TRACKER_PARAMS
    _, report = convert(table, {"tracker": shapes}, tracker_rules(full_cfg), dry_run=True, pending_parts={})
    assert len(report.consumed) == FULL_TRACKER_KEYS and not report.pending


def test_needs_memory_unless_initial(params, frames, tiny_cfg):
    model = Sam3Tracker(tiny_cfg)
    ours = frames[0]["ours"]
    with pytest.raises(ValueError, match="memory bank"):
        nn.apply(lambda m: m.track_step(m.prepare_frame(ours), None, is_init_cond_frame=False,
                                        multimask_output=True), model)({"params": params})


def test_bank_capacity_error():
    out = {0: {"maskmem_features": np.zeros((1, 2, 2, 4)), "obj_ptr": np.zeros((1, 8))}}
    with pytest.raises(ValueError, match="exceed the capacities"):
        memory_bank_from_outputs(out, [(0, 0), (0, 1)], [], 2, spatial_slots=1)
    assert isinstance(memory_bank_from_outputs(out, [(0, 0)], [(0, 1)], 2), MemoryBank)


def test_every_tracker_param_has_logical_axes(tiny_cfg):
    from sam3_jax.model.tracker.tracker import tracker_init_inputs

    def init(key):
        frame, bank = tracker_init_inputs(tiny_cfg)
        return Sam3Tracker(tiny_cfg).init(key, frame, bank)["params"]

    boxed = jax.eval_shape(init, jax.random.key(0))
    leaves = jax.tree_util.tree_leaves_with_path(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert len(leaves) > 200
    for path, leaf in leaves:
        assert isinstance(leaf, nn.LogicallyPartitioned), f"{jax.tree_util.keystr(path)} has no logical axes"
        assert len(leaf.names) == leaf.value.ndim, jax.tree_util.keystr(path)


def test_step_with_slot_memory_equals_official(official, params, frames, video_run, tiny_cfg):
    """The video path: every past frame written into a fixed-slot `TrackMemory` (in processing
    order), the bank chosen under jit (`memory_bank_at`), one step: equal to the official step."""
    from sam3_jax.model.tracker.track_memory import TrackMemory, add_memory, memory_bank_at

    model, _ = official
    outputs, _ = video_run
    f = 9
    rest = {"cond_frame_outputs": outputs["cond_frame_outputs"],
            "non_cond_frame_outputs": {k: v for k, v in outputs["non_cond_frame_outputs"].items() if k < f}}
    g, t = _grid(tiny_cfg), tiny_cfg.tracker
    memory = TrackMemory.empty(1, 16, g, t.mem_dim, t.d_model)
    for k in sorted(set(rest["cond_frame_outputs"]) | set(rest["non_cond_frame_outputs"])):
        o = rest["cond_frame_outputs"].get(k) or rest["non_cond_frame_outputs"][k]
        memory, dropped = add_memory(memory, k, jnp.asarray(PT.np32(o["maskmem_features"]).transpose(0, 2, 3, 1)),
                                     jnp.asarray(PT.np32(o["obj_ptr"])), k in rest["cond_frame_outputs"])
        assert not bool(dropped[0])
    bank = memory_bank_at(memory, f, num_frames=NUM_FRAMES, num_maskmem=t.num_maskmem,
                          max_cond_frames_in_attn=t.max_cond_frames_in_attn,
                          max_obj_ptrs_in_encoder=t.max_obj_ptrs_in_encoder)
    ref = _official_step(model, tiny_cfg, frames, rest, f, is_init=False)
    with jax.default_matmul_precision("highest"):
        ours = PT.ours_step(params, tiny_cfg, frames[f], bank, is_init=False, multimask=True)
    _compare(ours, ref, "slot memory")


# reverse: on demand (-m slow); the reverse frame choice is checked on random histories in
# tests/test_track_memory.py and end to end by the video model's backward parity
@pytest.mark.parametrize("reverse", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_chained_propagation_equals_official(official, params, frames, tiny_cfg, reverse):
    """Two objects given as masks on frame 0 (frame 9 in reverse), then tracked over the other
    frames (forward, or backward as the official `track_in_reverse`) with our own memory
    (`condition_step` / `propagate_step`, one compiled step for every frame) against the official
    tracker chaining its own outputs: masks, pointers and object scores agree on every frame
    within 1e-5 x max(1, max abs) (measured: <= 1.3e-6 on frame 9; nothing compounds)."""
    from sam3_jax.model.tracker.track_memory import TrackMemory, condition_step, propagate_step

    model, _ = official
    s, g, t = tiny_cfg.image_size, _grid(tiny_cfg), tiny_cfg.tracker
    masks = np.zeros((2, 1, s, s), np.float32)
    masks[0, :, s // 4: s // 2, s // 3: 3 * s // 4] = 1
    masks[1, :, s // 2: 7 * s // 8, s // 8: s // 2] = 1
    # the official step takes one feature batch per object: the frame's features repeated
    both = [{"official_feats": [x.repeat(1, 2, 1) for x in fr["official_feats"]],
             "official_pos": [x.repeat(1, 2, 1) for x in fr["official_pos"]]} for fr in frames]
    order = list(range(NUM_FRAMES))[::-1] if reverse else list(range(NUM_FRAMES))
    first = order[0]
    outputs = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    refs = {first: PT.official_step(model, tiny_cfg, both[first], outputs, first, NUM_FRAMES, is_init=True,
                                    mask=masks, reverse=reverse)}
    outputs["cond_frame_outputs"][first] = refs[first]
    for f in order[1:]:
        refs[f] = PT.official_step(model, tiny_cfg, both[f], outputs, f, NUM_FRAMES, is_init=False, reverse=reverse)
        outputs["non_cond_frame_outputs"][f] = refs[f]

    cond = jax.jit(lambda p, feats, mem, m: condition_step(p, tiny_cfg, feats, mem, first, mask=m))
    prop = jax.jit(lambda p, feats, mem, f: propagate_step(p, tiny_cfg, feats, mem, f, NUM_FRAMES, reverse=reverse))
    memory = TrackMemory.empty(2, 12, g, t.mem_dim, t.d_model)
    two = lambda feats: jax.tree_util.tree_map(lambda x: jnp.concatenate([x, x]), feats)  # noqa: E731
    with jax.default_matmul_precision("highest"):
        ours, memory = cond(params, two(frames[first]["ours"]), memory, jnp.asarray(masks.transpose(0, 2, 3, 1)))
        results = {first: ours}
        for f in order[1:]:
            results[f], memory = prop(params, two(frames[f]["ours"]), memory, jnp.int32(f))
    assert prop._cache_size() == 1  # one compiled step for the whole clip
    for f in range(NUM_FRAMES):
        for name in ("pred_masks", "obj_ptr", "object_score_logits"):
            assert_parity(np.asarray(results[f][name]), PT.np32(refs[f][name]), TOL, f"frame {f} {name}")
        assert not np.asarray(results[f]["dropped"]).any()
    assert (PT.np32(refs[order[-1]]["pred_masks"]) > 0).any()  # the objects are still tracked
