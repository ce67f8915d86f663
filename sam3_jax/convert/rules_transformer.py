"""Conversion rules for the fusion encoder (`transformer.encoder`), the decoder
(`transformer.decoder`) and the dot-product scoring head (`dot_prod_scoring`), image-model layout.

Flax paths mirror the official module names: stacked layers under `.../layers` (leading layer
axis), MLPs as `<mlp>/layers/<k>` (+ `<mlp>/out_norm`), embeddings as `nn.Embed` tables.
"""

from __future__ import annotations

from sam3_jax.convert.layouts import DENSE, EMBED, LAYERNORM, TORCH_MHA
from sam3_jax.convert.rule import Rule


def mlp_rules(src: str, dst: str, num_layers: int, *, out_norm: bool = False) -> list[Rule]:
    """Rules for an official `MLP` at `src` -> `sam3_jax.model.mlp.MLP` at `dst`."""
    rules = [Rule(f"{src}.layers.{k}", f"{dst}/layers/{k}", DENSE) for k in range(num_layers)]
    if out_norm:
        rules.append(Rule(f"{src}.out_norm", f"{dst}/out_norm", LAYERNORM))
    return rules


def encoder_rules(src: str = "transformer.encoder", dst: str = "transformer/encoder") -> list[Rule]:
    s, d = f"{src}.layers.{{i}}", f"{dst}/layers"
    return [
        Rule(f"{s}.self_attn", f"{d}/self_attn", TORCH_MHA),
        Rule(f"{s}.cross_attn_image", f"{d}/cross_attn_image", TORCH_MHA),
        Rule(f"{s}.linear1", f"{d}/linear1", DENSE),
        Rule(f"{s}.linear2", f"{d}/linear2", DENSE),
        Rule(f"{s}.norm1", f"{d}/norm1", LAYERNORM),
        Rule(f"{s}.norm2", f"{d}/norm2", LAYERNORM),
        Rule(f"{s}.norm3", f"{d}/norm3", LAYERNORM),
    ]


def decoder_rules(src: str = "transformer.decoder", dst: str = "transformer/decoder") -> list[Rule]:
    s, d = f"{src}.layers.{{i}}", f"{dst}/layers"
    rules = [
        Rule(f"{s}.self_attn", f"{d}/self_attn", TORCH_MHA),
        Rule(f"{s}.norm2", f"{d}/norm2", LAYERNORM),
        Rule(f"{s}.ca_text", f"{d}/ca_text", TORCH_MHA),
        Rule(f"{s}.catext_norm", f"{d}/catext_norm", LAYERNORM),
        Rule(f"{s}.cross_attn", f"{d}/cross_attn", TORCH_MHA),
        Rule(f"{s}.norm1", f"{d}/norm1", LAYERNORM),
        Rule(f"{s}.linear1", f"{d}/linear1", DENSE),
        Rule(f"{s}.linear2", f"{d}/linear2", DENSE),
        Rule(f"{s}.norm3", f"{d}/norm3", LAYERNORM),
        Rule(f"{src}.query_embed", f"{dst}/query_embed", EMBED),
        Rule(f"{src}.reference_points", f"{dst}/reference_points", EMBED),
        Rule(f"{src}.presence_token", f"{dst}/presence_token", EMBED),
        Rule(f"{src}.norm", f"{dst}/norm", LAYERNORM),
        Rule(f"{src}.presence_token_out_norm", f"{dst}/presence_token_out_norm", LAYERNORM),
    ]
    rules += mlp_rules(f"{src}.bbox_embed", f"{dst}/bbox_embed", 3)
    rules += mlp_rules(f"{src}.ref_point_head", f"{dst}/ref_point_head", 2)
    rules += mlp_rules(f"{src}.boxRPB_embed_x", f"{dst}/boxRPB_embed_x", 2)
    rules += mlp_rules(f"{src}.boxRPB_embed_y", f"{dst}/boxRPB_embed_y", 2)
    rules += mlp_rules(f"{src}.presence_token_head", f"{dst}/presence_token_head", 3)
    return rules


def scoring_rules(src: str = "dot_prod_scoring", dst: str = "dot_prod_scoring") -> list[Rule]:
    return mlp_rules(f"{src}.prompt_mlp", f"{dst}/prompt_mlp", 2, out_norm=True) + [
        Rule(f"{src}.prompt_proj", f"{dst}/prompt_proj", DENSE),
        Rule(f"{src}.hs_proj", f"{dst}/hs_proj", DENSE),
    ]


def transformer_rules(cfg=None) -> list[Rule]:
    """All rules of the three parts (their structure does not depend on the model size)."""
    del cfg
    return encoder_rules() + decoder_rules() + scoring_rules()
