"""Named sweep grids: one module per grid, each exposing ``GRID: Grid`` (see spec.py).

    from experiments.grids import load, names
    load("pareto").seeds
"""

from __future__ import annotations

import importlib
import os
import pkgutil

from .spec import Arm, Grid, GridError, Point, available_arms, expand  # noqa: F401

_NOT_GRIDS = {"spec", "presets", "protocol"}


def names() -> list[str]:
    """Every grid module in this package."""
    here = os.path.dirname(__file__)
    return sorted(m.name for m in pkgutil.iter_modules([here]) if m.name not in _NOT_GRIDS and not m.name.startswith("_"))


def load(name: str) -> Grid:
    if name not in names():
        raise GridError(f"--grid {name!r}: unknown grid; known grids are {names()} (experiments/grids/<name>.py)")
    grid = importlib.import_module(f"{__name__}.{name}").GRID
    if grid.name != name:
        raise GridError(f"experiments/grids/{name}.py defines GRID.name={grid.name!r}; it must equal the module name")
    return grid
