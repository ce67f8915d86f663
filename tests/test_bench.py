"""The FLOP counter behind benchmarks/bench_train.py's MFU."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from bench_train import jaxpr_flops  # noqa: E402


def _count(fn, *args, **kw):
    return jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr, **kw)


def test_matmul_conv_scan_and_cond_flops():
    a, b = jnp.ones((2, 5, 3)), jnp.ones((3, 4))
    assert _count(lambda a, b: a @ b, a, b) == 2 * 2 * 5 * 4 * 3
    x, k = jnp.ones((1, 8, 8, 3)), jnp.ones((3, 3, 3, 6))
    conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))  # noqa: E731
    assert _count(conv, x, k) == 2 * (8 * 8 * 6) * 3 * 9

    def scanned(a, b, flags):
        def body(c, flag):
            y = jax.lax.cond(flag, lambda c: (c @ b) @ b.T, lambda c: c @ jnp.eye(3), c)  # 2 matmuls or 1
            return y, None
        return jax.lax.scan(body, a, flags)[0]

    flags = jnp.array([True, False, False, True, False])
    per_true = 2 * (2 * 5 * 4) * 3 + 2 * (2 * 5 * 3) * 4  # (2,5,3) @ (3,4), then (2,5,4) @ (4,3)
    per_false = 2 * (2 * 5 * 3) * 3  # (2,5,3) @ (3,3)
    assert _count(scanned, a, b, flags) == 5 * per_true  # the costliest branch when nothing is known
    # lax.cond's branches are (false, true): 3 iterations take the first, 2 the second
    assert np.isclose(_count(scanned, a, b, flags, branch_counts={5: (3, 2)}), 3 * per_false + 2 * per_true)


def test_bench_infer_arguments(monkeypatch, capsys):
    """bench_infer.py parses its flags and refuses bad ones before any work (a real run takes minutes)."""
    import pytest

    import bench_infer

    assert bench_infer.cpu_isa()  # e.g. "AVX2 (no AVX-512)"
    for argv, message in ((["--dtype", "float16"], "invalid choice: 'float16'"),
                          (["--repeats", "0"], "--repeats must be at least 1")):
        monkeypatch.setattr(sys, "argv", ["bench_infer.py", "--config", "tiny", *argv])
        with pytest.raises(SystemExit):
            bench_infer.main()
        assert message in capsys.readouterr().err
