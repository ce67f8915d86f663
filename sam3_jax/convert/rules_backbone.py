"""Key table of the vision backbone (ViT trunk, FPN necks) and the text encoder."""

from __future__ import annotations

from sam3_jax.convert.layouts import CONV, CONV_TRANSPOSE, DENSE, EMBED, LAYERNORM, PARAM, TORCH_MHA, VIT_ATTENTION
from sam3_jax.convert.rule import Rule

_NECK_BRANCH_MODULES = {
    4.0: (("dconv_2x2_0", CONV_TRANSPOSE), ("dconv_2x2_1", CONV_TRANSPOSE)),
    2.0: (("dconv_2x2", CONV_TRANSPOSE),),
    1.0: (),
    0.5: (),
}


def backbone_rules(cfg) -> list[Rule]:
    """Rules for the vision backbone (trunk + necks) and the text encoder."""
    vb, vd = "backbone.vision_backbone", "backbone/vision_backbone"
    rules = [
        Rule(f"{vb}.trunk.pos_embed", f"{vd}/trunk/pos_embed", PARAM),
        Rule(f"{vb}.trunk.patch_embed.proj", f"{vd}/trunk/patch_embed", CONV),
        Rule(f"{vb}.trunk.ln_pre", f"{vd}/trunk/ln_pre", LAYERNORM),
        Rule(f"{vb}.trunk.blocks.{{i}}.norm1", f"{vd}/trunk/blocks/norm1", LAYERNORM),
        Rule(f"{vb}.trunk.blocks.{{i}}.attn", f"{vd}/trunk/blocks/attn", VIT_ATTENTION),
        Rule(f"{vb}.trunk.blocks.{{i}}.norm2", f"{vd}/trunk/blocks/norm2", LAYERNORM),
        Rule(f"{vb}.trunk.blocks.{{i}}.mlp.fc1", f"{vd}/trunk/blocks/mlp/fc1", DENSE),
        Rule(f"{vb}.trunk.blocks.{{i}}.mlp.fc2", f"{vd}/trunk/blocks/mlp/fc2", DENSE),
    ]
    necks = ["convs"] + (["sam2_convs"] if cfg.neck.add_sam2_neck else [])
    for neck in necks:
        for j, scale in enumerate(cfg.neck.scale_factors):
            src, dst = f"{vb}.{neck}.{j}", f"{vd}/{neck}/{j}"
            for name, layout in _NECK_BRANCH_MODULES[float(scale)]:
                rules.append(Rule(f"{src}.{name}", f"{dst}/{name}", layout))
            rules.append(Rule(f"{src}.conv_1x1", f"{dst}/conv_1x1", CONV))
            rules.append(Rule(f"{src}.conv_3x3", f"{dst}/conv_3x3", CONV))
    lb, ld = "backbone.language_backbone", "backbone/language_backbone"
    blk, blkd = f"{lb}.encoder.transformer.resblocks.{{i}}", f"{ld}/encoder/transformer"
    rules += [
        Rule(f"{lb}.encoder.token_embedding", f"{ld}/encoder/token_embedding", EMBED),
        Rule(f"{lb}.encoder.positional_embedding", f"{ld}/encoder/positional_embedding", PARAM),
        Rule(f"{lb}.encoder.text_projection", f"{ld}/encoder/text_projection", PARAM),
        Rule(f"{blk}.ln_1", f"{blkd}/ln_1", LAYERNORM),
        Rule(f"{blk}.attn", f"{blkd}/attn", TORCH_MHA),
        Rule(f"{blk}.ln_2", f"{blkd}/ln_2", LAYERNORM),
        Rule(f"{blk}.mlp.c_fc", f"{blkd}/mlp/c_fc", DENSE),
        Rule(f"{blk}.mlp.c_proj", f"{blkd}/mlp/c_proj", DENSE),
        Rule(f"{lb}.encoder.ln_final", f"{ld}/encoder/ln_final", LAYERNORM),
        Rule(f"{lb}.resizer", f"{ld}/resizer", DENSE),
    ]
    return rules
