"""Typed sweep grids: base config, arms (a method or variant and the knobs it sweeps), seeds, budget.

A grid's points are, for each arm, the cartesian product of its axes, times the seeds. Each point is
a flat override dict for ``drift.config.make_config``, merged in this order (later wins):

    base < budget < world < arm.fixed < arm axes < seed < --set extras < common (experiment, out, ...)

``expand`` validates every point before anything is submitted. A bad grid raises ``GridError``
naming the point (index, arm, its knob values), and the engine's message names field, value and rule.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from drift.config import ConfigError, RunConfig, make_config
from drift.rundir import NON_SCIENCE_KEYS

RESERVED = NON_SCIENCE_KEYS
"""Keys the sweep sets itself (the seed through Grid.seeds); a grid or --set must not."""


class GridError(ValueError):
    """The grid itself, or one of its points, is invalid. Raised before any submission."""


@dataclass(frozen=True)
class Arm:
    """One method (or variant of it) and the knobs it sweeps."""

    name: str
    """Label in dry-run output, sweep.json and the analysis legend, e.g. 'drift' or 'drift -subset'."""
    fixed: Mapping[str, Any]
    """Overrides for every point of this arm: at least 'method', plus any method options held fixed."""
    axes: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    """Swept keys -> values (the strength knob); the arm's points are the cartesian product. {} = one point."""


@dataclass(frozen=True)
class Grid:
    name: str
    """The grid's name: the experiment name, the folder runs/<name>/ and the MLflow experiment."""
    doc: str
    """One paragraph: what the grid answers and how long it takes."""
    arms: tuple[Arm, ...]
    seeds: tuple[int, ...]
    base: Mapping[str, Any] = field(default_factory=dict)
    """Scientific settings shared by every point (reward, sampling, ...)."""
    budget: Mapping[str, Any] = field(default_factory=dict)
    """Overrides that set each point's compute budget (iterations, eval size, checkpoint cadence)."""
    worlds: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: {"shapes": {}})
    """World name -> extra overrides for it; the first is the default (--world picks another)."""
    point_seconds: Mapping[str, float] = field(default_factory=dict)
    """Measured single-thread wall time of one point per method on the 2-core dev machine (for estimates)."""
    notes: tuple[str, ...] = ()
    """Lines the dry run and the sweep print first: e.g. the status of the tuned defaults, arms left out and why."""

    def default_world(self) -> str:
        return next(iter(self.worlds))


@dataclass
class Point:
    index: int
    arm: str
    knobs: dict[str, Any]  # the arm's axis values at this point
    overrides: dict[str, Any]  # everything passed to make_config
    cfg: RunConfig
    own: tuple[str, ...]  # the keys that identify the point within the grid (method, arm options, knobs, seed)

    @property
    def run_dir(self) -> str:
        return self.cfg.run_dir()

    def label(self) -> str:
        """What distinguishes this point: method, fixed options of the arm, knobs, seed."""
        return " ".join(f"{k}={_fmt(v)}" for k, v in self.short().items())

    def short(self) -> dict[str, Any]:
        return {k: self.overrides[k] for k in self.own}


def _fmt(v: Any) -> str:
    return repr(v) if isinstance(v, str) and (" " in v or not v) else str(v)


def available_arms(arms: Sequence[Arm], base: Mapping[str, Any] | None = None) -> tuple[tuple[Arm, ...], tuple[str, ...]]:
    """(the arms whose first point this code can build, one note per arm left out naming why).

    For grids that name methods or options another branch adds (e.g. a method not registered yet): such an
    arm is left out, and said so in the dry run, instead of failing the whole grid."""
    kept, notes = [], []
    for a in arms:
        try:
            make_config({**(base or {}), **a.fixed, **{k: v[0] for k, v in a.axes.items() if len(v)}})
            kept.append(a)
        except ConfigError as e:
            notes.append(f"ARM LEFT OUT: {a.name!r} cannot be built by this code ({e})")
    return tuple(kept), tuple(notes)


def check_grid(grid: Grid) -> None:
    """Structural rules, before any point is built."""
    if not grid.arms:
        raise GridError(f"grid {grid.name!r}: arms is empty; a grid needs at least one arm")
    if not grid.seeds:
        raise GridError(f"grid {grid.name!r}: seeds is empty (the seed axis needs at least one value)")
    if len(set(grid.seeds)) != len(grid.seeds):
        raise GridError(f"grid {grid.name!r}: seeds={tuple(grid.seeds)} repeats a seed")
    if not grid.worlds:
        raise GridError(f"grid {grid.name!r}: worlds is empty")
    names = [a.name for a in grid.arms]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise GridError(f"grid {grid.name!r}: arm name(s) {dup} used twice")
    for where, d in (("base", grid.base), ("budget", grid.budget), *((f"worlds[{w}]", o) for w, o in grid.worlds.items()),
                     *((f"arm {a.name!r} fixed", a.fixed) for a in grid.arms),
                     *((f"arm {a.name!r} axes", a.axes) for a in grid.arms)):
        bad = [k for k in d if k in RESERVED]
        if bad:
            raise GridError(f"grid {grid.name!r}: {where} sets {bad}; the sweep sets these itself (seeds via Grid.seeds)")
    for a in grid.arms:
        if "method" not in a.fixed:
            raise GridError(f"grid {grid.name!r}: arm {a.name!r} has no 'method' in fixed")
        for k, vals in a.axes.items():
            if isinstance(vals, (str, bytes)) or not isinstance(vals, Sequence):
                raise GridError(f"grid {grid.name!r}: arm {a.name!r} axis {k!r}={vals!r}: must be a list/tuple of values")
            if len(vals) == 0:
                raise GridError(f"grid {grid.name!r}: arm {a.name!r} axis {k!r} is empty: an axis needs at least one value")
            if len(set(map(repr, vals))) != len(vals):
                raise GridError(f"grid {grid.name!r}: arm {a.name!r} axis {k!r}={list(vals)} repeats a value")
            if k in a.fixed:
                raise GridError(f"grid {grid.name!r}: arm {a.name!r} sets {k!r} both in fixed and as an axis")


def expand(grid: Grid, world: str | None = None, extra: Mapping[str, Any] | None = None,
           common: Mapping[str, Any] | None = None) -> list[Point]:
    """All points of the grid, validated; raises GridError naming the first bad point."""
    check_grid(grid)
    world = world or grid.default_world()
    if world not in grid.worlds:
        raise GridError(f"--world {world!r}: grid {grid.name!r} defines worlds {list(grid.worlds)}")
    extra, common = dict(extra or {}), dict(common or {})
    bad = [k for k in extra if k in RESERVED]
    if bad:
        raise GridError(f"--set {bad}: the sweep sets these itself (use --out / --tracking-uri / the grid's seeds)")
    points: list[Point] = []
    # seed-major order: a partly finished sweep already holds one complete seed of every arm
    for seed in grid.seeds:
        for arm in grid.arms:
            keys = list(arm.axes)
            for combo in itertools.product(*(arm.axes[k] for k in keys)) if keys else [()]:
                knobs = dict(zip(keys, combo))
                ov = {**grid.base, **grid.budget, **grid.worlds[world], **arm.fixed, **knobs, "seed": seed,
                      **extra, **common}
                i = len(points)
                own = tuple(["method", *[k for k in arm.fixed if k != "method"], *keys, "seed"])
                try:
                    cfg = make_config(ov)
                except ConfigError as e:
                    where = " ".join(f"{k}={_fmt(v)}" for k, v in {"method": arm.fixed["method"], **knobs, "seed": seed}.items())
                    raise GridError(f"grid {grid.name!r} point #{i} (arm {arm.name!r}: {where}): {e}") from None
                points.append(Point(i, arm.name, knobs, ov, cfg, own))
    seen: dict[str, Point] = {}
    for p in points:
        if p.run_dir in seen:
            q = seen[p.run_dir]
            raise GridError(f"grid {grid.name!r}: point #{p.index} ({p.arm}: {p.label()}) duplicates point #{q.index} "
                            f"({q.arm}: {q.label()}): both resolve to the same config and seed ({p.run_dir})")
        seen[p.run_dir] = p
    return points
