"""Model sizes of SAM 3 as ml_collections ConfigDicts.

`model_config("full")` is the released model; `model_config("tiny")` keeps every structural choice
of `full` at the sizes of the official small builder (used for CPU parity tests). The experiment
files under `configs/` build on these.
"""

from __future__ import annotations

import ml_collections

VARIANTS = ("full", "tiny")


def model_config(variant: str = "full") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown model variant {variant!r}; expected one of {VARIANTS}")
    full = variant == "full"
    c = ml_collections.ConfigDict()
    c.variant = variant
    c.image_size = 1008 if full else 224
    c.dtype = "float32"  # compute dtype
    c.param_dtype = "float32"
    c.attention_impl = ml_collections.config_dict.placeholder(str)  # None = XLA; "cudnn" on GPU
    c.remat = "none"  # none | full | dots: rematerialisation policy of scanned blocks

    c.vit = ml_collections.ConfigDict(
        dict(
            patch_size=14,
            width=1024 if full else 64,
            depth=32 if full else 4,
            heads=16 if full else 4,
            mlp_ratio=4.625,
            window_size=24 if full else 8,
            global_blocks=(7, 15, 23, 31) if full else (1, 3),
            pretrain_image_size=336 if full else 112,
            rope_theta=10000.0,
            pretrain_use_cls_token=True,
        )
    )
    c.neck = ml_collections.ConfigDict(
        dict(d_model=256, scale_factors=(4.0, 2.0, 1.0, 0.5), add_sam2_neck=True)
    )
    c.text = ml_collections.ConfigDict(
        dict(
            width=1024 if full else 64,
            heads=16 if full else 4,
            layers=24 if full else 2,
            mlp_ratio=4.0,
            context_length=32,
            vocab_size=49408,
            proj_dim=512,  # size of the unused `text_projection` kept for round trips
        )
    )
    # Detector sizes (used by the detector modules).
    c.d_model = 256
    c.num_heads = 8
    c.dim_feedforward = 2048 if full else 256
    c.encoder_layers = 6 if full else 2
    c.decoder_layers = 6 if full else 2
    c.num_queries = 200 if full else 16
    c.geometry_layers = 3 if full else 1
    # Tracker sizes. `d_model` is the tracker width (official `hidden_dim`, the memory attention's
    # d_model); it must equal `neck.d_model`, the width of the tracker neck (`sam2_convs`). The image
    # embedding of the SAM heads is image_size // vit.patch_size on a side (official backbone_stride).
    c.tracker = ml_collections.ConfigDict(
        dict(
            d_model=256,
            memory_attention_layers=4 if full else 1,
            dim_feedforward=2048 if full else 256,
            mem_dim=64,
            num_maskmem=7,
            # Memory-frame choice (official `build_tracker`): at most 4 conditioning frames (the
            # closest) in the memory attention; object pointers of up to 16 frames.
            max_cond_frames_in_attn=4,
            max_obj_ptrs_in_encoder=16,
            # SAM prompt encoder and mask decoder (official `_build_sam_heads` + `build_tracker`). The
            # official tracker hard-codes these whatever its width, so the tiny config keeps them too
            # (the official tiny tracker has them): a two-way transformer of 2 layers, 8 heads, MLP
            # 2048, attention downsampled 2x; IoU head 3 x 256; mask-prompt channels 16.
            sam=ml_collections.ConfigDict(
                dict(
                    mask_in_chans=16,
                    num_multimask_outputs=3,
                    transformer_depth=2,
                    transformer_heads=8,
                    transformer_mlp_dim=2048,
                    attention_downsample_rate=2,
                    iou_head_depth=3,
                    iou_head_hidden_dim=256,
                    use_high_res_features=True,
                    iou_prediction_use_sigmoid=True,
                    pred_obj_scores=True,
                    pred_obj_scores_mlp=True,
                    use_multimask_token_for_obj_ptr=True,
                    dynamic_multimask_via_stability=True,
                    dynamic_multimask_stability_delta=0.05,
                    dynamic_multimask_stability_thresh=0.98,
                )
            ),
        )
    )
    return c


def validate_model_config(c: ml_collections.ConfigDict) -> None:
    """Raises ValueError with a precise message for structurally impossible sizes."""
    v = c.vit
    if c.image_size % v.patch_size:
        raise ValueError(f"image_size {c.image_size} is not a multiple of patch_size {v.patch_size}")
    grid = c.image_size // v.patch_size
    if v.width % v.heads or (v.width // v.heads) % 4:
        raise ValueError(f"ViT width {v.width} / heads {v.heads} must give a head dim divisible by 4")
    if not v.global_blocks or max(v.global_blocks) != v.depth - 1:
        raise ValueError(
            f"the last global-attention block must be the last block (depth {v.depth}, "
            f"global_blocks {tuple(v.global_blocks)}): the trunk returns its output"
        )
    if any(b < 0 or b >= v.depth for b in v.global_blocks):
        raise ValueError(f"global_blocks {tuple(v.global_blocks)} out of range for depth {v.depth}")
    if v.pretrain_image_size % v.patch_size:
        raise ValueError("pretrain_image_size must be a multiple of patch_size")
    if v.window_size <= 0 or v.window_size > grid:
        raise ValueError(f"window_size {v.window_size} must be in [1, {grid}]")
    if c.text.width % c.text.heads:
        raise ValueError(f"text width {c.text.width} is not divisible by heads {c.text.heads}")
    if v.width % 4:
        raise ValueError("ViT width must be divisible by 4 for the 4x neck branch")


# Logical axis name -> mesh axis (None = replicated) on the (data, fsdp, tensor) mesh.
LOGICAL_AXIS_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("layers", None),
    ("positions", None),
    ("conv_in", "fsdp"),
    ("conv_out", "tensor"),
    ("length", None),
    ("height", None),
    ("width", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("objects", ("data", "fsdp")),  # the video state's object slots
)
