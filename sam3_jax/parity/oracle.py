"""Adapter for the official SAM 3 package as a CPU parity oracle.

The official package (0.1.4) needs a few run-time adaptations on a machine without CUDA; they are
applied here without editing the installed package:
  * some constructors and forwards hard-code `device="cuda"`, `.cuda()` or `.pin_memory()`:
    `cuda_to_cpu()` is a TorchFunctionMode that sends those to the CPU (and, optionally, maps hand
    casts to bf16/fp16 back to fp32);
  * the text encoder creates `positional_embedding` and `text_projection` with `torch.empty` and
    never initialises them (random builds hold garbage or NaN): `init_uninitialized_()`;
  * many tensors are constant at init (LayerNorm 1/0, zero biases), which would hide a converter
    that drops or swaps them: `perturb_all_()` adds seeded Gaussian noise to every float tensor
    except the RoPE `freqs_cis` tables.
Importing this module imports torch; everything else in sam3_jax works without it.
"""

from __future__ import annotations

import contextlib
import os
import types
from typing import Any, Iterator

import numpy as np

try:
    import torch
    from torch.overrides import TorchFunctionMode
except ImportError as e:  # pragma: no cover - exercised only without the parity extra
    raise ImportError(
        "the parity oracle needs PyTorch and the official package: pip install -e '.[parity]'"
    ) from e

from sam3_jax.model.tokenizer import default_bpe_path

OFFICIAL_VERSION = "0.1.4"
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _is_cuda(dev: Any) -> bool:
    if isinstance(dev, torch.device):
        return dev.type == "cuda"
    return isinstance(dev, str) and dev.startswith("cuda")


class _CudaToCpu(TorchFunctionMode):
    def __init__(self, keep_fp32: bool = True):
        super().__init__()
        self.keep_fp32 = keep_fp32
        self._half = (torch.bfloat16, torch.float16)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        name = getattr(func, "__name__", "")
        if name in ("cuda", "pin_memory") and args and isinstance(args[0], torch.Tensor):
            return args[0]
        if self.keep_fp32 and name in ("bfloat16", "half") and args and isinstance(args[0], torch.Tensor):
            return args[0].float()
        if _is_cuda(kwargs.get("device")):
            kwargs["device"] = "cpu"
        if name == "to":
            args = tuple("cpu" if _is_cuda(a) else a for a in args)
            if self.keep_fp32:
                args = tuple(torch.float32 if a in self._half else a for a in args)
                if kwargs.get("dtype") in self._half:
                    kwargs["dtype"] = torch.float32
        return func(*args, **kwargs)


@contextlib.contextmanager
def cuda_to_cpu(keep_fp32: bool = True) -> Iterator[None]:
    """Runs official code written for CUDA on the CPU, in fp32."""
    with _CudaToCpu(keep_fp32=keep_fp32):
        yield


def _official():
    """Imports the official modules (with a clear error if the package is missing)."""
    try:
        import sam3  # noqa: F401
        from sam3.model import necks, position_encoding, text_encoder_ve, tokenizer_ve, vitdet, vl_combiner
    except ImportError as e:
        raise ImportError(
            f"the official SAM 3 package (sam3=={OFFICIAL_VERSION}) is not installed; "
            "pip install -e '.[parity]'"
        ) from e
    return vitdet, necks, position_encoding, text_encoder_ve, tokenizer_ve, vl_combiner


def official_tokenizer():
    _, _, _, _, tokenizer_ve, _ = _official()
    return tokenizer_ve.SimpleTokenizer(bpe_path=default_bpe_path())


def build_backbone(cfg) -> "torch.nn.Module":
    """Official `SAM3VLBackbone` (ViT + dual neck + text encoder) at the sizes of a model config,
    assembled from the official constructors exactly as `sam3.model_builder` assembles the
    released model. Wrapped in a container so state-dict keys start with `backbone.`, as in the
    image model (`detector.` is dropped)."""
    vitdet, necks, position_encoding, text_encoder_ve, tokenizer_ve, vl_combiner = _official()
    v, t = cfg.vit, cfg.text
    with cuda_to_cpu():
        trunk = vitdet.ViT(
            img_size=cfg.image_size,
            pretrain_img_size=v.pretrain_image_size,
            patch_size=v.patch_size,
            embed_dim=v.width,
            depth=v.depth,
            num_heads=v.heads,
            mlp_ratio=v.mlp_ratio,
            norm_layer="LayerNorm",
            drop_path_rate=0.0,
            qkv_bias=True,
            use_abs_pos=True,
            tile_abs_pos=True,
            global_att_blocks=tuple(v.global_blocks),
            rel_pos_blocks=(),
            use_rope=True,
            use_interp_rope=True,
            window_size=v.window_size,
            pretrain_use_cls_token=v.pretrain_use_cls_token,
            retain_cls_token=False,
            ln_pre=True,
            ln_post=False,
            return_interm_layers=False,
            bias_patch_embed=False,
        )
        pos = position_encoding.PositionEmbeddingSine(
            num_pos_feats=cfg.neck.d_model, normalize=True, scale=None, temperature=10000,
            precompute_resolution=cfg.image_size,
        )
        neck = necks.Sam3DualViTDetNeck(
            trunk=trunk, position_encoding=pos, d_model=cfg.neck.d_model,
            scale_factors=list(cfg.neck.scale_factors), add_sam2_neck=cfg.neck.add_sam2_neck,
        )
        text = text_encoder_ve.VETextEncoder(
            tokenizer=tokenizer_ve.SimpleTokenizer(bpe_path=default_bpe_path()),
            d_model=cfg.d_model, width=t.width, heads=t.heads, layers=t.layers,
            context_length=t.context_length, vocab_size=t.vocab_size,
        )
        backbone = vl_combiner.SAM3VLBackbone(visual=neck, text=text, scalp=1)
    container = torch.nn.Module()
    container.backbone = backbone
    return container.eval()


def init_uninitialized_(model: "torch.nn.Module", seed: int) -> None:
    """Gives the text encoder's two `torch.empty` tensors a CLIP-style init (seeded)."""
    g = torch.Generator().manual_seed(seed + 7919)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("encoder.positional_embedding"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.01)
            elif name.endswith("encoder.text_projection"):
                p.copy_(torch.randn(p.shape, generator=g) * p.shape[0] ** -0.5)


def perturb_all_(model: "torch.nn.Module", seed: int, std: float = 0.02) -> None:
    """Adds N(0, std) noise to every floating tensor of the state dict except RoPE tables.

    Only persistent tensors (those a checkpoint holds) are touched: non-persistent buffers such as
    the text encoder's causal mask are derived, not learned.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.state_dict(keep_vars=True).items()):
            if name.endswith("freqs_cis") or not p.is_floating_point():
                continue
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)


def random_backbone(cfg, seed: int) -> "torch.nn.Module":
    """The official backbone with seeded random weights plus per-tensor noise, ready to compare."""
    torch.manual_seed(seed)
    model = build_backbone(cfg)
    init_uninitialized_(model, seed)
    perturb_all_(model, seed)
    return model


def state_dict_numpy(model: "torch.nn.Module") -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def _nhwc(x: "torch.Tensor") -> np.ndarray:
    return x.detach().permute(0, 2, 3, 1).contiguous().numpy()


@torch.no_grad()
def run_backbone(model: "torch.nn.Module", images_nhwc: np.ndarray, texts: list[str]) -> dict[str, Any]:
    """Runs the official backbone; returns numpy arrays in the JAX layouts (NHWC, batch-first)."""
    bb = model.backbone
    images = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2))).float()
    captured: list = []
    hook = bb.vision_backbone.trunk.register_forward_hook(lambda _m, _i, out: captured.append(out[-1]))
    try:
        with cuda_to_cpu():
            feats, pos, sam2_feats, sam2_pos = bb.vision_backbone(images)
    finally:
        hook.remove()
    trunk_out = captured[0]
    with cuda_to_cpu():
        text = bb.forward_text(texts, device="cpu")
        tokens = bb.language_backbone.tokenizer(texts, context_length=bb.language_backbone.context_length)
    out: dict[str, Any] = {
        "trunk": _nhwc(trunk_out),
        "levels": [_nhwc(f) for f in feats],
        "pos": [_nhwc(p) for p in pos],
        "token_ids": tokens.numpy(),
        "language_features": text["language_features"].transpose(0, 1).numpy(),
        "language_mask": text["language_mask"].numpy(),
        "language_embeds": text["language_embeds"].transpose(0, 1).numpy(),
    }
    if sam2_feats is not None:
        out["sam2_levels"] = [_nhwc(f) for f in sam2_feats]
        out["sam2_pos"] = [_nhwc(p) for p in sam2_pos]
    return out


def _detector_modules():
    """The official detector modules (with a clear error if the package is missing)."""
    try:
        from sam3.model import (
            decoder,
            encoder,
            geometry_encoders,
            maskformer_segmentation,
            model_misc,
            position_encoding,
            sam3_image,
        )
    except ImportError as e:
        raise ImportError(
            f"the official SAM 3 package (sam3=={OFFICIAL_VERSION}) is not installed; "
            "pip install -e '.[parity]'"
        ) from e
    return types.SimpleNamespace(
        decoder=decoder, encoder=encoder, geometry_encoders=geometry_encoders,
        maskformer_segmentation=maskformer_segmentation, model_misc=model_misc,
        position_encoding=position_encoding, sam3_image=sam3_image,
    )


# The part builders below assemble the official detector modules with the structure
# `sam3.model_builder.build_sam3_image_model` gives them, at a model config's sizes, with dropout 0 and
# no activation checkpointing (both only act in training; the oracle runs in eval mode). Each
# returns the module in eval mode. Official constructors draw their initial weights from torch's
# global RNG, so the order of the calls decides which weights a seed gives.


def _mha(cfg, **kw) -> "torch.nn.Module":
    mha = _detector_modules().model_misc.MultiheadAttentionWrapper
    return mha(num_heads=cfg.num_heads, dropout=0.0, embed_dim=cfg.d_model, **kw)


def build_fusion_encoder(cfg) -> "torch.nn.Module":
    """Official `TransformerEncoderFusion` (image tokens attend to the prompt)."""
    encoder = _detector_modules().encoder
    with cuda_to_cpu():
        layer = encoder.TransformerEncoderLayer(
            activation="relu", d_model=cfg.d_model, dim_feedforward=cfg.dim_feedforward, dropout=0.0,
            pos_enc_at_attn=True, pos_enc_at_cross_attn_keys=False, pos_enc_at_cross_attn_queries=False,
            pre_norm=True, self_attention=_mha(cfg, batch_first=True), cross_attention=_mha(cfg, batch_first=True),
        )
        module = encoder.TransformerEncoderFusion(
            layer=layer, num_layers=cfg.encoder_layers, d_model=cfg.d_model, num_feature_levels=1, frozen=False,
            use_act_checkpoint=False, add_pooled_text_to_img_feat=False, pool_text_with_mask=True,
        )
    return module.eval()


def build_decoder(cfg) -> "torch.nn.Module":
    """Official `TransformerDecoder` (presence token, box refinement, log boxRPB) at `cfg`'s image
    size and patch stride."""
    decoder = _detector_modules().decoder
    d, heads = cfg.d_model, cfg.num_heads
    with cuda_to_cpu():
        layer = decoder.TransformerDecoderLayer(
            activation="relu", d_model=d, dim_feedforward=cfg.dim_feedforward, dropout=0.0,
            cross_attention=_mha(cfg), n_heads=heads, use_text_cross_attention=True,
        )
        module = decoder.TransformerDecoder(
            layer=layer, num_layers=cfg.decoder_layers, num_queries=cfg.num_queries, return_intermediate=True,
            box_refine=True, num_o2m_queries=0, dac=True, boxRPB="log", d_model=d, frozen=False,
            interaction_layer=None, dac_use_selfatt_ln=True, resolution=cfg.image_size, stride=cfg.vit.patch_size,
            use_act_checkpoint=False, presence_token=True,
        )
    return module.eval()


def build_transformer(cfg, encoder=None, decoder=None) -> "torch.nn.Module":
    """Official `TransformerWrapper` around a fusion encoder and a decoder (built here when not
    given). The wrapper re-initialises their weight matrices from the global RNG."""
    model_misc = _detector_modules().model_misc
    with cuda_to_cpu():
        encoder = build_fusion_encoder(cfg) if encoder is None else encoder
        decoder = build_decoder(cfg) if decoder is None else decoder
        module = model_misc.TransformerWrapper(encoder=encoder, decoder=decoder, d_model=cfg.d_model)
    return module.eval()


def build_dot_product_scoring(cfg) -> "torch.nn.Module":
    """Official `DotProductScoring` (query x pooled prompt), with its residual prompt MLP."""
    model_misc = _detector_modules().model_misc
    d = cfg.d_model
    with cuda_to_cpu():
        prompt_mlp = model_misc.MLP(
            input_dim=d, hidden_dim=cfg.dim_feedforward, output_dim=d, num_layers=2, dropout=0.0, residual=True,
            out_norm=torch.nn.LayerNorm(d),
        )
        module = model_misc.DotProductScoring(d_model=d, d_proj=d, prompt_mlp=prompt_mlp)
    return module.eval()


def build_segmentation_head(cfg) -> "torch.nn.Module":
    """Official `UniversalSegmentationHead` with its `PixelDecoder` (the structure of
    `model_builder._create_segmentation_head`, which hard-codes the released sizes; here they come
    from `cfg`). The prompt cross-attention is created before the pixel decoder (the reverse of
    `_create_segmentation_head`, so a seed gives other weights than that builder)."""
    seg = _detector_modules().maskformer_segmentation
    d = cfg.d_model
    with cuda_to_cpu():
        cross_attend_prompt = _mha(cfg)
        pixel_decoder = seg.PixelDecoder(
            num_upsampling_stages=3, interpolation_mode="nearest", hidden_dim=d,
        )
        module = seg.UniversalSegmentationHead(
            hidden_dim=d, upsampling_stages=3, aux_masks=False, presence_head=False, dot_product_scorer=None,
            act_ckpt=False, cross_attend_prompt=cross_attend_prompt, pixel_decoder=pixel_decoder,
        )
    return module.eval()


def build_geometry_encoder(cfg) -> "torch.nn.Module":
    """Official `SequenceGeometryEncoder` (boxes and points; the release has no mask encoder)."""
    m = _detector_modules()
    d = cfg.d_model
    with cuda_to_cpu():
        layer = m.encoder.TransformerEncoderLayer(
            activation="relu", d_model=d, dim_feedforward=cfg.dim_feedforward, dropout=0.0, pos_enc_at_attn=False,
            pre_norm=True, self_attention=_mha(cfg, batch_first=False), pos_enc_at_cross_attn_queries=False,
            pos_enc_at_cross_attn_keys=True, cross_attention=_mha(cfg, batch_first=False),
        )
        module = m.geometry_encoders.SequenceGeometryEncoder(
            pos_enc=m.position_encoding.PositionEmbeddingSine(num_pos_feats=d, normalize=True, scale=None,
                                                              temperature=10000),
            encode_boxes_as_points=False, points_direct_project=True, points_pool=True, points_pos_enc=True,
            boxes_direct_project=True, boxes_pool=True, boxes_pos_enc=True, d_model=d,
            num_layers=cfg.geometry_layers, layer=layer, use_act_ckpt=False, add_cls=True,
            add_post_encode_proj=True,
        )
    return module.eval()


def build_sam_heads(cfg) -> "torch.nn.Module":
    """The tracker's SAM prompt encoder and mask decoder, made by the official constructors with the
    arguments `Sam3TrackerBase._build_sam_heads` and `build_tracker` give them (embed dim = tracker
    width, image embedding image_size // patch_size, `sam_mask_decoder_extra_args` of the dynamic
    multimask selection), at the sizes of `cfg.tracker`. Prompt encoder first, then the decoder, as
    the official builder orders them. In a container, so state-dict keys start with
    `sam_prompt_encoder.` / `sam_mask_decoder.` (prefix `tracker.` for the checkpoint layout)."""
    try:
        from sam3.sam.mask_decoder import MaskDecoder
        from sam3.sam.prompt_encoder import PromptEncoder
        from sam3.sam.transformer import TwoWayTransformer
    except ImportError as e:
        raise ImportError(
            f"the official SAM 3 package (sam3=={OFFICIAL_VERSION}) is not installed; pip install -e '.[parity]'"
        ) from e
    t, s = cfg.tracker, cfg.tracker.sam
    g = cfg.image_size // cfg.vit.patch_size
    with cuda_to_cpu():
        prompt_encoder = PromptEncoder(
            embed_dim=t.d_model, image_embedding_size=(g, g), input_image_size=(cfg.image_size, cfg.image_size),
            mask_in_chans=s.mask_in_chans,
        )
        mask_decoder = MaskDecoder(
            num_multimask_outputs=s.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=s.transformer_depth, embedding_dim=t.d_model, mlp_dim=s.transformer_mlp_dim,
                num_heads=s.transformer_heads, attention_downsample_rate=s.attention_downsample_rate,
            ),
            transformer_dim=t.d_model, iou_head_depth=s.iou_head_depth, iou_head_hidden_dim=s.iou_head_hidden_dim,
            use_high_res_features=s.use_high_res_features, iou_prediction_use_sigmoid=s.iou_prediction_use_sigmoid,
            pred_obj_scores=s.pred_obj_scores, pred_obj_scores_mlp=s.pred_obj_scores_mlp,
            use_multimask_token_for_obj_ptr=s.use_multimask_token_for_obj_ptr,
            dynamic_multimask_via_stability=s.dynamic_multimask_via_stability,
            dynamic_multimask_stability_delta=s.dynamic_multimask_stability_delta,
            dynamic_multimask_stability_thresh=s.dynamic_multimask_stability_thresh,
        )
    container = torch.nn.Module()
    container.sam_prompt_encoder = prompt_encoder
    container.sam_mask_decoder = mask_decoder
    return container.eval()


def build_memory_encoder(cfg) -> "torch.nn.Module":
    """The tracker's memory encoder (`SimpleMaskEncoder`), made by the official constructors with the
    arguments `_create_tracker_maskmem_backbone` gives them, at the sizes of `cfg`: masks
    interpolated to 16 g x 16 g (g = image_size // patch_size; 1152 at full size), mask embedding
    and CXBlock width cfg.tracker.d_model, output and sine position channels cfg.tracker.mem_dim, the
    position cache precomputed for cfg.image_size. In a container, so state-dict keys start with
    `maskmem_backbone.` (prefix `tracker.` for the checkpoint layout)."""
    try:
        from sam3.model.memory import CXBlock, SimpleFuser, SimpleMaskDownSampler, SimpleMaskEncoder
        from sam3.model.position_encoding import PositionEmbeddingSine
    except ImportError as e:
        raise ImportError(
            f"the official SAM 3 package (sam3=={OFFICIAL_VERSION}) is not installed; pip install -e '.[parity]'"
        ) from e
    t = cfg.tracker
    g = cfg.image_size // cfg.vit.patch_size
    with cuda_to_cpu():
        position_encoding = PositionEmbeddingSine(
            num_pos_feats=t.mem_dim, normalize=True, scale=None, temperature=10000,
            precompute_resolution=cfg.image_size,
        )
        mask_downsampler = SimpleMaskDownSampler(
            embed_dim=t.d_model, kernel_size=3, stride=2, padding=1, interpol_size=[16 * g, 16 * g],
        )
        cx_block = CXBlock(dim=t.d_model, kernel_size=7, padding=3, layer_scale_init_value=1.0e-06, use_dwconv=True)
        fuser = SimpleFuser(layer=cx_block, num_layers=2)
        encoder = SimpleMaskEncoder(
            out_dim=t.mem_dim, position_encoding=position_encoding, mask_downsampler=mask_downsampler,
            fuser=fuser, in_dim=t.d_model,
        )
    container = torch.nn.Module()
    container.maskmem_backbone = encoder
    return container.eval()


def build_memory_attention(cfg) -> "torch.nn.Module":
    """The tracker's memory attention, made by the official constructors with the arguments
    `model_builder._create_tracker_transformer` gives them (two `RoPEAttention`s of 1 head on the
    g x g grid, the cross one reading `mem_dim` keys / values with the table repeated per memory
    frame; a pre-norm `TransformerDecoderLayerv2`, self-attention first, PE only on the
    cross-attention keys; `TransformerEncoderCrossAttention`, batch-first layers, PE added at the
    input), at the sizes of `cfg.tracker`, with dropout 0. Inside the official `TransformerWrapper`
    (no decoder), which re-initialises the weight matrices from the global RNG, in a container so
    state-dict keys start with `transformer.encoder.` (prefix `tracker.` for the checkpoint layout)."""
    try:
        from sam3.model.decoder import TransformerDecoderLayerv2, TransformerEncoderCrossAttention
        from sam3.model.model_misc import TransformerWrapper
        from sam3.sam.transformer import RoPEAttention
    except ImportError as e:
        raise ImportError(
            f"the official SAM 3 package (sam3=={OFFICIAL_VERSION}) is not installed; pip install -e '.[parity]'"
        ) from e
    t = cfg.tracker
    g = cfg.image_size // cfg.vit.patch_size
    rope = dict(embedding_dim=t.d_model, num_heads=1, downsample_rate=1, dropout=0.0, rope_theta=10000.0,
                feat_sizes=[g, g], use_fa3=False, use_rope_real=False)
    with cuda_to_cpu():
        self_attention = RoPEAttention(**rope)
        cross_attention = RoPEAttention(kv_in_dim=t.mem_dim, rope_k_repeat=True, **rope)
        layer = TransformerDecoderLayerv2(
            cross_attention_first=False, activation="relu", dim_feedforward=t.dim_feedforward, dropout=0.0,
            pos_enc_at_attn=False, pre_norm=True, self_attention=self_attention, d_model=t.d_model,
            pos_enc_at_cross_attn_keys=True, pos_enc_at_cross_attn_queries=False, cross_attention=cross_attention,
        )
        encoder = TransformerEncoderCrossAttention(
            remove_cross_attention_layers=[], batch_first=True, d_model=t.d_model, frozen=False,
            pos_enc_at_input=True, layer=layer, num_layers=t.memory_attention_layers, use_act_checkpoint=False,
        )
        transformer = TransformerWrapper(encoder=encoder, decoder=None, d_model=t.d_model)
    container = torch.nn.Module()
    container.transformer = transformer
    return container.eval()


def build_tracker(cfg, *, memory_selection: bool = False) -> "torch.nn.Module":
    """The official tracker (`Sam3TrackerPredictor`) at the sizes of `cfg`, assembled exactly as
    `sam3.model_builder.build_tracker(apply_temporal_disambiguation=False)` assembles the released
    one (the image model's instance-interactivity tracker; the video model differs only by the
    memory selection filter, `memory_selection=True`), from `build_memory_encoder` /
    `build_memory_attention`; no backbone (it shares the detector's). State-dict keys are the checkpoint's without the `tracker.` prefix."""
    from sam3.model.sam3_tracking_predictor import Sam3TrackerPredictor

    maskmem_backbone = build_memory_encoder(cfg).maskmem_backbone
    transformer = build_memory_attention(cfg).transformer
    with cuda_to_cpu():
        model = Sam3TrackerPredictor(
            image_size=cfg.image_size, num_maskmem=cfg.tracker.num_maskmem, backbone=None,
            backbone_stride=cfg.vit.patch_size, transformer=transformer, maskmem_backbone=maskmem_backbone,
            multimask_output_in_sam=True, forward_backbone_per_frame_for_eval=True,
            trim_past_non_cond_mem_for_eval=False, multimask_output_for_tracking=True, multimask_min_pt_num=0,
            multimask_max_pt_num=1, always_start_from_first_ann_frame=False, non_overlap_masks_for_mem_enc=False,
            non_overlap_masks_for_output=False, max_cond_frames_in_attn=cfg.tracker.max_cond_frames_in_attn,
            max_obj_ptrs_in_encoder=cfg.tracker.max_obj_ptrs_in_encoder, offload_output_to_cpu_for_eval=False,
            sam_mask_decoder_extra_args={
                "dynamic_multimask_via_stability": True,
                "dynamic_multimask_stability_delta": 0.05,
                "dynamic_multimask_stability_thresh": 0.98,
            },
            clear_non_cond_mem_around_input=True, fill_hole_area=0, use_memory_selection=memory_selection,
        )
    return model.eval()


def build_image_model(cfg, *, enable_segmentation: bool = True, enable_inst_interactivity: bool = False,
                      ) -> "torch.nn.Module":
    """The official `Sam3Image` (detector) at the sizes of a model config, assembled from the official
    constructors exactly as `sam3.model_builder.build_sam3_image_model` assembles the released one
    (dropout 0, eval mode). Its state-dict keys are the image-model layout (no `detector.` prefix).

    enable_inst_interactivity: also build the tracker (`build_tracker`, after every detector part,
    as the official builder orders them) and wrap it in the official
    `SAM3InteractiveImagePredictor` (keys `inst_interactive_predictor.model.*`), for
    `predict_inst`. Its `_bb_feat_sizes` (hard-coded to the 1008-px sizes officially) are set to
    cfg's (4g, 2g, g). The tracker neck (`sam2_convs`) is built whenever cfg.neck.add_sam2_neck
    (as `build_backbone` does; the official builder ties it to enable_inst_interactivity)."""
    sam3_image = _detector_modules().sam3_image
    if enable_inst_interactivity and not cfg.neck.add_sam2_neck:
        raise ValueError("instance interactivity needs the tracker neck: cfg.neck.add_sam2_neck must be True")
    with cuda_to_cpu():
        backbone = build_backbone(cfg).backbone
        transformer = build_transformer(cfg)
        scoring = build_dot_product_scoring(cfg)
        seg = build_segmentation_head(cfg) if enable_segmentation else None
        geometry = build_geometry_encoder(cfg)
        inst_predictor = None
        if enable_inst_interactivity:
            from sam3.model.sam1_task_predictor import SAM3InteractiveImagePredictor

            inst_predictor = SAM3InteractiveImagePredictor(build_tracker(cfg))
            g = cfg.image_size // cfg.vit.patch_size
            inst_predictor._bb_feat_sizes = [(4 * g, 4 * g), (2 * g, 2 * g), (g, g)]
        model = sam3_image.Sam3Image(
            backbone=backbone, transformer=transformer, input_geometry_encoder=geometry, segmentation_head=seg,
            num_feature_levels=1, o2m_mask_predict=True, dot_prod_scoring=scoring, use_instance_query=False,
            multimask_output=True, inst_interactive_predictor=inst_predictor, matcher=None,
        )
    return model.eval()


def random_image_model(cfg, seed: int, *, enable_inst_interactivity: bool = False) -> "torch.nn.Module":
    """The official detector (with the instance-interactivity tracker if asked) with seeded random
    weights plus per-tensor noise."""
    torch.manual_seed(seed)
    model = build_image_model(cfg, enable_inst_interactivity=enable_inst_interactivity)
    init_uninitialized_(model, seed)
    perturb_all_(model, seed)
    return model


def _geometric_prompt(b: int, boxes, box_labels, box_mask, model):
    from sam3.model.geometry_encoders import Prompt

    if boxes is None or boxes.shape[1] == 0:
        return model._get_dummy_prompt(num_prompts=b)
    n = boxes.shape[1]
    mask = torch.zeros(b, n, dtype=torch.bool) if box_mask is None else torch.from_numpy(np.asarray(box_mask, bool))
    labels = (torch.ones(n, b, dtype=torch.long) if box_labels is None
              else torch.from_numpy(np.asarray(box_labels).astype(np.int64).T.copy()))
    return Prompt(
        box_embeddings=torch.from_numpy(np.asarray(boxes, np.float32).transpose(1, 0, 2).copy()),
        box_mask=mask,
        box_labels=labels,
    )


@torch.no_grad()
def run_image_model(
    model: "torch.nn.Module",
    images_nhwc: np.ndarray,
    prompts: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """Official `forward_grounding`, one prompt per image (prompt row i on image i), for each prompt
    set in `prompts` (dicts with `texts` and optional `boxes` (B, N, 4) normalised cxcywh,
    `box_labels` (B, N) bool/int (True/1 = positive), `box_mask` (B, N) bool True = padding).
    The image is encoded once. Returns numpy arrays in the JAX layouts (batch-first; maps NHWC, so
    `semantic_seg` is (B, H, W, 1))."""
    from sam3.model.data_misc import FindStage

    b = images_nhwc.shape[0]
    images = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2))).float()
    results = []
    with cuda_to_cpu():
        image_out = model.backbone.forward_image(images)
        ids = torch.arange(b, dtype=torch.long)
        find = FindStage(
            img_ids=ids, text_ids=ids, input_boxes=None, input_boxes_mask=None, input_boxes_label=None,
            input_points=None, input_points_mask=None,
        )
        for p in prompts:
            backbone_out = dict(image_out)
            backbone_out.update(model.backbone.forward_text(list(p["texts"]), device="cpu"))
            prompt = _geometric_prompt(b, p.get("boxes"), p.get("box_labels"), p.get("box_mask"), model)
            out = model.forward_grounding(backbone_out=backbone_out, find_input=find, find_target=None,
                                          geometric_prompt=prompt)
            results.append({
                "pred_logits": out["pred_logits"].numpy(),
                "pred_boxes": out["pred_boxes"].numpy(),
                "pred_boxes_xyxy": out["pred_boxes_xyxy"].numpy(),
                "pred_masks": out["pred_masks"].numpy(),
                "semantic_seg": out["semantic_seg"].permute(0, 2, 3, 1).numpy(),
                "presence_logit_dec": out["presence_logit_dec"].numpy(),
                "queries": out["queries"].numpy(),
                "encoder_hidden_states": out["encoder_hidden_states"].transpose(0, 1).numpy(),
            })
    return results
