#!/usr/bin/env python
"""Per-frame time of the video model: `Sam3VideoPredictor`'s compiled step at several object
capacities, side by side with the official video model on the same weights and clip, and the
memory of a long session.

    python benchmarks/bench_video.py                       # tiny config, capacities 1, 8, 32, 24 frames
    python benchmarks/bench_video.py --long 600            # + host / device memory at frame 60 and 600
    python benchmarks/bench_video.py --config full --frames 4 --objects 8 --no_official

Both sides hold the same seeded random weights (the official video model from
`sam3_jax.parity.video.build_video_model`, converted) and see the same synthetic clip of moving
objects with a text prompt on frame 0. Random weights need low thresholds to create tracks
(`--low_thresholds`, on by default: detection and new-track thresholds 0, NMS 0.5), so the number
of live objects is whatever the weights produce (printed: the median live count per frame). The
capacity bounds the objects; sam3_jax's tracking runs on the live slots plus those births may take,
rounded up to a power of two (`--no-compact`: on every slot of the capacity, the cost of a full
state). Official: total propagation time / frames (it runs one tracker per birth batch, so its time
grows with the objects it holds). sam3_jax: the median time per frame (frame in, outputs on the
host) over a second pass of the clip, the first having compiled every step size it needs. Memory: current RSS (/proc/self/statm) and the bytes
of live jax arrays, at frame 60 and at the last frame of a `--long` session (sam3_jax only).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np


def rss_mib() -> float:
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def device_mib() -> float:
    return sum(a.nbytes for a in jax.live_arrays()) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="tiny", choices=["tiny", "full"])
    ap.add_argument("--objects", default="1,8,32", help="object capacities to time (comma separated)")
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--long", type=int, default=0, help="also run a session of this many frames (memory)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no_official", action="store_true")
    ap.add_argument("--low_thresholds", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--compact", action=argparse.BooleanOptionalAction, default=True,
                    help="track only the live slots (and those births may take), else every slot")
    args = ap.parse_args()

    from bench_infer import cpu_isa, cpu_name

    from sam3_jax.config import model_config
    from sam3_jax.data.synthetic_video import SyntheticVideoSource
    from sam3_jax.parity.video import video_config_for_random_weights
    from sam3_jax.predict.video import Sam3VideoPredictor

    cfg = model_config(args.config)
    low = dict(score_threshold_detection=0.0, new_det_thresh=0.0, det_nms_thresh=0.5) if args.low_thresholds else {}
    caps = [int(c) for c in args.objects.split(",")]
    dev = jax.devices()[0]
    print(f"config {args.config} ({cfg.image_size} px), {args.frames} frames, capacities {caps}; "
          f"jax {jax.__version__} on {dev.platform} ({getattr(dev, 'device_kind', '')}); "
          f"CPU {cpu_name()}, {cpu_isa()}")
    src = SyntheticVideoSource("val", seed=1, num_frames=max(args.frames, 2), canvas=cfg.image_size, max_objects=4,
                               min_objects=3)
    clip = [np.asarray(f) for f in src[0]["frames"]][: args.frames]
    text = "a red circle"

    official = None
    with_official = not args.no_official
    if with_official:
        try:
            from sam3_jax.convert.convert import convert_image_model
            from sam3_jax.parity.oracle import state_dict_numpy
            from sam3_jax.parity.video import build_video_model, run_official
        except ImportError:
            with_official = False
    if with_official:
        official = build_video_model(cfg, args.seed, video_config_for_random_weights(**low, max_objects=max(caps)))
        params, _ = convert_image_model(state_dict_numpy(official), cfg, tracker=True)
        run_official(official, clip[:2], text)  # warm-up
        t = time.perf_counter()
        _, ref = run_official(official, clip, text)
        off = (time.perf_counter() - t) / len(clip)
        n_ids = len(set().union(*(set(o["obj_ids"].tolist()) for o in ref.values())))
        print(f"official: {off * 1e3:9.1f} ms / frame ({n_ids} objects over the clip)")
    else:
        from bench_infer import random_params

        from sam3_jax.model.sam3_image import image_model_target_shapes
        from sam3_jax.model.tracker.tracker import tracker_target_shapes

        shapes = {**image_model_target_shapes(cfg), "tracker": tracker_target_shapes(cfg)}
        params = random_params(shapes, args.seed)
        off = None

    for cap in caps:
        p = Sam3VideoPredictor(params, cfg, video_config_for_random_weights(**low, max_objects=cap))
        if not args.compact:
            p.slot_buckets = None

        def one_pass():
            """The clip once -> (time of add_prompt, per-frame times after it, live objects before each)."""
            p.start_session(clip)
            p.step_sizes.clear()
            t = time.perf_counter()
            p.add_prompt(0, text)
            prompt_time, times, live = time.perf_counter() - t, [], []
            for f in range(1, len(clip)):
                live.append(int(np.asarray(p._state.alive).sum()))
                t = time.perf_counter()
                p._run(f, reverse=False)
                times.append(time.perf_counter() - t)
            return prompt_time, times, live

        first, _, _ = one_pass()  # compiles every step size the clip needs
        _, times, live = one_pass()
        step = statistics.median(times)
        ratio = f"  {step / off:5.2f}x official" if off else ""
        sizes = ", ".join(f"{k}: {v}" for k, v in sorted(p.step_sizes.items()))
        print(f"sam3_jax capacity {cap:3d}: {step * 1e3:9.1f} ms / frame (first call {first:.1f} s){ratio}; "
              f"live objects median {statistics.median(live):.0f}, max {max(live)}; steps by slot count {{{sizes}}}; "
              f"births dropped {p.counts['births_dropped']}")

    if args.long:
        src = SyntheticVideoSource("val", seed=2, num_frames=args.long, canvas=cfg.image_size, max_objects=4,
                                   min_objects=3)
        frames = [np.asarray(f) for f in src[0]["frames"]]
        p = Sam3VideoPredictor(params, cfg, video_config_for_random_weights(**low, max_objects=caps[-1]))
        p.start_session(frames, cache_outputs=False)  # streaming: host memory must stay flat
        p.add_prompt(0, text)
        marks = {}
        for f in range(1, len(frames)):
            p._run(f, reverse=False)
            if f + 1 in (60, len(frames)):
                marks[f + 1] = (rss_mib(), device_mib())
        (r60, d60), (rn, dn) = marks[60], marks[len(frames)]
        print(f"memory, capacity {caps[-1]}: frame 60: host {r60:.0f} MiB, jax arrays {d60:.1f} MiB; "
              f"frame {len(frames)}: host {rn:.0f} MiB ({rn / r60:.3f}x), jax arrays {dn:.1f} MiB ({dn / d60:.3f}x)")


if __name__ == "__main__":
    main()
