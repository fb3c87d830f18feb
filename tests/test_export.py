"""A trained shapes run leaves the suite: its export folder (drift/export.py) is reloaded in a fresh process through
the shapes model's own loader and regenerates the run's final evaluation images; ``python -m drift.evaluate`` and
``python -m drift.generate`` work from the run directory and from the export. (The SD3 pipeline's
``load_lora_weights`` round trip is in tests/test_sd3.py.)"""

import json
import os
import subprocess
import sys

import pytest
import torch

from drift.config import make_config
from drift.train import train
from drift.viz import read_grid_tile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ITEMS = ["train.iterations=2", "sample.groups_per_iter=2", "sample.group_size=4", "sample.num_steps=4",
         "eval.num_prompts=2", "eval.seeds=2", "eval.num_steps=4", "eval.every=2", "eval.grid_prompts=2",
         "checkpoint_every=2", "tracking_uri=none", "threads=1", "train.lr=0.02", "train.ema_every=1"]
ENV = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

FRESH = r"""
import json, sys
import torch
from drift.config import make_config
from drift.evaluate import eval_noise, evaluate
from drift.worlds import make_world
path, items, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
cfg = make_config(items + [f"model.path={path}"])
world = make_world(cfg)  # the exported folder through the shapes model's from_pretrained (a fresh LoRA: B = 0)
prompts = world.eval_prompts(cfg.eval.num_prompts)
m, imgs = evaluate(world, prompts, eval_noise(world, len(prompts), cfg.eval.seeds), cfg.eval.num_steps, cfg.sample.cfg,
                   cfg.sample.shift)
torch.save(imgs, out)
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("export_run")
    cfg = make_config(ITEMS + [f"out={out}"])
    train(cfg, progress=False)
    return cfg, cfg.run_dir(), out


def fresh_images(tmp_path, model_path: str) -> torch.Tensor:
    out = str(tmp_path / "imgs.pt")
    subprocess.run([sys.executable, "-c", FRESH, model_path, json.dumps(ITEMS + [f"out={tmp_path}"]), out], check=True,
                   env=ENV, cwd=str(tmp_path))
    return torch.load(out)


def test_exported_model_folder_reproduces_the_final_eval_in_a_fresh_process(run, tmp_path):
    cfg, run_dir, _ = run
    export = os.path.join(run_dir, "export")
    with open(os.path.join(export, "drift_export.json")) as f:
        info = json.load(f)
    assert (info["step"], info["weights"], info["world"], info["model"]) == (2, "ema", "shapes", "model")
    imgs = fresh_images(tmp_path, os.path.join(export, "model"))
    grid = os.path.join(run_dir, "samples", "eval_000002.png")
    h = imgs.shape[-1]
    worst = 0.0
    for i in range(cfg.eval.grid_prompts):
        for j in range(cfg.eval.seeds):
            tile = read_grid_tile(grid, i, j, h, h)
            k = tile.shape[-1] // h  # small images are upscaled in the grid (nearest, by a whole factor)
            worst = max(worst, float((tile[:, ::k, ::k] - (imgs[i, j] * 255).round() / 255).abs().max()))
    assert worst <= 1.5 / 255  # the LoRA merged into the weights: equal up to rounding
    base = fresh_images(tmp_path, cfg.model.path)
    assert (base - imgs).abs().max() > 2 / 255  # the trained policy, not the base, is what the export holds


def test_evaluate_command_reproduces_the_final_eval_from_run_dir_and_export(run, tmp_path):
    cfg, run_dir, _ = run
    with open(os.path.join(run_dir, "final_eval.json")) as f:
        final = json.load(f)["final"]
    for src in (run_dir, os.path.join(run_dir, "export")):
        out = str(tmp_path / os.path.basename(src))
        r = subprocess.run([sys.executable, "-m", "drift.evaluate", src, "--out", out], env=ENV, cwd=ROOT,
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        with open(os.path.join(out, "eval.json")) as f:
            got = json.load(f)["metrics"]
        assert {k: got[k] for k in final if k != "step" and not k.startswith("sys/")} == \
            {k: v for k, v in final.items() if k != "step" and not k.startswith("sys/")}, src
        assert os.path.exists(os.path.join(out, "grid.png"))


def test_generate_and_export_commands(run, tmp_path):
    cfg, run_dir, _ = run
    out = str(tmp_path / "gen")
    r = subprocess.run([sys.executable, "-m", "drift.generate", os.path.join(run_dir, "export"), "--prompt",
                        "a red circle on a blue background", "--prompt", "a green square", "--seeds", "0,7", "--out", out],
                       env=ENV, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(os.listdir(out)) == ["000_0.png", "000_7.png", "001_0.png", "001_7.png", "generate.json"]
    r = subprocess.run([sys.executable, "-m", "drift.generate", run_dir, "--prompt", "x", "--seeds", "a"], env=ENV,
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "--seeds='a'" in r.stderr
    r = subprocess.run([sys.executable, "-m", "drift.export", run_dir, "--step", "2"], env=ENV, cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert os.path.exists(os.path.join(run_dir, "exports", "step_000002", "lora", "pytorch_lora_weights.safetensors"))
    r = subprocess.run([sys.executable, "-m", "drift.export", run_dir, "--step", "1"], env=ENV, cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--step=1: no checkpoint" in r.stderr


def test_grids_cap_their_tiles_and_carry_prompts_and_iteration(tmp_path):
    from drift.viz import save_grid, tile_side

    assert (tile_side(32), tile_side(64), tile_side(96), tile_side(512), tile_side(1024)) == (96, 64, 96, 256, 256)
    big = torch.rand(2, 3, 3, 512, 512)
    w, h = save_grid(big, str(tmp_path / "g.png"), ["a cat", "a dog " * 100], "iteration 50")
    assert w == 3 * (256 + 2) + 2 and h == (14 + 2) + 2 * (256 + 2 + 14) + 2  # header + (prompt line + tile) per row
    assert save_grid(big, str(tmp_path / "plain.png")) == (3 * 258 + 2, 2 * 258 + 2)
    small = torch.rand(1, 2, 3, 32, 32)
    save_grid(small, str(tmp_path / "s.png"), ["a red circle"], "iteration 0")
    tile = read_grid_tile(str(tmp_path / "s.png"), 0, 1, 32, 32)
    assert tile.shape == (3, 96, 96) and (tile[:, ::3, ::3] - (small[0, 1] * 255).round() / 255).abs().max() < 1e-6
