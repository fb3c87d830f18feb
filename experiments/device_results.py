"""Pack a runs root's small files for the trip back from a GPU machine, and unpack them on the dev machine.

    python experiments/device_results.py pack RUNS OUT_DIR [--tuned experiments/grids/tuned_defaults.json]
    python experiments/device_results.py unpack OUT_DIR/results.tar.gz [--runs-dir runs_device] [--install-tuned]
    python experiments/device_results.py rebase RUNS

``pack`` (experiments/device_science.sh calls it) writes at most two files into OUT_DIR:

* ``results.tar.gz`` (at most --max-mb, default 16 MiB): every run directory's small files (config.json,
  metrics.jsonl, final_eval.json, DONE, launch.jsonl, JOB.json, evals/*.json and the last 32 KiB of
  stdout.log), every experiment's sweep.json, .sweep/code-*.json and analysis/ folder, the tuned defaults
  (--tuned) and MANIFEST.json (what was packed and what was left out). Never checkpoints/, samples/, export/
  (LoRA and merged weights), the base-model evaluation cache, LOCK files or MLflow stores.
* ``samples.tar`` (optional, at most --max-mb): the final evaluation grid (samples/eval_<last>.png) of
  finished runs, judging grids first, seed 0 first, as many as fit; left out if none fit.

If results.tar.gz would be over the limit, the analysis figures (PDF, then PNG) and then the stdout.log
tails are left out first and MANIFEST.json names what was left out; if it is still over, pack exits 1 (the
archive is written anyway: it will not come back whole).

``rebase`` (the device script runs it on its runs root first; unpack runs it too) moves run directories that
another checkout path wrote to this checkout's config hashes: the absolute model paths in a config are part of its
hash, so without it a sweep or the freeze here would not find the runs of a machine whose copy of the repository
lies elsewhere (``rebase`` below).

``unpack`` extracts both archives (samples.tar beside results.tar.gz if present) into --runs-dir (default
runs_device, ignored by git: the same name the device script uses, so the folder can be carried back to a
GPU machine to resume there), rewrites each sweep.json's absolute run_dir/out paths to the new root (the
analysis resolves sweep.json's run_dir entries), and puts the tuned defaults at <runs-dir>/tuned_defaults.json
(with --install-tuned also over experiments/grids/tuned_defaults.json, after validating it). Files are
overwritten (a later archive supersedes an earlier one), except that a run directory already finished here
(DONE) is not replaced by an unfinished copy. Then, with the same --runs-dir:

    python experiments/sweep.py --grid tune --out runs_device --dry-run      # finished points show [done]
    python experiments/freeze.py --grid tune --runs-dir runs_device --dry-run
    python analysis/frontier.py --grid pareto --runs-dir runs_device --no-mlflow
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from drift.rundir import FINGERPRINT, SWEEP_INDEX, RunDir, science_hash  # noqa: E402
from drift.rundir import write_json_atomic as _write_json  # noqa: E402

RESULTS, SAMPLES_TAR, MANIFEST, TUNED = "results.tar.gz", "samples.tar", "MANIFEST.json", "tuned_defaults.json"
PREFIX = "runs"
"""Archive members under runs/ belong to the runs root; TUNED and MANIFEST sit at the archive's top."""
DEFAULT_RUNS = os.path.join(ROOT, "runs_device")
RUN_FILES = (RunDir.CONFIG, RunDir.METRICS, RunDir.FINAL_EVAL, RunDir.DONE, RunDir.LAUNCH_LOG, RunDir.JOB_MARKER)
LOG_TAIL = 32 * 1024
"""Bytes of each run's stdout.log kept (its end: where a failure shows)."""
SKIP = {RunDir.CHECKPOINTS, RunDir.SAMPLES, RunDir.EXPORT, "exports", "analysis", ".submitit", "mlartifacts",
        "base_eval_cache", "__pycache__"}
"""Folders the run-directory walk does not enter (analysis/ and .sweep/ are packed per experiment)."""
# Tiers of results.tar.gz: 0 is always packed; when over the limit the highest tier present goes first.
TIER_CORE, TIER_LOGS, TIER_PNG, TIER_PDF = 0, 1, 2, 3
TIER_NAMES = {TIER_LOGS: "stdout.log tails", TIER_PNG: "analysis PNG figures", TIER_PDF: "analysis PDF figures"}


def say(msg: str) -> None:
    print(f"[device_results] {msg}", flush=True)


# ================================================================================================
# pack
# ================================================================================================
def run_dirs(runs: str) -> list[str]:
    """Every directory under ``runs`` holding a config.json (skipping checkpoints/, samples/, analysis/, ...)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(runs):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP)
        if RunDir.CONFIG in filenames and dirpath != runs:
            out.append(dirpath)
            dirnames[:] = []
    return sorted(out)


def experiment_dirs(runs: str) -> list[str]:
    """The experiment folders <runs>/<exp>/ (those with a sweep.json or a run directory)."""
    exps = {os.path.join(runs, os.path.relpath(d, runs).split(os.sep)[0]) for d in run_dirs(runs)}
    exps |= {os.path.join(runs, e) for e in os.listdir(runs) if os.path.exists(os.path.join(runs, e, SWEEP_INDEX))}
    return sorted(exps)


def collect(runs: str) -> tuple[list[tuple[int, str, str]], list[tuple[int, str, str]]]:
    """(members of results.tar.gz as (tier, path on disk, name in the archive), candidate sample grids as
    (priority, path, name)); stdout.log members carry the path of the full log (packed as its tail)."""
    members, grids = [], []

    def add(tier: int, path: str) -> None:
        members.append((tier, path, f"{PREFIX}/{os.path.relpath(path, runs)}"))

    for exp in experiment_dirs(runs):
        for name in (SWEEP_INDEX,):
            if os.path.isfile(os.path.join(exp, name)):
                add(TIER_CORE, os.path.join(exp, name))
        code_dir = os.path.join(exp, ".sweep")
        if os.path.isdir(code_dir):
            for n in sorted(os.listdir(code_dir)):
                if n.startswith("code-") and n.endswith(".json"):
                    add(TIER_CORE, os.path.join(code_dir, n))
        for dirpath, _, names in os.walk(os.path.join(exp, "analysis")):
            for n in sorted(names):
                ext = os.path.splitext(n)[1].lower()
                add(TIER_PDF if ext == ".pdf" else TIER_PNG if ext in (".png", ".jpg", ".svg") else TIER_CORE,
                    os.path.join(dirpath, n))
    order = {"pareto": 0, "ablation": 1, "tune": 2}
    for rd in run_dirs(runs):
        r = RunDir(rd)
        for n in RUN_FILES:
            if os.path.isfile(r.file(n)):
                add(TIER_CORE, r.file(n))
        for step in r.eval_per_prompt_steps():
            add(TIER_CORE, r.eval_per_prompt(step))
        if os.path.isfile(r.stdout_log):  # a failed or interrupted run's log is evidence: never dropped
            add(TIER_LOGS if r.is_done() else TIER_CORE, r.stdout_log)
        if r.is_done():
            try:
                last = r.read_config()["train"]["iterations"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            png = r.eval_grid(last)
            if os.path.isfile(png):
                rel = os.path.relpath(rd, runs).split(os.sep)
                seed = rel[-1][4:] if rel[-1].startswith("seed") else ""
                pri = (order.get(rel[0], 3), int(seed) if seed.isdigit() else 10**6, rel)
                grids.append((pri, png, f"{PREFIX}/{os.path.relpath(png, runs)}"))
    grids.sort(key=lambda g: g[0])
    return members, grids


def _add_file(tar: tarfile.TarFile, path: str, name: str) -> None:
    if os.path.basename(path) == RunDir.STDOUT_LOG:  # its end only
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            f.seek(max(0, size - LOG_TAIL))
            data = f.read()
        _add_bytes(tar, name, data, os.path.getmtime(path))
    else:
        tar.add(path, arcname=name, recursive=False)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mtime: float | None = None) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(mtime or time.time()), 0o644
    tar.addfile(info, io.BytesIO(data))


def _write_tar(path: str, mode: str, files: list[tuple[str, str]], extra: dict[str, bytes]) -> int:
    """Write the archive atomically (a temporary file beside it, then a rename); returns its size."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with tarfile.open(tmp, mode) as tar:
            for name, data in extra.items():
                _add_bytes(tar, name, data)
            for p, name in files:
                _add_file(tar, p, name)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return os.path.getsize(path)


def summarize(runs: str) -> dict:
    """Per experiment: run directories, finished ones (DONE), and points listed in sweep.json."""
    out = {}
    for exp in experiment_dirs(runs):
        dirs = [d for d in run_dirs(runs) if d.startswith(exp + os.sep)]
        sw = _read_json(os.path.join(exp, SWEEP_INDEX)) or {}
        out[os.path.basename(exp)] = {"run_dirs": len(dirs), "done": sum(RunDir(d).is_done() for d in dirs),
                                      "sweep_points": sw.get("n_points"),
                                      "analysis": os.path.isdir(os.path.join(exp, "analysis"))}
    return out


def _read_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def pack(runs: str, out_dir: str, tuned: str | None = None, max_mb: float = 16.0, samples: bool = True,
         note: dict | None = None) -> dict:
    """Write results.tar.gz (and samples.tar) into out_dir; returns the manifest (also in the archive)."""
    runs, limit = os.path.abspath(runs), int(max_mb * 1024 * 1024)
    os.makedirs(out_dir, exist_ok=True)
    members, grids = collect(runs) if os.path.isdir(runs) else ([], [])
    bad = [m for m in members if f"/{RunDir.CHECKPOINTS}/" in m[2] or f"/{RunDir.SAMPLES}/" in m[2]]
    assert not bad, f"pack would include checkpoints or samples: {bad[:3]}"
    manifest = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "runs_root": runs,
                "experiments": summarize(runs) if os.path.isdir(runs) else {}, "limit_bytes": limit,
                "left_out": [], "note": note or {}}
    extra = {}
    if tuned and os.path.isfile(tuned):
        with open(tuned, "rb") as f:
            extra[TUNED] = f.read()
        manifest["tuned_defaults_status"] = (_read_json(tuned) or {}).get("status")
    path = os.path.join(out_dir, RESULTS)
    tiers = sorted({t for t, _, _ in members} | {TIER_CORE})
    while True:
        keep = [(p, n) for t, p, n in members if t <= tiers[-1]]
        manifest["files"] = len(keep)
        blob = {MANIFEST: json.dumps(manifest, indent=1).encode(), **extra}
        size = _write_tar(path, "w:gz", keep, blob)
        if size <= limit or tiers[-1] == TIER_CORE:
            break
        dropped = tiers.pop()
        manifest["left_out"].append(f"{TIER_NAMES[dropped]} ({sum(t == dropped for t, _, _ in members)} files): "
                                    f"the archive was {size} bytes, over {limit}")
        say(f"{RESULTS} is {size / 2**20:.1f} MiB, over {max_mb:g} MiB: leaving out the {TIER_NAMES[dropped]}")
    manifest["results_bytes"] = size
    manifest["over_limit"] = size > limit
    spath = os.path.join(out_dir, SAMPLES_TAR)
    if os.path.exists(spath):
        os.remove(spath)
    if samples and grids:
        room, chosen = limit - 64 * 1024, []
        for _, p, n in grids:
            sz = os.path.getsize(p) + 1024  # the tar header and padding
            if sz > room:
                break
            chosen.append((p, n))
            room -= sz
        if chosen:
            manifest["samples_bytes"] = _write_tar(spath, "w", chosen, {})
        manifest["samples"] = f"{len(chosen)} of {len(grids)} final evaluation grids"
    say(f"packed {manifest['files']} files into {path} ({size / 2**20:.2f} MiB)"
        + (f"; {manifest['samples']} into {spath}" if manifest.get("samples") else ""))
    if manifest["over_limit"]:
        say(f"WARNING: {path} is over {max_mb:g} MiB even with only the core files: it will not come back whole")
    return manifest


def read_steps(path: str) -> list[dict]:
    """The script's step records: one TSV line each (step, status, rc, seconds, detail)."""
    rows = []
    if os.path.exists(path):
        with open(path, encoding="utf-8", errors="replace") as f:
            for ln in f:
                parts = ln.rstrip("\n").split("\t")
                if len(parts) >= 4:
                    rows.append({"step": parts[0], "status": parts[1], "rc": parts[2], "seconds": parts[3],
                                 "detail": "\t".join(parts[4:])})
    return rows


def write_summary(out_dir: str, man: dict) -> None:
    """OUT_DIR/summary.json (the manifest) and summary.txt (the same, for reading)."""
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(man, f, indent=1)
    note = man.get("note", {})
    lines = [f"device_science {man['created']}  {note.get('machine', '')}".rstrip(),
             f"settings: {note.get('settings', '')}", "", "steps:"]
    for r in note.get("steps", []):
        lines.append(f"  {r['step']:<18} {r['status']:<12} rc={r['rc']:<4} {r['seconds']:>5} s  {r['detail']}")
    lines += ["", "runs (under the runs root " + man["runs_root"] + "):"]
    for exp, s in man["experiments"].items():
        lines.append(f"  {exp:<10} {s['done']} of {s['run_dirs']} run directories finished"
                     + (f"; sweep.json lists {s['sweep_points']} points" if s["sweep_points"] else "")
                     + ("; analysis/ written" if s["analysis"] else ""))
    lines += ["", f"{RESULTS}: {man['results_bytes']} bytes, {man['files']} files"
              + (" (OVER THE LIMIT: it will not come back whole)" if man["over_limit"] else "")]
    if man.get("samples"):
        lines.append(f"{SAMPLES_TAR}: {man['samples']}")
    lines += [f"left out: {x}" for x in man["left_out"]]
    lines.append(f"tuned defaults: {man.get('tuned_defaults_status', 'not packed')}")
    lines.append("unpack: python experiments/device_results.py unpack OUT/results.tar.gz --runs-dir runs_device")
    with open(os.path.join(out_dir, "summary.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


# ================================================================================================
# rebase: the run directories of another checkout's path under this checkout's config hashes
# ================================================================================================
SHAPES_ASSETS = os.path.join(ROOT, "drift", "worlds", "shapes", "assets")
"""= drift.config.SHAPES_ASSETS (not imported: this module stays free of torch)."""
LOCAL_MODEL = {"path": os.path.join(SHAPES_ASSETS, "base"), "features": os.path.join(SHAPES_ASSETS, "features")}
"""The shapes world's default model.path and model.features in this checkout (drift.config.WORLD_DEFAULTS)."""


def folder_fingerprint(path: str) -> str:
    """= drift.train.folder_fingerprint: sha256 over (relative name, size, sha256) of every file of a folder."""
    h = hashlib.sha256()
    for root, _, names in sorted(os.walk(path)):
        for n in sorted(names):
            p = os.path.join(root, n)
            with open(p, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            h.update(f"{os.path.relpath(p, path)}:{os.path.getsize(p)}:{digest};".encode())
    return h.hexdigest()


def rebase(runs: str) -> dict:
    """Re-home run directories written by a checkout at another path (a GPU machine's copy of the repository).

    A run's config.json holds the absolute paths of the shapes world's base model and feature net, and they are
    part of its config hash, so the same point has another run directory in every checkout path. A run whose
    model.path / model.features is another checkout's default asset folder (the same path below the repository)
    with the same content (its recorded model_fingerprint equals this checkout's; a run with no fingerprint is
    taken as is) gets this checkout's paths in its config.json and moves to <exp>/<method>/<hash here>/seed<k>;
    each sweep.json's rel_dir follows. Where that place is taken, a finished run there stays and the moving copy
    is deleted; an unfinished one is replaced. A run whose assets differ stays where it is.
    Run it while no sweep is running under ``runs``. Returns {'moved': n, 'dropped': n, 'kept': [reasons]}."""
    runs = os.path.abspath(runs)
    res, fps, renames = {"moved": 0, "dropped": 0, "kept": []}, {}, {}
    for rd in run_dirs(runs):
        r = RunDir(rd)
        try:
            cfg = r.read_config()
            model = cfg["model"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not isinstance(model, dict) or model.get("world", "shapes") != "shapes":
            continue
        change, why = {}, None
        for key, here in LOCAL_MODEL.items():
            v = model.get(key)
            tail = "/" + os.path.relpath(here, ROOT).replace(os.sep, "/")
            if not isinstance(v, str) or v == here or not v.replace(os.sep, "/").endswith(tail):
                continue  # this checkout's already, or a model of its own
            rec = (cfg.get(FINGERPRINT) or {}).get(key)
            if rec is not None and rec != fps.setdefault(here, folder_fingerprint(here)):
                why = f"{os.path.relpath(rd, runs)}: its {key} {v} has other content than {here}: left where it is"
                break
            change[key] = here
        if why or not change:
            if why:
                res["kept"].append(why)
            continue
        new_cfg = {**cfg, "model": {**model, **change}}
        old_hash, new_hash = os.path.basename(os.path.dirname(rd)), science_hash(new_cfg)
        dest = os.path.join(os.path.dirname(os.path.dirname(rd)), new_hash, os.path.basename(rd))
        if dest != rd and os.path.exists(dest):
            if RunDir(dest).is_done():  # the same point, finished here already
                shutil.rmtree(rd)
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.dirname(rd))
                renames[rd] = dest
                res["dropped"] += 1
                continue
            shutil.rmtree(dest)  # unfinished here: the moving copy replaces it
        if dest != rd:
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            os.rename(rd, dest)
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(rd))  # the old hash folder, if now empty
            renames[rd] = dest
        tmp = f"{RunDir(dest).config}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(new_cfg, f, indent=1, default=str)
        os.replace(tmp, RunDir(dest).config)
        res["moved"] += dest != rd
    for exp in experiment_dirs(runs):  # sweep.json follows the moves
        path = os.path.join(exp, SWEEP_INDEX)
        doc = _read_json(path)
        if not renames or not isinstance(doc, dict) or not isinstance(doc.get("points"), list):
            continue
        for pt in doc["points"]:
            old = os.path.join(exp, pt.get("rel_dir", "")) if isinstance(pt, dict) else None
            if old in renames:
                pt["rel_dir"] = os.path.relpath(renames[old], exp)
                pt["run_dir"] = renames[old]
        _write_json(path, doc)
    return res


# ================================================================================================
# unpack
# ================================================================================================
def _safe_members(tar: tarfile.TarFile, archive: str) -> list[tarfile.TarInfo]:
    """Regular files and folders with relative paths that stay inside the target; ValueError otherwise."""
    out = []
    for m in tar.getmembers():
        norm = os.path.normpath(m.name)
        if os.path.isabs(m.name) or norm.startswith("..") or not (m.isfile() or m.isdir()):
            raise ValueError(f"{archive}: member {m.name!r} is not a plain relative file or folder: refusing it")
        out.append(m)
    return out


def _run_dir_of(rel: str) -> str | None:
    """The run directory part (<exp>/<method>/<hash>/seed<k>) of a path under runs/, if it is in one."""
    parts = rel.split("/")
    return "/".join(parts[:4]) if len(parts) > 4 and parts[3].startswith("seed") else None


def extract(archive: str, runs: str, protect_done: bool = True) -> dict:
    """Extract the runs/ members of ``archive`` into ``runs``; returns {'tuned': bytes|None, 'manifest': dict|None,
    'written': n, 'kept': [run dirs kept because they are finished here and not in the archive]} (with
    ``protect_done`` False, as for samples.tar, which holds no DONE, nothing is kept back)."""
    res = {"tuned": None, "manifest": None, "written": 0, "kept": []}
    with tarfile.open(archive) as tar:
        members = _safe_members(tar, archive)
        names = {m.name for m in members}
        protect = set()
        for m in members:
            rd = _run_dir_of(m.name[len(PREFIX) + 1:]) if m.name.startswith(PREFIX + "/") else None
            if protect_done and rd and f"{PREFIX}/{rd}/{RunDir.DONE}" not in names \
                    and RunDir(os.path.join(runs, rd)).is_done():
                protect.add(rd)
        for m in members:
            if not m.isfile():
                continue
            data = tar.extractfile(m).read()
            if m.name == TUNED:
                res["tuned"] = data
                continue
            if m.name == MANIFEST:
                res["manifest"] = json.loads(data)
                continue
            if not m.name.startswith(PREFIX + "/"):
                continue
            rel = m.name[len(PREFIX) + 1:]
            if _run_dir_of(rel) in protect:
                continue
            dest = os.path.join(runs, rel)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(dest, "wb") as f:
                f.write(data)
            os.utime(dest, (m.mtime, m.mtime))
            res["written"] += 1
        res["kept"] = sorted(protect)
    return res


def rewrite_sweep_index(runs: str) -> int:
    """Point every <runs>/<exp>/sweep.json's run_dir and out at this runs root (from rel_dir); returns the
    number of files rewritten."""
    n = 0
    for exp in sorted(os.listdir(runs)):
        path = os.path.join(runs, exp, SWEEP_INDEX)
        doc = _read_json(path)
        if not isinstance(doc, dict) or not isinstance(doc.get("points"), list):
            continue
        exp_dir = os.path.dirname(os.path.abspath(path))
        for pt in doc["points"]:
            if isinstance(pt, dict) and isinstance(pt.get("rel_dir"), str):
                pt["run_dir"] = os.path.normpath(os.path.join(exp_dir, pt["rel_dir"]))
        doc["out"] = os.path.abspath(runs)
        _write_json(path, doc)
        n += 1
    return n


def unpack(archive: str, runs: str, install_tuned: bool = False) -> dict:
    runs = os.path.abspath(runs)
    os.makedirs(runs, exist_ok=True)
    res = extract(archive, runs)
    spath = os.path.join(os.path.dirname(os.path.abspath(archive)), SAMPLES_TAR)
    if os.path.exists(spath):
        res["samples_written"] = extract(spath, runs, protect_done=False)["written"]
    res["rebase"] = rebase(runs)
    res["sweep_index_rewritten"] = rewrite_sweep_index(runs)
    if res["tuned"] is not None:
        path = os.path.join(runs, TUNED)
        with open(path, "wb") as f:
            f.write(res["tuned"])
        if install_tuned:
            from experiments.grids.protocol import TUNED_DEFAULTS, load_tuned

            load_tuned(path)  # GridError naming the field if it is malformed
            shutil.copyfile(path, TUNED_DEFAULTS)
            res["installed"] = TUNED_DEFAULTS
    return res


# ================================================================================================
# CLI
# ================================================================================================
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python experiments/device_results.py", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="RUNS OUT_DIR: write OUT_DIR/results.tar.gz (+ samples.tar)")
    p.add_argument("runs")
    p.add_argument("out_dir")
    p.add_argument("--tuned", default=None, help="the tuned_defaults.json to include")
    p.add_argument("--max-mb", type=float, default=16.0, help="size limit per archive, MiB (default %(default)s)")
    p.add_argument("--no-samples", action="store_true", help="no samples.tar")
    p.add_argument("--note", default=None, help="a JSON object recorded in MANIFEST.json")
    p.add_argument("--steps", default=None, help="a TSV of the script's steps (step, status, rc, seconds, detail): "
                   "recorded in MANIFEST.json and written as OUT_DIR/summary.txt and summary.json")
    b = sub.add_parser("rebase", help="RUNS: move run directories of another checkout path to this one's hashes")
    b.add_argument("runs")
    u = sub.add_parser("unpack", help="ARCHIVE: extract into --runs-dir and fix sweep.json paths")
    u.add_argument("archive")
    u.add_argument("--runs-dir", default=DEFAULT_RUNS, help="the runs root to extract into (default %(default)s)")
    u.add_argument("--install-tuned", action="store_true",
                   help="also copy the archive's tuned_defaults.json over experiments/grids/tuned_defaults.json")
    a = ap.parse_args(argv)
    if a.cmd == "pack":
        if a.max_mb <= 0:
            ap.error(f"--max-mb={a.max_mb}: must be > 0")
        note = json.loads(a.note) if a.note else {}
        if a.steps:
            note["steps"] = read_steps(a.steps)
        man = pack(a.runs, a.out_dir, a.tuned, a.max_mb, not a.no_samples, note)
        if a.steps:
            write_summary(a.out_dir, man)
        return 1 if man["over_limit"] else 0
    if a.cmd == "rebase":
        res = rebase(a.runs) if os.path.isdir(a.runs) else {"moved": 0, "dropped": 0, "kept": []}
        say(f"rebase {a.runs}: {res['moved']} run directories moved to this checkout's config hashes, "
            f"{res['dropped']} dropped (finished here already)")
        for k in res["kept"]:
            say(f"kept: {k}")
        return 0
    if not os.path.isfile(a.archive):
        print(f"error: {a.archive}: no such file", file=sys.stderr)
        return 2
    try:
        res = unpack(a.archive, a.runs_dir, a.install_tuned)
    except (ValueError, tarfile.TarError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    runs = os.path.abspath(a.runs_dir)
    say(f"unpacked {res['written']} files into {runs}" + (f" (+{res['samples_written']} sample grids)"
                                                          if res.get("samples_written") else ""))
    for rd in res["kept"]:
        say(f"kept {rd}: finished here, unfinished in the archive")
    rb = res["rebase"]
    if rb["moved"] or rb["dropped"]:
        say(f"{rb['moved']} run directories moved to this checkout's config hashes (the model paths in a config "
            f"are part of its hash), {rb['dropped']} dropped (finished here already)")
    for k in rb["kept"]:
        say(f"not moved: {k}")
    for exp, s in summarize(runs).items():
        say(f"{exp}: {s['done']} of {s['run_dirs']} run directories finished"
            + (f" ({s['sweep_points']} points in its sweep.json)" if s["sweep_points"] else ""))
    if res["tuned"] is not None:
        say(f"tuned defaults: {os.path.join(runs, TUNED)}" + (f", installed over {res['installed']}" if
            res.get("installed") else f" (to judge with them here: --install-tuned, then commit the file)"))
    rel = os.path.relpath(runs) if runs.startswith(os.getcwd() + os.sep) else runs
    say(f"next: python analysis/frontier.py --grid pareto --runs-dir {rel} --no-mlflow; "
        f"python experiments/freeze.py --grid tune --runs-dir {rel} --dry-run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
