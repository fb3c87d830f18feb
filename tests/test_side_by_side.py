"""benchmarks/flow_grpo_side_by_side.py without a flow_grpo checkout: its refusals (named option, value and rule,
before any work), its dry run (looks, starts nothing), and its paired-ratio statistics (analytic cases)."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def sbs():
    spec = importlib.util.spec_from_file_location("flow_grpo_side_by_side",
                                                  os.path.join(ROOT, "benchmarks", "flow_grpo_side_by_side.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def fake_checkout(root, sbs, drop_file: str = "", drop_marker: str = "") -> str:
    """A folder with the reference's file names and the text the hooks need (no reference code)."""
    for rel in sbs.REQUIRED_FILES:
        if rel == drop_file:
            continue
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        markers = [m for m in sbs.REQUIRED_MARKERS.get(rel, ()) if m != drop_marker]
        with open(path, "w") as f:
            f.write("\n".join(markers) + "\n")
    return str(root)


def test_missing_flow_grpo_option_is_refused_before_any_work(sbs, tmp_path, capsys):
    out = tmp_path / "out"
    assert sbs.main(["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--flow-grpo is required" in err and "yifan123/flow_grpo" in err
    assert not out.exists()


def test_a_path_that_does_not_exist_is_named(sbs, tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert sbs.main(["--flow-grpo", str(missing), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"--flow-grpo={str(missing)!r}" in err and "no such directory" in err
    assert not (tmp_path / "out").exists()


def test_a_folder_of_another_layout_names_the_missing_files(sbs, tmp_path, capsys):
    root = fake_checkout(tmp_path / "ckpt", sbs, drop_file="scripts/train_sd3.py")
    assert sbs.main(["--flow-grpo", root]) == 2
    err = capsys.readouterr().err
    assert "not a flow_grpo checkout of the expected layout" in err and "scripts/train_sd3.py" in err


def test_a_trainer_without_the_hooked_text_is_refused(sbs, tmp_path, capsys):
    marker = 'desc=f"Epoch {epoch}.{inner_epoch}: training"'
    root = fake_checkout(tmp_path / "ckpt", sbs, drop_marker=marker)
    assert sbs.main(["--flow-grpo", root]) == 2
    err = capsys.readouterr().err
    assert "scripts/train_sd3.py lacks" in err and "inner_epoch" in err


def test_a_reference_python_that_cannot_run_is_named(sbs, tmp_path, capsys):
    root = fake_checkout(tmp_path / "ckpt", sbs)
    assert sbs.main(["--flow-grpo", root, "--reference-python", str(tmp_path / "no-python")]) == 2
    assert "--reference-python=" in capsys.readouterr().err


def test_a_reference_python_without_the_extras_names_them(sbs, tmp_path, capsys, monkeypatch):
    root = fake_checkout(tmp_path / "ckpt", sbs)
    monkeypatch.setattr(sbs, "REFERENCE_MODULES", ("json", "surely_not_installed_module_xyz"))
    assert sbs.main(["--flow-grpo", root, "--reference-python", sys.executable]) == 2
    err = capsys.readouterr().err
    assert "missing module(s) surely_not_installed_module_xyz;" in err  # json is installed: not named


def test_dry_run_checks_and_prints_the_plan_but_starts_nothing(sbs, tmp_path, capsys, monkeypatch):
    root = fake_checkout(tmp_path / "ckpt", sbs)
    monkeypatch.setattr(sbs, "REFERENCE_MODULES", ("json",))
    monkeypatch.setattr(sbs, "run", lambda args: pytest.fail("the dry run started work"))
    out = tmp_path / "out"
    assert sbs.main(["--flow-grpo", root, "--reference-python", sys.executable, "--dry-run", "--out", str(out)]) == 0
    plan = capsys.readouterr().out
    assert "16 trajectories (2 prompts x 8)" in plan and "10 sampled / 9 trained steps" in plan and "CFG 4.5" in plan
    assert not out.exists()


@pytest.mark.parametrize("flag, value", [("--pairs", "1"), ("--warmup", "0"), ("--threads", "0")])
def test_bad_counts_are_named(sbs, flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        sbs.parse_args([flag, value])
    assert e.value.code == 2
    assert f"{flag}={value}: must be >=" in capsys.readouterr().err


def test_paired_ratios_and_bootstrap_interval(sbs):
    assert sbs.paired_ratios([1.0, 3.0], [2.0, 4.0]) == [0.5, 0.75]
    with pytest.raises(ValueError, match="equal, non-empty"):
        sbs.paired_ratios([1.0], [1.0, 2.0])
    assert sbs.bootstrap_median_interval([0.8] * 7) == (0.8, 0.8)  # no spread, no interval
    vals = [0.70, 0.75, 0.80, 0.85, 0.90, 0.95, 1.00, 1.05]
    lo, hi = sbs.bootstrap_median_interval(vals)
    assert min(vals) <= lo < 0.875 < hi <= max(vals)  # brackets the sample median, inside the data's range
    assert sbs.bootstrap_median_interval(vals) == (lo, hi)  # seeded


def test_summary_normalises_per_trajectory_per_trained_step(sbs):
    def rec(s, t):
        return {"wall": {"sampling": s, "training": t, "total": s + t}, "cpu": {"sampling": s, "training": t, "total": s + t}}

    pairs = [{"ours": rec(1.0, 2.0), "theirs": rec(2.0, 4.0)}, {"ours": rec(1.5, 3.0), "theirs": rec(3.0, 6.0)}]
    s = sbs.summarise(pairs, normaliser=144)
    assert s["wall/total"]["ratio_median"] == pytest.approx(0.5)
    assert s["cpu/sampling"]["ratio_interval95"] == [pytest.approx(0.5), pytest.approx(0.5)]
    assert s["wall/training"]["theirs_ms_per_traj_step"] == pytest.approx(1e3 * 5.0 / 144)
