"""drift/rundir.py: the run directory's files, the one metrics reader, the one config hash.

The run directory names of every committed grid point (and of the invariance configs) are recorded in
tests/golden/run_dir_names.json, made first with the code before drift/rundir.py existed (d11a0a1) and
regenerated once on purpose, when the SD3-fidelity work changed science defaults (train.cfg_grad,
train.ema_unit / ema_every, the attn.-prefixed model.lora_targets, sample.shift=0 = the model's own,
sample.micro_batch), and again when DRIFT's O1 default drift.lam went 0.05 -> 1.0 and the fast grid was
trimmed to 8 iterations x 7 settings x 2 seeds (9697a9d, 4cf3cc8, 33cfc83): a sweep skips finished points by these names, so they must never change by accident. The default model paths
in a config are absolute, so the recorded hashes are taken with the checkout's path replaced by
'<repo>' (the same names in any clone, CI's included). Regenerate only after an
intended change of the config (and say so in the commit):
    UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/test_rundir.py -k golden
"""

import json
import math
import os
import subprocess
import sys

import pytest

from drift.rundir import NON_SCIENCE_KEYS, RunDir, last_step, read_jsonl, read_metrics, science_hash

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(ROOT, "tests", "golden", "run_dir_names.json")
INVARIANCE = ["train.iterations=3", "sample.groups_per_iter=2", "sample.group_size=4", "sample.num_steps=5",
              "eval.num_prompts=4", "eval.seeds=2", "eval.num_steps=4", "eval.every=3", "eval.grid_prompts=2",
              "checkpoint_every=3", "tracking_uri=none", "threads=1"]


def _write(path: str, text: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return path


def _rows(*steps: int) -> str:
    return "".join(json.dumps({"step": s, "loss/policy": 0.5 * s, "eval/x": "nan"}) + "\n" for s in steps)


# ------------------------------------------------------------------------------------------------
# No torch
# ------------------------------------------------------------------------------------------------
def test_rundir_and_the_analysis_loaders_import_no_torch():
    code = ("import sys; import drift.rundir, analysis.io; "
            "bad = [m for m in ('torch', 'mlflow', 'diffusers') if m in sys.modules]; "
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": ROOT})
    assert r.returncode == 0, r.stderr[-2000:]


# ------------------------------------------------------------------------------------------------
# The metrics reader
# ------------------------------------------------------------------------------------------------
def test_metrics_rows_decode_non_finite_strings_and_skip_blank_lines(tmp_path):
    _write(str(tmp_path / "metrics.jsonl"), _rows(0, 1) + "\n  \n" + _rows(2))
    rows = read_metrics(str(tmp_path))
    assert [r["step"] for r in rows] == [0, 1, 2] and rows[2]["loss/policy"] == 1.0
    assert all(math.isnan(r["eval/x"]) for r in rows)
    assert read_jsonl(str(tmp_path / "metrics.jsonl"), decode=False)[0]["eval/x"] == "nan"  # as written


def test_a_torn_last_line_is_dropped_with_a_warning(tmp_path):
    _write(str(tmp_path / "metrics.jsonl"), _rows(0, 1, 2) + '{"step": 3, "loss/pol')
    with pytest.warns(UserWarning, match=r"metrics\.jsonl: dropping a torn last line"):
        rows = read_metrics(str(tmp_path))
    assert [r["step"] for r in rows] == [0, 1, 2]
    with pytest.warns(UserWarning, match="torn last line"):
        assert last_step(str(tmp_path)) == 2


def test_a_corrupt_line_before_the_last_is_an_error_naming_file_and_line(tmp_path):
    path = _write(str(tmp_path / "metrics.jsonl"), _rows(0) + "\n" + '{"step": 1, "lo\n' + _rows(2))
    with pytest.raises(ValueError, match=rf"{path}: line 3 is not valid JSON"):  # line 2 is blank
        read_metrics(str(tmp_path))
    with pytest.raises(ValueError, match="line 3"):
        last_step(str(tmp_path))


def test_missing_metrics_name_the_file_and_last_step_is_minus_one(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"metrics\.jsonl: no metrics"):
        read_metrics(str(tmp_path))
    assert last_step(str(tmp_path)) == -1
    _write(str(tmp_path / "metrics.jsonl"), "")
    assert last_step(str(tmp_path)) == -1 and read_metrics(str(tmp_path)) == []


def test_the_sweep_progress_survives_a_torn_or_corrupt_file(tmp_path):
    from experiments.sweep import progress_step

    assert progress_step(str(tmp_path)) == 0  # nothing logged yet
    _write(str(tmp_path / "metrics.jsonl"), _rows(0, 1, 2, 3) + '{"st')
    with pytest.warns(UserWarning):
        assert progress_step(str(tmp_path)) == 3  # before: 0 (the torn line made the whole read fail)
    _write(str(tmp_path / "metrics.jsonl"), "{oops\n" + _rows(1))
    assert progress_step(str(tmp_path)) == 0


def test_the_analysis_loader_keeps_a_finished_run_whose_last_line_is_torn(tmp_path):
    from analysis import io as aio

    cfg = {"method": "flow_grpo", "seed": 0, "train": {"iterations": 2}}
    rd = RunDir(tmp_path / "r")
    _write(rd.config, json.dumps(cfg))
    ev = [{"step": s, "eval/alignment": 1.0 + s, "eval/diversity": 0.5} for s in (0, 2)]
    _write(rd.metrics, "".join(json.dumps(r) + "\n" for r in ev) + '{"step": 3, "x"')
    _write(rd.final_eval, "{}")
    _write(rd.done, "{}")
    ds = aio.load_run_dirs([rd.path])
    assert list(ds.points["step"]) == [0, 2]  # kept: its final evaluation is intact
    assert any("torn last line" in w and "kept" in w for w in ds.warnings)  # and said so in the report


# ------------------------------------------------------------------------------------------------
# is_done, checkpoints, the layout
# ------------------------------------------------------------------------------------------------
def test_is_done_needs_both_done_and_final_eval(tmp_path):
    rd = RunDir(tmp_path)
    assert not rd.is_done()
    _write(rd.done, "{}")
    assert not rd.is_done()  # DONE without final_eval.json: not finished
    _write(rd.final_eval, "{}")
    assert rd.is_done()
    os.remove(rd.done)
    assert not rd.is_done()


def test_committed_steps_are_those_with_a_manifest(tmp_path):
    rd = RunDir(tmp_path)
    assert rd.committed_steps() == []
    for step, manifest in ((3, True), (12, True), (15, False)):
        os.makedirs(rd.checkpoint(step))
        if manifest:
            _write(os.path.join(rd.checkpoint(step), RunDir.MANIFEST), "{}")
    os.makedirs(os.path.join(rd.checkpoints, ".tmp_step_000020_1"))
    assert rd.committed_steps() == [3, 12]
    assert os.path.basename(rd.checkpoint(12)) == "step_000012" and rd.eval_grid(7).endswith("samples/eval_000007.png")


def test_per_prompt_eval_file_round_trips_atomically(tmp_path):
    rd = RunDir(tmp_path)
    assert rd.eval_per_prompt_steps() == [] and rd.eval_per_prompt(7).endswith(os.path.join("evals", "per_prompt_000007.json"))
    metrics = {"eval/alignment": [1.0, 2.0], "eval/diversity/free_attr_entropy": [float("nan"), 0.5]}
    rd.write_eval_per_prompt(7, ["a", "b"], metrics)
    rd.write_eval_per_prompt(12, ["a", "b"], metrics)
    assert rd.eval_per_prompt_steps() == [7, 12] and not [n for n in os.listdir(rd.evals) if n.endswith(".tmp")]
    with open(rd.eval_per_prompt(7)) as f:  # strict JSON: NaN is written as the string 'nan'
        json.load(f, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    got = rd.read_eval_per_prompt(7)
    assert got["step"] == 7 and got["prompts"] == ["a", "b"] and got["metrics"]["eval/alignment"] == [1.0, 2.0]
    assert math.isnan(got["metrics"]["eval/diversity/free_attr_entropy"][0])
    with pytest.raises(ValueError, match=r"'eval/alignment' has 1 values for 2 prompts"):
        rd.write_eval_per_prompt(9, ["a", "b"], {"eval/alignment": [1.0]})
    assert rd.eval_per_prompt_steps() == [7, 12]


def test_no_module_spells_a_run_directory_file_name_but_rundir():
    """Every run-directory file name is written in drift/rundir.py only (string constants in the code;
    'config.json', 'manifest.json' and 'samples' also name other things: model folders, a table column)."""
    import ast

    names = {getattr(RunDir, a) for a in ("METRICS", "MLFLOW_STATE", "FINAL_EVAL", "DONE", "CHECKPOINTS", "LOCK",
                                          "LAUNCH_LOG", "JOB_MARKER", "STDOUT_LOG", "HELD", "RELEASE", "EVALS")} | {"sweep.json"}
    found = []
    for top in ("drift", "baselines", "experiments", "analysis", "benchmarks"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            for n in files:
                path = os.path.join(dirpath, n)
                if not n.endswith(".py") or path.endswith(os.path.join("drift", "rundir.py")):
                    continue
                for node in ast.walk(ast.parse(open(path).read())):
                    if isinstance(node, ast.Constant) and node.value in names:
                        found.append(f"{os.path.relpath(path, ROOT)}:{node.lineno}: {node.value!r}")
    assert not found, found


# ------------------------------------------------------------------------------------------------
# The science hash
# ------------------------------------------------------------------------------------------------
def test_science_hash_ignores_the_non_science_keys_and_the_fingerprint():
    base = {"method": "drift", "train": {"lr": 1e-3}, "options": {"lam": 1.0}}
    h = science_hash(base)
    assert len(h) == 10 and int(h, 16) >= 0
    other = {**base, **{k: f"any-{k}" for k in NON_SCIENCE_KEYS}, "model_fingerprint": {"path": "abc"}}
    assert science_hash(other) == h
    assert science_hash({**base, "train": {"lr": 3e-4}}) != h
    assert science_hash({**base, "options": {"lam": 2.0}}) != h


def test_the_engine_hash_is_the_rundir_hash_of_its_config_json(tmp_path):
    """What prepare_run_dir writes (config + model_fingerprint) hashes to the run directory's own name."""
    from drift.config import make_config
    from drift.train import prepare_run_dir

    cfg = make_config(INVARIANCE + ["method=drift", f"out={tmp_path}", "seed=2"])
    run_dir, _ = prepare_run_dir(cfg)
    written = RunDir(run_dir).read_config()
    assert "model_fingerprint" in written
    assert science_hash(written) == cfg.science_hash() == os.path.basename(os.path.dirname(run_dir))
    assert run_dir == RunDir.of(str(tmp_path), "default", "drift", cfg.science_hash(), 2).path


def test_a_resume_that_changes_only_non_science_keys_is_accepted(tmp_path):
    from drift.config import ConfigError, make_config
    from drift.train import prepare_run_dir

    items = [i for i in INVARIANCE if not i.startswith(("threads=", "tracking_uri="))] + ["method=flow_grpo"]
    rd, _ = prepare_run_dir(make_config(items + [f"out={tmp_path}", "threads=1", "tracking_uri=none"]))
    rd2, changes = prepare_run_dir(make_config(items + [f"out={tmp_path}/.", "threads=2", "tracking_uri=sqlite:///x.db"]))
    assert os.path.normpath(rd2) == os.path.normpath(rd) and changes == []
    with open(RunDir(rd).config) as f:  # a config.json edited by hand: a science change is refused
        d = json.load(f)
    d["train"]["lr"] = 0.5
    _write(RunDir(rd).config, json.dumps(d))
    with pytest.raises(ConfigError, match=r"train\.lr: 0\.5 ->"):
        prepare_run_dir(make_config(items + [f"out={tmp_path}"]))


def _portable(value, root: str):
    """``value`` with the checkout's absolute path replaced by '<repo>' (default model paths are absolute,
    so the hash of a run directory depends on where the repository is checked out)."""
    if isinstance(value, dict):
        return {k: _portable(v, root) for k, v in value.items()}
    if isinstance(value, str) and value.startswith(root):
        return "<repo>" + value[len(root):]
    return value


def _name(cfg) -> str:
    """method/<science hash of the config with the checkout path made portable>/seed<k>."""
    from drift.prompts import REPO_ROOT

    assert cfg.science_hash() == science_hash(cfg.to_dict())  # the run directory uses the one hash
    return f"{cfg.method}/{science_hash(_portable(cfg.to_dict(), REPO_ROOT))}/seed{cfg.seed}"


def _names_now() -> dict[str, str]:
    from drift.config import make_config
    from experiments.grids import expand, load, names

    out = {}
    common = {"experiment": "x", "out": "runs", "threads": 1, "tracking_uri": "none"}
    for g in names():
        grid = load(g)
        for w in grid.worlds:
            for p in expand(grid, w, common=common):
                out[f"{g}/{w}/#{p.index}"] = _name(p.cfg)
    for m in ("flow_grpo", "flow_grpo_kl", "diverse_grpo", "drift"):
        out[f"invariance/{m}"] = _name(make_config(INVARIANCE + [f"method={m}", "out=runs"]))
    out["default"] = _name(make_config([]))
    return out


def test_run_directory_names_match_the_golden_record():
    got = _names_now()
    if os.environ.get("UPDATE_GOLDEN"):
        with open(GOLDEN, "w") as f:
            json.dump(got, f, indent=1, sort_keys=True)
    with open(GOLDEN) as f:
        want = json.load(f)
    changed = {k: (want.get(k), got.get(k)) for k in sorted(set(want) | set(got)) if want.get(k) != got.get(k)}
    assert not changed, f"run directory names changed (a sweep would rerun these points): {changed}"
