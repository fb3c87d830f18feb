"""The base-model (step-0) evaluation is computed once per output root and shared: a run that copies it has
bitwise the metrics and files of a run that computes it, across methods and seeds; a changed eval config misses."""

import json
import os

from drift.config import make_config
from drift.eval_cache import base_eval_key, package_code_hash
from drift.rundir import BASE_EVAL_CACHE, RunDir
from drift.train import train

ITEMS = ["train.iterations=1", "sample.groups_per_iter=1", "sample.group_size=2", "sample.num_steps=2",
         "eval.num_prompts=2", "eval.seeds=2", "eval.num_steps=2", "tracking_uri=none",
         "threads=1"]


def _run(out, *extra):
    cfg = make_config(ITEMS + [f"out={out}", *extra])
    train(cfg, progress=False)
    rd = RunDir(cfg.run_dir())
    row0 = next(r for r in rd.read_metrics() if r["step"] == 0)
    files = {rel: open(os.path.join(rd.path, rel), "rb").read() for rel in rd.eval_step_files(0)}
    return {k: v for k, v in row0.items() if k != "sys/eval_seconds"}, files


def _entries(out):
    root = os.path.join(out, BASE_EVAL_CACHE)
    return sorted(n for n in os.listdir(root) if not n.endswith(".lock")) if os.path.isdir(root) else []


def test_shared_base_eval_is_bitwise_the_computed_one_and_a_changed_eval_config_misses(tmp_path, capsys):
    shared, alone = tmp_path / "shared", tmp_path / "alone"
    _run(shared, "method=flow_grpo", "seed=0")  # computes and stores the entry
    assert len(_entries(shared)) == 1
    capsys.readouterr()
    m_hit, f_hit = _run(shared, "method=drift", "seed=1")  # another method and seed: copies it
    assert "shared from" in capsys.readouterr().out
    m_own, f_own = _run(alone, "method=drift", "seed=1")  # the same run in a fresh root: computes it
    assert "shared from" not in capsys.readouterr().out
    assert json.dumps(m_hit, sort_keys=True) == json.dumps(m_own, sort_keys=True)  # bitwise (repr of every float)
    assert f_hit == f_own and "samples/eval_000000.png" in f_hit
    _run(shared, "method=drift", "seed=1", "eval.grid_prompts=1")  # a changed eval field: a new entry
    assert "shared from" not in capsys.readouterr().out and len(_entries(shared)) == 2


def test_the_key_covers_every_eval_relevant_section_and_not_the_method_or_seed():
    def key(*extra):
        cfg = make_config(ITEMS + list(extra))
        return base_eval_key(cfg.to_dict(), {"path": "fp"}, "cpu")[0]

    base = key()
    assert key("method=drift", "seed=3", "train.lr=0.5") == base
    for change in ("eval.grid_prompts=1", "sample.cfg=1", "sample.shift=2", "reward.w_size=1", "model.lora_rank=4"):
        assert key(change) != base, change
    cfg = make_config(ITEMS)
    assert base_eval_key(cfg.to_dict(), {"path": "other"}, "cpu")[0] != base  # a changed model file
    assert base_eval_key(cfg.to_dict(), {"path": "fp"}, "cuda:0")[0] != base
    assert len(package_code_hash()) == 64


def test_a_run_computing_the_entry_holds_its_lock_so_that_the_others_wait(tmp_path):
    import subprocess
    import sys

    from drift.eval_cache import BaseEvalCache

    cache = BaseEvalCache(str(tmp_path), "k" * 16, {})
    probe = ("import fcntl, sys\nf = open(sys.argv[1], 'a')\ntry:\n    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
             "except BlockingIOError:\n    sys.exit(3)\n")
    with cache.computing():
        held = subprocess.run([sys.executable, "-c", probe, cache.entry.lock], timeout=60)
    free = subprocess.run([sys.executable, "-c", probe, cache.entry.lock], timeout=60)
    assert (held.returncode, free.returncode) == (3, 0)
