"""Tracker stages against the official `Sam3TrackerBase` (the tracker part of `python -m sam3_jax.parity`).

The official tracker runs on the tracker-neck features of random frames (levels 4g / 2g / g, the
first two projected by conv_s0 / conv_s1 as the official `forward_image` does), through a short
sequence: a click on an initial conditioning frame (no memory), then tracked frames whose memory
bank is built from the official outputs with the official frame choice, so each step is compared
on its own. Stages: prompt encoder (sparse / dense), mask decoder (all masks, IoU, object score),
memory encoder, memory attention, object pointer, and the outputs of one full step without and
with memory. Masks from clicks are binarised at 0 before the memory encoder: a pixel within 1e-4
of 0 may flip in fp32 and legitimately change the memory, so such steps check that no pixel
beyond that margin flips and compare the memory encoder on the official mask instead.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sam3_jax.parity.stages import StageResult, compare

def _torch():
    import torch

    return torch


def random_frames(model, cfg, num_frames: int, seed: int) -> list[dict[str, Any]]:
    """Random tracker-neck features per frame: the official view (sequence-first lists with levels
    0 / 1 projected by the official conv_s0 / conv_s1) and ours (`prepare_frame` input, NHWC)."""
    torch = _torch()
    g, c = cfg.image_size // cfg.vit.patch_size, cfg.tracker.d_model
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(num_frames):
        levels = [rng.normal(size=(1, s, s, c)).astype(np.float32) for s in (4 * g, 2 * g, g)]
        pos = [rng.normal(size=(1, s, s, c)).astype(np.float32) for s in (4 * g, 2 * g, g)]
        with torch.no_grad():
            t = [torch.from_numpy(x).permute(0, 3, 1, 2) for x in levels]
            t[0] = model.sam_mask_decoder.conv_s0(t[0])
            t[1] = model.sam_mask_decoder.conv_s1(t[1])
        seq = lambda x: x.flatten(2).permute(2, 0, 1).contiguous()  # noqa: E731
        frames.append({
            "official_feats": [seq(x) for x in t],
            "official_pos": [seq(torch.from_numpy(p).permute(0, 3, 1, 2)) for p in pos],
            "ours": {"backbone_fpn": [jnp.asarray(x) for x in levels], "vision_pos_enc": [jnp.asarray(p) for p in pos]},
        })
    return frames


def feat_sizes(cfg) -> list[tuple[int, int]]:
    g = cfg.image_size // cfg.vit.patch_size
    return [(4 * g, 4 * g), (2 * g, 2 * g), (g, g)]


def official_step(model, cfg, frame, outputs, frame_idx: int, num_frames: int, *, is_init: bool,
                  points=None, labels=None, mask=None, prev_logits=None, reverse: bool = False) -> dict[str, Any]:
    """The official `track_step` (masks NCHW numpy in, torch outputs)."""
    torch = _torch()
    from sam3_jax.parity.oracle import cuda_to_cpu

    point_inputs = None
    if points is not None:
        point_inputs = {"point_coords": torch.from_numpy(points), "point_labels": torch.from_numpy(labels)}
    with torch.no_grad(), cuda_to_cpu():
        return model.track_step(
            frame_idx=frame_idx, is_init_cond_frame=is_init, current_vision_feats=frame["official_feats"],
            current_vision_pos_embeds=frame["official_pos"], feat_sizes=feat_sizes(cfg), image=None,
            point_inputs=point_inputs, mask_inputs=None if mask is None else torch.from_numpy(mask),
            output_dict=outputs, num_frames=num_frames, track_in_reverse=reverse, run_mem_encoder=True,
            prev_sam_mask_logits=None if prev_logits is None else torch.from_numpy(prev_logits),
        )


def np32(x) -> np.ndarray:
    return x.detach().float().numpy()


def bank_from_official(cfg, outputs: Mapping[str, Mapping[int, Any]], frame_idx: int, num_frames: int, *,
                       pad_slots: int = 0):
    """Our `MemoryBank` holding the official outputs the official tracker would attend to."""
    from sam3_jax.model.tracker.tracker import memory_bank_from_outputs, select_memory_frames

    spatial, pointers, max_pos = select_memory_frames(
        frame_idx, list(outputs["cond_frame_outputs"]), list(outputs["non_cond_frame_outputs"]),
        num_maskmem=cfg.tracker.num_maskmem, max_cond_frames_in_attn=cfg.tracker.max_cond_frames_in_attn,
        max_obj_ptrs_in_encoder=cfg.tracker.max_obj_ptrs_in_encoder, num_frames=num_frames)
    everything = {**outputs["cond_frame_outputs"], **outputs["non_cond_frame_outputs"]}
    ours = {f: {"maskmem_features": np32(o["maskmem_features"]).transpose(0, 2, 3, 1), "obj_ptr": np32(o["obj_ptr"])}
            for f, o in everything.items()}
    return memory_bank_from_outputs(ours, spatial, pointers, max_pos, spatial_slots=len(spatial) + pad_slots,
                                    pointer_slots=max(1, len(pointers)) + pad_slots)


_STEP_FNS: dict[int, Any] = {}


def step_fn(cfg):
    """A jitted `Sam3Tracker.prepare_frame` + `track_step`, one per config object; the static flags
    pick the compiled variant."""
    if id(cfg) in _STEP_FNS:
        return _STEP_FNS[id(cfg)]
    import flax.linen as nn

    from sam3_jax.model.tracker.tracker import Sam3Tracker, track_step

    @functools.partial(jax.jit, static_argnames=("is_init", "multimask"))
    def step(params, feats, bank, points, labels, mask, prev_logits, *, is_init, multimask):
        out = track_step(params, cfg, feats, bank, points, labels, mask, prev_logits, is_init_cond_frame=is_init,
                         multimask_output=multimask)
        if bank is not None and not is_init and mask is None:
            out["pix_feat_with_mem"] = nn.apply(
                lambda m: m.condition_on_memory(m.prepare_frame(feats), bank, is_init_cond_frame=False),
                Sam3Tracker(cfg))({"params": params})
        return out

    return _STEP_FNS.setdefault(id(cfg), step)


def ours_step(params, cfg, frame, bank, *, is_init: bool, multimask: bool, points=None, labels=None, mask=None,
              prev_logits=None) -> dict[str, Any]:
    """Our step on the same inputs (masks given NCHW as to the official, moved to NHWC)."""
    nhwc = lambda x: None if x is None else np.asarray(x).transpose(0, 2, 3, 1)  # noqa: E731
    return step_fn(cfg)(params, frame["ours"], bank, points, labels, nhwc(mask), nhwc(prev_logits),
                        is_init=is_init, multimask=multimask)


# Pixels whose official mask logit is this close to 0 may binarise either way in fp32.
MASK_MARGIN = 1e-4


def step_pairs(ours: Mapping[str, Any], ref: Mapping[str, Any]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(ours, official) arrays of one step's outputs, in our layouts."""
    return {
        "pred_masks": (ours["pred_masks"], np32(ref["pred_masks"])),
        "pred_masks_high_res": (ours["pred_masks_high_res"], np32(ref["pred_masks_high_res"])),
        "obj_ptr": (ours["obj_ptr"], np32(ref["obj_ptr"])),
        "object_score_logits": (ours["object_score_logits"], np32(ref["object_score_logits"])),
        "maskmem_features": (ours["maskmem_features"], np32(ref["maskmem_features"]).transpose(0, 2, 3, 1)),
        "maskmem_pos_enc": (ours["maskmem_pos_enc"], np32(ref["maskmem_pos_enc"][-1]).transpose(0, 2, 3, 1)),
    }


def mask_flips(ours_logits: Any, ref_logits: np.ndarray, margin: float = MASK_MARGIN) -> tuple[int, int]:
    """(pixels binarised differently at 0, those of them whose official logit is >= margin from 0)."""
    a, b = np.asarray(ours_logits) > 0, ref_logits > 0
    flips = a != b
    return int(flips.sum()), int((flips & (np.abs(ref_logits) >= margin)).sum())


def compare_step(ours: Mapping[str, Any], ref: Mapping[str, Any], tolerance: float, prefix: str, *,
                 params=None, cfg=None, frame=None, mask_from_points: bool = False) -> list[StageResult]:
    """Stages of one step. The memory features of a mask from clicks depend on the mask binarised at
    0, so a pixel within MASK_MARGIN of 0 may flip and change them legitimately: then they are not
    compared (the count of flips beyond the margin must be 0), and with `params` the memory encoder
    is compared on its own, fed the official mask and object score."""
    pairs = step_pairs(ours, ref)
    n_flips, n_bad = mask_flips(*pairs["pred_masks_high_res"])
    stages = [compare(f"{prefix}.mask_flips_beyond_{MASK_MARGIN:g}", np.array(n_bad), np.array(0), 0.0)]
    for name, (a, b) in pairs.items():
        if name == "maskmem_features" and n_flips and mask_from_points:
            continue
        stages.append(compare(f"{prefix}.{name}", a, b, tolerance))
    if params is not None:
        mem = encode_memory_fn(cfg)(params, frame["ours"], jnp.asarray(np32(ref["pred_masks_high_res"])),
                                    jnp.asarray(np32(ref["object_score_logits"])), mask_from_points=mask_from_points)
        stages.append(compare(f"{prefix}.memory_encoder", mem, pairs["maskmem_features"][1], tolerance))
    return stages


_ENCODE_FNS: dict[int, Any] = {}


def encode_memory_fn(cfg):
    """A jitted `Sam3Tracker.encode_memory` on a frame's raw g-level features."""
    if id(cfg) in _ENCODE_FNS:
        return _ENCODE_FNS[id(cfg)]
    import flax.linen as nn

    from sam3_jax.model.tracker.tracker import Sam3Tracker

    @functools.partial(jax.jit, static_argnames=("mask_from_points",))
    def run(params, feats, high_res_masks, object_score_logits, *, mask_from_points):
        def body(module):
            frame = module.prepare_frame(feats)
            return module.encode_memory(frame["pix_feat"], high_res_masks, object_score_logits,
                                        mask_from_points=mask_from_points)["maskmem_features"]
        return nn.apply(body, Sam3Tracker(cfg))({"params": params})

    return _ENCODE_FNS.setdefault(id(cfg), run)


def run_tracker_parity(cfg, *, seed: int = 0, model=None, params=None, tolerance: float = 1e-5, num_frames: int = 4,
                       log=print) -> tuple[list[StageResult], dict[str, Any]]:
    """Compares the tracker stages (module docstring) of an official tracker and its conversion:
    `model` with our `params` as given, else a seeded random official tracker converted with the
    project's rules. Returns (stages, timings)."""
    torch = _torch()
    from sam3_jax.convert.convert import convert
    from sam3_jax.convert.rules_tracker import tracker_rules
    from sam3_jax.model.tracker.tracker import tracker_target_shapes
    from sam3_jax.parity import oracle

    t0 = time.time()
    if model is None:
        torch.manual_seed(seed)
        model = oracle.build_tracker(cfg)
        oracle.perturb_all_(model, seed)
    if params is None:
        tstate = {f"tracker.{k}": v for k, v in oracle.state_dict_numpy(model).items()}
        converted, _ = convert(tstate, {"tracker": tracker_target_shapes(cfg)}, tracker_rules(cfg), pending_parts={})
        params = converted["tracker"]
    log(f"official tracker ready and converted ({time.time() - t0:.1f}s)")
    frames = random_frames(model, cfg, num_frames, seed)
    s = cfg.image_size
    rng = np.random.default_rng(seed)
    click = rng.uniform(0.2 * s, 0.8 * s, (1, 2, 2)).astype(np.float32)
    labels = np.array([[1, 0]], np.int32)
    stages: list[StageResult] = []

    # prompt encoder and mask decoder on frame 0 (a click pair plus a box, and a mask prompt)
    box = np.array([[0.2 * s, 0.25 * s, 0.7 * s, 0.8 * s]], np.float32)
    m4 = 4 * (s // cfg.vit.patch_size)
    mask_prompt = rng.normal(size=(1, 1, m4, m4)).astype(np.float32)
    with torch.no_grad():
        sparse, dense = model.sam_prompt_encoder(points=(torch.from_numpy(click), torch.from_numpy(labels)),
                                                 boxes=torch.from_numpy(box), masks=torch.from_numpy(mask_prompt))
    ours_pe = _prompt_encoder_fn(cfg)(params, click, labels, box, mask_prompt.transpose(0, 2, 3, 1))
    stages.append(compare("tracker.prompt_encoder.sparse", ours_pe[0], sparse.numpy(), tolerance))
    stages.append(compare("tracker.prompt_encoder.dense", ours_pe[1], np32(dense).transpose(0, 2, 3, 1), tolerance))

    t1 = time.time()
    outputs = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    ref_steps, our_steps = {}, {}
    for f in range(num_frames):
        is_init = f == 0
        pts, lab = (click[:, :1], labels[:, :1]) if is_init else (None, None)
        bank = None if is_init else bank_from_official(cfg, outputs, f, num_frames)
        ref = official_step(model, cfg, frames[f], outputs, f, num_frames, is_init=is_init, points=pts, labels=lab)
        ours = ours_step(params, cfg, frames[f], bank, is_init=is_init, multimask=True, points=pts, labels=lab)
        (outputs["cond_frame_outputs"] if is_init else outputs["non_cond_frame_outputs"])[f] = ref
        ref_steps[f], our_steps[f] = ref, ours
    t_step = time.time() - t1

    # the mask decoder's outputs and the memory encoder, step without memory (frame 0, a click)
    stages += compare_step(our_steps[0], ref_steps[0], tolerance, "tracker.step_no_memory", params=params, cfg=cfg,
                           frame=frames[0], mask_from_points=True)
    # memory attention (frame num_frames - 1: conditioning frame + recent frames + pointers)
    last = num_frames - 1
    ref_mem = _official_memory_attention(model, cfg, frames[last], {
        "cond_frame_outputs": outputs["cond_frame_outputs"],
        "non_cond_frame_outputs": {k: v for k, v in outputs["non_cond_frame_outputs"].items() if k < last},
    }, last, num_frames)
    stages.append(compare("tracker.memory_attention", our_steps[last]["pix_feat_with_mem"], ref_mem, tolerance))
    stages += compare_step(our_steps[last], ref_steps[last], tolerance, "tracker.step_with_memory", params=params,
                           cfg=cfg, frame=frames[last])
    return stages, {"tracker_steps_both": t_step}


def run_instance_parity(ref_model, params, cfg, *, seed: int = 0, tolerance: float = 1e-5) -> list[StageResult]:
    """`Sam3ImagePredictor.predict_instance` against the official `predict_inst` of an image model
    built with instance interactivity (`ref_model`; `params` its conversion, tracker included) on a
    real photo: one click (three masks) and a box plus two clicks (one mask). Stages: predicted
    IoUs, low-res logits, and the count of mask pixels that differ although the official logit is
    at least MASK_MARGIN from 0."""
    import skimage.data as sk
    from PIL import Image
    from sam3.model.sam3_image_processor import Sam3Processor

    from sam3_jax.parity.oracle import cuda_to_cpu
    from sam3_jax.predict.predictor import Sam3ImagePredictor

    photo = sk.chelsea()
    h, w = photo.shape[:2]
    rng = np.random.default_rng(seed)
    pts = np.stack([rng.uniform(0.1 * w, 0.9 * w, 3), rng.uniform(0.1 * h, 0.9 * h, 3)], axis=1).astype(np.float32)
    cases = {
        "click": dict(point_coords=pts[:1], point_labels=np.array([1]), multimask_output=True),
        "box+clicks": dict(point_coords=pts[1:], point_labels=np.array([1, 0]),
                           box=np.array([0.2 * w, 0.15 * h, 0.8 * w, 0.9 * h], np.float32), multimask_output=False),
    }
    with cuda_to_cpu():
        proc = Sam3Processor(ref_model, resolution=cfg.image_size, device="cpu")
        state = proc.set_image(Image.fromarray(photo))
        refs = {k: ref_model.predict_inst(state, return_logits=True, **c) for k, c in cases.items()}
    predictor = Sam3ImagePredictor(params, cfg)
    predictor.set_image(photo)
    stages = []
    for name, c in cases.items():
        out = predictor.predict_instance(points=c["point_coords"], point_labels=c["point_labels"], box=c.get("box"),
                                         multimask_output=c["multimask_output"])
        logits, iou, low = refs[name]
        stages.append(compare(f"instance.{name}.iou", out["iou"], iou, tolerance))
        stages.append(compare(f"instance.{name}.low_res_logits", out["low_res_logits"], low, tolerance))
        _, beyond = mask_flips(out["masks"].astype(np.float32) * 2 - 1, logits)
        stages.append(compare(f"instance.{name}.mask_flips_beyond_{MASK_MARGIN:g}", np.array(beyond), np.array(0), 0.0))
    return stages


def _prompt_encoder_fn(cfg):
    from sam3_jax.model.tracker.prompt_encoder import prompt_encoder_from_config

    pe = prompt_encoder_from_config(cfg)

    @jax.jit
    def run(params, points, labels, boxes, masks):
        return pe.apply({"params": params["sam_prompt_encoder"]}, points=points, labels=labels, boxes=boxes,
                        masks=masks)

    return run


def _official_memory_attention(model, cfg, frame, outputs, frame_idx: int, num_frames: int) -> np.ndarray:
    torch = _torch()
    from sam3_jax.parity.oracle import cuda_to_cpu

    with torch.no_grad(), cuda_to_cpu():
        out = model._prepare_memory_conditioned_features(
            frame_idx=frame_idx, is_init_cond_frame=False, current_vision_feats=frame["official_feats"][-1:],
            current_vision_pos_embeds=frame["official_pos"][-1:], feat_sizes=feat_sizes(cfg)[-1:],
            output_dict=outputs, num_frames=num_frames)
    return np32(out).transpose(0, 2, 3, 1)

