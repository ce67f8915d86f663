"""Resizing equals torch F.interpolate (bilinear without / with antialias, nearest)."""

import jax.numpy as jnp
import numpy as np
import pytest

from sam3_jax.layers.resize import resize_bilinear, resize_nearest

torch = pytest.importorskip("torch")
F = torch.nn.functional

SIZES = [((16, 16), (64, 64)), ((72, 72), (288, 288)), ((288, 288), (72, 72)), ((288, 288), (480, 640)),
         ((5, 7), (13, 3)), ((10, 10), (10, 10)), ((288, 288), (1008, 1008))]


def _torch(x, size, **kw):
    t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    return F.interpolate(t, size=size, **kw).numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("src,dst", SIZES)
def test_bilinear_matches_torch(src, dst):
    x = np.random.default_rng(0).standard_normal((2, *src, 3)).astype(np.float32)
    ours = np.asarray(resize_bilinear(jnp.asarray(x), dst))
    ref = _torch(x, dst, mode="bilinear", align_corners=False, antialias=False)
    np.testing.assert_allclose(ours, ref, atol=2e-6, rtol=0)


@pytest.mark.parametrize("src,dst", [((288, 288), (72, 72)), ((1008, 1008), (288, 288)), ((100, 60), (33, 20))])
def test_antialiased_bilinear_matches_torch(src, dst):
    x = np.random.default_rng(1).standard_normal((1, *src, 2)).astype(np.float32)
    ours = np.asarray(resize_bilinear(jnp.asarray(x), dst, antialias=True))
    ref = _torch(x, dst, mode="bilinear", align_corners=False, antialias=True)
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)
    plain = _torch(x, dst, mode="bilinear", align_corners=False, antialias=False)
    assert np.max(np.abs(ours - plain)) > 1e-2  # the two modes really differ when downsampling


@pytest.mark.parametrize("src,dst", SIZES + [((72, 72), (252, 252))])
def test_nearest_matches_torch(src, dst):
    x = np.random.default_rng(2).standard_normal((1, *src, 2)).astype(np.float32)
    ours = np.asarray(resize_nearest(jnp.asarray(x), dst))
    np.testing.assert_array_equal(ours, _torch(x, dst, mode="nearest"))


def test_resize_errors():
    with pytest.raises(ValueError, match="NHWC"):
        resize_bilinear(jnp.zeros((4, 4)), (2, 2))
    with pytest.raises(ValueError, match="positive"):
        resize_nearest(jnp.zeros((1, 4, 4, 1)), (0, 2))


@pytest.mark.parametrize("src,dst", [((256, 256), (224, 224)), ((1152, 1152), (1008, 1008)), ((256, 256), (200, 300)),
                                     ((64, 64), (100, 100))])
def test_exact_antialiased_resize_of_binary_masks(src, dst):
    """`resize_bilinear_aa_exact` is torch's CPU antialiased bilinear bit for bit on binary masks
    and on +-1024 maps of them, where thresholding at 0.5 / 0 hits exact ties (the official video
    model's mask consolidation); `resize_bilinear(antialias=True)` flips some of those pixels."""
    import jax

    from sam3_jax.layers.resize import resize_bilinear_aa_exact

    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[:src[0], :src[1]]
    m = np.zeros(src, np.float32)
    for _ in range(6):
        cx, cy, r = rng.uniform(0, src[1]), rng.uniform(0, src[0]), rng.uniform(5, src[0] / 3)
        m[(xx - cx) ** 2 + (yy - cy) ** 2 < r ** 2] = 1
    x = np.stack([m, np.where(m > 0, 1024.0, -1024.0).astype(np.float32)])
    ours = np.asarray(jax.jit(lambda v: resize_bilinear_aa_exact(v, dst))(x))
    ref = F.interpolate(torch.from_numpy(x)[:, None], size=dst, mode="bilinear", align_corners=False,
                        antialias=True)[:, 0].numpy()
    assert np.array_equal(ours, ref)
