"""The official video model (`Sam3VideoInferenceWithInstanceInteractivity`) as a CPU parity oracle.

`build_video_model` assembles it at the sizes of a model config from the same official constructors
the image oracle uses (detector: `Sam3ImageOnVideoMultiGPU`, tracker: `Sam3TrackerPredictor` with
the video build's memory-selection filter), with the merge thresholds of `build_sam3_video_model`
unless overridden. `run_official` drives it the way its users do: `init_state` on a list of frames,
`add_prompt(frame, text)`, then `propagate_in_video` (forward, or reverse), collecting the
post-processed outputs of every frame. Importing this module imports torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterator, Sequence

import numpy as np

from sam3_jax.model.video.merge import MergeConfig
from sam3_jax.model.video.step import VideoConfig
from sam3_jax.parity import oracle
from sam3_jax.parity.oracle import cuda_to_cpu, torch


@contextlib.contextmanager
def empty_batch_components() -> Iterator[None]:
    """The official CPU connected components (`connected_components_cpu`) stacks an empty list on a
    frame with no new detection; while this is active an empty batch gives empty results."""
    from sam3.perflib import connected_components as cc

    original = cc.connected_components_cpu

    def patched(input_tensor):
        if input_tensor.shape[0] == 0:
            empty = torch.zeros(input_tensor.shape, dtype=torch.int64)
            return empty, empty.clone()
        return original(input_tensor)

    cc.connected_components_cpu = patched
    try:
        yield
    finally:
        cc.connected_components_cpu = original


def official_kwargs(vcfg: VideoConfig) -> dict[str, Any]:
    """The official video model's constructor arguments for a `VideoConfig`."""
    m: MergeConfig = vcfg.merge
    return dict(
        score_threshold_detection=m.score_threshold_detection, det_nms_thresh=m.det_nms_thresh,
        assoc_iou_thresh=m.assoc_iou_thresh, trk_assoc_iou_thresh=m.trk_assoc_iou_thresh,
        new_det_thresh=m.new_det_thresh, hotstart_delay=m.hotstart_delay,
        hotstart_unmatch_thresh=m.hotstart_unmatch_thresh, hotstart_dup_thresh=m.hotstart_dup_thresh,
        suppress_unmatched_only_within_hotstart=m.suppress_unmatched_only_within_hotstart,
        min_trk_keep_alive=m.min_trk_keep_alive, max_trk_keep_alive=m.max_trk_keep_alive,
        init_trk_keep_alive=m.init_trk_keep_alive,
        suppress_overlapping_based_on_recent_occlusion_threshold=vcfg.occlusion_iou_threshold,
        suppress_det_close_to_boundary=False, fill_hole_area=vcfg.fill_hole_area,
        recondition_every_nth_frame=vcfg.recondition_every_nth_frame, masklet_confirmation_enable=False,
        decrease_trk_keep_alive_for_empty_masklets=m.decrease_trk_keep_alive_for_empty_masklets,
    )


def build_video_model(cfg, seed: int, vcfg: VideoConfig = VideoConfig()) -> "torch.nn.Module":
    """The official video model at cfg's sizes with seeded random weights plus per-tensor noise.
    Its state-dict keys are the checkpoint's (`detector.*`, `tracker.*`)."""
    from sam3.model.sam3_image import Sam3ImageOnVideoMultiGPU
    from sam3.model.sam3_video_inference import Sam3VideoInferenceWithInstanceInteractivity

    if not cfg.neck.add_sam2_neck:
        raise ValueError("the video model needs the tracker neck: cfg.neck.add_sam2_neck must be True")
    torch.manual_seed(seed)
    with cuda_to_cpu():
        tracker = oracle.build_tracker(cfg, memory_selection=vcfg.memory_selection)
        detector = Sam3ImageOnVideoMultiGPU(
            num_feature_levels=1, backbone=oracle.build_backbone(cfg).backbone,
            transformer=oracle.build_transformer(cfg), segmentation_head=oracle.build_segmentation_head(cfg),
            semantic_segmentation_head=None, input_geometry_encoder=oracle.build_geometry_encoder(cfg),
            use_early_fusion=True, use_dot_prod_scoring=True, dot_prod_scoring=oracle.build_dot_product_scoring(cfg),
            supervise_joint_box_scores=True,
        )
        model = Sam3VideoInferenceWithInstanceInteractivity(
            detector=detector, tracker=tracker, image_size=cfg.image_size, image_mean=(0.5, 0.5, 0.5),
            image_std=(0.5, 0.5, 0.5), compile_model=False, **official_kwargs(vcfg),
        )
    model = model.eval()
    oracle.init_uninitialized_(model, seed)
    oracle.perturb_all_(model, seed)
    return model


def _outputs(out: dict) -> dict[str, np.ndarray]:
    return {"obj_ids": np.asarray(out["out_obj_ids"]).astype(np.int64),
            "scores": np.asarray(out["out_probs"], np.float32),
            "boxes_xywh": np.asarray(out["out_boxes_xywh"], np.float32),
            "masks": np.asarray(out["out_binary_masks"]).astype(bool)}


def run_official(model, frames: Sequence[np.ndarray], text: str, *, prompt_frame: int = 0,
                 reverse: bool = False) -> tuple[dict, dict[int, dict]]:
    """add_prompt(prompt_frame, text) then propagate_in_video from there -> (the prompt frame's
    outputs, {frame: outputs}) with outputs {"obj_ids", "scores", "boxes_xywh", "masks"}."""
    from PIL import Image

    with cuda_to_cpu(), torch.inference_mode(), empty_batch_components():
        state = model.init_state([Image.fromarray(np.asarray(f)) for f in frames])
        _, first = model.add_prompt(state, prompt_frame, text_str=text)
        outs = {int(f): _outputs(o) for f, o in model.propagate_in_video(
            state, start_frame_idx=prompt_frame, reverse=reverse)}
    return _outputs(first), outs


def video_config_for_random_weights(**kw) -> VideoConfig:
    """Thresholds low enough that a model with random weights creates and drops tracks (the
    parity runs; the official defaults otherwise)."""
    merge = dataclasses.replace(MergeConfig(), **{k: v for k, v in kw.items() if hasattr(MergeConfig, k)})
    rest = {k: v for k, v in kw.items() if not hasattr(MergeConfig, k)}
    return VideoConfig(merge=merge, **rest)


def run_official_session(model, frames: Sequence[np.ndarray], actions: Sequence[tuple]) -> list:
    """Drives one official session through `actions`, in order, and returns one result per action:

      ("text", frame, text)                    add_prompt(frame, text_str=text) -> that frame's outputs
      ("box", frame, text, box, label)          add_prompt(frame, text_str=text (None: a box alone),
                                               boxes_xywh=[box as xywh], box_labels=[label]), box given as
                                               relative [x0, y0, x1, y1] -> that frame's outputs
      ("points", frame, obj_id, points, labels) add_prompt(frame, points=, point_labels=, obj_id=)
                                               (points relative to the frame, as the official default)
                                               -> that frame's outputs
      ("propagate", start_frame, reverse)      propagate_in_video -> {frame: outputs}
    """
    from PIL import Image

    results = []
    with cuda_to_cpu(), torch.inference_mode(), empty_batch_components():
        state = model.init_state([Image.fromarray(np.asarray(f)) for f in frames])
        for act in actions:
            kind = act[0]
            if kind == "text":
                _, out = model.add_prompt(state, act[1], text_str=act[2])
                results.append(_outputs(out))
            elif kind == "box":
                _, frame, text, (x0, y0, x1, y1), label = act
                _, out = model.add_prompt(state, frame, text_str=text, boxes_xywh=[[x0, y0, x1 - x0, y1 - y0]],
                                          box_labels=[int(label)])
                results.append(_outputs(out))
            elif kind == "points":
                _, frame, obj_id, points, labels = act
                _, out = model.add_prompt(state, frame, points=torch.tensor(np.asarray(points, np.float32)),
                                          point_labels=torch.tensor(np.asarray(labels, np.int32)), obj_id=obj_id)
                results.append(_outputs(out))
            elif kind == "propagate":
                _, start, reverse = act
                results.append({int(f): _outputs(o) for f, o in model.propagate_in_video(
                    state, start_frame_idx=start, reverse=reverse)})
            else:
                raise ValueError(f"unknown action {kind!r}")
    return results


def make_confident_(model, *, presence_bias: float = 6.0, score_scale: float = 4.0, obj_score_bias: float = 3.0):
    """Shifts the official model's random weights (in place) so that it is sure of itself: the
    presence head's output bias up (presence ~1), the detector's query projection for the dot-product
    score scaled (scores spread towards 0 and 1) and the tracker's object-score bias up. Random weights
    otherwise never reach the official fixed 0.8 confidence that periodic reconditioning needs."""
    state = model.state_dict()
    with torch.no_grad():
        state["detector.transformer.decoder.presence_token_head.layers.2.bias"].add_(presence_bias)
        state["detector.dot_prod_scoring.hs_proj.weight"].mul_(score_scale)
        state["detector.dot_prod_scoring.hs_proj.bias"].mul_(score_scale)
        state["tracker.sam_mask_decoder.pred_obj_score_head.layers.2.bias"].add_(obj_score_bias)
    return model
