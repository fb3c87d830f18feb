"""DRIFT's three components as pure functions (sampling subset, prompt variation, diversity shaping).

The DRIFT paper's equations are not available (see docs/methods.md); every rule here is a design
choice of this project, with the alternatives exposed as options.
"""
