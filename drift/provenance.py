"""Code identity: which source a job runs, recorded at submission and checked when a job (re)starts.

``code_state`` hashes the files on disk under ``CODE_DIRS`` (source and the committed assets it loads)
with the git SHA; the sweep records it when it submits, every job compares it with the code on disk
(``check_code``) before it starts, and the MLflow tags carry its hash. No project import: the sweep,
the launcher and the tracker all use it.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODE_DIRS = ("drift", "baselines")  # what a job imports; experiments/ only builds the submission
# Source and the committed assets it loads (the shapes world's base model and feature net: a model
# replaced under the same path would otherwise mix two base models in one resumed run).
CODE_PATTERNS = ("*.py", "*.json", "*.safetensors")


class CodeChanged(RuntimeError):
    """The code a restarted job would run differs from the code that was submitted."""


def code_state(root: str = ROOT) -> dict:
    """{'git_sha', 'git_dirty', 'code_hash', 'files': {relpath: sha256}} of the job's source files."""
    files = {}
    for d in CODE_DIRS:
        paths = {p for pat in CODE_PATTERNS for p in glob.glob(os.path.join(root, d, "**", pat), recursive=True)}
        for p in sorted(paths):
            with open(p, "rb") as f:
                files[os.path.relpath(p, root)] = hashlib.sha256(f.read()).hexdigest()
    h = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
    sha, dirty = "unknown", None
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10).stdout.strip() or "unknown"
        st = subprocess.run(["git", "status", "--porcelain", "--", *CODE_DIRS], cwd=root, capture_output=True,
                            text=True, timeout=10).stdout
        dirty = bool(st.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return {"git_sha": sha, "git_dirty": dirty, "code_hash": h, "files": files}


def check_code(recorded: dict | None, policy: str = "refuse", root: str = ROOT) -> list[str]:
    """Compare the submitted code with the code on disk now; returns the changed files.

    policy 'refuse' raises CodeChanged when they differ, 'warn' prints them, 'ignore' skips the check.
    """
    if policy not in ("refuse", "warn", "ignore"):
        raise ValueError(f"code_policy={policy!r}: must be 'refuse', 'warn' or 'ignore'")
    if not recorded or policy == "ignore":
        return []
    now = code_state(root)
    if now["code_hash"] == recorded["code_hash"]:
        return []
    old, new = recorded.get("files", {}), now["files"]
    changed = sorted(p for p in set(old) | set(new) if old.get(p) != new.get(p)) or ["<file list not recorded>"]
    msg = (f"code changed since submission (submitted {recorded['code_hash']} at git {recorded.get('git_sha')}, "
           f"now {now['code_hash']} at git {now['git_sha']}): {', '.join(changed[:20])}")
    if policy == "refuse":
        raise CodeChanged(msg + ". Re-run the sweep to resubmit with the current code, or pass --code-policy warn.")
    print(f"[launch] WARNING: {msg}; continuing (code_policy=warn)", flush=True)
    return changed


# ------------------------------------------------------------------------------------------------
# Run-directory state
