"""Test-wide settings: fp32 matmuls at the highest precision (parity), quiet official warnings."""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
# One persistent XLA compilation cache for the CLI subprocesses of this test session (train.py runs
# compile the same programs again and again), never the user's own cache.
if "SAM3_JAX_COMPILATION_CACHE" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["SAM3_JAX_COMPILATION_CACHE"] = tempfile.mkdtemp(prefix="sam3_jax_test_xla_cache_")
    atexit.register(shutil.rmtree, os.environ["SAM3_JAX_COMPILATION_CACHE"], True)

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
# Eight simulated CPU devices for the mesh tests; everything else runs on device 0 as usual.
jax.config.update("jax_num_cpu_devices", 8)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures")


def official_key_table(prefix="") -> dict:
    """The released checkpoint's key table (tests/fixtures/sam3_official_keys.tsv) as
    {key: KeySpec(shape, dtype)}, limited to keys starting with `prefix` (a str or a tuple)."""
    import numpy as np

    from sam3_jax.convert.convert import KeySpec

    table = {}
    with open(os.path.join(FIXTURES, "sam3_official_keys.tsv")) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            key, shape, dtype = line.rstrip("\n").split("\t")
            if key.startswith(prefix):
                table[key] = KeySpec(tuple(int(d) for d in shape.split("x")) if shape else (), np.dtype(dtype))
    return table


@pytest.fixture(scope="session")
def repo_root() -> str:
    return REPO


@pytest.fixture(scope="session")
def python() -> str:
    return sys.executable


@pytest.fixture(scope="session")
def tiny_cfg():
    from sam3_jax.config import model_config

    return model_config("tiny")


def synthetic_model_config():
    """The model config of configs/synthetic.py (112 px, d_model 32: the smallest full model)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("synthetic_cfg", os.path.join(REPO, "configs", "synthetic.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config("").model


@pytest.fixture(scope="session")
def full_cfg():
    from sam3_jax.config import model_config

    return model_config("full")


def assert_parity(ours, ref, tolerance: float, what: str = "") -> float:
    """Stage parity as the parity CLI judges it: max abs error <= tolerance x max(1, max |official|)
    (`sam3_jax.parity.run.allowed_error`: fp32 rounding grows with the magnitude of the values, and
    CPUs of another ISA sum conv / norm reductions in another order). Returns the max abs error."""
    from sam3_jax.parity.run import allowed_error, compare

    r = compare(what, ours, ref, tolerance)
    assert r.ok, (f"{what}: max abs error {r.max_abs:.3g} > {allowed_error(tolerance, r.scale):.3g} "
                  f"(tolerance {tolerance:g} x max(1, max |official| = {r.scale:.3g}))")
    return r.max_abs
