"""Random SD3 pipelines built from configs, offline: for tests (``tiny``) and GPU throughput checks (``mid``).

    python -m drift.worlds.sd3.tiny OUT_DIR [tiny|mid]

``build_tiny_sd3(out_dir, size)`` saves a folder that ``StableDiffusion3Pipeline.from_pretrained`` (and
therefore the SD3 world's loader) reads exactly as it reads ``stabilityai/stable-diffusion-3.5-medium``:
transformer, VAE, two CLIP text encoders with projection, a T5 encoder, their tokenizers and the
flow-matching scheduler. Weights are random (seeded): the images are noise. Nothing touches the network.

* ``tiny``: every part a few hundred K parameters (CPU tests: a 64 px, 10-step trajectory in ~0.1 s).
* ``mid``: the SD3.5-Medium transformer layout (width 1536 = 24 heads x 64, 16 latent channels, joint
  attention 4096, pooled 2048, RMS qk-norm, dual attention in the first layer) with 3 instead of 24 layers
  (~0.26 B parameters), and the real SD3 VAE layout; text encoders stay tiny. Per-layer cost matches
  SD3.5-M, so transformer time per layer x 24 approximates the real model (the text encoders do not).

Tokenizers are built offline (no hub download; docs/sd3.md, Random test pipelines): the real CLIP BPE (49,408 tokens)
from open_clip's bundled ``bpe_simple_vocab_16e6.txt.gz``, and a small T5 Unigram vocabulary of
characters and common words.
"""

from __future__ import annotations

import gzip
import json
import os
import sys
from functools import lru_cache

import torch

# SD3.5-Medium's VAE latent normalisation (its vae/config.json); kept so decode() sees real constants.
SD35_SCALING_FACTOR = 1.5305
SD35_SHIFT_FACTOR = 0.0609

SIZES = ("tiny", "mid")

# Words for the small T5 vocabulary (pieces "_word"); everything else falls back to characters.
_T5_WORDS = """a an the of on in at with and or to from by for under over next near behind above below left right
red green blue yellow orange purple pink brown black white gray grey gold silver
cat dog bird horse cow sheep fish car bus truck bicycle train boat plane house tree flower city street
photo photograph painting drawing sketch portrait landscape style art oil watercolor digital render
two three four five one big small large tiny old young bright dark light sky sun moon night day
cup bowl table chair book clock vase apple banana cake pizza person man woman child sitting standing""".split()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-unicode map (the base alphabet of the BPE vocab)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


@lru_cache(maxsize=1)
def clip_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocab (49,408 tokens) and merges, from open_clip's bundled BPE file (ids = open_clip.tokenize)."""
    import importlib.util

    spec = importlib.util.find_spec("open_clip")  # the file only: importing open_clip itself takes seconds
    path = os.path.join(spec.submodule_search_locations[0], "bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    base = list(_bytes_to_unicode().values())
    vocab = base + [v + "</w>" for v in base] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(vocab)}, merges


def clip_tokenizer(pad_token: str = "<|endoftext|>"):
    """A transformers CLIPTokenizer with the real CLIP BPE, max length 77 (SD3's tokenizer_2 pads with '!')."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_bpe()
    return CLIPTokenizer(vocab=vocab, merges=list(merges), pad_token=pad_token, model_max_length=77)


def t5_tokenizer():
    """A small T5TokenizerFast (Unigram): specials, '▁' + common words, '▁' + characters, characters."""
    from transformers import T5TokenizerFast

    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"-()/&")
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + w, -3.0 - 0.01 * i) for i, w in enumerate(_T5_WORDS)]
    pieces += [("▁" + c, -8.0) for c in chars] + [(c, -9.0) for c in chars]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=512)


def _configs(size: str, clip_vocab: int, t5_vocab: int) -> dict:
    if size == "tiny":
        return {
            "transformer": dict(sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
                                attention_head_dim=16, num_attention_heads=4, joint_attention_dim=64,
                                caption_projection_dim=64, pooled_projection_dim=64, pos_embed_max_size=32,
                                dual_attention_layers=(0,), qk_norm="rms_norm"),
            "vae": dict(block_out_channels=(16, 16, 32, 32), layers_per_block=1, latent_channels=16,
                        norm_num_groups=8),
            "clip": [dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                          projection_dim=32)] * 2,
            "t5": dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4),
        }
    if size == "mid":
        return {
            "transformer": dict(sample_size=64, patch_size=2, in_channels=16, out_channels=16, num_layers=3,
                                attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                                caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=384,
                                dual_attention_layers=(0,), qk_norm="rms_norm"),
            "vae": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=16,
                        norm_num_groups=32),
            "clip": [dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                          projection_dim=768),
                     dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                          projection_dim=1280)],
            "t5": dict(d_model=4096, d_kv=16, d_ff=128, num_layers=2, num_heads=4),
        }
    raise ValueError(f"size={size!r}: must be one of {SIZES}")


def build_tiny_sd3(out_dir: str, size: str = "tiny", seed: int = 0) -> str:
    """Build a random SD3 pipeline of the given ``size`` and save it to ``out_dir``; returns ``out_dir``.

    Layout = the hub's (model_index.json + one subfolder per component), in safetensors.
    Constraints kept: caption_projection_dim = heads x head_dim; joint_attention_dim = T5 d_model >= the
    summed CLIP hidden sizes; pooled_projection_dim = the summed CLIP projection sizes.
    """
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    tok1, tok2, tok3 = clip_tokenizer(), clip_tokenizer(pad_token="!"), t5_tokenizer()
    c = _configs(size, len(tok1), len(tok3))
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(**c["transformer"])
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * len(c["vae"]["block_out_channels"]),
                        up_block_types=("UpDecoderBlock2D",) * len(c["vae"]["block_out_channels"]),
                        scaling_factor=SD35_SCALING_FACTOR, shift_factor=SD35_SHIFT_FACTOR, use_quant_conv=False,
                        use_post_quant_conv=False, sample_size=8 * c["transformer"]["sample_size"], **c["vae"])
    encoders = []
    for cc, tok in zip(c["clip"], (tok1, tok2)):
        cfg = CLIPTextConfig(vocab_size=len(tok), max_position_embeddings=77, hidden_act="gelu",
                             bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id, **cc)
        encoders.append(CLIPTextModelWithProjection(cfg))
    t5 = T5EncoderModel(T5Config(vocab_size=len(tok3), pad_token_id=tok3.pad_token_id, eos_token_id=tok3.eos_token_id,
                                 decoder_start_token_id=tok3.pad_token_id, feed_forward_proj="gated-gelu",
                                 is_encoder_decoder=False, use_cache=False, **c["t5"]))
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
                                    text_encoder=encoders[0], tokenizer=tok1, text_encoder_2=encoders[1], tokenizer_2=tok2,
                                    text_encoder_3=t5, tokenizer_3=tok3)
    os.makedirs(out_dir, exist_ok=True)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    n = sum(p.numel() for p in transformer.parameters())
    with open(os.path.join(out_dir, "tiny_card.json"), "w") as f:
        json.dump({"size": size, "seed": seed, "random_weights": True, "transformer_params": n,
                   "built_by": "drift.worlds.sd3.tiny.build_tiny_sd3"}, f, indent=1)
    return out_dir


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        print(__doc__)
        sys.exit(2)
    print(build_tiny_sd3(sys.argv[1], sys.argv[2] if len(sys.argv) == 3 else "tiny"))
