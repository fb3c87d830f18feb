"""The shapes world: prompts, a procedural renderer and an exact rule-based judge.

Images are 32x32 RGB, values in [0, 1], tensors shaped (B, 3, 32, 32). A prompt names up to three
attributes (foreground colour, shape, background colour); a prompt may leave some of them free, in
which case any value is correct and the renderer draws one at random. Nuisance factors that no prompt
controls: the object's centre (x, y) and its size. These carry the within-prompt variety that RL
fine-tuning tends to collapse.

Shapes are told apart by the fill ratio of the object's bounding box: square ~1.0, circle ~pi/4,
triangle ~0.5 (no rotation, so the ratio is exact up to pixelation).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import numpy as np
import torch

from ...prompts import is_validation

IMAGE_SIZE = 32

# name -> RGB in [0, 1]
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.70, 0.15),
    "blue": (0.10, 0.20, 0.90),
    "yellow": (0.95, 0.90, 0.10),
    "purple": (0.60, 0.10, 0.80),
    "orange": (1.00, 0.55, 0.00),
    "black": (0.05, 0.05, 0.05),
    "white": (0.95, 0.95, 0.95),
    "gray": (0.50, 0.50, 0.50),
}
PALETTE_NAMES = list(PALETTE)
FG_COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
BG_COLOURS = ["black", "white", "gray", "blue", "green"]
SHAPES = ["circle", "square", "triangle"]

# Size = half the bounding-box side, in pixels; centre is drawn so that the box stays inside the image.
MIN_HALF, MAX_HALF = 5.0, 12.0

# Text-level paraphrases. The base model is pretrained on them, so prompt variation (DRIFT's
# prompting component, text kind) stays inside the conditioning space the model understands.
SYNONYMS: dict[str, list[str]] = {
    "red": ["crimson", "scarlet"],
    "green": ["emerald"],
    "blue": ["azure", "cobalt"],
    "yellow": ["golden"],
    "purple": ["violet"],
    "orange": ["amber"],
    "black": ["dark"],
    "white": ["ivory"],
    "gray": ["grey", "silver"],
    "circle": ["disc", "round"],
    "square": ["block"],
    "triangle": ["wedge"],
}
TEMPLATES_FULL = [
    "a {fg} {shape} on a {bg} background",
    "a {fg} {shape} against a {bg} backdrop",
    "{fg} {shape} , {bg} background",
]
TEMPLATES_FREE_FG = ["a {shape} on a {bg} background", "a {shape} against a {bg} backdrop"]
TEMPLATES_FREE_SHAPE = ["a {fg} shape on a {bg} background", "a {fg} object against a {bg} backdrop"]
TEMPLATES_FREE_BG = ["a {fg} {shape}", "a {fg} {shape} anywhere"]


@dataclass(frozen=True)
class Prompt:
    """A structured prompt. ``None`` marks a free attribute (any value is correct)."""

    fg: str | None
    shape: str | None
    bg: str | None

    def __post_init__(self) -> None:
        for field, value, allowed in (("fg", self.fg, FG_COLOURS), ("shape", self.shape, SHAPES), ("bg", self.bg, BG_COLOURS)):
            if value is not None and value not in allowed:
                raise ValueError(f"Prompt.{field}={value!r}: must be one of {allowed} or None")
        if self.fg is not None and self.fg == self.bg:
            raise ValueError(f"Prompt fg={self.fg!r} equals bg={self.bg!r}: the object would be invisible")
        if self.fg is None and self.shape is None:
            raise ValueError("Prompt: fg and shape cannot both be free")

    @property
    def kind(self) -> str:
        """'full', 'free_fg', 'free_shape' or 'free_bg'."""
        if self.fg is None:
            return "free_fg"
        if self.shape is None:
            return "free_shape"
        if self.bg is None:
            return "free_bg"
        return "full"

    def text(self, template: int = 0, words: dict[str, str] | None = None) -> str:
        """Render the prompt as text. ``words`` maps canonical attribute words to synonyms."""
        w = words or {}
        fill = {k: w.get(v, v) for k, v in (("fg", self.fg), ("shape", self.shape), ("bg", self.bg)) if v is not None}
        templates = {
            "full": TEMPLATES_FULL,
            "free_fg": TEMPLATES_FREE_FG,
            "free_shape": TEMPLATES_FREE_SHAPE,
            "free_bg": TEMPLATES_FREE_BG,
        }[self.kind]
        return templates[template % len(templates)].format(**fill)

    def __str__(self) -> str:  # canonical text
        return self.text(0)

    def n_templates(self) -> int:
        return {"full": len(TEMPLATES_FULL), "free_fg": len(TEMPLATES_FREE_FG),
                "free_shape": len(TEMPLATES_FREE_SHAPE), "free_bg": len(TEMPLATES_FREE_BG)}[self.kind]

    def paraphrase(self, rng: random.Random, p_synonym: float = 0.5) -> str:
        """A random paraphrase: a random template and, per attribute, a synonym with probability p."""
        words = {}
        for v in (self.fg, self.shape, self.bg):
            if v is not None and v in SYNONYMS and rng.random() < p_synonym:
                words[v] = rng.choice(SYNONYMS[v])
        return self.text(rng.randrange(self.n_templates()), words)


def all_prompts() -> list[Prompt]:
    """Every prompt of the world, in a fixed order: full prompts first, then each free kind."""
    out: list[Prompt] = []
    for fg in FG_COLOURS:
        for shape in SHAPES:
            for bg in BG_COLOURS:
                if fg != bg:
                    out.append(Prompt(fg, shape, bg))
    out += [Prompt(None, s, b) for s in SHAPES for b in BG_COLOURS]
    out += [Prompt(f, None, b) for f in FG_COLOURS for b in BG_COLOURS if f != b]
    out += [Prompt(f, s, None) for f in FG_COLOURS for s in SHAPES]
    return out


PROMPT_SPLITS = ("train", "validation", "eval")


def split_of(p: Prompt) -> str:
    """The split of one prompt: 'eval' iff sha256(canonical text) % 5 == 0 (about 1 in 5, held out for
    evaluation), else 'validation' iff drift.prompts.is_validation(text) (1 in 5 of the rest, held out for
    tuning), else 'train'."""
    text = str(p)
    if int(hashlib.sha256(text.encode()).hexdigest(), 16) % 5 == 0:
        return "eval"
    return "validation" if is_validation(text) else "train"


def prompt_split(*splits: str) -> list[Prompt]:
    """The prompts of :func:`all_prompts` in the named split(s), in all_prompts' order.

    'eval' is the held-out evaluation (test) split; 'validation' the tuning split carved out of the
    training prompts; 'train' the RL training prompts (neither). The splits are by hashes of the canonical
    text, so they never change when prompts are added. The base model was pretrained on all prompts; the
    splits separate RL-training prompts from the prompts that tuning and judging evaluate on.
    ``prompt_split("train", "validation")`` is the training pool before the validation split existed.
    """
    bad = [s for s in splits if s not in PROMPT_SPLITS]
    if bad or not splits:
        raise ValueError(f"split={bad[0] if bad else ''!r}: must be one of {PROMPT_SPLITS}")
    return [p for p in all_prompts() if split_of(p) in splits]


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------
@dataclass
class SceneBatch:
    """Ground-truth scene parameters of a batch of images (all tensors of shape (B,))."""

    fg: torch.Tensor  # index into FG_COLOURS
    shape: torch.Tensor  # index into SHAPES
    bg: torch.Tensor  # index into BG_COLOURS
    cx: torch.Tensor  # centre x, pixels
    cy: torch.Tensor  # centre y, pixels
    half: torch.Tensor  # half bounding-box side, pixels


def sample_scenes(prompts: list[Prompt], generator: torch.Generator) -> SceneBatch:
    """Draw scene parameters for each prompt; free attributes are drawn uniformly (fg != bg)."""
    b = len(prompts)
    u = torch.rand(b, 6, generator=generator)
    fg, shape, bg = [], [], []
    for i, p in enumerate(prompts):
        s = SHAPES.index(p.shape) if p.shape else int(u[i, 1] * len(SHAPES))
        if p.fg is not None and p.bg is not None:
            f, g = FG_COLOURS.index(p.fg), BG_COLOURS.index(p.bg)
        elif p.fg is None:
            g = BG_COLOURS.index(p.bg)
            choices = [c for c in FG_COLOURS if c != p.bg]
            f = FG_COLOURS.index(choices[int(u[i, 0] * len(choices))])
        else:
            f = FG_COLOURS.index(p.fg)
            choices = [c for c in BG_COLOURS if c != p.fg]
            g = BG_COLOURS.index(choices[int(u[i, 2] * len(choices))])
        fg.append(f), shape.append(s), bg.append(g)
    half = MIN_HALF + (MAX_HALF - MIN_HALF) * u[:, 3]
    lo, hi = half + 1.0, IMAGE_SIZE - 1.0 - half
    cx = lo + (hi - lo) * u[:, 4]
    cy = lo + (hi - lo) * u[:, 5]
    return SceneBatch(torch.tensor(fg), torch.tensor(shape), torch.tensor(bg), cx, cy, half)


_PAL = torch.tensor([PALETTE[n] for n in PALETTE_NAMES], dtype=torch.float32)  # (9, 3)
_FG_IDX = torch.tensor([PALETTE_NAMES.index(c) for c in FG_COLOURS])
_BG_IDX = torch.tensor([PALETTE_NAMES.index(c) for c in BG_COLOURS])


def render(scenes: SceneBatch) -> torch.Tensor:
    """Render scenes to images (B, 3, 32, 32) in [0, 1]. Exact, hard-edged, deterministic."""
    n = IMAGE_SIZE
    coords = torch.arange(n, dtype=torch.float32) + 0.5
    y = coords.view(1, n, 1)
    x = coords.view(1, 1, n)
    cx, cy, h = (t.view(-1, 1, 1).float() for t in (scenes.cx, scenes.cy, scenes.half))
    dx, dy = x - cx, y - cy
    circle = dx**2 + dy**2 <= h**2
    square = (dx.abs() <= h) & (dy.abs() <= h)
    # upward triangle: apex at (cx, cy - h), base from (cx - h, cy + h) to (cx + h, cy + h)
    t = (dy + h) / (2 * h)  # 0 at apex, 1 at base
    triangle = (t >= 0) & (t <= 1) & (dx.abs() <= h * t)
    masks = torch.stack([circle, square, triangle], 1)  # (B, 3, n, n)
    mask = masks[torch.arange(len(cx)), scenes.shape]  # (B, n, n)
    fg_rgb = _PAL[_FG_IDX[scenes.fg]].view(-1, 3, 1, 1)
    bg_rgb = _PAL[_BG_IDX[scenes.bg]].view(-1, 3, 1, 1)
    return torch.where(mask.unsqueeze(1), fg_rgb, bg_rgb)


# ----------------------------------------------------------------------------------------------
# Judge
# ----------------------------------------------------------------------------------------------
MIN_OBJECT_PIXELS = 12
SQUARE_FILL, CIRCLE_FILL = 0.93, 0.64  # fill >= 0.93 square; >= 0.64 circle; else triangle


@dataclass
class Verdict:
    """What the judge reads back from a batch of images. Indices are -1 where nothing was found."""

    fg: torch.Tensor  # (B,) index into FG_COLOURS, -1 if no object
    shape: torch.Tensor  # (B,) index into SHAPES, -1 if no object
    bg: torch.Tensor  # (B,) index into BG_COLOURS, -1 if the border is not a background colour
    cx: torch.Tensor  # (B,) object centroid x in [0, 1] (NaN if no object)
    cy: torch.Tensor  # (B,) object centroid y in [0, 1]
    area: torch.Tensor  # (B,) object pixels / image pixels
    fill: torch.Tensor  # (B,) object pixels / bounding-box pixels

    @property
    def has_object(self) -> torch.Tensor:
        return self.fg >= 0


def judge(images: torch.Tensor) -> Verdict:
    """Read colour, shape, background, position and size back from images (B, 3, 32, 32) in [0, 1].

    Rule: every pixel takes the nearest palette colour; the background is the most common colour
    on the border; the object is the most common foreground-palette colour other than the
    background; its shape is decided by the fill ratio of its bounding box.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"judge: images must be (B, 3, H, W), got {tuple(images.shape)}")
    img = images.detach().float().clamp(0, 1)
    b, _, hgt, wid = img.shape
    d = ((img.unsqueeze(1) - _PAL.view(1, -1, 3, 1, 1)) ** 2).sum(2)  # (B, 9, H, W)
    cls = d.argmin(1)  # (B, H, W) palette index
    border = torch.cat([cls[:, 0, :], cls[:, -1, :], cls[:, 1:-1, 0], cls[:, 1:-1, -1]], 1)
    counts_border = torch.nn.functional.one_hot(border, len(PALETTE_NAMES)).sum(1)  # (B, 9)
    bg_pal = counts_border.argmax(1)
    onehot = torch.nn.functional.one_hot(cls, len(PALETTE_NAMES)).sum((1, 2))  # (B, 9) pixel counts
    fg_counts = onehot[:, _FG_IDX].clone()  # (B, 6)
    fg_counts[_FG_IDX.view(1, -1) == bg_pal.view(-1, 1)] = 0
    fg_best = fg_counts.argmax(1)
    n_obj = fg_counts.gather(1, fg_best.view(-1, 1)).squeeze(1)
    has = n_obj >= MIN_OBJECT_PIXELS
    obj = cls == _FG_IDX[fg_best].view(-1, 1, 1)  # (B, H, W)
    rows, cols = obj.any(2), obj.any(1)
    ar_h = torch.arange(hgt).view(1, -1)
    ar_w = torch.arange(wid).view(1, -1)
    big = 10**6
    y0 = torch.where(rows, ar_h, big).min(1).values
    y1 = torch.where(rows, ar_h, -1).max(1).values
    x0 = torch.where(cols, ar_w, big).min(1).values
    x1 = torch.where(cols, ar_w, -1).max(1).values
    box = ((y1 - y0 + 1).clamp(min=1) * (x1 - x0 + 1).clamp(min=1)).float()
    fill = n_obj.float() / box
    shape = torch.where(fill >= SQUARE_FILL, 1, torch.where(fill >= CIRCLE_FILL, 0, 2))
    objf = obj.float()
    n = objf.sum((1, 2)).clamp(min=1)
    cy = (objf * (ar_h.view(1, -1, 1) + 0.5)).sum((1, 2)) / n / hgt
    cx = (objf * (ar_w.view(1, 1, -1) + 0.5)).sum((1, 2)) / n / wid
    bg_idx = torch.full((b,), -1, dtype=torch.long)
    for j, p in enumerate(_BG_IDX.tolist()):
        bg_idx[bg_pal == p] = j
    nan = torch.tensor(float("nan"))
    return Verdict(
        fg=torch.where(has, fg_best, -1),
        shape=torch.where(has, shape, -1),
        bg=bg_idx,
        cx=torch.where(has, cx, nan),
        cy=torch.where(has, cy, nan),
        area=torch.where(has, n_obj.float() / (hgt * wid), 0.0),
        fill=torch.where(has, fill, 0.0),
    )


def correctness(prompts: list[Prompt], v: Verdict) -> dict[str, torch.Tensor]:
    """Per-attribute correctness (B,) in {0, 1}; a free attribute is correct iff an object exists.

    Returns keys 'fg', 'shape', 'bg', 'object', 'all' (every attribute right and an object present).
    """
    has = v.has_object.float()
    want_fg = torch.tensor([FG_COLOURS.index(p.fg) if p.fg else -2 for p in prompts])
    want_shape = torch.tensor([SHAPES.index(p.shape) if p.shape else -2 for p in prompts])
    want_bg = torch.tensor([BG_COLOURS.index(p.bg) if p.bg else -2 for p in prompts])
    fg_ok = torch.where(want_fg == -2, has, (v.fg == want_fg).float())
    shape_ok = torch.where(want_shape == -2, has, (v.shape == want_shape).float())
    bg_ok = torch.where(want_bg == -2, (v.bg >= 0).float(), (v.bg == want_bg).float())
    all_ok = fg_ok * shape_ok * bg_ok * has
    return {"fg": fg_ok, "shape": shape_ok, "bg": bg_ok, "object": has, "all": all_ok}


def ground_truth_batch(n: int, seed: int, prompts: list[Prompt] | None = None) -> tuple[list[Prompt], SceneBatch, torch.Tensor]:
    """n random (prompt, scene, image) triples for tests and training of the feature network."""
    pool = prompts or all_prompts()
    rng = np.random.default_rng(seed)
    chosen = [pool[i] for i in rng.integers(0, len(pool), n)]
    g = torch.Generator().manual_seed(seed)
    scenes = sample_scenes(chosen, g)
    return chosen, scenes, render(scenes)
