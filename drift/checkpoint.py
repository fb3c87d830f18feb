"""Atomic checkpoints: safetensors for tensors, JSON for everything else, a manifest written last.

Layout: <run_dir>/checkpoints/step_000010/{tensors.safetensors, state.json, manifest.json}.
Write protocol: build the folder under a temporary name in the same parent, fsync every file, write
manifest.json (file sizes + sha256, step) last and fsync it, rename the folder into place, fsync the
parent. A folder without a valid manifest is never loaded. Nothing is ever unpickled.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import warnings

import torch
from safetensors.torch import load_file, save_file

from .rundir import RunDir

KEEP = 2


class CheckpointError(RuntimeError):
    pass


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: str) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(run_dir: str, step: int, tensors: dict[str, torch.Tensor], state: dict, keep: int = KEEP) -> str:
    """Write a checkpoint atomically and prune to the newest ``keep`` (>= 2) committed ones."""
    for k, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CheckpointError(f"refusing to checkpoint step {step}: tensor {k!r} holds non-finite values")
    rd = RunDir(run_dir)
    root, final = rd.checkpoints, rd.checkpoint(step)
    os.makedirs(root, exist_ok=True)
    name = os.path.basename(final)
    tmp = os.path.join(root, f".tmp_{name}_{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        os.makedirs(tmp)
        tfile = os.path.join(tmp, "tensors.safetensors")
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tfile)
        with open(tfile, "rb") as f:
            os.fsync(f.fileno())
        _write_json(os.path.join(tmp, "state.json"), state)
        files = {n: {"bytes": os.path.getsize(os.path.join(tmp, n)), "sha256": sha256_file(os.path.join(tmp, n))}
                 for n in ("tensors.safetensors", "state.json")}
        _write_json(os.path.join(tmp, RunDir.MANIFEST), {"step": step, "files": files})
        _fsync_dir(tmp)
        if os.path.exists(final):  # a re-save of the same step (after a crash between rename and prune)
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(root)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CheckpointError(f"disk full ({os.strerror(e.errno)}) while writing checkpoint step {step} under "
                                  f"{root}; the previous checkpoint is intact; free space and rerun the same "
                                  "command to resume") from e
        raise
    # Retention only after the commit, and only among older checkpoints: the one just written is never
    # deleted, and a newer leftover (an invalid one from before a fallback) never counts towards ``keep``.
    older = sorted(d for d in os.listdir(root) if d.startswith(RunDir.CHECKPOINT_PREFIX) and d < name)
    for old in older[: max(0, len(older) - (max(keep, 2) - 1))]:
        shutil.rmtree(os.path.join(root, old), ignore_errors=True)
    return final


def _verify(folder: str) -> dict:
    mpath = os.path.join(folder, RunDir.MANIFEST)
    if not os.path.exists(mpath):
        raise CheckpointError(f"{folder}: no manifest.json (an uncommitted checkpoint)")
    try:
        with open(mpath) as f:
            manifest = json.load(f)
    except ValueError as e:
        raise CheckpointError(f"{mpath}: unreadable manifest ({e})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise CheckpointError(f"{mpath}: not a checkpoint manifest (an object with 'files')")
    name_step = os.path.basename(folder).removeprefix("step_")
    if type(manifest.get("step")) is not int or not name_step.isdigit() or manifest["step"] != int(name_step):
        raise CheckpointError(f"{mpath}: step {manifest.get('step')!r} does not match the folder name (damaged)")
    missing = {"tensors.safetensors", "state.json"} - set(manifest.get("files", {}))
    if missing:
        raise CheckpointError(f"{mpath}: does not list {sorted(missing)}")
    for n, meta in manifest["files"].items():
        p = os.path.join(folder, n)
        if not os.path.exists(p):
            raise CheckpointError(f"{p}: missing")
        if os.path.getsize(p) != meta["bytes"]:
            raise CheckpointError(f"{p}: size {os.path.getsize(p)} != manifest {meta['bytes']} (truncated?)")
        if sha256_file(p) != meta["sha256"]:
            raise CheckpointError(f"{p}: sha256 does not match the manifest (corrupted)")
    return manifest


def load_folder(folder: str) -> tuple[int, dict[str, torch.Tensor], dict]:
    """(step, tensors, state) of one checkpoint folder, verified against its manifest (CheckpointError if not)."""
    manifest = _verify(folder)
    tensors = load_file(os.path.join(folder, "tensors.safetensors"))
    with open(os.path.join(folder, "state.json")) as f:
        state = json.load(f)
    return manifest["step"], tensors, state


def load_latest(run_dir: str) -> tuple[int, dict[str, torch.Tensor], dict] | None:
    """The newest valid checkpoint as (step, tensors, state), or None if there is none.

    Invalid ones (no manifest, wrong size, wrong hash) are skipped with a warning; leftover temporary
    folders are removed.
    """
    root = RunDir(run_dir).checkpoints
    if not os.path.isdir(root):
        return None
    for d in os.listdir(root):
        if d.startswith(".tmp_"):
            shutil.rmtree(os.path.join(root, d), ignore_errors=True)
    errors = []
    for d in sorted((d for d in os.listdir(root) if d.startswith(RunDir.CHECKPOINT_PREFIX)), reverse=True):
        folder = os.path.join(root, d)
        try:
            step, tensors, state = load_folder(folder)
            if errors:
                warnings.warn(f"fell back to checkpoint {folder}: newer ones are invalid: {'; '.join(errors)}")
            return step, tensors, state
        except Exception as e:  # CheckpointError, OSError, JSON or safetensors errors: try the previous one
            errors.append(str(e) if folder in str(e) else f"{folder}: {type(e).__name__}: {e}")
    if errors:
        raise CheckpointError(f"no valid checkpoint under {root}: {'; '.join(errors)}")
    return None
