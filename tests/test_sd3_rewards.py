"""Reward models and feature nets of the SD3 path, through the real loaders, on tiny random models written
offline by drift.worlds.sd3.tiny_rewards (the outputs are meaningless; shapes, caching, batching, the
preprocessing equations and the code paths are what is checked)."""

from __future__ import annotations

import io
import math
import os

import pytest
import torch

from drift.diversity import pairwise_distance, vendi_score
from drift.worlds.sd3 import features as feat
from drift.worlds.sd3 import rewards as rw
from drift.worlds.sd3.tiny_rewards import build_tiny_reward_models, clip_bpe_tokenizer

PROMPTS = ["a red circle on a blue background", "a photo of a cat", "a red circle on a blue background",
           "an astronaut riding a horse, oil painting", "x"]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return build_tiny_reward_models(str(tmp_path_factory.mktemp("tiny_rewards")))


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(5, 3, 64, 64, generator=g)


def smooth_image(h: int, w: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return (torch.stack([xx, yy, xx * yy])[None] * 0.8 + 0.1)


# -- preprocessing equations ------------------------------------------------------------------------------
def test_resize_crop_normalise_by_hand():
    x = torch.rand(2, 3, 112, 150)
    assert rw.resize_shortest_side(x, 224).shape[-2:] == (224, int(224 * 150 / 112))  # (224, 300)
    assert rw.resize_shortest_side(x.transpose(-1, -2), 224).shape[-2:] == (300, 224)
    assert rw.resize_shortest_side(x, 112) is x  # no-op at the target size
    ramp = torch.arange(300.0).view(1, 1, 1, 300).expand(1, 3, 224, 300)
    crop = rw.center_crop(ramp, 224)
    assert crop.shape[-2:] == (224, 224) and crop[0, 0, 0, 0] == 38 and crop[0, 0, 0, -1] == 261  # round(76 / 2)
    with pytest.raises(ValueError, match="smaller than the crop"):
        rw.center_crop(x, 224)
    y = torch.rand(2, 3, 8, 8)
    by_hand = torch.stack([(y[:, c] - rw.CLIP_MEAN[c]) / rw.CLIP_STD[c] for c in range(3)], 1)
    torch.testing.assert_close(rw.normalize(y, rw.CLIP_MEAN, rw.CLIP_STD), by_hand)
    # a constant image stays constant through resize + crop: every pixel is (c - mean) / std
    c = torch.full((1, 3, 100, 150), 0.3)
    out = rw.clip_preprocess(c)
    assert out.shape == (1, 3, 224, 224)
    for ch in range(3):
        torch.testing.assert_close(out[0, ch], torch.full((224, 224), (0.3 - rw.CLIP_MEAN[ch]) / rw.CLIP_STD[ch]),
                                   atol=1e-5, rtol=0)


def test_clip_preprocess_matches_the_transformers_processor(tiny):
    """Our tensor pipeline vs CLIPImageProcessor on the PIL image: identical at 224 px; elsewhere within one
    8-bit level after normalisation (the processor rounds the resized image to uint8, we do not)."""
    from PIL import Image
    from transformers import AutoProcessor

    ip = AutoProcessor.from_pretrained(tiny["pickscore"]).image_processor
    assert rw._processor_geometry(ip) == (224, 224, rw.CLIP_MEAN, rw.CLIP_STD)
    for h, w in [(224, 224), (512, 512), (200, 300)]:
        q = rw.quantize_uint8(smooth_image(h, w))
        ref = ip(images=[Image.fromarray(q[0].numpy())], return_tensors="pt")["pixel_values"]
        ours = rw.clip_preprocess(q.permute(0, 3, 1, 2).float() / 255)
        atol = 1e-5 if h == w == 224 else 1.0 / 255 / min(rw.CLIP_STD) + 1e-4
        assert ours.shape == ref.shape == (1, 3, 224, 224)
        assert (ours - ref).abs().max() <= atol, (h, w, float((ours - ref).abs().max()))


def test_hps_preprocess_matches_open_clip_eval_transform():
    import open_clip
    from PIL import Image

    t = open_clip.image_transform(224, is_train=False, mean=rw.CLIP_MEAN, std=rw.CLIP_STD)
    q = rw.quantize_uint8(smooth_image(224, 224))
    ref = t(Image.fromarray(q[0].numpy()))[None]
    torch.testing.assert_close(rw.clip_preprocess(q.permute(0, 3, 1, 2).float() / 255), ref, atol=1e-5, rtol=0)


def test_tokenizer_matches_open_clip():
    import open_clip

    tok = clip_bpe_tokenizer()
    ids = tok(PROMPTS, padding="max_length", max_length=77)["input_ids"]
    ref = open_clip.tokenize(PROMPTS)
    for row, r in zip(ids, ref):
        n = row.index(49407) + 1
        assert row[:n] == r[:n].tolist()


# -- rewards ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(rw.REWARDS))
def test_reward_shape_finite_deterministic_batched(name, tiny, images):
    r = rw.load_reward(name, tiny.get(name))
    assert r.name == name
    out = r(images, PROMPTS)
    assert out.shape == (5,) and out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(r(images, PROMPTS), out, atol=0, rtol=0)  # deterministic
    chunked = rw.MultiReward({name: 1.0}, tiny, batch_size=2)(images, PROMPTS)[name]
    torch.testing.assert_close(chunked, out, atol=1e-5, rtol=1e-5)  # 5 images in chunks of 2 == one batch
    assert float(out.std()) > 0  # images differ, so the scores do
    with pytest.raises(ValueError, match="prompts"):
        r(images, PROMPTS[:4])


def test_reward_cache_same_object(tiny):
    a = rw.load_reward("pickscore", tiny["pickscore"])
    assert rw.load_reward("pickscore", tiny["pickscore"], device="cpu", dtype=torch.float32) is a
    assert rw.load_reward("pickscore", tiny["pickscore"] + "/") is a  # the same folder, spelled differently
    assert rw.load_reward("pickscore", tiny["pickscore"], dtype=torch.bfloat16) is not a
    m = rw.MultiReward({"pickscore": 1.0, "clipscore": 0.0}, tiny)
    assert m.models["pickscore"] is a
    # the clip feature net and the clipscore reward share one CLIP backbone in memory
    assert feat.load_features("clip", tiny["clip"]).backbone is rw.load_reward("clipscore", tiny["clipscore"]).clip


def test_multireward_weighted_sum_equals_manual_sum(tiny, images):
    w = {"pickscore": 0.7, "hpsv21": -1.3, "jpeg": 0.01, "aesthetic": 0.0, "clipscore": 1 / 30}
    out = rw.MultiReward(w, tiny, batch_size=3)(images, PROMPTS)
    assert set(out) == {"reward", *w}
    single = {n: rw.load_reward(n, tiny.get(n))(images, PROMPTS) for n in w}
    torch.testing.assert_close(out["reward"], sum(wt * single[n] for n, wt in w.items()), atol=1e-5, rtol=1e-5)
    for n in w:
        torch.testing.assert_close(out[n], single[n], atol=1e-5, rtol=1e-5)


def test_multireward_validation(tiny):
    with pytest.raises(ValueError, match="unknown reward"):
        rw.MultiReward({"imagereward": 1.0}, {})
    with pytest.raises(ValueError, match="must be finite"):
        rw.MultiReward({"jpeg": float("nan")}, {})
    with pytest.raises(ValueError, match="batch_size"):
        rw.MultiReward({"jpeg": 1.0}, {}, batch_size=0)
    with pytest.raises(ValueError, match="empty"):
        rw.MultiReward({}, {})
    with pytest.raises(ValueError, match="no weights"):
        rw.load_reward("jpeg", "/some/path")


def test_reward_scales_follow_their_definitions(tiny, images):
    """pickscore = logit_scale * cos / 26; clipscore = 100 * max(cos, 0); hpsv21 = cos; aesthetic = MLP(unit emb)."""
    ps = rw.load_reward("pickscore", tiny["pickscore"])
    img, txt = ps.clip.image_embeds(images), ps.clip.text_embeds(PROMPTS)
    cos = torch.nn.functional.cosine_similarity(img, txt, dim=-1)
    assert math.isclose(float(ps.clip.model.logit_scale.exp()), 100.0, rel_tol=1e-4)
    torch.testing.assert_close(ps(images, PROMPTS), 100.0 * cos / 26, atol=1e-5, rtol=1e-5)
    cs = rw.load_reward("clipscore", tiny["clipscore"])
    cos = torch.nn.functional.cosine_similarity(cs.clip.image_embeds(images), cs.clip.text_embeds(PROMPTS), dim=-1)
    torch.testing.assert_close(cs(images, PROMPTS), 100.0 * cos.clamp(min=0), atol=1e-4, rtol=1e-5)
    hps = rw.load_reward("hpsv21", tiny["hpsv21"])
    with torch.no_grad():
        f_img = hps.model.encode_image(rw.clip_preprocess(images), normalize=True)
        f_txt = hps.model.encode_text(hps.tokenizer(PROMPTS), normalize=True)
    torch.testing.assert_close(hps(images, PROMPTS), (f_img * f_txt).sum(-1), atol=1e-5, rtol=1e-5)
    ae = rw.load_reward("aesthetic", tiny["aesthetic"])
    with torch.no_grad():
        e = ae.clip.image_embeds(images)
        by_hand = ae.mlp(e / e.norm(dim=-1, keepdim=True)).squeeze(-1)
    torch.testing.assert_close(ae(images, PROMPTS), by_hand, atol=1e-5, rtol=1e-5)
    assert isinstance(ae.mlp.layers[0], torch.nn.Linear) and [m.out_features for m in ae.mlp.layers if
                                                              isinstance(m, torch.nn.Linear)] == [1024, 128, 64, 16, 1]


def test_reward_score_is_differentiable(tiny, images):
    r = rw.load_reward("pickscore", tiny["pickscore"])
    x = images.clone().requires_grad_(True)
    r.score(x, PROMPTS).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_reward_bf16_returns_float32_close_to_fp32(tiny, images):
    a = rw.load_reward("hpsv21", tiny["hpsv21"])(images, PROMPTS)
    b = rw.load_reward("hpsv21", tiny["hpsv21"], dtype=torch.bfloat16)(images, PROMPTS)
    assert b.dtype == torch.float32 and torch.isfinite(b).all()
    assert (a - b).abs().max() < 0.05


def test_text_embeddings_cached_per_prompt():
    calls = []

    def encode(ps):
        calls.append(list(ps))
        return torch.stack([torch.full((4,), float(len(p))) for p in ps])

    r = rw.JPEGCompressibilityReward()
    r.text_cache_size = 3
    out = r._cached_text(["aa", "b", "aa"], encode)
    assert calls == [["aa", "b"]] and out[:, 0].tolist() == [2.0, 1.0, 2.0]
    r._cached_text(["b", "ccc", "dddd"], encode)  # 4 distinct > 3: the least recently used ("aa") goes
    assert calls[-1] == ["ccc", "dddd"] and list(r._text_cache) == ["b", "ccc", "dddd"]


def test_jpeg_compressibility_analytic():
    from PIL import Image

    flat = torch.full((1, 3, 128, 128), 0.5)
    noise = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    r = rw.load_reward("jpeg", None)
    v = r(torch.cat([flat, noise]), ["", ""])
    assert v[0] > v[1]  # a flat image compresses better than noise
    buf = io.BytesIO()
    Image.fromarray(rw.quantize_uint8(noise)[0].numpy()).save(buf, format="JPEG", quality=95)
    assert math.isclose(float(v[1]), -buf.tell() / 1000, rel_tol=1e-6)
    vals = torch.tensor([0.5, 1.2, -0.1, 1 / 255]).view(1, 1, 1, 4).expand(1, 3, 1, 4)
    assert rw.quantize_uint8(vals)[0, 0, :, 0].tolist() == [128, 255, 0, 1]
    big = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    assert r(big, [""])[0] < v[1]  # 4x the noise pixels -> a larger file


# -- missing weights --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, path, needles", [
    ("pickscore", "/nonexistent/pickscore",
     ["pickscore", "/nonexistent/pickscore", "hf download yuvalkirstain/PickScore_v1"]),
    ("clipscore", "/nonexistent/clip", ["clipscore", "/nonexistent/clip", "hf download openai/clip-vit-large-patch14"]),
    ("hpsv21", "/nonexistent/hps", ["hpsv21", "/nonexistent/hps", "hf download xswu/HPSv2 HPS_v2.1_compressed.pt"]),
    ("aesthetic", None, ["aesthetic", "wget", "sac+logos+ava1-l14-linearMSE.pth"]),
    ("aesthetic", "/nonexistent/aes", ["aesthetic", "/nonexistent/aes", "wget"]),
])
def test_missing_weights_message(name, path, needles):
    with pytest.raises(rw.RewardWeightsError) as e:
        rw.load_reward(name, path)
    assert isinstance(e.value, FileNotFoundError)
    for n in needles:
        assert n in str(e.value), (n, str(e.value))


def test_pickscore_folder_without_processor_falls_back_to_the_laion_processor(tiny, tmp_path):
    import shutil

    for f in ("config.json", "model.safetensors"):  # a model-only folder
        shutil.copy(os.path.join(tiny["pickscore"], f), tmp_path / f)
    with pytest.raises(rw.RewardWeightsError, match="CLIP processor from 'laion/CLIP-ViT-H-14-laion2B-s32B-b79K'"):
        rw.load_reward("pickscore", str(tmp_path))  # offline: the hub processor is not cached here


def test_missing_feature_weights_message(tmp_path):
    with pytest.raises(rw.RewardWeightsError) as e:
        feat.load_features("dreamsim", str(tmp_path))
    assert "dreamsim" in str(e.value) and str(tmp_path) in str(e.value) and "dreamsim(pretrained=True" in str(e.value)
    assert not os.listdir(tmp_path)  # nothing was downloaded or written
    with pytest.raises(rw.RewardWeightsError, match="facebook/dinov2-base"):
        feat.load_features("dino", "/nonexistent/dino")


# -- feature nets -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(feat.FEATURES))
def test_features_unit_norm_distances_vendi(name, tiny, images):
    f = feat.load_features(name, tiny[name], batch_size=2)
    x = torch.cat([images[:3], images[:1]])  # image 0 twice
    e = f.embed(x)
    assert e.shape[0] == 4 and e.dtype == torch.float32 and torch.isfinite(e).all()
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(4), atol=1e-5, rtol=0)
    d = pairwise_distance(e)
    assert d[0, 3] < 1e-5 and d.diagonal().abs().max() < 1e-5  # identical images: distance 0
    assert d[0, 1] > 1e-5 and d[1, 2] > 1e-5  # different images: > 0 even with random weights
    torch.testing.assert_close(feat.load_features(name, tiny[name], batch_size=4).embed(x), e, atol=1e-5, rtol=1e-4)
    v = vendi_score(e[None])[0]
    assert 1 - 1e-4 <= v <= 4 + 1e-4
    assert abs(float(vendi_score(e[[0, 3]][None])[0]) - 1) < 1e-3  # two identical images: one effective sample
    assert feat.load_features(name, tiny[name], batch_size=8).backbone is f.backbone  # loaded once


def test_feature_image_size_option(tiny, images):
    for name in ("clip", "dino"):
        f = feat.load_features(name, tiny[name], image_size=112)
        assert f.image_size == 112
        e = f.embed(images)
        assert e.shape[0] == 5 and torch.isfinite(e).all()


def test_tiny_dreamsim_is_small_on_disk_and_full_size_in_memory(tiny):
    ckpt = os.path.join(tiny["dreamsim"], "open_clip_vitb32_pretrain.pth.tar")
    assert os.path.getsize(ckpt) < 2_000_000
    sd = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert sum(t.numel() for t in sd.values()) > 85_000_000  # ViT-B/32 + proj, as the real checkpoint
    assert feat.find_dreamsim_type(tiny["dreamsim"]) == "open_clip_vitb32"
    with pytest.warns(UserWarning, match=r"ensemble files are not in .*single-branch dreamsim_type 'open_clip_vitb32'"):
        net = feat.load_features("dreamsim", tiny["dreamsim"])
    assert net.variant == "dreamsim/open_clip_vitb32"  # what a run records as its features_variant tag
    model = net.backbone
    assert sum(p.numel() for p in model.parameters()) > 85_000_000


# -- CUDA (skipped without a GPU; run by the GPU check) ------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_matches_cpu_fp32(tiny, images):
    """Every head and feature net on CUDA in bf16 returns float32 on the images' device, close to CPU fp32."""
    x_gpu = images.cuda()
    for name in sorted(rw.REWARDS):
        cpu = rw.load_reward(name, tiny.get(name))(images, PROMPTS)
        gpu = rw.load_reward(name, tiny.get(name), device="cuda", dtype=torch.bfloat16)(x_gpu, PROMPTS)
        assert gpu.device.type == "cuda" and gpu.dtype == torch.float32 and torch.isfinite(gpu).all()
        tol = 0.05 * float(cpu.abs().max()) + 1e-3
        assert (gpu.cpu() - cpu).abs().max() <= tol, (name, cpu, gpu)
    out = rw.MultiReward({"pickscore": 1.0, "jpeg": 0.01}, tiny, device="cuda", dtype=torch.bfloat16)(x_gpu, PROMPTS)
    assert out["reward"].device.type == "cuda"
    for name in sorted(feat.FEATURES):
        cpu = feat.load_features(name, tiny[name]).embed(images)
        gpu = feat.load_features(name, tiny[name], device="cuda", dtype=torch.bfloat16).embed(x_gpu)
        assert gpu.device.type == "cuda" and gpu.dtype == torch.float32
        assert (gpu.cpu() * cpu).sum(-1).min() > 0.99, name  # cosine between the CPU and GPU embeddings
