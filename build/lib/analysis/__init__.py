"""Analysis of finished runs: alignment-diversity fronts, gains, dominance, hypervolume, bootstrap CIs.

``fronts`` holds the pure definitions, ``io`` the loaders (run directories, MLflow, CSV), ``stats`` the
statistics with their bootstrap, ``report`` the tables and figures; ``frontier.py`` is the CLI.
See docs/analysis.md.
"""
