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
    c.tracker = ml_collections.ConfigDict(
        dict(
            memory_attention_layers=4 if full else 1,
            dim_feedforward=2048 if full else 256,
            mem_dim=64,
            num_maskmem=7,
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


def synthetic_options() -> ml_collections.ConfigDict:
    """The SyntheticSource keyword options a config may set (`--config.data.synthetic.noise=4`), with
    their defaults; the split, seed, length, canvas and padding sizes come from the data block itself."""
    import inspect

    from sam3_jax.data.synthetic import SyntheticSource

    skip = {"self", "split", "seed", "num_examples", "canvas", "max_instances", "max_prompt_boxes", "held_out_rate"}
    params = inspect.signature(SyntheticSource.__init__).parameters
    return ml_collections.ConfigDict({k: p.default for k, p in params.items() if k not in skip})


def data_config(**overrides) -> ml_collections.ConfigDict:
    """The `data` block of a training config (read by `sam3_jax.train.loop.make_sources`).

    source: synthetic | coco | saco | tfds. The file fields are placeholders, so any of them can be
    set from the command line (`--config.data.train_annotations=...`).
    """
    p = ml_collections.config_dict.placeholder
    d = ml_collections.ConfigDict(dict(
        source="synthetic",
        seed=0,
        train_batch=16,
        eval_examples=256,  # validation keeps its first N pairs
        num_workers=0,  # Grain worker processes
        on_bad_data="raise",  # or "skip": bad records are counted and logged
        max_instances=8,
        max_exemplars=2,
        # synthetic
        canvas=64,
        synthetic=synthetic_options(),  # further SyntheticSource options (sampling rates, objects, rendering)
        # coco / saco: annotation JSON + image folder per split
        train_annotations=p(str), train_images=p(str), val_annotations=p(str), val_images=p(str),
        negatives_per_image=2, p_exemplar=0.0,
        # tfds: a folder written by sam3_jax.data.tfds_builders, and its split names
        tfds_dir=p(str), train_split="train", val_split="val",
        eval_mask_size=p(int),  # non-synthetic sources: evaluation frame side (default 4 x patch grid)
    ))
    d.update(overrides)
    return d


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
)
