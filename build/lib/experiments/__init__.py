"""Experiment declarations (grids) and their launchers; see docs/sweeps.md."""
