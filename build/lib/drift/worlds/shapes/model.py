"""The shapes world's text-to-image model: a word-level text encoder and diffusers'
``SD3Transformer2DModel`` used directly in pixel space (no VAE).

Pixel values live in [-1, 1] in model space. The denoiser predicts the rectified-flow velocity
v = noise - x0 at flow time t (1 = noise, 0 = data), called with timestep = 1000 * t, exactly as
SD3 in diffusers. Weights are saved with ``save_pretrained`` (safetensors + JSON) and loaded with
``from_pretrained`` -- the same code path as for real SD3 checkpoints.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass

import torch
from torch import nn

from . import world

MAX_TOKENS = 12
PAD, UNK = "<pad>", "<unk>"


def build_vocab() -> list[str]:
    """All words that the world's templates and synonyms can produce, plus pad and unk."""
    words: set[str] = set()
    texts = [*world.TEMPLATES_FULL, *world.TEMPLATES_FREE_FG, *world.TEMPLATES_FREE_SHAPE, *world.TEMPLATES_FREE_BG]
    for t in texts:
        words.update(w for w in re.sub(r"\{\w+\}", " ", t).split())
    words.update(world.FG_COLOURS + world.BG_COLOURS + world.SHAPES)
    for syns in world.SYNONYMS.values():
        words.update(syns)
    return [PAD, UNK, *sorted(words)]


class ShapesTokenizer:
    """Lower-case whitespace tokenizer over a fixed vocabulary; unknown words map to <unk>."""

    def __init__(self, vocab: list[str]):
        self.vocab = vocab
        self.index = {w: i for i, w in enumerate(vocab)}

    def __call__(self, texts: list[str]) -> torch.Tensor:
        ids = torch.zeros(len(texts), MAX_TOKENS, dtype=torch.long)
        for i, t in enumerate(texts):
            toks = [self.index.get(w, self.index[UNK]) for w in t.lower().replace(",", " , ").split()]
            if len(toks) > MAX_TOKENS:
                raise ValueError(f"prompt {t!r} has {len(toks)} words; the shapes tokenizer takes at most {MAX_TOKENS}")
            ids[i, : len(toks)] = torch.tensor(toks, dtype=torch.long)
        return ids


@dataclass
class TextEncoderConfig:
    vocab_size: int
    dim: int = 64
    pooled_dim: int = 64
    layers: int = 1
    heads: int = 4


class ShapesTextEncoder(nn.Module):
    """Token + position embeddings and a small transformer encoder.

    Returns (hidden (B, 12, dim), pooled (B, pooled_dim)); pooled is the mean of non-pad tokens,
    projected. The empty prompt "" (all pad) is the unconditional input for CFG.
    """

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.pos = nn.Parameter(torch.zeros(MAX_TOKENS, cfg.dim))
        layer = nn.TransformerEncoderLayer(cfg.dim, cfg.heads, 2 * cfg.dim, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.pool = nn.Linear(cfg.dim, cfg.pooled_dim)
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.tok(ids) + self.pos
        h = self.encoder(h)  # no padding mask: the empty prompt must still give finite outputs
        keep = (ids != 0).float().unsqueeze(-1)
        pooled = (h * keep).sum(1) / keep.sum(1).clamp(min=1.0)
        return h, self.pool(pooled)


def transformer_config(image_size: int = world.IMAGE_SIZE) -> dict:
    """The denoiser's diffusers config: 4 layers x 128 wide, patch 4 (64 tokens at 32 px)."""
    return dict(
        sample_size=image_size,
        patch_size=4,
        in_channels=3,
        out_channels=3,
        num_layers=4,
        attention_head_dim=32,
        num_attention_heads=4,
        joint_attention_dim=64,
        caption_projection_dim=128,
        pooled_projection_dim=64,
        pos_embed_max_size=image_size // 4,
    )


def build_model(seed: int = 0):
    """A fresh random (tokenizer, text encoder, transformer) triple."""
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    vocab = build_vocab()
    text = ShapesTextEncoder(TextEncoderConfig(vocab_size=len(vocab)))
    transformer = SD3Transformer2DModel(**transformer_config())
    return ShapesTokenizer(vocab), text, transformer


def save_text_encoder(path: str, tokenizer: ShapesTokenizer, text: ShapesTextEncoder, dtype=torch.float16) -> None:
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"config": asdict(text.cfg), "vocab": tokenizer.vocab}, f, indent=1)
    save_file({k: v.detach().to(dtype).contiguous() for k, v in text.state_dict().items()},
              os.path.join(path, "model.safetensors"))


def load_text_encoder(path: str) -> tuple[ShapesTokenizer, ShapesTextEncoder]:
    from safetensors.torch import load_file

    with open(os.path.join(path, "config.json")) as f:
        meta = json.load(f)
    text = ShapesTextEncoder(TextEncoderConfig(**meta["config"]))
    state = {k: v.float() for k, v in load_file(os.path.join(path, "model.safetensors")).items()}
    text.load_state_dict(state)
    return ShapesTokenizer(meta["vocab"]), text.eval()


def load_pretrained(path: str):
    """Load (tokenizer, text encoder, transformer) from a folder written by the pretraining script."""
    from diffusers import SD3Transformer2DModel

    if not os.path.isdir(os.path.join(path, "transformer")):
        raise FileNotFoundError(
            f"base model folder {path!r} has no 'transformer/' subfolder; "
            "train one with `python -m drift.worlds.shapes.pretrain`")
    tokenizer, text = load_text_encoder(os.path.join(path, "text_encoder"))
    transformer = SD3Transformer2DModel.from_pretrained(os.path.join(path, "transformer"), torch_dtype=torch.float32)
    return tokenizer, text, transformer.eval()
