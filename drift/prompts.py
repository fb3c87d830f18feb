"""Prompt sets from files: text (one prompt per line) or JSONL, with deterministic train/eval splits.

Text files (any extension but ``.jsonl``): one prompt per line; blank lines and lines starting with '#'
are skipped. JSONL files (``.jsonl``): one JSON object per line with a "prompt" string and an optional
"split" ("train" or "eval") and an optional "paraphrases" (a list of non-empty strings, each distinct from the
prompt and from each other; DRIFT's P2 conditions on them, drift/components/prompting.py); other keys are kept as
the entry's ``meta`` (e.g. a GenEval tag). Text files hold no paraphrases: a JSONL paraphrase file of
{"prompt": ..., "paraphrases": [...]} entries (``read_paraphrases``, e.g. the SD3 world's sd3.paraphrases) gives
them to the prompts of any prompt file, which stays untouched.

A prompt without a split goes to evaluation iff ``hash_fraction(text) < eval_fraction``, where
hash_fraction maps the sha256 of the UTF-8 text to [0, 1): the split of a prompt never depends on the
file's order, its other prompts or the machine (nor on its paraphrases: splits hash the original text only).
Duplicate texts are kept once (first occurrence wins; a repeat with other paraphrases is an error).

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
    paraphrases: tuple[str, ...] = ()  # JSONL "paraphrases" (stripped, validated by check_paraphrase_list)
    line: int = field(default=0, compare=False)  # 1-based line of the file it was read from


def check_paraphrase_list(value, prompt: str) -> str | None:
    """Why a JSONL "paraphrases" value breaks the rule (a list of non-empty strings, each distinct from the
    prompt and from the others, compared stripped), or None if it is fine."""
    if not isinstance(value, list):
        return f"must be a list of strings, not {type(value).__name__}"
    seen: set[str] = set()
    for i, v in enumerate(value):
        if not isinstance(v, str) or not v.strip():
            return f"item {i} ({v!r}) must be a non-empty string"
        if v.strip() == prompt:
            return f"item {i} ({v!r}) repeats the prompt: a paraphrase must differ from it"
        if v.strip() in seen:
            return f"item {i} ({v!r}) repeats an earlier paraphrase"
        seen.add(v.strip())
    return None


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
            entries.append(PromptEntry(s, line=i))
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
        text = obj["prompt"].strip()
        why = check_paraphrase_list(obj["paraphrases"], text) if "paraphrases" in obj else None
        if why:
            raise PromptFileError(f"{where}: \"paraphrases\" of {text!r}: {why}")
        meta = {k: v for k, v in obj.items() if k not in ("prompt", "split", "paraphrases")}
        entries.append(PromptEntry(text, split, meta, tuple(v.strip() for v in obj.get("paraphrases", ())), i))
    first: dict[str, PromptEntry] = {}
    for e in entries:
        kept = first.setdefault(e.text, e)
        if kept.paraphrases != e.paraphrases and e.paraphrases:
            raise PromptFileError(f"prompt file {full}, line {e.line}: {e.text!r} repeats line {kept.line} with other "
                                  "\"paraphrases\" (a prompt is kept once: give all its paraphrases on one line)")
    unique = list(first.values())
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


def read_paraphrases(path: str, prompts: list[str], held_out: list[str]) -> dict[str, tuple[str, ...]]:
    """{prompt text: its paraphrases} from the JSONL file ``path`` (a paraphrase file of {"prompt", "paraphrases"}
    entries, or a JSONL prompt file whose entries carry "paraphrases"; entries without any are skipped).

    Every entry with paraphrases must name a prompt of ``prompts`` (the prompt set, by its exact text), and no
    paraphrase may be the text of a ``held_out`` (eval or validation) prompt: conditioning on it would train on
    a held-out prompt. PromptFileError naming the file, the line and the rule otherwise, or if the file is not
    JSONL or holds no paraphrase."""
    full = resolve_path(path)
    if not full.endswith(".jsonl"):
        raise PromptFileError(f"paraphrase file {path!r} (resolved to {full}): must be a JSONL file (.jsonl) of "
                              "{\"prompt\": ..., \"paraphrases\": [...]} lines; a text file holds no paraphrases")
    known, held = set(prompts), set(held_out)
    out: dict[str, tuple[str, ...]] = {}
    for e in read_prompt_file(path):
        if not e.paraphrases:
            continue
        where = f"paraphrase file {full}, line {e.line}"
        if e.text not in known:
            raise PromptFileError(f"{where}: \"prompt\"={e.text!r} is not a prompt of the prompt set (paraphrases "
                                  "are matched to prompts by their exact text)")
        leak = [v for v in e.paraphrases if v in held]
        if leak:
            raise PromptFileError(f"{where}: \"paraphrases\" of {e.text!r} hold {leak[0]!r}, the text of an eval or "
                                  "validation prompt: a paraphrase must never be a held-out prompt")
        out[e.text] = e.paraphrases
    if not out:
        raise PromptFileError(f"paraphrase file {path!r} (resolved to {full}) holds no paraphrase (each line: "
                              "{\"prompt\": ..., \"paraphrases\": [...]})")
    return out


__all__ = ["PromptEntry", "PromptFileError", "VALIDATION_FRACTION", "hash_fraction", "hash_split", "is_validation",
           "carve_validation", "resolve_path", "read_prompt_file", "load_prompt_splits", "check_paraphrase_list",
           "read_paraphrases"]
