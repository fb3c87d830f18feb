"""The base-model evaluation, computed once and shared by every run that would compute the same one.

At step 0 a run evaluates its EMA weights before any update: the base model (a LoRA adapter starts with B = 0,
so it adds exactly zero; full fine-tuning starts from the base weights), on the fixed evaluation noise. That
evaluation does not depend on the method, the seed or the training settings, so every run of a grid (and of
any grid under the same output root) computes the same numbers and images. ``BaseEvalCache`` stores the first
one under <out>/base_eval_cache/<key>/ and the others copy it.

The key (``base_eval_key``) is a sha256 over everything that can change that evaluation, taken wholesale
rather than field by field so that a new field cannot be forgotten:
- the config's model, reward, sample and eval sections (and the world's own section, e.g. sd3) whole;
- the content fingerprints of the input files (base model, feature nets, prompt files: config.input_paths);
- the code: sha256 of every .py file of the drift package (any code change starts a new entry);
- torch / diffusers / peft versions, the device and the thread count (float results may depend on them).
Left out, because evaluate() never sees them: the method and its options, the seed, train.*, and where
outputs go.

Concurrent runs: the run that computes an entry holds an exclusive flock on <key>.lock meanwhile, and the others
wait for it and then copy (so N runs started together on one GPU evaluate the base model once, not N times; the
kernel releases the lock of a run that dies, and the next one computes it). An entry is complete when its folder
exists (it is written in a temporary folder beside it and renamed into place; were two runs to race, the loser
drops its copy, which holds the same bytes). A run that finds no entry computes the evaluation itself, so the
results are the same either way.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import contextlib
import errno
import fcntl
import shutil
import uuid
import warnings

import torch

from .rundir import BaseEvalEntry, RunDir

KEY_SECTIONS = ("model", "reward", "sample", "eval")
"""Config sections that enter the key whole (plus every world's own section present in config.json)."""


@functools.lru_cache(maxsize=1)
def package_code_hash() -> str:
    """sha256 over (relative path, content) of every .py file of the drift package: the code's identity."""
    root = os.path.dirname(os.path.abspath(__file__))
    h = hashlib.sha256()
    for dirpath, dirnames, names in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for n in sorted(names):
            if n.endswith(".py"):
                p = os.path.join(dirpath, n)
                with open(p, "rb") as f:
                    h.update(f"{os.path.relpath(p, root)}:".encode() + hashlib.sha256(f.read()).digest())
    return h.hexdigest()


def _version(mod: str) -> str:
    try:
        return __import__(mod).__version__
    except ImportError:
        return "absent"


def base_eval_key(config: dict, fingerprints: dict, device) -> tuple[str, dict]:
    """(key, the record it hashes) of a run's base-model evaluation. ``config``: RunConfig.to_dict();
    ``fingerprints``: {input name: content fingerprint} (drift.train.folder_fingerprint of cfg.input_paths())."""
    from .config import WORLD_SECTIONS

    sections = KEY_SECTIONS + tuple(s for s in WORLD_SECTIONS if s in config)
    rec = {s: config[s] for s in sections}
    rec.update({"inputs": fingerprints, "code": package_code_hash(), "device": str(device),
                "threads": torch.get_num_threads(), "torch": torch.__version__,
                "diffusers": _version("diffusers"), "peft": _version("peft")})
    return hashlib.sha256(json.dumps(rec, sort_keys=True, default=str).encode()).hexdigest()[:16], rec


def _copy_atomic(src: str, dst: str) -> None:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    tmp = f"{dst}.tmp-{os.getpid()}"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


class BaseEvalCache:
    """The shared step-0 evaluation of one key under ``out``."""

    def __init__(self, out: str, key: str, record: dict):
        self.entry, self.record = BaseEvalEntry.of(out, key), record

    @contextlib.contextmanager
    def computing(self):
        """Hold the entry's lock (waiting while another run holds it): load, or compute and store, inside it."""
        os.makedirs(os.path.dirname(self.entry.lock), exist_ok=True)
        with open(self.entry.lock, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield self
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def load(self, run_dir: str) -> tuple[dict, list[str]] | None:
        """(metrics, the files copied into ``run_dir``, relative) if the entry exists, else None."""
        e = self.entry
        if not os.path.isfile(e.metrics):
            return None
        with open(e.metrics) as f:
            metrics = json.load(f)
        files = sorted(os.path.relpath(os.path.join(d, n), e.files) for d, _, ns in os.walk(e.files) for n in ns)
        for rel in files:
            _copy_atomic(os.path.join(e.files, rel), os.path.join(run_dir, rel))
        return metrics, files

    def store(self, metrics: dict, run_dir: str) -> bool:
        """Save ``metrics`` and the run's step-0 evaluation files as the entry; False if one exists already."""
        e = self.entry
        if os.path.isdir(e.path):
            return False
        tmp = f"{e.path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            os.makedirs(os.path.join(tmp, BaseEvalEntry.FILES))
            for rel in RunDir(run_dir).eval_step_files(0):
                os.makedirs(os.path.dirname(os.path.join(tmp, BaseEvalEntry.FILES, rel)), exist_ok=True)
                shutil.copyfile(os.path.join(run_dir, rel), os.path.join(tmp, BaseEvalEntry.FILES, rel))
            for name, obj in ((BaseEvalEntry.METRICS, metrics), (BaseEvalEntry.KEY, self.record)):
                with open(os.path.join(tmp, name), "w") as f:
                    json.dump(obj, f, indent=1, default=str)
            os.rename(tmp, e.path)  # atomic; fails if another run renamed its entry into place first
            return True
        except OSError as err:
            if not os.path.isdir(e.path) or err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                warnings.warn(f"{e.path}: the base-model evaluation was not shared ({err}); each run computes its own")
            return False
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
