"""One look for every figure: a fixed colour and display name per method (and per ablation variant),
marker shapes for knob values, and axis names a reader understands with the metric key in small print.

Colours are the Okabe–Ito colour-blind-safe palette; a method keeps its colour in every figure whatever
else is plotted beside it (colours are never assigned by position in a legend).
"""

from __future__ import annotations

import colorsys
import zlib

from matplotlib import colors as mcolors

from .io import ABLATION_ORDER, METHOD_NAMES

METHOD_ORDER = ("flow_grpo", "flow_grpo_kl", "diverse_grpo", "drift")
"""Order of methods in legends and panels."""
METHOD_COLOURS = {"flow_grpo": "#0072B2", "flow_grpo_kl": "#E69F00", "diverse_grpo": "#009E73", "drift": "#D55E00"}
"""Flow-GRPO blue, +KL orange, DiverseGRPO green, DRIFT vermillion."""
VARIANT_COLOURS = dict(zip(ABLATION_ORDER, ("#D55E00", "#CC79A7", "#56B4E9", "#999933", "#882255", "#117733",
                                            "#332288", "#999999")))
"""Ablation variants ('DRIFT (full)' is DRIFT's vermillion); Flow-GRPO keeps its blue beside them."""
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
"""Front-point markers: the i-th knob value of a method (in increasing order) gets MARKERS[i]."""
AXIS_NAMES = {"eval/alignment": "Alignment (held-out reward)", "eval/diversity": "Diversity (within-prompt spread)",
              "eval/diversity/vendi": "Diversity (Vendi score)", "alignment": "Alignment", "diversity": "Diversity"}
"""Human axis names by metric key (the key itself is printed small under the name)."""


def display(label: str) -> str:
    """The display name of a method or variant label ('flow_grpo_kl' -> 'Flow-GRPO+KL')."""
    method, _, rest = label.partition(" (")
    return METHOD_NAMES.get(method, method) + (f" ({rest}" if rest else "")


def colour(label: str) -> str:
    """The fixed colour of a method, an ablation variant, or a 'method (knob=...)' variant (its method's)."""
    base = label.partition(" (")[0]
    for key in (label, base):
        if key in METHOD_COLOURS:
            return METHOD_COLOURS[key]
        if key in VARIANT_COLOURS:
            return VARIANT_COLOURS[key]
    greys = ("#444444", "#777777", "#aaaaaa", "#222222")  # unknown labels: stable (by name), never a method's colour
    return greys[zlib.crc32(label.encode()) % len(greys)]


def shade(hex_colour: str, i: int, n: int) -> str:
    """The i-th of n shades of a colour, light to dark (knob values of one method in the curves)."""
    if n <= 1:
        return hex_colour
    h, l, s = colorsys.rgb_to_hls(*mcolors.to_rgb(hex_colour))
    lo, hi = max(0.22, l - 0.22), min(0.78, l + 0.22)
    return mcolors.to_hex(colorsys.hls_to_rgb(h, hi - (hi - lo) * i / (n - 1), s))


def order(labels) -> list[str]:
    """Labels in METHOD_ORDER / ABLATION_ORDER order, others after them alphabetically."""
    rank = {m: i for i, m in enumerate((*METHOD_ORDER, *ABLATION_ORDER))}
    return sorted(labels, key=lambda lab: (rank.get(lab.partition(" (")[0], rank.get(lab, len(rank))), lab))


def axis_label(ax, key: str, axis: str) -> None:
    """The human name as the axis label; ``metric_keys`` later prints the key small beside it."""
    name = AXIS_NAMES.get(key, key)
    (ax.set_xlabel if axis == "x" else ax.set_ylabel)(name)
    ax._drift_keys = {**getattr(ax, "_drift_keys", {}), axis: key}


def metric_keys(fig) -> None:
    """After layout: each axis label set by ``axis_label`` gets its metric key in small grey print
    just below it (x) or to its left (y), placed from the label's drawn extent so nothing overlaps."""
    fig.canvas.draw()
    inv = fig.transFigure.inverted()
    for ax in fig.axes:
        for axis, key in getattr(ax, "_drift_keys", {}).items():
            label = ax.xaxis.label if axis == "x" else ax.yaxis.label
            (x0, y0), (x1, y1) = inv.transform(label.get_window_extent())
            if axis == "x":
                fig.text((x0 + x1) / 2, y0 - 0.005, key, ha="center", va="top", fontsize=7, color="0.45")
            else:
                fig.text(x0 - 0.004, (y0 + y1) / 2, key, ha="right", va="center", rotation=90, fontsize=7, color="0.45")
