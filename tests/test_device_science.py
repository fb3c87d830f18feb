"""experiments/device_science.sh (the judging science on a GPU machine in one command) exercised on the CPU, and
experiments/device_results.py (pack for the trip back, rebase, unpack on the dev machine).

The end-to-end test runs the script in a copy of the repository (freeze writes the copy's tuned_defaults.json, never
this checkout's) with DEVICE=cpu. The tune grid's 95 points are finished run directories written as drift.train
writes them, by this checkout (another path: the script rebases them, the sweep skips them, the freeze selects
from them); the judging grid runs one real point (Flow-GRPO, seed 0) at the smoke budget (--seeds 0 --only 0).
It checks the steps' records, the archive (under the limit, no checkpoint, sample image or export) and that,
unpacked into a fresh root here, sweep.py sees the points as done, the freeze reads them and the analysis finds
every run that sweep.json lists."""

import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from drift.rundir import RunDir  # noqa: E402
from experiments import device_results, freeze, sweep  # noqa: E402
from experiments.grids import expand, load  # noqa: E402

SCRIPT = os.path.join("experiments", "device_science.sh")
TINY = " ".join(f"--set {k}={v}" for k, v in {**load("smoke").budget, "train.iterations": 1}.items())
"""The smoke grid's budget with one iteration, as --set overrides: a judging point in seconds."""


def script(args, cwd=ROOT, timeout=1500, **env):
    full = {k: v for k, v in os.environ.items() if k not in ("DRY", "STAGES", "SWEEP_ARGS", "RUNS")}
    full.update({"PY": sys.executable, "DEVICE": "cpu", "JOBS": "2", "THREADS": "1", "POLL": "5", "PYTHONPATH": cwd,
                 **env})
    return subprocess.run(["bash", os.path.join(cwd, SCRIPT), *args], cwd=cwd, env=full, capture_output=True,
                          text=True, timeout=timeout)


def test_bad_input_is_refused_before_any_work(tmp_path):
    out, runs = tmp_path / "out", tmp_path / "runs"
    for env, args, words in (({"JOBS": "many"}, [str(out), "tune"], ["JOBS=many", "whole number"]),
                             ({"DEADLINE_S": "9m"}, [str(out)], ["DEADLINE_S=9m"]),
                             ({}, [str(out), "tune,judge"], ["'judge'", "unknown", "tune pareto ablation"]),
                             ({}, [], ["usage"])):
        r = script(args, RUNS=str(runs), **env)
        assert r.returncode == 2, (env, args, r.stdout, r.stderr)
        assert all(w in r.stderr for w in words), r.stderr
    assert not out.exists() and not runs.exists()


def test_dry_run_prints_every_stage_and_starts_nothing(tmp_path):
    out, runs = tmp_path / "out", tmp_path / "runs"
    r = script([str(out), "tune,pareto,ablation"], DRY="1", RUNS=str(runs), JOBS="16")
    assert r.returncode == 0, r.stdout + r.stderr
    o = r.stdout
    for grid in ("tune", "pareto", "ablation"):
        assert f"experiments/sweep.py --grid {grid} --executor local --device cpu --jobs 16 --threads 1 " \
               f"--tracking-uri none --out {runs}" in o
    assert "95 jobs (95 to run" in o and "TUNED DEFAULTS" in o
    assert f"experiments/freeze.py --grid tune --runs-dir {runs}" in o
    assert f"analysis/frontier.py --grid pareto --runs-dir {runs} --no-mlflow" in o
    assert f"analysis/frontier.py --grid ablation --runs-dir {runs}" in o
    assert not out.exists() and not runs.exists()
    # a sweep argument the sweep refuses: the dry run says so and fails
    r = script([str(out), "tune"], DRY="1", RUNS=str(runs), SWEEP_ARGS="--set train.nope=1")
    assert r.returncode == 2 and "train.nope" in r.stdout + r.stderr and not runs.exists()


def copy_repo(dst):
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        src = os.path.join(ROOT, f)
        if os.path.isfile(src):
            os.makedirs(os.path.join(dst, os.path.dirname(f)), exist_ok=True)
            shutil.copy2(src, os.path.join(dst, f))


def fake_tune_runs(runs):
    """The tune grid's 95 points as finished run directories (config.json, metrics.jsonl, final_eval.json, DONE):
    alignment falls and diversity rises with each method's strength."""
    grid = load("tune")
    pts = expand(grid, common={"experiment": "tune", "out": str(runs), "tracking_uri": "none", "threads": 1})
    for p in pts:
        k = p.knobs
        s = {"flow_grpo_kl": k.get("flow_grpo_kl.beta"), "diverse_grpo": k.get("diverse_grpo.beta", 0) / 4,
             "drift": k.get("drift.lam", 0) / 2}.get(p.arm) or 0.0
        rows = [{"step": 0, "eval/alignment": 1.0, "eval/diversity": 0.3, "eval/diversity/heldout": 0.3},
                {"step": p.cfg.train.iterations, "eval/alignment": 2.0 - 0.9 * s, "eval/diversity": 0.1,
                 "eval/diversity/heldout": 0.1 + 0.2 * s}]
        rd = RunDir(p.run_dir)
        os.makedirs(rd.path)
        for path, obj in ((rd.config, p.cfg.to_dict()), (rd.final_eval, {"first": rows[0], "last": rows[-1]})):
            with open(path, "w") as f:
                json.dump(obj, f)
        with open(rd.metrics, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        with open(rd.done, "w") as f:
            f.write("{}")
    return pts


@pytest.mark.slow
def test_end_to_end_on_cpu_packs_and_unpacks(tmp_path, capsys):
    repo, runs, out, back = tmp_path / "repo", tmp_path / "runs", tmp_path / "out", tmp_path / "back"
    copy_repo(repo)
    fake_tune_runs(runs)
    r = script([str(out), "tune,pareto"], cwd=str(repo), RUNS=str(runs), DEADLINE_S="3000", MIN_SWEEP_S="1",
               MIN_ANALYSIS_S="1", ANALYZE_PARTIAL="1", PARETO_ARGS=f"--seeds 0 --only 0 {TINY}")
    log = (out / "device_science.log").read_text() if (out / "device_science.log").exists() else ""
    assert r.returncode == 3, r.stdout + r.stderr + log[-3000:]  # 3: incomplete (the judging sweep ran 1 point)
    steps = {s["step"]: s for s in json.loads((out / "summary.json").read_text())["note"]["steps"]}
    assert [steps[k]["status"] for k in ("preflight", "tune/sweep", "tune/freeze", "pareto/sweep", "pareto/frontier")] \
        == ["ok", "done", "done", "incomplete", "done"], steps
    assert "95 points" in steps["tune/sweep"]["detail"]
    tuned = json.loads((out / "tuned_defaults.json").read_text())
    assert tuned["status"] == "tuned" and len(tuned["evidence"]) == 95
    assert json.loads((repo / "experiments/grids/tuned_defaults.json").read_text()) == tuned
    # what comes back: at most 8 plain files, each at most 16 MiB; no checkpoint, sample image or export in results
    files = sorted(os.listdir(out))
    assert len(files) <= 8 and all((out / f).is_file() and (out / f).stat().st_size <= 16 * 2**20 for f in files)
    assert {"results.tar.gz", "samples.tar", "summary.txt", "summary.json", "device_science.log"} <= set(files)
    done = [os.path.dirname(p) for p in runs.glob("pareto/*/*/seed0/DONE")]
    assert len(done) == 1 and all(RunDir(d).committed_steps() for d in done)  # the runs do have checkpoints here
    with tarfile.open(out / "results.tar.gz") as t:
        names = t.getnames()
    assert not [n for n in names if any(f"/{d}/" in n for d in ("checkpoints", "samples", "export"))]
    assert not [n for n in names if n.endswith(("LOCK", ".safetensors", ".pt", "mlflow.db"))]
    assert {"MANIFEST.json", "tuned_defaults.json", "runs/tune/sweep.json", "runs/pareto/sweep.json",
            "runs/pareto/analysis/report.md"} <= set(names)
    assert sum(n.endswith("/evals/per_prompt_000001.json") for n in names) == 1
    with tarfile.open(out / "samples.tar") as t:
        assert len([n for n in t.getnames() if n.endswith(".png")]) == 1
    # unpacked into a fresh root on "the dev machine"
    assert device_results.main(["unpack", str(out / "results.tar.gz"), "--runs-dir", str(back)]) == 0
    for exp in ("tune", "pareto"):
        idx = json.loads((back / exp / "sweep.json").read_text())
        assert all(p["run_dir"].startswith(str(back)) for p in idx["points"]) and idx["out"] == str(back)
    assert json.loads((back / "tuned_defaults.json").read_text()) == tuned
    assert len(list(back.glob("pareto/*/*/seed0/samples/*.png"))) == 1
    capsys.readouterr()
    assert sweep.main(["--grid", "tune", "--executor", "local", "--out", str(back), "--dry-run"]) == 0
    assert "95 jobs (0 to run, 95 already done)" in capsys.readouterr().out
    assert freeze.main(["--grid", "tune", "--runs-dir", str(back), "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["methods"] == tuned["methods"]
    from analysis import io as aio

    dirs, _, exp, notes = aio.default_input(str(back), "pareto")
    ds = aio.load_run_dirs(dirs, root=str(back))
    assert exp == "pareto" and len(ds.runs) == 1 and list(ds.runs["arm"]) == ["flow_grpo"]
    missing = [n for n in notes if "does not exist" in n]
    assert len(missing) == 15 and not [n for n in missing if str(back) not in n]  # the 15 points that never ran


def test_pack_drops_figures_first_and_unpack_keeps_a_finished_run(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    rd = runs / "pareto" / "drift" / "abc" / "seed0"
    for rel, size in (("config.json", 10), ("metrics.jsonl", 10), ("DONE", 0), ("final_eval.json", 10),
                      ("evals/per_prompt_000001.json", 10), ("checkpoints/step_000001/manifest.json", 10),
                      ("samples/eval_000001.png", 10), ("export/lora/w.safetensors", 10), ("LOCK", 1),
                      ("stdout.log", 100_000)):
        (rd / rel).parent.mkdir(parents=True, exist_ok=True)
        cfg = json.dumps({"train": {"iterations": 1}}).encode()
        (rd / rel).write_bytes(cfg if rel == "config.json" else b"x" * size)
    (runs / "pareto" / "analysis").mkdir()
    (runs / "pareto" / "analysis" / "report.md").write_text("# report")
    (runs / "pareto" / "analysis" / "pareto.pdf").write_bytes(os.urandom(300_000))  # incompressible
    man = device_results.pack(str(runs), str(out), max_mb=0.2)
    with tarfile.open(out / "results.tar.gz") as t:
        names = set(t.getnames())
        log = t.extractfile("runs/pareto/drift/abc/seed0/stdout.log").read()
    assert "runs/pareto/analysis/report.md" in names and "runs/pareto/analysis/pareto.pdf" not in names
    assert man["left_out"] and "PDF" in man["left_out"][0] and not man["over_limit"]
    assert len(log) == device_results.LOG_TAIL
    assert not [n for n in names if "checkpoints" in n or "samples" in n or "export" in n or n.endswith("LOCK")]
    # a run finished on the dev machine is not replaced by an unfinished copy from an archive
    back = tmp_path / "back"
    (back / "pareto" / "drift" / "abc" / "seed0").mkdir(parents=True)
    for n in ("DONE", "final_eval.json"):
        (back / "pareto" / "drift" / "abc" / "seed0" / n).write_text("here")
    os.remove(rd / "DONE")
    device_results.pack(str(runs), str(out))
    res = device_results.unpack(str(out / "results.tar.gz"), str(back))
    assert res["kept"] == ["pareto/drift/abc/seed0"]
    assert (back / "pareto" / "drift" / "abc" / "seed0" / "final_eval.json").read_text() == "here"


def test_rebase_moves_another_checkouts_runs_to_this_checkouts_hashes(tmp_path):
    from drift.config import WORLD_DEFAULTS
    from drift.rundir import science_hash

    assert device_results.LOCAL_MODEL == WORLD_DEFAULTS["shapes"]
    runs = tmp_path / "runs"
    here = load("smoke")
    p = expand(here, common={"experiment": "smoke", "out": str(runs), "tracking_uri": "none", "threads": 1})[0]
    cfg = json.loads(json.dumps(p.cfg.to_dict()))  # as config.json holds it (lists, not tuples)
    elsewhere = {k: v.replace(device_results.ROOT, "/elsewhere/repo") for k, v in device_results.LOCAL_MODEL.items()}
    moved_cfg = {**cfg, "model": {**cfg["model"], **elsewhere}}

    def write(cfg, fingerprint=None, done=True):
        rd = RunDir(os.path.join(str(runs), "smoke", cfg["method"], science_hash(cfg), f"seed{cfg['seed']}"))
        os.makedirs(rd.path)
        with open(rd.config, "w") as f:
            json.dump({**cfg, **({"model_fingerprint": fingerprint} if fingerprint else {})}, f)
        for n in (rd.done, rd.final_eval) if done else ():
            open(n, "w").close()
        return rd

    away = write(moved_cfg)
    with open(runs / "smoke" / "sweep.json", "w") as f:
        json.dump({"points": [{"rel_dir": os.path.relpath(away.path, runs / "smoke"), "run_dir": away.path}]}, f)
    res = device_results.rebase(str(runs))
    assert res == {"moved": 1, "dropped": 0, "kept": []} and not os.path.exists(away.path)
    assert RunDir(p.run_dir).is_done() and RunDir(p.run_dir).read_config()["model"] == cfg["model"]
    assert json.loads((runs / "smoke" / "sweep.json").read_text())["points"][0]["run_dir"] == p.run_dir
    # the same point again from the other checkout: dropped (finished here); other assets: left where they are
    again = write(moved_cfg, done=False)
    other = write({**moved_cfg, "seed": 1}, fingerprint={"path": "not-this-content"})
    res = device_results.rebase(str(runs))
    assert res["dropped"] == 1 and not os.path.exists(again.path) and os.path.exists(other.path)
    assert len(res["kept"]) == 1 and "other content" in res["kept"][0]
