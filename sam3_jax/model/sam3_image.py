"""The SAM 3 image detector (official: sam3/model/sam3_image.py, `Sam3Image`).

image -> backbone (trunk + necks) ; text -> text encoder ;
prompt = [text tokens ; geometry tokens (exemplar boxes + CLS)] ->
fusion encoder over the 1x image level (cross-attending to the prompt) ->
decoder (queries + presence token, box refinement, boxRPB) ->
dot-product scoring against the prompt, box head, segmentation head.

Output names are the official ones, batch-first: `pred_logits` (B, Q, 1), `pred_boxes` (B, Q, 4)
cxcywh in [0, 1], `pred_boxes_xyxy`, `pred_masks` (B, Q, 4g, 4g) mask logits, `semantic_seg`
(B, 4g, 4g, 1), `presence_logit_dec` (B, 1), `queries` (B, Q, C), `encoder_hidden_states`
(B, g*g, C); per-decoder-layer values are in `aux` (stacked over layers) for parity.
The final score of a query is sigmoid(pred_logit) * sigmoid(presence_logit_dec), as in the
official processor (the image model does not fold presence into `pred_logits`).
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam3_jax.config import validate_model_config
from sam3_jax.model.backbone import VLBackbone
from sam3_jax.model.decoder import decoder_from_config
from sam3_jax.model.encoder import fusion_encoder_from_config
from sam3_jax.model.geometry_encoder import geometry_encoder_from_config
from sam3_jax.model.scoring import dot_product_scoring_from_config
from sam3_jax.model.segmentation import segmentation_head_from_config

# Official top-level parts of the detector (keys of a converted checkpoint's param tree).
DETECTOR_PARTS = (
    "geometry / exemplar encoder", "fusion encoder", "DETR decoder", "dot-product scoring head", "segmentation head",
)


class Transformer(nn.Module):
    """Container mirroring the official `TransformerWrapper` (`transformer.encoder`, `transformer.decoder`)."""

    config: Any

    def setup(self):
        self.encoder = fusion_encoder_from_config(self.config)
        self.decoder = decoder_from_config(self.config)


class Sam3Image(nn.Module):
    config: Any  # model ConfigDict (sam3_jax.config.model_config)

    def setup(self):
        cfg = self.config
        validate_model_config(cfg)
        self.backbone = VLBackbone(cfg)
        self.geometry_encoder = geometry_encoder_from_config(cfg)
        self.transformer = Transformer(cfg)
        self.dot_prod_scoring = dot_product_scoring_from_config(cfg)
        self.segmentation_head = segmentation_head_from_config(cfg)

    # ------------------------------------------------------------------ encoders
    def forward_image(self, images: jax.Array, **kw) -> dict[str, Any]:
        return self.backbone.forward_image(images, **kw)

    def forward_image_for_grounding(self, images: jax.Array) -> dict[str, Any]:
        """Just what grounding needs from the image (what a predictor caches), with the fusion
        encoder's prompt-independent first self-attention (`prompt_independent`)."""
        out = self.backbone.forward_image(images)
        return self.prompt_independent({"backbone_fpn": out["backbone_fpn"], "vision_pos_enc": out["vision_pos_enc"]})

    def prompt_independent(self, image_out: dict[str, Any]) -> dict[str, Any]:
        """image_out plus `encoder_self_attn` (B, HW, C): the fusion encoder's first-layer
        self-attention over the image tokens, which no prompt changes. `detect` uses it when
        present instead of recomputing it for every prompt (same operations, same results)."""
        feats, feat_pos = image_out["backbone_fpn"][-1], image_out["vision_pos_enc"][-1]
        b, h, w, c = feats.shape
        cached = self.transformer.encoder.self_attend(feats.reshape(b, h * w, c), feat_pos.reshape(b, h * w, c))
        return {**image_out, "encoder_self_attn": cached}

    def forward_text(self, tokens: jax.Array) -> dict[str, jax.Array]:
        return self.backbone.forward_text(tokens)

    # ------------------------------------------------------------------ grounding
    def forward_grounding(
        self,
        image_out: dict[str, Any],
        text_out: dict[str, jax.Array],
        boxes: jax.Array,
        box_labels: jax.Array,
        box_mask: jax.Array,
        img_ids: Optional[jax.Array] = None,
        dac: bool = False,
    ) -> dict[str, Any]:
        """One prompt per row: text_out rows (B_p, T, C), boxes (B_p, N, 4) normalised cxcywh,
        box_labels (B_p, N) int (1 positive / 0 negative), box_mask (B_p, N) bool True = padding.
        img_ids (B_p,) picks the image of each prompt from image_out's batch (default: row i ->
        image i, or image 0 for every prompt when image_out holds one image).

        dac: the official training forward with DAC: the decoder runs Q one-to-one and Q one-to-many
        queries; the o2o ones give the usual outputs, the o2m ones `pred_logits_o2m`,
        `pred_boxes_o2m`, `pred_boxes_xyxy_o2m`, `pred_masks_o2m` (and the first three per layer in
        `aux`), which the training loss reads."""
        det = self.detect(image_out, text_out, boxes, box_labels, box_mask, img_ids=img_ids, dac=dac)
        fpn, memory, prompt, prompt_mask = det["backbone_fpn"], det["memory"], det["prompt"], det["prompt_mask"]
        dec, logits = det["dec"], det["logits"]
        seg = self.segmentation_head(fpn, memory, prompt, prompt_mask, dec["hs"][-1])
        o2m = {}
        if dac:
            q = self.config.num_queries
            per_layer = {"pred_logits": logits, "pred_boxes": dec["pred_boxes"], "pred_boxes_xyxy": dec["pred_boxes_xyxy"]}
            o2m = {f"{k}_o2m": v[:, :, q:] for k, v in per_layer.items()}
            logits = logits[:, :, :q]
            dec = {**dec, **{k: dec[k][:, :, :q] for k in ("hs", "reference_boxes", "pred_boxes", "pred_boxes_xyxy")}}
            seg = {**seg, "pred_masks": seg["pred_masks"][:, :q], "pred_masks_o2m": seg["pred_masks"][:, q:]}
        out = {
            "pred_logits": logits[-1],
            "pred_boxes": dec["pred_boxes"][-1],
            "pred_boxes_xyxy": dec["pred_boxes_xyxy"][-1],
            "pred_masks": seg["pred_masks"],
            "semantic_seg": seg["semantic_seg"],
            "presence_logit_dec": dec["presence_logits"][-1],
            "presence_feats": dec["presence_feats"],
            "queries": dec["hs"][-1],
            "encoder_hidden_states": memory,
            "prompt": prompt,
            "prompt_mask": prompt_mask,
            "aux": {
                "pred_logits": logits,
                "pred_boxes": dec["pred_boxes"],
                "pred_boxes_xyxy": dec["pred_boxes_xyxy"],
                "presence_logit_dec": dec["presence_logits"],
                "hs": dec["hs"],
                "reference_boxes": dec["reference_boxes"],
                **o2m,
            },
        }
        if dac:
            out.update({k: v[-1] for k, v in o2m.items()})
            out["pred_masks_o2m"] = seg["pred_masks_o2m"]
        return out

    def detect(self, image_out, text_out, boxes, box_labels, box_mask, img_ids=None, dac: bool = False):
        """Everything of `forward_grounding` but the segmentation head: the prompt, the fusion
        encoder's `memory`, the decoder outputs `dec` and the per-layer logits `logits`, plus the
        per-prompt `backbone_fpn` / `vision_pos_enc` (what `segment` needs for the masks)."""
        fpn = list(image_out["backbone_fpn"])
        pos = list(image_out["vision_pos_enc"])
        cached = image_out.get("encoder_self_attn")  # from `prompt_independent`, or None
        n_prompts = text_out["language_features"].shape[0]
        n_images = fpn[-1].shape[0]
        if img_ids is not None:
            pick = lambda a: jnp.take(a, img_ids, axis=0)  # noqa: E731
        elif n_images != n_prompts:
            if n_images != 1:
                raise ValueError(f"{n_prompts} prompts for {n_images} images: pass img_ids")
            pick = lambda a: jnp.broadcast_to(a, (n_prompts,) + a.shape[1:])  # noqa: E731
        else:
            pick = lambda a: a  # noqa: E731
        fpn, pos = [pick(f) for f in fpn], [pick(p) for p in pos]
        cached = None if cached is None else pick(cached)
        feats, feat_pos = fpn[-1], pos[-1]
        b, h, w, c = feats.shape

        geo, geo_mask = self.geometry_encoder(
            boxes=boxes, box_labels=box_labels, box_mask=box_mask, img_feats=feats, img_pos=feat_pos
        )
        prompt = jnp.concatenate([text_out["language_features"].astype(geo.dtype), geo], axis=1)
        prompt_mask = jnp.concatenate([text_out["language_mask"], geo_mask], axis=1)

        img_tokens = feats.reshape(b, h * w, c)
        img_pos = feat_pos.reshape(b, h * w, c)
        memory = self.transformer.encoder(img_tokens, img_pos, prompt, prompt_mask, self_attended=cached)
        dec = self.transformer.decoder(memory, img_pos, (h, w), prompt, prompt_mask, dac=dac)
        logits = self.dot_prod_scoring(dec["hs"], prompt, prompt_mask)  # (L, B, Q, 1); 2Q with DAC
        return {"backbone_fpn": fpn, "vision_pos_enc": pos, "memory": memory, "prompt": prompt,
                "prompt_mask": prompt_mask, "dec": dec, "logits": logits}

    def segment(self, backbone_fpn, memory, prompt, prompt_mask, queries) -> dict[str, jax.Array]:
        """The segmentation head alone, for any subset of the decoder's final queries (B, K, C):
        mask logits (B, K, 4g, 4g) of just those (what a predictor keeps)."""
        return self.segmentation_head(list(backbone_fpn), memory, prompt, prompt_mask, queries)

    def forward_detections(self, image_out, tokens, boxes, box_labels, box_mask) -> dict[str, Any]:
        """Text tokens + boxes for one cached image -> scores and boxes of every query, plus what
        `segment` needs to make masks later for the kept ones (`memory`, `prompt`, `prompt_mask`,
        `queries`)."""
        return self.detections(image_out, self.forward_text(tokens), boxes, box_labels, box_mask)

    def detections(self, image_out, text_out, boxes, box_labels, box_mask) -> dict[str, Any]:
        """`forward_detections` on text already encoded (`forward_text`; `language_features` and
        `language_mask` are read): a predictor encodes many prompts' texts in one batch."""
        det = self.detect(image_out, text_out, boxes, box_labels, box_mask)
        dec = det["dec"]
        return {
            "pred_logits": det["logits"][-1],
            "presence_logit_dec": dec["presence_logits"][-1],
            "pred_boxes_xyxy": dec["pred_boxes_xyxy"][-1],
            "memory": det["memory"],
            "prompt": det["prompt"],
            "prompt_mask": det["prompt_mask"],
            "queries": dec["hs"][-1],
        }

    def forward_prompts(self, image_out, tokens, boxes, box_labels, box_mask) -> dict[str, Any]:
        """Text tokens + boxes for one cached image (or one per prompt) -> grounding outputs."""
        return self.forward_grounding(image_out, self.forward_text(tokens), boxes, box_labels, box_mask)

    def __call__(self, images, tokens, boxes, box_labels, box_mask, dac: bool = False) -> dict[str, Any]:
        image_out = self.forward_image(images)
        return self.forward_grounding(image_out, self.forward_text(tokens), boxes, box_labels, box_mask, dac=dac)


def image_model_abstract_params(cfg) -> dict[str, Any]:
    """The image model's params as `jax.eval_shape` gives them (no allocation), boxed with their
    logical axis names (`nn.LogicallyPartitioned`)."""
    model = Sam3Image(cfg)
    s, t = cfg.image_size, cfg.text.context_length
    shapes = jax.eval_shape(
        model.init,
        jax.random.key(0),
        jax.ShapeDtypeStruct((1, s, s, 3), jnp.float32),
        jax.ShapeDtypeStruct((1, t), jnp.int32),
        jax.ShapeDtypeStruct((1, 1, 4), jnp.float32),
        jax.ShapeDtypeStruct((1, 1), jnp.int32),
        jax.ShapeDtypeStruct((1, 1), jnp.bool_),
    )
    return shapes["params"]


def image_model_inference_params(params: dict[str, Any], cfg) -> dict[str, Any]:
    """params as compiled inference calls (inside `layers.stack.for_inference`) read them best: with
    bf16 params, the image model's scanned stacks as their uint16 bits (`stack.stacks_as_bits`;
    XLA:CPU would copy each bf16 stack to fp32 on every call); fp32 params, and the "tracker"
    subtree, as given. Once per predictor, outside any jit (the stacks are new arrays)."""
    detector = {k: v for k, v in params.items() if k != "tracker"}
    if not any(x.dtype == jnp.bfloat16 for x in jax.tree_util.tree_leaves(detector)):
        return params
    from sam3_jax.layers.stack import stacks_as_bits

    out = stacks_as_bits(detector, image_model_abstract_params(cfg))
    if "tracker" in params:
        out["tracker"] = params["tracker"]
    return out


def image_model_target_shapes(cfg, dtype: Any = jnp.float32) -> dict[str, Any]:
    """Abstract params of the image model (`jax.eval_shape`, no allocation), in `dtype`."""
    params = nn.meta.unbox(image_model_abstract_params(cfg))
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, dtype), params)
