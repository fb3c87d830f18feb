"""experiments/mechanisms.py: the DRIFT mechanism metrics of finished runs, per configuration, from training rows only."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from experiments import mechanisms as M  # noqa: E402


def run(root, name, seed, corr, done=True, kappa=1.5):
    d = os.path.join(root, "drift", name, f"seed{seed}")
    os.makedirs(d)
    json.dump({"method": "drift", "seed": seed, "options": {"kappa": kappa, "lam": 1.0}}, open(os.path.join(d, "config.json"), "w"))
    rows = [{"step": i, "drift/corr_adv_div_given_gate": c, "drift/bonus_to_incorrect": 0.0, "eval/alignment": 9.0}
            for i, c in enumerate(corr, 1)]
    rows.append({"step": len(corr) + 1, "drift/dropped_frac": "nan"})  # a non-finite value is not a measurement
    with open(os.path.join(d, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    if done:
        open(os.path.join(d, "final_eval.json"), "w").write("{}")
        open(os.path.join(d, "DONE"), "w").write("{}")


def test_means_per_configuration_and_seed_range(tmp_path, capsys):
    root = str(tmp_path)
    run(root, "a", 100, [0.2, 0.4])            # mean 0.3
    run(root, "a", 101, [0.5, 0.7])            # mean 0.6
    run(root, "a", 102, [0.9], done=False)     # unfinished: left out and counted
    run(root, "b", 100, [0.1], kappa=2.5)
    table, unfinished = M.collect(root)
    assert unfinished == 1
    a = table["drift kappa=1.5 lam=1.0"]
    assert sorted(a) == [100, 101] and a[100]["corr_adv_div_given_gate"] == pytest.approx(0.3)
    assert "dropped_frac" not in a[100] and "alignment" not in str(a)  # NaN rows skipped; no evaluation metric read
    assert M.main([root, "--json", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    assert "3 finished runs (1 unfinished left out)" in out
    assert "drift kappa=1.5  (seeds [100, 101])" in out  # lam=1.0 is shared by every configuration: not repeated
    assert "corr_adv_div_given_gate      0.450  [0.300, 0.600]" in out
    assert json.load(open(tmp_path / "m.json"))["drift kappa=2.5 lam=1.0"]["100"]["bonus_to_incorrect"] == 0.0


def test_bad_folder_is_refused(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "mechanisms.py"), str(tmp_path / "none")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "not a folder" in r.stderr
    assert M.main([str(tmp_path)]) == 1  # nothing finished: says so, exit 1
