#!/usr/bin/env python
"""Image inference time of the official SAM 3 (`Sam3Processor`) against `Sam3ImagePredictor`, in one run.

Both sides hold the same seeded random weights (the official model from
`sam3_jax.parity.oracle.random_image_model`, converted by `sam3_jax.convert.convert_image_model`) and
see the same photo (`skimage.data.astronaut()`, 512 x 512) and the same prompts. Three cases:

  (a) full inference: set_image + one text prompt,
  (b) one more text prompt on the cached image encoding,
  (c) 16 text prompts on one image (official: 16 `set_text_prompt` calls; ours: one `predict_batch`).

    python benchmarks/bench_infer.py                                  # tiny config (224 px), 3 repeats
    python benchmarks/bench_infer.py --config tiny --repeats 2 --json out/bench_infer.json
    python benchmarks/bench_infer.py --config full --repeats 3        # 1008 px: many minutes on a CPU

sam3_jax: the first call (compile + run) and the median of `--repeats` further calls (steady state);
compile ~ first - steady. Official: the median of `--repeats` calls after one warm-up call. The timed
calls of the two sides alternate, so both see the same machine state. Every timed call ends in numpy
arrays (the predictor returns them), so nothing is left running on the device. Ratio = sam3_jax
steady / official (below 1: sam3_jax is faster). With random weights few or no queries pass the
default 0.5 threshold (the "kept" column); `--threshold 0` keeps every query, so that the mask
upsampling to the photo's size is timed too. Peak host memory is `ru_maxrss`, the peak of the whole
process so far, read after the set-up (both models' weights), after the official warm-ups and after
sam3_jax's first calls (so each figure includes the phases before it).

Matmuls run at JAX's default precision (fp32 on a CPU; TF32 on an Ampere+ GPU), not the "highest"
precision the parity runs and tests set. torch uses `os.cpu_count()` threads; XLA's CPU client
uses its own pool over all cores. Without torch and the official `sam3` package (e.g. on a GPU
machine), or with `--no_official`, only sam3_jax runs, on random weights drawn straight into the
param tree (`random_params`: N(0, 0.02^2), not the model's init; the times do not depend on it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import statistics
import time
import warnings

import jax

TEXT = "a person"
NEXT_TEXT = "a helmet"
TEXTS16 = ["a person", "a helmet", "a flag", "a glove", "a space suit", "a face", "a hand", "the sky",
           "a patch", "a rocket", "an astronaut", "a visor", "a shoulder", "hair", "a pocket", "a white suit"]


def cpu_isa() -> str:
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        return "unknown (no /proc/cpuinfo)"
    if "avx512f" in flags:
        amx = " + AMX-BF16" if "amx_bf16" in flags else ""
        return "AVX-512" + (" + AVX-512 BF16" if "avx512_bf16" in flags else " (no BF16)") + amx
    return "AVX2 (no AVX-512)" if "avx2" in flags else "no AVX2"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    except OSError:
        return "?"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def official_available() -> bool:
    try:
        import sam3.model.sam3_image_processor  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def random_params(abstract, seed: int = 0, shardings=None):
    """Params of the given abstract tree (ShapeDtypeStructs), floating leaves drawn N(0, 0.02^2):
    one small jit of random draws instead of compiling the model's own init (about a minute at the
    full config on a GPU). For timing only: the values are not the model's init."""
    import jax.numpy as jnp

    leaves, tree = jax.tree_util.tree_flatten(abstract)

    def draw(key):
        keys = jax.random.split(key, len(leaves))
        return tree.unflatten([
            (0.02 * jax.random.normal(k, a.shape, jnp.float32)).astype(a.dtype)
            if jnp.issubdtype(a.dtype, jnp.floating) else jnp.zeros(a.shape, a.dtype)
            for k, a in zip(keys, leaves)])

    return jax.jit(draw, out_shardings=shardings)(jax.random.key(seed))


def build_weights(cfg, seed: int, with_official: bool):
    """(official model or None, sam3_jax params)."""
    if with_official:
        from sam3_jax.convert import convert_image_model
        from sam3_jax.parity import oracle

        model = oracle.random_image_model(cfg, seed)
        params, _ = convert_image_model(oracle.state_dict_numpy(model), cfg)
        return model, params
    import flax.linen as nn
    import jax.numpy as jnp

    from sam3_jax.model.sam3_image import Sam3Image

    s, t = cfg.image_size, cfg.text.context_length
    zeros = (jnp.zeros((1, s, s, 3)), jnp.zeros((1, t), jnp.int32), jnp.zeros((1, 1, 4)),
             jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1), bool))
    abstract = jax.eval_shape(lambda key: nn.meta.unbox(Sam3Image(cfg).init(key, *zeros))["params"],
                              jax.random.key(seed))
    return None, random_params(abstract, seed)


def official_cases(model, cfg, photo, threshold: float) -> dict:
    """The three cases as callables on the official `Sam3Processor` (each returns the kept counts)."""
    from PIL import Image
    from sam3.model.sam3_image_processor import Sam3Processor

    from sam3_jax.parity.oracle import cuda_to_cpu

    pil = Image.fromarray(photo)
    with cuda_to_cpu():
        proc = Sam3Processor(model, resolution=cfg.image_size, device="cpu", confidence_threshold=threshold)
    holder = {}

    def full():
        with cuda_to_cpu():
            holder["state"] = proc.set_text_prompt(TEXT, proc.set_image(pil))
        return len(holder["state"]["scores"])

    def one_more():
        with cuda_to_cpu():
            return len(proc.set_text_prompt(NEXT_TEXT, holder["state"])["scores"])

    def sixteen():
        with cuda_to_cpu():
            return [len(proc.set_text_prompt(t, holder["state"])["scores"]) for t in TEXTS16]

    return {"a": full, "b": one_more, "c": sixteen}


def cast_params(params, dtype):
    """Floating-point leaves of `params` cast to `dtype` (the stored params of a bf16 checkpoint)."""
    import jax.numpy as jnp

    return jax.tree_util.tree_map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)


def ours_cases(params, cfg, photo, threshold: float, dtype: str = "float32",
               attention: str | None = None) -> dict:
    """The three cases as callables on `Sam3ImagePredictor` (each returns the kept counts), and
    "d": the compiled image encoder + one prompt's grounding alone, on inputs already on the device
    (no host pre-processing, no transfers, no masks). bfloat16: params cast to bf16 and
    `model.dtype=bfloat16` (the path of `convert_weights.py --dtype bfloat16`). attention: the
    config's `attention_impl` (None = the automatic choice)."""
    import jax.numpy as jnp
    import numpy as np

    from sam3_jax.formats.image import preprocess
    from sam3_jax.predict.predictor import Sam3ImagePredictor

    cfg = cfg.copy_and_resolve_references()
    cfg.attention_impl = attention
    if dtype != "float32":
        cfg.dtype = dtype
        params = cast_params(params, dtype)
    pred = Sam3ImagePredictor(params, cfg)
    image = jax.device_put(jnp.asarray(preprocess(photo, pred.resolution)[None]))
    no_boxes = (np.zeros((1, 0, 4), np.float32), np.zeros((1, 0), np.int32), np.ones((1, 0), bool))
    tokens = jax.device_put(jnp.asarray(pred._tokens([TEXT])))
    prompt = [jax.device_put(jnp.asarray(a)) for a in no_boxes]

    def full():
        pred.set_image(photo)
        return len(pred.predict(text=TEXT, threshold=threshold)["scores"])

    def one_more():
        return len(pred.predict(text=NEXT_TEXT, threshold=threshold)["scores"])

    def sixteen():
        return [len(o["scores"]) for o in pred.predict_batch(texts=TEXTS16, threshold=threshold)]

    def forward():
        image_out, _ = pred._encode_image(pred._detector_params, None, image)
        text = pred._encode_text(pred._detector_params, tokens)
        det = pred._ground(pred._detector_params, image_out, text, jnp.int32(0), *prompt)
        return int(jnp.sum(jax.block_until_ready(det["scores"]) > threshold))

    return {"a": full, "b": one_more, "c": sixteen, "d": forward}


CASES = {"a": "(a) set_image + 1 text prompt", "b": "(b) +1 text prompt, cached image",
         "c": "(c) 16 text prompts, one image", "d": "(d) encoder + 1 prompt, on device"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="tiny", choices=["tiny", "full"], help="sam3_jax.config.model_config variant")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per case (median)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="sam3_jax's compute dtype (the official model stays float32)")
    ap.add_argument("--threshold", type=float, default=0.5, help="confidence threshold of both sides")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    ap.add_argument("--no_official", action="store_true", help="time sam3_jax alone")
    ap.add_argument("--attention", default=None, choices=["xla", "cudnn", "blocked"],
                    help="sam3_jax's attention kernel (default: the automatic choice)")
    ap.add_argument("--profile", default=None, metavar="DIR",
                    help="after the timed calls, trace one call of (a) and of (d) into DIR and print the top ops")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the figures as JSON")
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    warnings.filterwarnings("ignore")  # the official package's import-time deprecation / no-CUDA warnings

    import skimage.data

    from sam3_jax.config import model_config

    cfg = model_config(args.config)
    with_official = not args.no_official and official_available()
    dev = jax.devices()[0]
    info = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "config": args.config, "image_size": int(cfg.image_size), "dtype": args.dtype, "repeats": args.repeats,
        "cpu": cpu_name(), "cpu_isa": cpu_isa(), "cpu_count": os.cpu_count(),
        "jax": jax.__version__, "jax_backend": jax.default_backend(),
        "jax_device": getattr(dev, "device_kind", dev.platform), "matmul_precision": "default",
        "attention": args.attention or "automatic",
    }
    if with_official:
        import torch

        torch.set_num_threads(os.cpu_count())
        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    print(f"{info['date']}  config {args.config} ({cfg.image_size} px), {args.dtype}, {args.repeats} repeats, "
          f"attention {info['attention']}")
    print(f"CPU {info['cpu']}, {info['cpu_count']} cores, {info['cpu_isa']}")
    xla = f", XLA pool over all {os.cpu_count()} cores" if info["jax_backend"] == "cpu" else ""
    print(f"jax {jax.__version__} on {info['jax_backend']} ({info['jax_device']}{xla}), default matmul precision; "
          + (f"torch {info['torch']} with {info['torch_threads']} threads" if with_official
             else "official model not timed (" + ("--no_official" if args.no_official else
                                                  "torch / sam3 not importable") + ")"))

    photo = skimage.data.astronaut()
    t, (model, params) = timed(lambda: build_weights(cfg, args.seed, with_official))
    mem = {"setup": peak_rss_mib()}
    print(f"weights ready in {t:.1f} s ({'official random model, converted' if with_official else 'random_params'}); "
          f"photo astronaut {photo.shape[1]}x{photo.shape[0]}", flush=True)

    # The official warm-ups, then sam3_jax's first calls (memory read after each), then the timed calls
    # of both sides in alternation, so that both see the same machine state.
    off = official_cases(model, cfg, photo, args.threshold) if with_official else None
    if off:
        for k in off:
            off[k]()  # warm-up
        mem["official"] = peak_rss_mib()
    jx = ours_cases(params, cfg, photo, args.threshold, args.dtype, args.attention)
    first = {k: timed(jx[k])[0] for k in CASES}  # compile + run
    mem["sam3_jax"] = peak_rss_mib()
    ours, official = {}, ({} if off else None)
    for k in CASES:
        t_ours, t_off = [], []
        for _ in range(args.repeats):
            if off and k in off:
                t_off.append(timed(off[k]))
            t_ours.append(timed(jx[k]))
        steady = statistics.median(t for t, _ in t_ours)
        ours[k] = {"first": first[k], "seconds": steady, "compile": max(0.0, first[k] - steady),
                   "kept": t_ours[-1][1]}
        if t_off:
            official[k] = {"seconds": statistics.median(t for t, _ in t_off), "kept": t_off[-1][1]}

    print()
    head = f"{'case':36s} {'sam3_jax first':>14s} {'steady':>9s} {'compile':>8s}"
    if official:
        head += f" {'official':>9s} {'jax/official':>12s}  kept (jax / official)"
    else:
        head += "  kept"
    print(head)
    cases = {}
    for k, name in CASES.items():
        o = ours[k]
        line = f"{name:36s} {o['first']:12.3f} s {o['seconds']:7.3f} s {o['compile']:6.2f} s"
        case = {"name": name, "sam3_jax_first_s": o["first"], "sam3_jax_steady_s": o["seconds"],
                "sam3_jax_compile_s": o["compile"], "sam3_jax_kept": o["kept"]}
        kept = str(sum(o["kept"])) if k == "c" else str(o["kept"])
        if k in (official or {}):
            r = official[k]
            ratio = o["seconds"] / r["seconds"]
            line += f" {r['seconds']:7.3f} s {ratio:11.2f}x"
            kept += " / " + (str(sum(r["kept"])) if k == "c" else str(r["kept"]))
            case.update(official_s=r["seconds"], official_kept=r["kept"], ratio=ratio)
        print(line + "  " + kept)
        cases[k] = case
    print("\npeak host RSS of the process (ru_maxrss, cumulative): "
          + ", ".join(f"after {k} {v:,.0f} MiB" for k, v in mem.items()))
    if args.profile:
        from profile_infer import op_kinds

        for k in ("a", "d"):
            d = os.path.join(args.profile, k)
            with jax.profiler.trace(d):
                jx[k]()
            print(f"\ntop ops of one call of {CASES[k]} (summed kernel time, jax.profiler trace in {d}):")
            for kind, ms, n in op_kinds(d, 12):
                print(f"  {ms:10.2f} ms  x{n:<6d} {kind}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({**info, "cases": cases, "peak_rss_mib": mem}, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
