#!/usr/bin/env python
"""Compile time of the full SAM 3 image model on the machine at hand (CPU by default).

Lowers and compiles the full-config forward (1008 px, batch 1, one text prompt) from abstract
inputs: no weights are allocated and nothing runs. Prints the lowering and compile seconds against
the 60 s budget; repeated blocks are scanned, so the time does not grow with depth.

    python benchmarks/bench_compile.py [--variant full|tiny] [--remat none|full|dots]
"""

import argparse
import time

import jax
import jax.numpy as jnp


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", default="full")
    ap.add_argument("--remat", default="none")
    ap.add_argument("--train", action="store_true", help="also compile value_and_grad of a scalar loss")
    args = ap.parse_args()
    from sam3_jax.config import model_config
    from sam3_jax.model.sam3_image import Sam3Image, image_model_target_shapes

    cfg = model_config(args.variant)
    cfg.remat = args.remat
    model = Sam3Image(cfg)
    s, t = cfg.image_size, cfg.text.context_length
    params = image_model_target_shapes(cfg)
    inputs = (jax.ShapeDtypeStruct((1, s, s, 3), jnp.float32), jax.ShapeDtypeStruct((1, t), jnp.int32),
              jax.ShapeDtypeStruct((1, 1, 4), jnp.float32), jax.ShapeDtypeStruct((1, 1), jnp.int32),
              jax.ShapeDtypeStruct((1, 1), jnp.bool_))

    def forward(p, *x):
        out = model.apply({"params": p}, *x)
        return out["pred_logits"], out["pred_boxes"], out["pred_masks"]

    fns = {"forward": forward}
    if args.train:
        fns["value_and_grad"] = jax.value_and_grad(lambda p, *x: sum(jnp.sum(o) for o in forward(p, *x)))
    print(f"backend {jax.default_backend()}, variant {args.variant}, remat {args.remat}")
    for name, fn in fns.items():
        t0 = time.perf_counter()
        lowered = jax.jit(fn).lower(params, *inputs)
        t1 = time.perf_counter()
        lowered.compile()
        t2 = time.perf_counter()
        print(f"{name:15s} lower {t1 - t0:6.1f} s   compile {t2 - t1:6.1f} s   total {t2 - t0:6.1f} s "
              f"({'within' if t2 - t0 < 60 else 'OVER'} the 60 s budget)")


if __name__ == "__main__":
    main()
