"""The benchmark's protocol, shared by the tune, pareto (judging) and ablation grids and experiments/freeze.py.

Seeds are disjoint by purpose (docs/benchmark.md): tuning 100-104 (on validation prompts), calibration 20-27
(the calibrate grid), judging 0-7 (on the held-out test prompts). The knob values the judging grid uses are
read from tuned_defaults.json, which experiments/freeze.py writes from the tuning runs.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from .spec import GridError

TUNING_SEEDS = (100, 101, 102, 103, 104)
"""Seeds of the tune grid (validation prompts, eval.split=validation): never used for judging."""
CALIBRATION_SEEDS = tuple(range(20, 28))
"""Seeds of the calibrate grid (the seed noise of the judging budget)."""
JUDGING_SEEDS = tuple(range(0, 8))
"""Seeds of the judging grid (pareto) and the ablation: never used for tuning."""

TUNED_DEFAULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tuned_defaults.json")
"""The frozen knob values of every tuned method (experiments/freeze.py writes it; the judging grid reads it)."""
TUNED_METHODS = ("flow_grpo_kl", "diverse_grpo", "drift")
"""Methods tuned with an equal budget (the same number of configurations each) in the tune grid."""
STATUSES = ("untuned", "tuned")


def _finite_number(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


def load_tuned(path: str = TUNED_DEFAULTS) -> dict:
    """tuned_defaults.json, validated: GridError naming the file, the field, the value and the rule.

    Layout: {"status": "untuned"|"tuned", "statement": str, "methods": {method: {"fixed": {key: value},
    "axis": {key: [3 distinct values]}}} for every TUNED_METHODS, "drift_kl": {"drift.kl_beta": number},
    "evidence": list, "commit": str|null, "date": str|null}."""
    where = os.path.relpath(path) if not os.path.isabs(path) or path.startswith(os.getcwd()) else path
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as e:
        raise GridError(f"{where}: cannot read it ({e.strerror or type(e).__name__}); the judging grid reads its "
                        "knob values from it (experiments/freeze.py writes it)") from None
    except ValueError as e:
        raise GridError(f"{where}: not valid JSON ({e})") from None

    def bad(field: str, value: Any, rule: str) -> GridError:
        return GridError(f"{where}: {field}={value!r}: {rule}")

    if not isinstance(doc, dict):
        raise bad("(top level)", type(doc).__name__, "must be a JSON object")
    if doc.get("status") not in STATUSES:
        raise bad("status", doc.get("status"), f"must be one of {STATUSES}")
    if not isinstance(doc.get("statement"), str) or not doc["statement"].strip():
        raise bad("statement", doc.get("statement"), "must be a non-empty string saying how the values were chosen")
    methods = doc.get("methods")
    if not isinstance(methods, dict):
        raise bad("methods", methods, "must be an object {method: {fixed, axis}}")
    missing = [m for m in TUNED_METHODS if m not in methods]
    if missing:
        raise bad("methods", sorted(methods), f"lacks {missing}: every tuned method needs its values")
    for m, entry in methods.items():
        if not isinstance(entry, dict) or set(entry) != {"fixed", "axis"}:
            raise bad(f"methods.{m}", entry, "must be an object with exactly 'fixed' and 'axis'")
        if not isinstance(entry["fixed"], dict):
            raise bad(f"methods.{m}.fixed", entry["fixed"], "must be an object {option: value}")
        axis = entry["axis"]
        if not isinstance(axis, dict) or len(axis) != 1:
            raise bad(f"methods.{m}.axis", axis, "must be an object with exactly one {option: [values]} (the front)")
        (key, vals), = axis.items()
        if not isinstance(vals, list) or len(vals) != 3 or not all(_finite_number(v) for v in vals) \
                or len(set(vals)) != 3:
            raise bad(f"methods.{m}.axis.{key}", vals, "must be a list of 3 distinct finite numbers (equal points per "
                      "front)")
        for k in (*entry["fixed"], key):
            if not k.startswith(f"{m}."):
                raise bad(f"methods.{m}", k, f"an option of {m} must be named '{m}.<field>'")
    kl = doc.get("drift_kl")
    if not isinstance(kl, dict) or set(kl) != {"drift.kl_beta"} or not _finite_number(kl["drift.kl_beta"]) \
            or kl["drift.kl_beta"] <= 0:
        raise bad("drift_kl", kl, "must be {\"drift.kl_beta\": a number > 0} (DRIFT on top of KL)")
    if not isinstance(doc.get("evidence"), list):
        raise bad("evidence", doc.get("evidence"), "must be a list of tuning runs (empty while untuned)")
    if doc["status"] == "tuned" and not doc["evidence"]:
        raise bad("evidence", [], "must list the tuning runs when status is 'tuned'")
    return doc


def tuned_status_line(doc: dict) -> str:
    """One line for the dry run: the status of the tuned defaults and where they came from."""
    if doc["status"] == "untuned":
        return f"TUNED DEFAULTS: untuned: {doc['statement']}"
    return (f"TUNED DEFAULTS: tuned (commit {str(doc.get('commit'))[:12]}, {doc.get('date')}, "
            f"{len(doc['evidence'])} tuning runs as evidence)")


def tuned_arm_values(doc: dict, method: str) -> tuple[dict, dict]:
    """(fixed options, {axis key: tuple of values}) of ``method`` in a validated tuned_defaults document."""
    entry = doc["methods"][method]
    (key, vals), = entry["axis"].items()
    return dict(entry["fixed"]), {key: tuple(vals)}
