"""Conversion rules of the tracker's SAM heads (official `tracker.sam_prompt_encoder.*` and
`tracker.sam_mask_decoder.*`, 17 + 131 tensors at the released sizes).

Official module prefix (under `tracker.`)              -> Flax path (under dst_prefix)
  sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix (buffer, copied as is)
                                        -> sam_prompt_encoder/pe_layer/positional_encoding_gaussian_matrix
  sam_prompt_encoder.point_embeddings.{k} (k < 4), not_a_point_embed, no_mask_embed
                                                        -> sam_prompt_encoder/point_embeddings_{k}, ... (nn.Embed)
  sam_prompt_encoder.mask_downscaling.{0,3,6} (convs), .{1,4} (LayerNorm2d)
                                                        -> sam_prompt_encoder/mask_downscaling/{0,1,3,4,6}
  sam_mask_decoder.transformer.layers.{i}.{self_attn, cross_attn_token_to_image,
      cross_attn_image_to_token} (q/k/v/out_proj Linear) -> sam_mask_decoder/transformer/layers_{i}/... (head-split)
  sam_mask_decoder.transformer.layers.{i}.mlp.lin{1,2}, norm{1..4}, final_attn_token_to_image, norm_final_attn
  sam_mask_decoder.{iou_token, mask_tokens, obj_score_token} (nn.Embedding)
  sam_mask_decoder.output_upscaling.{0,3} (ConvTranspose2d), .1 (LayerNorm2d), conv_s0, conv_s1
  sam_mask_decoder.output_hypernetworks_mlps.{k}, iou_prediction_head, pred_obj_score_head (MLPs)

The two-way transformer's blocks are separate modules (`layers_{i}`, the first one skips the
self-attention PE), not a scanned stack. `tracker_rules` assembles the whole tracker: these heads,
the memory encoder (`rules_tracker_memory.py`), the memory attention (`rules_tracker_attention.py`),
the pointer projections, `mask_downsample` and the five plain tensors (copied with their official
shapes).
"""

from __future__ import annotations

from sam3_jax.convert.layouts import CONV, CONV_TRANSPOSE, DENSE, EMBED, LAYERNORM, LAYERNORM_2D, PARAM, SAM_ATTENTION
from sam3_jax.convert.rule import Rule
from sam3_jax.convert.rules_tracker_attention import memory_attention_rules
from sam3_jax.convert.rules_tracker_memory import memory_encoder_rules
from sam3_jax.convert.rules_transformer import mlp_rules

# The official prompt encoder has 4 point-type embeddings (negative, positive, two box corners).
NUM_POINT_EMBEDDINGS = 4
# The hypernetwork and object-score MLPs have 3 layers whatever the config (official MaskDecoder).
HYPERNETWORK_MLP_LAYERS = 3
OBJ_SCORE_MLP_LAYERS = 3


def _join(prefix: str, name: str, sep: str) -> str:
    return f"{prefix}{sep}{name}" if prefix else name


def prompt_encoder_rules(cfg, src: str = "tracker.sam_prompt_encoder",
                         dst: str = "tracker/sam_prompt_encoder") -> list[Rule]:
    """Rules for the official `PromptEncoder` at `src` -> `PromptEncoder` params at `dst`."""
    del cfg  # the key set does not depend on the sizes
    rules = [
        Rule(f"{src}.pe_layer.positional_encoding_gaussian_matrix",
             f"{dst}/pe_layer/positional_encoding_gaussian_matrix", PARAM),
    ]
    rules += [Rule(f"{src}.point_embeddings.{k}", f"{dst}/point_embeddings_{k}", EMBED)
              for k in range(NUM_POINT_EMBEDDINGS)]
    rules += [
        Rule(f"{src}.not_a_point_embed", f"{dst}/not_a_point_embed", EMBED),
        Rule(f"{src}.no_mask_embed", f"{dst}/no_mask_embed", EMBED),
        Rule(f"{src}.mask_downscaling.0", f"{dst}/mask_downscaling/0", CONV),
        Rule(f"{src}.mask_downscaling.1", f"{dst}/mask_downscaling/1", LAYERNORM_2D),
        Rule(f"{src}.mask_downscaling.3", f"{dst}/mask_downscaling/3", CONV),
        Rule(f"{src}.mask_downscaling.4", f"{dst}/mask_downscaling/4", LAYERNORM_2D),
        Rule(f"{src}.mask_downscaling.6", f"{dst}/mask_downscaling/6", CONV),
    ]
    return rules


def two_way_transformer_rules(depth: int, src: str, dst: str) -> list[Rule]:
    """Rules for the official `TwoWayTransformer` of `depth` blocks at `src` -> `dst`."""
    rules: list[Rule] = []
    for i in range(depth):
        s, d = f"{src}.layers.{i}", f"{dst}/layers_{i}"
        rules += [
            Rule(f"{s}.self_attn", f"{d}/self_attn", SAM_ATTENTION),
            Rule(f"{s}.norm1", f"{d}/norm1", LAYERNORM),
            Rule(f"{s}.cross_attn_token_to_image", f"{d}/cross_attn_token_to_image", SAM_ATTENTION),
            Rule(f"{s}.norm2", f"{d}/norm2", LAYERNORM),
            Rule(f"{s}.mlp.lin1", f"{d}/mlp/lin1", DENSE),
            Rule(f"{s}.mlp.lin2", f"{d}/mlp/lin2", DENSE),
            Rule(f"{s}.norm3", f"{d}/norm3", LAYERNORM),
            Rule(f"{s}.norm4", f"{d}/norm4", LAYERNORM),
            Rule(f"{s}.cross_attn_image_to_token", f"{d}/cross_attn_image_to_token", SAM_ATTENTION),
        ]
    rules += [
        Rule(f"{src}.final_attn_token_to_image", f"{dst}/final_attn_token_to_image", SAM_ATTENTION),
        Rule(f"{src}.norm_final_attn", f"{dst}/norm_final_attn", LAYERNORM),
    ]
    return rules


def mask_decoder_rules(cfg, src: str = "tracker.sam_mask_decoder",
                       dst: str = "tracker/sam_mask_decoder") -> list[Rule]:
    """Rules for the official `MaskDecoder` (with its two-way transformer) at `src` -> `dst`,
    for the structure `cfg.tracker.sam` describes."""
    s = cfg.tracker.sam
    rules = two_way_transformer_rules(s.transformer_depth, f"{src}.transformer", f"{dst}/transformer")
    rules += [
        Rule(f"{src}.iou_token", f"{dst}/iou_token", EMBED),
        Rule(f"{src}.mask_tokens", f"{dst}/mask_tokens", EMBED),
        Rule(f"{src}.output_upscaling.0", f"{dst}/output_upscaling/0", CONV_TRANSPOSE),
        Rule(f"{src}.output_upscaling.1", f"{dst}/output_upscaling/1", LAYERNORM_2D),
        Rule(f"{src}.output_upscaling.3", f"{dst}/output_upscaling/3", CONV_TRANSPOSE),
    ]
    if s.pred_obj_scores:
        rules.append(Rule(f"{src}.obj_score_token", f"{dst}/obj_score_token", EMBED))
    if s.use_high_res_features:
        rules += [
            Rule(f"{src}.conv_s0", f"{dst}/conv_s0", CONV),
            Rule(f"{src}.conv_s1", f"{dst}/conv_s1", CONV),
        ]
    for k in range(s.num_multimask_outputs + 1):
        rules += mlp_rules(f"{src}.output_hypernetworks_mlps.{k}", f"{dst}/output_hypernetworks_mlps_{k}",
                           HYPERNETWORK_MLP_LAYERS)
    rules += mlp_rules(f"{src}.iou_prediction_head", f"{dst}/iou_prediction_head", s.iou_head_depth)
    if s.pred_obj_scores:
        if s.pred_obj_scores_mlp:
            rules += mlp_rules(f"{src}.pred_obj_score_head", f"{dst}/pred_obj_score_head", OBJ_SCORE_MLP_LAYERS)
        else:
            rules.append(Rule(f"{src}.pred_obj_score_head", f"{dst}/pred_obj_score_head", DENSE))
    return rules


def sam_heads_rules(cfg, src_prefix: str = "tracker", dst_prefix: str = "tracker") -> list[Rule]:
    """Rules for `{src_prefix}.sam_prompt_encoder.*` and `{src_prefix}.sam_mask_decoder.*` ->
    `{dst_prefix}/sam_prompt_encoder/...` and `{dst_prefix}/sam_mask_decoder/...` (an empty prefix
    puts the two modules at the root)."""
    return (
        prompt_encoder_rules(cfg, _join(src_prefix, "sam_prompt_encoder", "."),
                             _join(dst_prefix, "sam_prompt_encoder", "/"))
        + mask_decoder_rules(cfg, _join(src_prefix, "sam_mask_decoder", "."),
                             _join(dst_prefix, "sam_mask_decoder", "/"))
    )


# Plain tensors of the tracker, copied as is (official shapes kept by the Flax module).
TRACKER_TENSORS = ("maskmem_tpos_enc", "no_mem_embed", "no_mem_pos_enc", "no_obj_ptr", "no_obj_embed_spatial")
OBJ_PTR_MLP_LAYERS = 3


def tracker_rules(cfg, src_prefix: str = "tracker", dst_prefix: str = "tracker") -> list[Rule]:
    """Rules for every official tensor of the tracker at `src_prefix` (`tracker` in sam3.pt,
    `inst_interactive_predictor.model` in an image model with instance interactivity) ->
    `Sam3Tracker` params under `dst_prefix`."""
    s, d = src_prefix, dst_prefix
    rules = sam_heads_rules(cfg, s, d)
    rules += memory_encoder_rules(cfg, f"{s}.maskmem_backbone", f"{d}/maskmem_backbone")
    rules += memory_attention_rules(cfg, f"{s}.transformer.encoder", f"{d}/transformer/encoder")
    rules += mlp_rules(f"{s}.obj_ptr_proj", f"{d}/obj_ptr_proj", OBJ_PTR_MLP_LAYERS)
    rules += [
        Rule(f"{s}.obj_ptr_tpos_proj", f"{d}/obj_ptr_tpos_proj", DENSE),
        Rule(f"{s}.mask_downsample", f"{d}/mask_downsample", CONV),
    ]
    rules += [Rule(f"{s}.{name}", f"{d}/{name}", PARAM) for name in TRACKER_TENSORS]
    return rules
