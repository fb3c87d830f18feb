"""The held-out feature network (evaluation only) and the per-prompt evaluation file."""

import ast
import json
import math
import os
import sys

import pytest

from drift.checkpoint import sha256_file
from drift.config import make_config
from drift.rundir import RunDir
from drift.train import train
from drift.worlds.shapes import backend
from drift.worlds.shapes.features import DenoisingAutoencoder, ShapesFeatureNet, load_features

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_heldout_net_is_committed_with_another_seed_and_objective():
    held = backend.HELDOUT_FEATURES
    assert isinstance(load_features(held), DenoisingAutoencoder)
    default = make_config([]).model.features
    assert isinstance(load_features(default), ShapesFeatureNet) and os.path.realpath(default) != os.path.realpath(held)
    cards = [json.load(open(os.path.join(p, "card.json"))) for p in (default, held)]
    assert cards[0]["recipe"]["seed"] != cards[1]["recipe"]["seed"]
    assert cards[0]["recipe"]["objective"] != cards[1]["recipe"]["objective"]
    for n, f in cards[1]["files"].items():  # the card describes the committed files
        assert sha256_file(os.path.join(held, n)) == f["sha256"], n


def test_only_the_evaluation_reads_the_heldout_net():
    """No method, and no engine code but the evaluation, names the held-out net in its code (static check)."""
    allowed = {os.path.join("drift", "evaluate.py"), os.path.join("drift", "worlds", "shapes", "backend.py"),
               os.path.join("drift", "worlds", "sd3", "backend.py"), os.path.join("drift", "worlds", "types.py")}
    found = []
    for top in ("drift", "baselines"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            for n in files:
                rel = os.path.relpath(os.path.join(dirpath, n), ROOT)
                if n.endswith(".py") and rel not in allowed:
                    for node in ast.walk(ast.parse(open(os.path.join(ROOT, rel)).read())):
                        name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")
                        if "heldout" in name.lower() or "HELDOUT" in name:
                            found.append(f"{rel}:{node.lineno}: {name}")
    assert not found, found


def test_a_run_feeds_methods_the_first_net_and_writes_per_prompt_evaluations(tmp_path, monkeypatch):
    calls = []
    embed = backend.ShapesFeatures.embed

    def spy(self, images):
        caller = sys._getframe(1).f_code
        calls.append((self.path, os.path.relpath(caller.co_filename, ROOT), caller.co_name))
        return embed(self, images)

    monkeypatch.setattr(backend.ShapesFeatures, "embed", spy)
    cfg = make_config(["method=diverse_grpo", "train.iterations=1", "sample.groups_per_iter=2", "sample.group_size=4",
                       "sample.num_steps=3", "eval.num_prompts=4", "eval.seeds=2", "eval.num_steps=2", "eval.every=1",
                       "eval.grid_prompts=1", "tracking_uri=none", f"out={tmp_path}"])
    train(cfg, progress=False)
    held = [c for c in calls if c[0] == backend.HELDOUT_FEATURES]
    assert held and all(c[1:] == (os.path.join("drift", "evaluate.py"), "eval_metrics") for c in held), held
    in_loop = [c for c in calls if c[1] == os.path.join("drift", "train.py")]
    assert in_loop and all(c[0] == cfg.model.features for c in in_loop), in_loop  # what the methods' bonuses see
    rd = RunDir(cfg.run_dir())
    assert rd.eval_per_prompt_steps() == [0, 1]
    rows = {r["step"]: r for r in rd.read_metrics()}
    for step in (0, 1):
        per = rd.read_eval_per_prompt(step)
        assert per["step"] == step and len(per["prompts"]) == 4
        scalars = {k for k in rows[step] if k.startswith("eval/")}
        assert set(per["metrics"]) == scalars  # every eval scalar is a mean over prompts: each has its list
        assert "eval/diversity/heldout" in scalars
        for k in ("eval/alignment", "eval/diversity", "eval/diversity/heldout", "eval/diversity/position_std"):
            v = per["metrics"][k]
            assert len(v) == 4 and sum(v) / 4 == pytest.approx(rows[step][k], rel=1e-5, abs=1e-7), k
        ent = [x for x in per["metrics"]["eval/diversity/free_attr_entropy"] if not math.isnan(x)]
        assert sum(ent) / len(ent) == pytest.approx(rows[step]["eval/diversity/free_attr_entropy"], rel=1e-5, abs=1e-7)
