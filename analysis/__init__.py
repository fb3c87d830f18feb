"""Analysis of finished runs: alignment-diversity fronts, gains, dominance, hypervolume, bootstrap CIs, and the
judging statistics (per-seed paired gains, controls) and calibration.

``fronts`` holds the pure front definitions, ``paired`` the pure statistics over seeds (t-intervals, sizing,
A/A split, equal points), ``io`` the loaders (run directories, MLflow, CSV, per-prompt files), ``stats`` the
pooled-front statistics with their bootstrap, ``judge`` the per-seed paired gains, two-way bootstrap and
controls, ``report`` the tables and figures; ``frontier.py`` and ``calibrate.py`` are the CLIs.
See docs/analysis.md.
"""
