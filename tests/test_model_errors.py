"""Bad input and impossible configs give clear errors, not crashes inside jit."""

import jax
import jax.numpy as jnp
import pytest

from sam3_jax.config import model_config, validate_model_config
from sam3_jax.model.backbone import VLBackbone


@pytest.fixture(scope="module")
def tiny_params(tiny_cfg):
    import flax.linen as nn

    s = tiny_cfg.image_size
    v = VLBackbone(tiny_cfg).init(jax.random.key(0), jnp.zeros((1, s, s, 3)), jnp.zeros((1, 32), jnp.int32))
    return nn.meta.unbox(v)["params"]


@pytest.mark.parametrize("shape", [(1, 112, 112, 3), (1, 224, 224, 4), (224, 224, 3), (1, 3, 224, 224)])
def test_wrong_image_shape(tiny_cfg, tiny_params, shape):
    with pytest.raises(ValueError, match=r"images of shape \(B, 224, 224, 3\)"):
        VLBackbone(tiny_cfg).apply({"params": tiny_params}, jnp.zeros(shape), method=VLBackbone.forward_image)


def test_text_tokens_errors(tiny_cfg, tiny_params):
    m = VLBackbone(tiny_cfg)
    with pytest.raises(ValueError, match=r"\(B, <= 32\)"):
        m.apply({"params": tiny_params}, jnp.zeros((1, 33), jnp.int32), method=VLBackbone.forward_text)
    with pytest.raises(TypeError, match="integer ids"):
        m.apply({"params": tiny_params}, jnp.zeros((1, 32), jnp.float32), method=VLBackbone.forward_text)


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("image_size", 230, "not a multiple of patch_size"),
        ("vit.global_blocks", (1, 2), "last global-attention block"),
        ("vit.heads", 3, "head dim"),
        ("vit.window_size", 0, "window_size"),
        ("text.heads", 5, "not divisible by heads"),
    ],
)
def test_invalid_configs(field, value, match):
    cfg = model_config("tiny")
    node = cfg
    *parents, leaf = field.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(ValueError, match=match):
        validate_model_config(cfg)


def test_unknown_variant():
    with pytest.raises(ValueError, match="unknown model variant 'huge'"):
        model_config("huge")
