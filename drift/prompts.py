"""Prompt sets from files: text (one prompt per line) or JSONL, with deterministic train/eval splits.

Text files (any extension but ``.jsonl``): one prompt per line; blank lines and lines starting with '#'
are skipped. JSONL files (``.jsonl``): one JSON object per line with a "prompt" string and an optional
"split" ("train" or "eval"); other keys are kept as the entry's ``meta`` (e.g. a GenEval tag).

A prompt without a split goes to evaluation iff ``hash_fraction(text) < eval_fraction``, where
hash_fraction maps the sha256 of the UTF-8 text to [0, 1): the split of a prompt never depends on the
file's order, its other prompts or the machine. Duplicate texts are kept once (first occurrence wins).

The validation split (for tuning; ``eval.split=validation``) is carved out of the training prompts, in every
world, by a second, independent hash: a training prompt is a validation prompt iff
``hash_fraction("validation:" + text) < VALIDATION_FRACTION`` (1 in 5). Validation prompts are never trained
on (``train.holdout_validation``), like the eval split, and are disjoint from it by construction.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
"""The repository root (holds prompts/); relative prompt paths resolve against it."""

SPLITS = ("train", "eval")


class PromptFileError(ValueError):
    """A prompt file cannot be read or holds no usable prompt; the message names the path (and line)."""


@dataclass(frozen=True)
class PromptEntry:
    text: str
    split: str | None = None  # "train", "eval" or None (decided by hash)
    meta: dict = field(default_factory=dict, compare=False, hash=False)


def hash_fraction(text: str) -> float:
    """sha256(text) as a number in [0, 1): the first 8 bytes, big-endian, / 2^64."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2.0**64


def hash_split(text: str, eval_fraction: float) -> str:
    """'eval' iff hash_fraction(text) < eval_fraction, else 'train'."""
    return "eval" if hash_fraction(text) < eval_fraction else "train"


VALIDATION_FRACTION = 0.2
"""Share of the training prompts carved out as the validation split (fixed: tuning results must not move)."""
VALIDATION_SALT = "validation:"
"""Prefix of the text hashed for the validation carve-out, so that it is independent of the eval split's hash."""


def is_validation(text: str) -> bool:
    """True iff hash_fraction(VALIDATION_SALT + text) < VALIDATION_FRACTION: the carve-out rule for a training prompt."""
    return hash_fraction(VALIDATION_SALT + text) < VALIDATION_FRACTION


def carve_validation(train_texts: list[str]) -> tuple[list[str], list[str]]:
    """(train without validation, validation) from a training split, both in the given order (is_validation)."""
    return [t for t in train_texts if not is_validation(t)], [t for t in train_texts if is_validation(t)]


def resolve_path(path: str, root: str | None = None) -> str:
    """An absolute path as given; a relative one from the current directory if it exists there, else from
    ``root`` (default: the repository root, which holds prompts/)."""
    if os.path.isabs(path) or os.path.exists(path):
        return os.path.abspath(path)
    return os.path.join(root or REPO_ROOT, path)


def read_prompt_file(path: str) -> list[PromptEntry]:
    """The entries of one prompt file, in file order, duplicates dropped; PromptFileError naming the path."""
    full = resolve_path(path)
    try:
        with open(full, encoding="utf-8") as f:
            lines = f.read().split("\n")  # not splitlines(): it also cuts at \x1c-\x1e, \x85, U+2028 (valid inside JSON)
    except (OSError, UnicodeDecodeError) as e:
        raise PromptFileError(f"prompt file {path!r} (resolved to {full}): cannot read it "
                              f"({getattr(e, 'strerror', None) or type(e).__name__})") from None
    entries: list[PromptEntry] = []
    jsonl = full.endswith(".jsonl")
    for i, line in enumerate(lines, 1):
        s = line.strip()
        if not s or (not jsonl and s.startswith("#")):
            continue
        if not jsonl:
            entries.append(PromptEntry(s))
            continue
        where = f"prompt file {full}, line {i}"
        try:
            obj = json.loads(s)
        except json.JSONDecodeError as e:
            raise PromptFileError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) or not obj["prompt"].strip():
            raise PromptFileError(f"{where}: each line must be an object with a non-empty string \"prompt\"")
        split = obj.get("split")
        if split is not None and split not in SPLITS:
            raise PromptFileError(f"{where}: \"split\"={split!r} must be one of {SPLITS} or absent")
        meta = {k: v for k, v in obj.items() if k not in ("prompt", "split")}
        entries.append(PromptEntry(obj["prompt"].strip(), split, meta))
    seen: set[str] = set()
    unique = [e for e in entries if not (e.text in seen or seen.add(e.text))]
    if not unique:
        raise PromptFileError(f"prompt file {path!r} (resolved to {full}) holds no prompt "
                              "(text: one per line, '#' comments; JSONL: {\"prompt\": ...} per line)")
    return unique


def load_prompt_splits(path: str, eval_path: str = "", eval_fraction: float = 0.25) -> tuple[list[str], list[str]]:
    """(train texts, eval texts) from ``path`` (+ an optional separate eval file).

    Without ``eval_path``: explicit "split" fields win, the rest split by hash. With it: every prompt of
    ``eval_path`` is eval, and those of ``path`` are train unless marked "eval". A text in both splits is
    kept in eval only. PromptFileError if either split ends up empty.
    """
    main = read_prompt_file(path)
    if eval_path:
        extra = read_prompt_file(eval_path)
        ev = [e.text for e in main if e.split == "eval"] + [e.text for e in extra]
        tr = [e.text for e in main if e.split != "eval"]
    else:
        ev = [e.text for e in main if (e.split or hash_split(e.text, eval_fraction)) == "eval"]
        tr = [e.text for e in main if (e.split or hash_split(e.text, eval_fraction)) == "train"]
    ev = list(dict.fromkeys(ev))
    eset = set(ev)
    tr = [t for t in tr if t not in eset]
    for name, got in (("train", tr), ("eval", ev)):
        if not got:
            raise PromptFileError(f"prompt file {path!r}{f' + {eval_path!r}' if eval_path else ''}: the {name} split is "
                                  f"empty ({len(main)} prompts, eval_fraction={eval_fraction}); add prompts or "
                                  "\"split\" fields, or give a separate eval file")
    return tr, ev


__all__ = ["PromptEntry", "PromptFileError", "VALIDATION_FRACTION", "hash_fraction", "hash_split", "is_validation",
           "carve_validation", "resolve_path", "read_prompt_file", "load_prompt_splits"]
