"""train.py end to end on the smoke config: outputs, and exact resume after kill -9."""

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest

SMOKE = ["--config", "configs/synthetic.py:smoke", "--config.train.steps=8", "--config.train.log_every=1",
         "--config.train.checkpoint_every=1", "--config.train.eval_every=0", "--config.data.eval_examples=8"]


def _losses(workdir) -> dict:
    """Last logged loss per step (a resumed run logs again from its checkpoint)."""
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            if "loss" in rec:
                out[rec["step"]] = rec["loss"]
    return out


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, repo_root, python):
    workdir = tmp_path_factory.mktemp("train_a")
    r = subprocess.run([python, "train.py", "--workdir", str(workdir)] + SMOKE, cwd=repo_root,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return workdir, r.stdout


def test_train_outputs(uninterrupted):
    workdir, stdout = uninterrupted
    assert "validation (unseen images) cgF1" in stdout and "held-out colour-shape combinations cgF1" in stdout
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["step"] == 8 and np.isfinite(summary["last"]["loss"])
    assert set(summary["eval"]) >= {"val/cgF1", "held_out/cgF1", "val/IL_MCC", "held_out/IL_MCC"}
    assert sorted(_losses(workdir)) == list(range(1, 9))
    assert list((workdir / "pictures").glob("*.png"))
    assert (workdir / "checkpoints").is_dir()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(workdir / "tensorboard"))
    events.Reload()
    assert {"loss", "final_eval/val/cgF1"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("loss")] == list(range(1, 9))


def test_kill_and_resume_replays_exactly(uninterrupted, tmp_path, repo_root, python):
    ref = _losses(uninterrupted[0])
    kill_after = int(np.random.default_rng(int(time.time())).integers(3, 7))
    cmd = [python, "train.py", "--workdir", str(tmp_path)] + SMOKE
    proc = subprocess.Popen(cmd, cwd=repo_root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 600
    committed = lambda: [d for d in (tmp_path / "checkpoints").glob("*") if d.name.isdigit()]  # noqa: E731
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and max(_losses(tmp_path) or [0]) >= kill_after and (tmp_path / "checkpoints").exists() \
                and committed():
            break
        time.sleep(0.1)
    assert proc.poll() is None, "training finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert max(_losses(tmp_path)) < 8
    r = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    resumed = [int(line.rsplit(" ", 1)[-1]) for line in (r.stdout + r.stderr).splitlines() if "resumed from" in line]
    assert resumed and 1 <= resumed[0] < 8, "the restart did not resume from a checkpoint"
    got = _losses(tmp_path)
    assert sorted(got) == sorted(ref)
    for step in ref:
        assert abs(got[step] - ref[step]) <= 1e-6 * max(1.0, abs(ref[step])), (step, got[step], ref[step], kill_after)


def test_resume_draws_no_init(uninterrupted, tmp_path, repo_root, python):
    """A restart that finds a checkpoint restores it into abstract targets: it neither draws an init
    nor loads --init_from (both would be replaced by the restore anyway)."""
    import shutil

    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted[0], workdir)
    argv = ["train.py", "--workdir", str(workdir), "--init_from", str(tmp_path / "absent")] + SMOKE + \
        ["--config.train.steps=9"]
    script = (
        "import runpy, sys\n"
        "import sam3_jax.train.loop as loop\n"
        "def boom(*a, **k):\n"
        "    raise AssertionError('init on resume')\n"
        "loop.init_params = loop._load_init = loop.init_shardings = boom\n"
        f"sys.argv = {argv!r}\n"
        "runpy.run_path('train.py', run_name='__main__')\n"
    )
    r = subprocess.run([python, "-c", script], cwd=repo_root, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "at step 8" in r.stdout + r.stderr
    assert sorted(_losses(workdir)) == list(range(1, 10))


def test_init_from_converted_checkpoint_gives_exactly_the_converted_params(tmp_path, repo_root, python):
    """--init_from: an official-layout checkpoint at the training config's sizes (built by the oracle),
    converted by convert_weights.py, is what the run starts from, bit for bit."""
    pytest.importorskip("sam3")
    import importlib.util

    import jax
    import torch

    from sam3_jax.config import model_config
    from sam3_jax.convert.checkpoint import load_converted
    from sam3_jax.model.sam3_image import image_model_target_shapes
    from sam3_jax.parallel.mesh import logical_rules, make_mesh, param_shardings
    from sam3_jax.parallel.state import abstract_params
    from sam3_jax.parity import oracle
    from sam3_jax.train import loop

    spec = importlib.util.spec_from_file_location("syn", os.path.join(repo_root, "configs", "synthetic.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = mod.get_config("smoke")
    official = oracle.random_image_model(cfg.model, seed=4)
    ckpt = tmp_path / "sam3.pt"
    torch.save({f"detector.{k}": v for k, v in official.state_dict().items()}, ckpt)
    out = tmp_path / "converted"
    r = subprocess.run([python, "convert_weights.py", "--checkpoint", str(ckpt), "--output", str(out),
                        "--config", "configs/synthetic.py:smoke"], cwd=repo_root, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    converted, _ = load_converted(str(out), image_model_target_shapes(cfg.model))
    from sam3_jax.model.sam3_image import Sam3Image

    mesh, rules = make_mesh(cfg.mesh), logical_rules(cfg)
    s = cfg.model.image_size
    specs = [jax.ShapeDtypeStruct((4, s, s, 3), np.float32), jax.ShapeDtypeStruct((4, 32), np.int32),
             jax.ShapeDtypeStruct((4, 2, 4), np.float32), jax.ShapeDtypeStruct((4, 2), np.int32),
             jax.ShapeDtypeStruct((4, 2), np.bool_)]
    p_sh = param_shardings(abstract_params(Sam3Image(cfg.model), specs, mesh, rules), mesh, rules)
    started = loop._load_init(str(out), cfg, p_sh)
    for a, b in zip(jax.tree_util.tree_leaves(started), jax.tree_util.tree_leaves(converted)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    w = official.state_dict()["transformer.decoder.bbox_embed.layers.0.weight"].numpy()
    np.testing.assert_array_equal(np.asarray(started["transformer"]["decoder"]["bbox_embed"]["layers"]["0"]["kernel"]), w.T)
    # A checkpoint of another size is refused with a clear message.
    other = tmp_path / "other"
    tiny = oracle.random_image_model(model_config("tiny"), seed=1)
    torch.save({f"detector.{k}": v for k, v in tiny.state_dict().items()}, tmp_path / "tiny.pt")
    r = subprocess.run([python, "convert_weights.py", "--checkpoint", str(tmp_path / "tiny.pt"), "--output", str(other),
                        "--config", "configs/sam3.py:tiny"], cwd=repo_root, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    with pytest.raises(ValueError, match="do not fit this model config"):
        loop._load_init(str(other), cfg, p_sh)
