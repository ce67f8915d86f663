"""Host preprocessing is bit-identical to the official processor; RLE and input validation."""

import numpy as np
import pytest

from sam3_jax.formats.masks import rle_decode, rle_encode
from sam3_jax.formats.image import preprocess, resize_uint8, to_uint8_rgb


def _images():
    import skimage.data as sk

    rng = np.random.default_rng(0)
    return [sk.astronaut(), sk.chelsea(), rng.integers(0, 256, (37, 91, 3), dtype=np.uint8),
            rng.integers(0, 256, (1300, 700, 3), dtype=np.uint8)]


@pytest.mark.parametrize("size", [(224, 224), (1008, 1008), (100, 300), (17, 5)])
def test_resize_uint8_equals_torchvision(size):
    pytest.importorskip("skimage")
    torch = pytest.importorskip("torch")
    from torchvision.transforms import v2

    for img in _images():
        ref = v2.Resize(size)(v2.functional.to_image(img)).permute(1, 2, 0).numpy()
        ours = resize_uint8(img, size)
        assert ours.dtype == np.uint8 and ours.shape == ref.shape
        np.testing.assert_array_equal(ours, ref)
    del torch


def test_device_preprocessing_is_bit_identical_and_compiles_per_bucket():
    """The predictor resizes and normalises on the device (only uint8 travels): bit-identical to
    the host `preprocess` (itself = torchvision), for up-, down- and same-size images, and its
    small jitted function compiles once per IMAGE_BUCKET-padded size."""
    pytest.importorskip("skimage")
    import jax

    from sam3_jax.formats.image import resize_taps, resize_uint8_on_device
    from sam3_jax.predict import predictor as P

    class Stub:  # _prepare_image needs only these two attributes of a predictor
        def __init__(self):
            self.resolution = 224
            self._prepare = jax.jit(P.device_preprocess)

    stub = Stub()
    images = _images() + [np.full((224, 224, 3), 7, np.uint8), np.arange(5 * 3 * 3, dtype=np.uint8).reshape(5, 3, 3)]
    for img in images:
        got = np.asarray(P.Sam3ImagePredictor._prepare_image(stub, img))
        assert got.dtype == np.float32 and got.shape == (1, 224, 224, 3)
        np.testing.assert_array_equal(got[0], preprocess(img, 224))
    for size in [(300, 17), (1008, 1008)]:  # other output sizes, taps padded to 8 (zero weights)
        img = images[0]
        taps = [resize_taps(n, m, 8) for n, m in zip(img.shape[1::-1], size[::-1])]
        np.testing.assert_array_equal(np.asarray(resize_uint8_on_device(img, *taps)), resize_uint8(img, size))
    # 37x91 and 5x3 (both enlarged: 4 taps) share the 128x128 bucket; the others take their own
    buckets = {(-(-h // P.IMAGE_BUCKET), -(-w // P.IMAGE_BUCKET)) for h, w, _ in (i.shape for i in images)}
    assert stub._prepare._cache_size() == len(buckets) < len(images)


def test_preprocess_equals_official_transform():
    torch = pytest.importorskip("torch")
    from torchvision.transforms import v2

    img = _images()[1]
    official = v2.Compose([
        v2.ToDtype(torch.uint8, scale=True), v2.Resize(size=(224, 224)),
        v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=[0.5] * 3, std=[0.5] * 3),
    ])
    ref = official(v2.functional.to_image(img)).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(preprocess(img, 224), ref, atol=1e-7, rtol=0)


def test_pil_input_and_errors():
    from PIL import Image

    img = np.zeros((5, 7, 3), np.uint8)
    assert to_uint8_rgb(Image.fromarray(img)).shape == (5, 7, 3)
    with pytest.raises(ValueError, match="mode 'L'"):
        to_uint8_rgb(Image.fromarray(img[..., 0]))
    with pytest.raises(TypeError, match="dtype uint8"):
        to_uint8_rgb(img.astype(np.float32))
    with pytest.raises(ValueError, match=r"shape \(H, W, 3\)"):
        to_uint8_rgb(np.zeros((5, 7, 4), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        to_uint8_rgb(np.zeros((0, 7, 3), np.uint8))
    with pytest.raises(TypeError, match="numpy array or a PIL image"):
        to_uint8_rgb([[1, 2, 3]])


def test_rle_round_trip_and_pycocotools_convention():
    rng = np.random.default_rng(3)
    for m in [rng.random((13, 17)) > 0.5, np.ones((4, 4), bool), np.zeros((3, 5), bool)]:
        r = rle_encode(m)
        np.testing.assert_array_equal(rle_decode(r), m)
        assert sum(r["counts"]) == m.size
    mask_utils = pytest.importorskip("pycocotools.mask")
    m = rng.random((9, 11)) > 0.6
    ref = mask_utils.frPyObjects(rle_encode(m), 9, 11)
    np.testing.assert_array_equal(mask_utils.decode(ref).astype(bool), m)
