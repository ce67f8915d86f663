"""The SAM 3 memory tracker (official: sam3/model/sam3_tracker_base.py, `Sam3TrackerBase`, as
`build_tracker` in sam3/model_builder.py configures it), as one Linen module whose methods are
pure functions of (params, inputs).

Parts (official names; the param tree under `tracker/` mirrors the checkpoint's `tracker.*`):
  sam_prompt_encoder, sam_mask_decoder  SAM heads (prompt_encoder.py, mask_decoder.py)
  maskmem_backbone                      memory encoder (memory_encoder.py)
  transformer/encoder                   memory attention (memory_attention.py)
  obj_ptr_proj                          MLP C -> C -> C (3 layers): SAM output token -> object pointer
  obj_ptr_tpos_proj                     Dense C -> mem_dim: temporal code of a pointer
  mask_downsample                       Conv 4x4 stride 4 (1 -> 1): an input mask -> mask prompt
  maskmem_tpos_enc (num_maskmem, 1, 1, mem_dim), no_mem_embed / no_mem_pos_enc (1, 1, C),
  no_obj_ptr (1, C), no_obj_embed_spatial (1, mem_dim)   plain tensors, official shapes

Frame features (`prepare_frame`): the tracker neck's 4g / 2g levels projected once per frame by
the decoder's conv_s0 / conv_s1 ("high_res"), the g level ("pix_feat", B x g x g x C) and its sine
position map ("pix_pos").

One track step (`track_step`) for B objects on one frame:
  1. a mask input (a conditioning frame given as a mask) is used as the output: logits +-10, the
     low-res logits by an antialiased resize, IoU 1, and the object pointer from running the SAM
     heads on the raw frame features with `mask_downsample(mask)` as the mask prompt; the object
     score is +-10 by whether the mask is empty.
  2. otherwise the g-level features are conditioned on the memory: on an initial conditioning frame
     `no_mem_embed` is added (no attention); on other frames the memory attention attends to the
     memory bank (spatial memories with their sine + temporal codes, then object-pointer tokens,
     each 256-d pointer split into C / mem_dim tokens of mem_dim with its temporal code repeated).
     Then the SAM heads decode the prompts (points, or with none a single padding point; an
     optional previous low-res logit map as the mask prompt). Where the object score is <= 0 the
     masks become -1024 (NO_OBJ_SCORE); with multimask output the mask with the highest predicted
     IoU is taken. Object pointer = obj_ptr_proj(SAM token), or `no_obj_ptr` without an object.
  3. the memory encoder encodes the image_size x image_size mask (binarised at 0 when the mask
     came from clicks, else sigmoid; then x20 - 10) with the raw g-level features; without an
     object, `no_obj_embed_spatial` is added.

The memory bank (`MemoryBank`) has fixed capacities and validity masks instead of the official
Python lists, so one compiled step serves any history: S spatial slots (features and the t that
selects `maskmem_tpos_enc[num_maskmem - 1 - t]`, t = 0 for conditioning frames) and P pointer
slots (pointer, signed frame distance). Invalid slots are excluded from the attention softmax, so
a bank equals the official concatenation of its valid entries. `memory_bank_from_outputs` builds a
bank from per-frame step outputs with the official frame selection (host side).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from sam3_jax.layers import partitioning as P
from sam3_jax.layers.core import Conv, Dense
from sam3_jax.layers.position import sine_position_map
from sam3_jax.layers.resize import resize_bilinear
from sam3_jax.model.mlp import MLP
from sam3_jax.model.tracker.mask_decoder import mask_decoder_from_config
from sam3_jax.model.tracker.memory_attention import memory_attention_from_config
from sam3_jax.model.tracker.memory_encoder import memory_encoder_from_config
from sam3_jax.model.tracker.prompt_encoder import prompt_encoder_from_config

Dtype = Any

# Mask logit of an absent object (official NO_OBJ_SCORE).
NO_OBJ_SCORE = -1024.0
# Binary masks -> logits for the memory encoder and for masks used as output (sigmoid(-10) ~ 4.5e-5).
MASK_SCALE, MASK_BIAS = 20.0, -10.0


@flax.struct.dataclass
class MemoryBank:
    """Fixed-capacity memory of B objects: S spatial slots and P pointer slots.

    features (B, S, g, g, mem_dim): memory-encoder features of past frames;
    tpos (B, S) int32: t of each slot (0 for a conditioning frame, else 1..num_maskmem-1, the
        official t_pos; the temporal code is maskmem_tpos_enc[num_maskmem - 1 - t]);
    valid (B, S) bool;
    obj_ptrs (B, P, C): object pointers of past frames;
    ptr_tpos (B, P) float32: signed frame distance of each pointer (official `pos_list`);
    ptr_valid (B, P) bool;
    ptr_max_pos () float32: min(num_frames, max_obj_ptrs_in_encoder), the official normaliser
        (distances are divided by ptr_max_pos - 1).
    """

    features: jax.Array
    tpos: jax.Array
    valid: jax.Array
    obj_ptrs: jax.Array
    ptr_tpos: jax.Array
    ptr_valid: jax.Array
    ptr_max_pos: jax.Array

    @classmethod
    def empty(cls, batch: int, spatial_slots: int, pointer_slots: int, grid: int, mem_dim: int, d_model: int,
              dtype: Dtype = jnp.float32) -> "MemoryBank":
        return cls(
            features=jnp.zeros((batch, spatial_slots, grid, grid, mem_dim), dtype),
            tpos=jnp.zeros((batch, spatial_slots), jnp.int32),
            valid=jnp.zeros((batch, spatial_slots), bool),
            obj_ptrs=jnp.zeros((batch, pointer_slots, d_model), dtype),
            ptr_tpos=jnp.zeros((batch, pointer_slots), jnp.float32),
            ptr_valid=jnp.zeros((batch, pointer_slots), bool),
            ptr_max_pos=jnp.asarray(2.0, jnp.float32),
        )


def sine_pe_1d(pos: jax.Array, dim: int, temperature: float = 10000.0) -> jax.Array:
    """Official `get_1d_sine_pe`: (...,) positions -> (..., dim) = [sin(p / t_k) ..., cos(p / t_k) ...]
    with t_k = T^(2 * floor(k / 2) / (dim / 2)), k < dim / 2 (concatenated, not interleaved)."""
    half = dim // 2
    k = jnp.arange(half, dtype=jnp.float32)
    dim_t = jnp.float32(temperature) ** (2 * jnp.floor(k / 2) / half)
    p = pos[..., None].astype(jnp.float32) / dim_t
    return jnp.concatenate([jnp.sin(p), jnp.cos(p)], axis=-1)


def _trunc_normal(std: float):
    # timm trunc_normal_(std) truncates at +-2 (absolute), i.e. +-2/std standard deviations.
    return nn.initializers.truncated_normal(std, lower=-2.0 / std, upper=2.0 / std)


class Sam3Tracker(nn.Module):
    config: Any  # model ConfigDict (sam3_jax.config.model_config)

    def setup(self):
        cfg = self.config
        t = cfg.tracker
        c, m = t.d_model, t.mem_dim
        if c % m:
            raise ValueError(f"tracker.d_model {c} must be a multiple of tracker.mem_dim {m} (pointer split)")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.sam_prompt_encoder = prompt_encoder_from_config(cfg)
        self.sam_mask_decoder = mask_decoder_from_config(cfg)
        self.maskmem_backbone = memory_encoder_from_config(cfg)
        self.transformer = _TrackerTransformer(cfg)
        self.obj_ptr_proj = MLP(c, c, c, 3, in_axis=P.EMBED, out_axis=P.EMBED, **kw)
        self.obj_ptr_tpos_proj = Dense(m, (P.EMBED, None), **kw)
        self.mask_downsample = Conv(1, 4, stride=4, **kw)
        init = _trunc_normal(0.02)
        self.maskmem_tpos_enc = self.param(
            "maskmem_tpos_enc", P.with_axes(init, (None, None, None, None)), (t.num_maskmem, 1, 1, m), self.param_dtype)
        self.no_mem_embed = self.param("no_mem_embed", P.with_axes(init, (None, None, P.EMBED)), (1, 1, c),
                                       self.param_dtype)
        self.no_mem_pos_enc = self.param("no_mem_pos_enc", P.with_axes(init, (None, None, P.EMBED)), (1, 1, c),
                                         self.param_dtype)
        self.no_obj_ptr = self.param("no_obj_ptr", P.with_axes(init, (None, P.EMBED)), (1, c), self.param_dtype)
        self.no_obj_embed_spatial = self.param(
            "no_obj_embed_spatial", P.with_axes(init, (None, None)), (1, m), self.param_dtype)

    @property
    def dtype(self):
        return jnp.dtype(self.config.dtype)

    @property
    def param_dtype(self):
        return jnp.dtype(self.config.param_dtype)

    # ------------------------------------------------------------------ sizes
    @property
    def grid(self) -> int:
        return self.config.image_size // self.config.vit.patch_size

    @property
    def image_size(self) -> int:
        return int(self.config.image_size)

    # ------------------------------------------------------------------ frame features
    def prepare_frame(self, sam2_backbone_out: Mapping[str, Sequence[jax.Array]]) -> dict[str, Any]:
        """The tracker neck's output (`backbone_fpn` 4g / 2g / g levels and `vision_pos_enc`, NHWC)
        -> {"high_res": (conv_s0 map, conv_s1 map), "pix_feat": g level, "pix_pos": its pos map}."""
        fpn, pos = sam2_backbone_out["backbone_fpn"], sam2_backbone_out["vision_pos_enc"]
        s0, s1 = self.sam_mask_decoder.project_high_res_features(fpn[0], fpn[1])
        return {"high_res": (s0, s1), "pix_feat": fpn[-1], "pix_pos": pos[-1]}

    # ------------------------------------------------------------------ SAM heads
    def forward_sam_heads(
        self,
        pix_feat: jax.Array,
        high_res: Sequence[jax.Array],
        points: Optional[jax.Array] = None,
        labels: Optional[jax.Array] = None,
        mask_prompt: Optional[jax.Array] = None,
        *,
        multimask_output: bool,
    ) -> dict[str, jax.Array]:
        """Official `_forward_sam_heads`. pix_feat (B, g, g, C) (memory-conditioned or not);
        points (B, N, 2) in input-image pixels with labels (B, N), or None (one padding point);
        mask_prompt (B, h, w, 1) logits, resized (antialiased) to 4g x 4g when needed."""
        b = pix_feat.shape[0]
        if points is None:
            points = jnp.zeros((b, 1, 2), jnp.float32)
            labels = -jnp.ones((b, 1), jnp.int32)
        if mask_prompt is not None:
            size = self.sam_prompt_encoder.mask_input_size
            if tuple(mask_prompt.shape[1:3]) != tuple(size):
                mask_prompt = resize_bilinear(mask_prompt.astype(jnp.float32), size, antialias=True)
        sparse, dense = self.sam_prompt_encoder(points=points, labels=labels, masks=mask_prompt)
        image_pe = self.sam_prompt_encoder.get_dense_pe()
        out = self.sam_mask_decoder(pix_feat, image_pe, sparse, dense, multimask_output=multimask_output,
                                    repeat_image=False, high_res_features=tuple(high_res))
        low_multi, ious, tokens, obj_logits = out["masks"], out["iou_pred"], out["sam_tokens_out"], \
            out["object_score_logits"]
        present = obj_logits > 0  # (B, 1)
        low_multi = jnp.where(present[:, :, None, None], low_multi.astype(jnp.float32), NO_OBJ_SCORE)
        s = self.image_size
        high_multi = resize_bilinear(jnp.moveaxis(low_multi, 1, -1), (s, s))
        high_multi = jnp.moveaxis(high_multi, -1, 1)
        token = tokens[:, 0]
        if multimask_output:
            best = jnp.argmax(ious, axis=-1)
            take = lambda x: jnp.take_along_axis(x, best[:, None, None, None], axis=1)  # noqa: E731
            low, high = take(low_multi), take(high_multi)
            if tokens.shape[1] > 1:
                token = jnp.take_along_axis(tokens, best[:, None, None], axis=1)[:, 0]
        else:
            low, high = low_multi, high_multi
        obj_ptr = self.obj_ptr_proj(token)
        lam = present.astype(obj_ptr.dtype)
        obj_ptr = lam * obj_ptr + (1 - lam) * self.no_obj_ptr.astype(obj_ptr.dtype)
        return {
            "low_res_multimasks": low_multi, "high_res_multimasks": high_multi, "ious": ious,
            "low_res_masks": low, "high_res_masks": high, "obj_ptr": obj_ptr, "object_score_logits": obj_logits,
        }

    def use_mask_as_output(self, pix_feat: jax.Array, high_res: Sequence[jax.Array], mask: jax.Array) -> dict:
        """Official `_use_mask_as_output`: mask (B, H, W, 1) (bool or {0, 1}) taken as the output."""
        m = mask.astype(jnp.float32)
        high = m * MASK_SCALE + MASK_BIAS
        h, w = m.shape[1], m.shape[2]
        stride = self.config.vit.patch_size
        low = resize_bilinear(high, (h // stride * 4, w // stride * 4), antialias=True)
        present = jnp.any(m.reshape(m.shape[0], -1) > 0, axis=1)[:, None]
        sam = self.forward_sam_heads(pix_feat, high_res, mask_prompt=self.mask_downsample(m),
                                     multimask_output=False)
        lam = present.astype(jnp.float32)
        obj_ptr = lam * sam["obj_ptr"] + (1 - lam) * self.no_obj_ptr.astype(sam["obj_ptr"].dtype)
        low, high = jnp.moveaxis(low, -1, 1), jnp.moveaxis(high, -1, 1)
        return {
            "low_res_multimasks": low, "high_res_multimasks": high, "ious": jnp.ones((m.shape[0], 1), jnp.float32),
            "low_res_masks": low, "high_res_masks": high, "obj_ptr": obj_ptr,
            "object_score_logits": MASK_SCALE * lam + MASK_BIAS,
        }

    # ------------------------------------------------------------------ memory
    def memory_tokens(self, memory: MemoryBank) -> tuple[jax.Array, jax.Array, jax.Array, int]:
        """Bank -> (tokens (B, M, mem_dim), their positions, validity (B, M), pointer-token count):
        [S * g * g spatial tokens ; P * (C / mem_dim) pointer tokens]."""
        t = self.config.tracker
        b, s, g = memory.features.shape[0], memory.features.shape[1], memory.features.shape[2]
        m = memory.features.shape[-1]
        spatial = memory.features.reshape(b, s * g * g, m)
        sine = sine_position_map(g, g, m).reshape(1, 1, g * g, m)
        tcode = self.maskmem_tpos_enc.reshape(t.num_maskmem, m)[t.num_maskmem - 1 - memory.tpos]  # (B, S, m)
        spatial_pos = (sine + tcode[:, :, None, :].astype(jnp.float32)).reshape(b, s * g * g, m)
        spatial_valid = jnp.repeat(memory.valid, g * g, axis=1)
        p, c = memory.obj_ptrs.shape[1], memory.obj_ptrs.shape[2]
        split = c // m
        ptr_pos = self.obj_ptr_tpos_proj(
            sine_pe_1d(memory.ptr_tpos / (memory.ptr_max_pos - 1), c).astype(memory.obj_ptrs.dtype))  # (B, P, m)
        ptrs = memory.obj_ptrs.reshape(b, p * split, m)
        ptr_pos = jnp.repeat(ptr_pos, split, axis=1)
        ptr_valid = jnp.repeat(memory.ptr_valid, split, axis=1)
        tokens = jnp.concatenate([spatial.astype(ptrs.dtype), ptrs], axis=1)
        pos = jnp.concatenate([spatial_pos.astype(ptr_pos.dtype), ptr_pos], axis=1)
        valid = jnp.concatenate([spatial_valid, ptr_valid], axis=1)
        return tokens, pos, valid, p * split

    def condition_on_memory(self, frame: Mapping[str, Any], memory: Optional[MemoryBank], *,
                            is_init_cond_frame: bool) -> jax.Array:
        """Official `_prepare_memory_conditioned_features` -> (B, g, g, C)."""
        pix = frame["pix_feat"]
        if is_init_cond_frame or memory is None:
            if not is_init_cond_frame:
                raise ValueError("a frame that is not an initial conditioning frame needs a memory bank")
            return pix + self.no_mem_embed.reshape(1, 1, 1, -1).astype(pix.dtype)
        b, g, _, c = pix.shape
        tokens, pos, valid, num_ptr = self.memory_tokens(memory)
        out = self.transformer.encoder(
            pix.reshape(b, g * g, c), frame["pix_pos"].reshape(b, g * g, c).astype(pix.dtype), tokens, pos,
            num_obj_ptr_tokens=num_ptr, memory_mask=valid,
        )
        return out.reshape(b, g, g, c)

    def encode_memory(self, pix_feat: jax.Array, high_res_masks: jax.Array, object_score_logits: jax.Array, *,
                      mask_from_points: bool) -> dict[str, jax.Array]:
        """Official `_encode_new_memory`: pix_feat (B, g, g, C) raw frame features, high_res_masks
        (B, 1, S, S) logits -> {"maskmem_features", "maskmem_pos_enc"} (B, g, g, mem_dim)."""
        masks = jnp.moveaxis(high_res_masks, 1, -1).astype(jnp.float32)
        masks = (masks > 0).astype(jnp.float32) if mask_from_points else jax.nn.sigmoid(masks)
        masks = masks * MASK_SCALE + MASK_BIAS
        out = self.maskmem_backbone(pix_feat, masks, skip_mask_sigmoid=True)
        feats = out["vision_features"]
        absent = (object_score_logits <= 0).astype(feats.dtype)  # (B, 1)
        feats = feats + absent[:, None, None, :] * self.no_obj_embed_spatial.reshape(1, 1, 1, -1).astype(feats.dtype)
        return {"maskmem_features": feats, "maskmem_pos_enc": out["vision_pos_enc"]}

    # ------------------------------------------------------------------ one step
    def track_step(
        self,
        frame: Mapping[str, Any],
        memory: Optional[MemoryBank] = None,
        points: Optional[jax.Array] = None,
        labels: Optional[jax.Array] = None,
        mask_input: Optional[jax.Array] = None,
        prev_mask_logits: Optional[jax.Array] = None,
        *,
        is_init_cond_frame: bool,
        multimask_output: bool,
        run_mem_encoder: bool = True,
    ) -> dict[str, jax.Array]:
        """Official `track_step` for B objects on one frame (see the module docstring).

        frame: `prepare_frame` output (batch B, or 1 broadcast to the objects); memory: the bank
        (ignored on initial conditioning frames); points (B, N, 2) input-image pixels, labels
        (B, N); mask_input (B, H, W, 1) binary (used as the output); prev_mask_logits
        (B, 4g, 4g, 1) low-res logits fed with the clicks. The static flags select the compiled
        variant. Returns pred_masks (B, 1, 4g, 4g), pred_masks_high_res (B, 1, S, S), multimasks
        (B, M, 4g, 4g), ious (B, M), obj_ptr (B, C), object_score_logits (B, 1), and (with
        run_mem_encoder) maskmem_features / maskmem_pos_enc (B, g, g, mem_dim).
        """
        given = [x for x in (points, mask_input, prev_mask_logits) if x is not None]
        if memory is not None and not is_init_cond_frame:
            given.append(memory.features)
        nb = given[0].shape[0] if given else frame["pix_feat"].shape[0]  # objects (one frame may serve all)
        bcast = lambda x: jnp.broadcast_to(x, (nb,) + x.shape[1:]) if x.shape[0] != nb else x  # noqa: E731
        frame = {"pix_feat": bcast(frame["pix_feat"]), "pix_pos": bcast(frame["pix_pos"]),
                 "high_res": tuple(bcast(x) for x in frame["high_res"])}
        if mask_input is not None:
            if points is not None or prev_mask_logits is not None:
                raise ValueError("mask_input is used as the output: give it without points or prev_mask_logits")
            sam = self.use_mask_as_output(frame["pix_feat"], frame["high_res"], mask_input)
        else:
            cond = self.condition_on_memory(frame, memory, is_init_cond_frame=is_init_cond_frame)
            sam = self.forward_sam_heads(cond, frame["high_res"], points, labels, prev_mask_logits,
                                         multimask_output=multimask_output)
        out = {
            "pred_masks": sam["low_res_masks"], "pred_masks_high_res": sam["high_res_masks"],
            "multimasks": sam["low_res_multimasks"], "ious": sam["ious"], "obj_ptr": sam["obj_ptr"],
            "object_score_logits": sam["object_score_logits"],
        }
        if run_mem_encoder:
            out.update(self.encode_memory(frame["pix_feat"], sam["high_res_masks"], sam["object_score_logits"],
                                          mask_from_points=points is not None))
        return out

    def __call__(self, frame, memory=None, points=None, labels=None, mask_input=None, prev_mask_logits=None, *,
                 multimask_output: bool = False):
        """Initialisation entry: a step on an initial conditioning frame, plus the memory attention
        (with a bank: it also creates the pointer temporal projection) and the mask-as-output path
        (mask_downsample), so that every param exists."""
        out = self.track_step(frame, None, points, labels, mask_input, prev_mask_logits,
                              is_init_cond_frame=True, multimask_output=multimask_output)
        if memory is not None:
            self.condition_on_memory(frame, memory, is_init_cond_frame=False)
        if self.is_initializing():
            b, s = frame["pix_feat"].shape[0], self.image_size
            self.use_mask_as_output(frame["pix_feat"], frame["high_res"], jnp.zeros((b, s, s, 1)))
        return out


class _TrackerTransformer(nn.Module):
    """Container mirroring the official `TransformerWrapper(encoder=..., decoder=None)`."""

    config: Any

    def setup(self):
        self.encoder = memory_attention_from_config(self.config)


# ---------------------------------------------------------------------------------------------
# Abstract params and pure entry points


def tracker_init_inputs(cfg, batch: int = 1, spatial_slots: int = 1, pointer_slots: int = 1) -> tuple[dict, MemoryBank]:
    """Zero frame features and an empty bank at cfg's sizes (for init / eval_shape)."""
    g, c, m = cfg.image_size // cfg.vit.patch_size, cfg.tracker.d_model, cfg.tracker.mem_dim
    frame = {
        "high_res": (jnp.zeros((batch, 4 * g, 4 * g, c // 8)), jnp.zeros((batch, 2 * g, 2 * g, c // 4))),
        "pix_feat": jnp.zeros((batch, g, g, c)),
        "pix_pos": jnp.zeros((batch, g, g, c)),
    }
    return frame, MemoryBank.empty(batch, spatial_slots, pointer_slots, g, m, c)


def tracker_target_shapes(cfg, dtype: Any = jnp.float32) -> dict[str, Any]:
    """Abstract params of the tracker (`jax.eval_shape`, no allocation), in `dtype`."""
    model = Sam3Tracker(cfg)

    def init(key):
        frame, bank = tracker_init_inputs(cfg)
        return model.init(key, frame, bank)

    params = nn.meta.unbox(jax.eval_shape(init, jax.random.key(0)))["params"]
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, dtype), params)


def track_step(
    params: Mapping[str, Any],
    cfg,
    sam2_backbone_out: Mapping[str, Sequence[jax.Array]],
    memory: Optional[MemoryBank] = None,
    points: Optional[jax.Array] = None,
    labels: Optional[jax.Array] = None,
    mask_input: Optional[jax.Array] = None,
    prev_mask_logits: Optional[jax.Array] = None,
    *,
    is_init_cond_frame: bool,
    multimask_output: bool,
    run_mem_encoder: bool = True,
) -> dict[str, jax.Array]:
    """One track step as a pure function of (tracker params, the frame's tracker-neck output,
    memory bank, prompts): `Sam3Tracker.prepare_frame` + `Sam3Tracker.track_step` (jit it with the
    three flags static). Returns masks, IoUs, object score, object pointer and the new memory."""

    def body(module: Sam3Tracker):
        frame = module.prepare_frame(sam2_backbone_out)
        return module.track_step(frame, memory, points, labels, mask_input, prev_mask_logits,
                                 is_init_cond_frame=is_init_cond_frame, multimask_output=multimask_output,
                                 run_mem_encoder=run_mem_encoder)

    return nn.apply(body, Sam3Tracker(cfg))({"params": params})


def encode_memory(params: Mapping[str, Any], cfg, sam2_backbone_out: Mapping[str, Sequence[jax.Array]],
                  masks: jax.Array, object_score_logits: jax.Array, *, mask_from_points: bool = False,
                  prescaled: bool = False) -> jax.Array:
    """The memory encoder alone (official `_run_memory_encoder` -> `_encode_new_memory`) as a pure
    function -> maskmem_features (B, g, g, mem_dim).

    masks (B, 1, S, S) logits at any size S (resized to the encoder's input size as there;
    binarised when mask_from_points, else through a sigmoid; then x20 - 10), or, with prescaled,
    (B, h, w, 1) values already binarised or passed through the sigmoid and scaled (what the
    encoder's mask path takes). object_score_logits (B, 1): where <= 0 `no_obj_embed_spatial` is
    added."""

    def body(module: Sam3Tracker):
        frame = module.prepare_frame(sam2_backbone_out)
        b = masks.shape[0]
        pix = frame["pix_feat"]
        if pix.shape[0] != b:
            pix = jnp.broadcast_to(pix, (b,) + pix.shape[1:])
        if not prescaled:
            return module.encode_memory(pix, masks, object_score_logits,
                                        mask_from_points=mask_from_points)["maskmem_features"]
        feats = module.maskmem_backbone(pix, masks.astype(jnp.float32), skip_mask_sigmoid=True)["vision_features"]
        absent = (object_score_logits <= 0).astype(feats.dtype)
        return feats + absent[:, None, None, :] * module.no_obj_embed_spatial.reshape(1, 1, 1, -1).astype(feats.dtype)

    return nn.apply(body, Sam3Tracker(cfg))({"params": params})


def use_mask_as_output(params: Mapping[str, Any], cfg, sam2_backbone_out: Mapping[str, Sequence[jax.Array]],
                       mask: jax.Array) -> dict[str, jax.Array]:
    """Official `_use_mask_as_output` as a pure function: mask (B, H, W, 1) binary taken as the
    output -> its object pointer (B, C) and object score logits (B, 1) (+-10 by emptiness)."""

    def body(module: Sam3Tracker):
        frame = module.prepare_frame(sam2_backbone_out)
        b = mask.shape[0]
        bc = lambda x: jnp.broadcast_to(x, (b,) + x.shape[1:]) if x.shape[0] != b else x  # noqa: E731
        out = module.use_mask_as_output(bc(frame["pix_feat"]), tuple(bc(x) for x in frame["high_res"]), mask)
        return {"obj_ptr": out["obj_ptr"], "object_score_logits": out["object_score_logits"]}

    return nn.apply(body, Sam3Tracker(cfg))({"params": params})


def init_tracker_params(cfg, key: jax.Array) -> dict[str, Any]:
    """Randomly initialised tracker params (unboxed)."""
    frame, bank = tracker_init_inputs(cfg)
    return nn.meta.unbox(Sam3Tracker(cfg).init(key, frame, bank))["params"]


# ---------------------------------------------------------------------------------------------
# Host-side memory selection (official `_prepare_memory_conditioned_features`, frame choice only)


def select_memory_frames(
    frame_idx: int,
    cond_frames: Sequence[int],
    non_cond_frames: Sequence[int],
    *,
    num_maskmem: int,
    max_cond_frames_in_attn: int,
    max_obj_ptrs_in_encoder: int,
    num_frames: int,
    reverse: bool = False,
) -> tuple[list[tuple[int, int]], list[tuple[int, int]], int]:
    """Which past frames feed the memory attention at `frame_idx`, as the official tracker picks
    them (memory stride 1, no memory selection filter, evaluation mode).

    Returns (spatial, pointers, ptr_max_pos): spatial = [(frame, t)] with t = 0 for the selected
    conditioning frames and t_pos 1..num_maskmem-1 for the recent frames; pointers = [(frame,
    signed distance)]; ptr_max_pos = min(num_frames, max_obj_ptrs_in_encoder)."""
    cond = list(cond_frames)  # insertion order breaks distance ties, as in the official dict
    if max_cond_frames_in_attn == -1 or len(cond) <= max_cond_frames_in_attn:
        selected, unselected = list(cond), []
    else:
        sel = []
        before = [t for t in cond if t < frame_idx]
        after = [t for t in cond if t >= frame_idx]
        if before:
            sel.append(max(before))
        if after and min(after) not in sel:
            sel.append(min(after))
        rest = sorted((t for t in cond if t not in sel), key=lambda t: abs(t - frame_idx))
        sel += rest[: max_cond_frames_in_attn - len(sel)]
        selected = [t for t in cond if t in sel]
        unselected = [t for t in cond if t not in sel]
    sign = -1 if reverse else 1
    non_cond = set(non_cond_frames)
    spatial = [(t, 0) for t in selected]
    for t_pos in range(1, num_maskmem):
        t_rel = num_maskmem - t_pos
        prev = frame_idx + t_rel if reverse else frame_idx - t_rel
        if prev in non_cond or prev in unselected:
            spatial.append((prev, t_pos))
    max_ptrs = min(num_frames, max_obj_ptrs_in_encoder)
    pointers = [(t, (frame_idx - t) * sign) for t in selected if (t >= frame_idx if reverse else t <= frame_idx)]
    for t_diff in range(1, max_ptrs):
        t = frame_idx + t_diff if reverse else frame_idx - t_diff
        if t < 0 or t >= num_frames:
            break
        if t in non_cond or t in unselected:
            pointers.append((t, t_diff))
    return spatial, pointers, max_ptrs


def memory_bank_from_outputs(
    outputs: Mapping[int, Mapping[str, Any]],
    spatial: Sequence[tuple[int, int]],
    pointers: Sequence[tuple[int, int]],
    ptr_max_pos: int,
    *,
    spatial_slots: Optional[int] = None,
    pointer_slots: Optional[int] = None,
) -> MemoryBank:
    """Stacks the chosen per-frame step outputs (`maskmem_features`, `obj_ptr`) into a bank,
    padded with invalid slots up to the given capacities."""
    if not spatial:
        raise ValueError("a memory bank needs at least one spatial memory")
    first = np.asarray(outputs[spatial[0][0]]["maskmem_features"])
    b, g, _, m = first.shape
    c = np.asarray(outputs[spatial[0][0]]["obj_ptr"]).shape[-1]
    s_cap = spatial_slots or len(spatial)
    p_cap = pointer_slots or max(1, len(pointers))
    if len(spatial) > s_cap or len(pointers) > p_cap:
        raise ValueError(f"{len(spatial)} spatial / {len(pointers)} pointer memories exceed the capacities "
                         f"{s_cap} / {p_cap}")
    feats = np.zeros((b, s_cap, g, g, m), np.float32)
    tpos = np.zeros((b, s_cap), np.int32)
    valid = np.zeros((b, s_cap), bool)
    for i, (f, t) in enumerate(spatial):
        feats[:, i] = np.asarray(outputs[f]["maskmem_features"])
        tpos[:, i], valid[:, i] = t, True
    ptrs = np.zeros((b, p_cap, c), np.float32)
    ptr_t = np.zeros((b, p_cap), np.float32)
    ptr_valid = np.zeros((b, p_cap), bool)
    for i, (f, d) in enumerate(pointers):
        ptrs[:, i] = np.asarray(outputs[f]["obj_ptr"])
        ptr_t[:, i], ptr_valid[:, i] = d, True
    return MemoryBank(jnp.asarray(feats), jnp.asarray(tpos), jnp.asarray(valid), jnp.asarray(ptrs),
                      jnp.asarray(ptr_t), jnp.asarray(ptr_valid), jnp.asarray(float(ptr_max_pos), jnp.float32))
