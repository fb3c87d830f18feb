"""The SD3 world through the real code: a tiny random SD3 pipeline and tiny random reward / feature models,
saved and loaded through the same from_pretrained paths as SD3.5-Medium, PickScore, HPSv2.1, ..., and
trained with drift.train.train (every method, MLflow on SQLite). Plus prompt files and the sd3 config.
"""

import json
import os
import sys

import pytest
import torch
from safetensors.torch import load_file

from drift.config import ConfigError, config_from_dict, make_config
from drift.prompts import PromptFileError, hash_split, load_prompt_splits, read_prompt_file

METHODS = ("flow_grpo", "flow_grpo_kl", "diverse_grpo", "drift")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICE = os.environ.get("DRIFT_TEST_DEVICE", "cpu")  # the GPU check sets cuda


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory):
    """One SQLite MLflow store for the session (its schema migration costs ~2 s); one experiment per test."""
    return "sqlite:///" + str(tmp_path_factory.mktemp("mlflow") / "mlflow.db")


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """{'sd3': tiny pipeline folder, reward / feature name: folder} (DreamSim is covered by test_sd3_rewards)."""
    from drift.worlds.sd3.tiny import build_tiny_sd3
    from drift.worlds.sd3.tiny_rewards import build_tiny_reward_models

    root = tmp_path_factory.mktemp("sd3_models")
    return {"sd3": build_tiny_sd3(str(root / "sd3")), **build_tiny_reward_models(str(root / "rewards"), dreamsim=False)}


def items(models, out, *extra, tracking="none"):
    base = [
        "model.world=sd3", f"model.path={models['sd3']}", "model.lora_rank=4", "model.lora_alpha=8",
        "model.features=clip", f"sd3.features_path={models['clip']}", f"sd3.pickscore_path={models['pickscore']}",
        f"sd3.hpsv21_path={models['hpsv21']}", f"sd3.clipscore_path={models['clipscore']}",
        f"sd3.aesthetic_path={models['aesthetic']}", f"sd3.device={DEVICE}", "sd3.dtype=fp32", "sd3.resolution=64",
        "sd3.text_cache_size=8", "sample.num_steps=3", "sample.shift=3", "sample.cfg=4.5", "sample.groups_per_iter=2",
        "sample.group_size=2", "train.iterations=2", "train.ema_every=1", "eval.num_prompts=2", "eval.seeds=2",
        "eval.num_steps=3", "eval.every=1", "eval.grid_prompts=2", "checkpoint_every=1", f"out={out}",
        f"tracking_uri={tracking}",
    ]
    d = dict(x.split("=", 1) for x in base)
    d.update(x.split("=", 1) for x in extra)
    return d


def world_of(models, tmp_path, *extra, seed=0):
    from drift.worlds import make_world

    torch.manual_seed(seed)  # LoRA init draws from the global RNG, as in train()
    return make_world(make_config(items(models, tmp_path, *extra)))


def rows(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


# ------------------------------------------------------------------------------------------------
# Every method, 2 iterations, MLflow
# ------------------------------------------------------------------------------------------------
VARIANTS = {  # each run also exercises other reward heads, feature nets and options (HPSv2.1: test_sd3_rewards)
    "flow_grpo": ["sd3.w_jpeg=0.1", "sd3.eval_rewards=aesthetic,jpeg"],
    "flow_grpo_kl": ["flow_grpo_kl.beta=0.04", "sample.cfg=1"],
    "diverse_grpo": ["sd3.w_pickscore=0", "sd3.w_clipscore=1", "model.features=dino", "diverse_grpo.sa_coef=0.1"],
    "drift": ["sd3.w_aesthetic=0.5", "drift.kl_beta=0.01"],
}


@pytest.mark.parametrize("method", METHODS)
def test_every_method_two_iterations_with_mlflow(models, mlflow_uri, tmp_path, method):
    from mlflow.tracking import MlflowClient

    from drift.train import train

    uri = mlflow_uri
    over = VARIANTS[method] + [f"method={method}", f"experiment=sd3_{method}"]
    if "model.features=dino" in over:
        over.append(f"sd3.features_path={models['dino']}")
    cfg = make_config(items(models, tmp_path, *over, tracking=uri))
    final = train(cfg, progress=False)
    run_dir = cfg.run_dir()
    r = rows(run_dir)
    assert [x["step"] for x in r] == [0, 1, 2]
    heads = list(cfg.sd3.reward_weights())
    for key in ["reward/mean", "loss/policy", "diversity/train_pairwise", "eval/alignment", "eval/diversity",
                "eval/diversity/vendi"] + [f"reward/{h}" for h in heads] + [f"eval/reward/{h}" for h in heads]:
        assert key in r[1] and isinstance(r[1][key], float), key
        assert r[1][key] == r[1][key], key  # not NaN
    for name in cfg.sd3.eval_rewards:
        assert all(f"eval/monitor/{name}" in x for x in r), name
    assert final["final"]["step"] == 2
    # training moved the LoRA weights (lora_B starts at zero)
    w = load_file(os.path.join(run_dir, "checkpoints", "step_000002", "tensors.safetensors"))
    lora_b = [v for k, v in w.items() if k.startswith("model/") and "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)
    assert os.path.exists(os.path.join(run_dir, "samples", "eval_000002.png"))

    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name(f"sd3_{method}").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["model.world"] == "sd3" and run.data.params["sd3.resolution"] == "64"
    assert run.data.tags["features_variant"] == cfg.model.features  # F8: what measured the diversity
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
    assert {"samples/eval_000000.png", "samples/eval_000001.png", "samples/eval_000002.png"} <= arts  # every eval
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "reward/mean")) == [1, 2]


def test_resume_after_crash_is_exact(models, tmp_path):
    from drift.train import train

    class Crash(Exception):
        pass

    ref = make_config(items(models, tmp_path / "a", "method=flow_grpo_kl", "flow_grpo_kl.beta=0.04", "eval.every=2"))
    train(ref, progress=False)
    cfg = make_config(items(models, tmp_path / "b", "method=flow_grpo_kl", "flow_grpo_kl.beta=0.04", "eval.every=2"))

    def crash(phase, it):
        if phase == "backward" and it == 1:
            raise Crash

    with pytest.raises(Crash):
        train(cfg, progress=False, on_phase=crash)
    assert not os.path.exists(os.path.join(cfg.run_dir(), "DONE"))
    train(cfg, progress=False)
    strip = lambda rs: [{k: v for k, v in x.items() if not k.startswith("sys/") or k == "sys/opt_steps"} for x in rs]  # noqa: E731
    assert strip(rows(cfg.run_dir())) == strip(rows(ref.run_dir()))
    wa = load_file(os.path.join(ref.run_dir(), "checkpoints", "step_000002", "tensors.safetensors"))
    wb = load_file(os.path.join(cfg.run_dir(), "checkpoints", "step_000002", "tensors.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


# ------------------------------------------------------------------------------------------------
# The world's parts
# ------------------------------------------------------------------------------------------------
def test_text_embeddings_are_cached_per_prompt(models, tmp_path):
    w = world_of(models, tmp_path)
    c1 = w.encode(["a red cat", "a blue dog", "a red cat"])
    assert w.cache_stats == {"hits": 1, "misses": 2}
    assert torch.equal(c1.hidden[0], c1.hidden[2]) and not torch.equal(c1.hidden[0], c1.hidden[1])
    # 77 CLIP tokens + max_sequence_length T5 tokens, joint_attention_dim wide; pooled = both CLIP projections
    assert c1.hidden.shape == (3, 77 + w.cfg.max_sequence_length, 64) and c1.pooled.shape == (3, 64)
    assert c1.hidden.device == w.device
    c2 = w.encode(["a blue dog", "a red cat"])
    assert w.cache_stats == {"hits": 3, "misses": 2}
    assert torch.equal(c2.hidden[1], c1.hidden[0])
    w.encode([f"prompt {i}" for i in range(10)])  # LRU bound: sd3.text_cache_size = 8
    assert len(w._cache) == 8 and "a red cat" not in w._cache
    assert torch.equal(w.encode(["a red cat"]).hidden[0], c1.hidden[0])  # re-encoded identically


def test_reference_is_the_base_and_differs_after_an_update(models, tmp_path):
    w = world_of(models, tmp_path)
    cond = w.encode(["a red cat", "a blue dog"])
    x = torch.randn(2, *w.latent_shape, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor(0.7)
    v0 = w.velocity(x, sigma, cond)
    with torch.no_grad(), w.reference():
        r0 = w.velocity(x, sigma, cond)
    assert torch.equal(v0, r0)  # LoRA B starts at zero: the policy is the base
    params = w.trainable_parameters()
    assert params and all("lora" in k and p.dtype == torch.float32 for k, p in params.items())
    opt = torch.optim.SGD(params.values(), lr=1.0)
    w.velocity(x, sigma, cond).pow(2).mean().backward()
    opt.step()
    with torch.no_grad():
        v1 = w.velocity(x, sigma, cond)
        with w.reference():
            r1 = w.velocity(x, sigma, cond)
    assert not torch.allclose(v1, r1, atol=1e-6)
    assert torch.equal(r1, r0)  # the reference did not move
    assert w.transformer.disable_adapters and w._in_reference is False  # adapter re-enabled after the context


def test_ode_sampling_and_decode_match_the_diffusers_pipeline(models, tmp_path):
    """The engine's noise-free sampler + the world's velocity/conditioning/CFG/decode = StableDiffusion3Pipeline."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from drift.sampling import sample_trajectories
    from drift.sde import sigma_schedule

    w = world_of(models, tmp_path)
    prompts = ["a red cat", "a blue dog"]
    x = torch.randn(2, *w.latent_shape, generator=torch.Generator().manual_seed(3))
    sig = sigma_schedule(4, 1.0)  # shift 1: the scheduler would shift custom sigmas again
    tr = sample_trajectories(w, w.encode(prompts), w.encode([""] * 2), x, sig, 0.0, 4.5, torch.Generator())
    w.pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)
    kw = dict(prompt=prompts, sigmas=sig[:-1].tolist(), guidance_scale=4.5, height=64, width=64,
              max_sequence_length=w.cfg.max_sequence_length)
    lat = w.pipe(latents=x.clone().to(w.device), output_type="latent", **kw).images
    assert torch.allclose(tr.xs[:, -1], lat, atol=1e-4), (tr.xs[:, -1] - lat).abs().max()
    img = w.pipe(latents=x.clone().to(w.device), output_type="pt", **kw).images
    assert torch.allclose(tr.images, img.cpu().float(), atol=1e-4)


def test_ratio_is_one_before_any_update(models, tmp_path):
    """Re-scoring a sampled trajectory with the same weights gives the stored log-probs (Flow-GRPO's porting check)."""
    from drift.sampling import guided_velocity, sample_trajectories
    from drift.sde import sde_step_with_logprob, sigma_schedule

    w = world_of(models, tmp_path)
    c, u = w.encode(["a red cat", "a blue dog"]), w.encode([""] * 2)
    sig = sigma_schedule(4, 3.0)
    x = torch.randn(2, *w.latent_shape, generator=torch.Generator().manual_seed(4))
    tr = sample_trajectories(w, c, u, x, sig, 0.7, 4.5, torch.Generator().manual_seed(5))
    for j in range(3):
        v = guided_velocity(w, tr.xs[:, j], sig[j], c, u, 4.5)
        lp = sde_step_with_logprob(v, tr.xs[:, j], sig[j], sig[j + 1], 0.7, sig[1], prev_sample=tr.xs[:, j + 1]).log_prob
        assert torch.allclose(lp, tr.log_probs[:, j], atol=1e-5), j


def test_latents_decode_to_cpu_images(models, tmp_path):
    w = world_of(models, tmp_path)
    assert w.latent_shape == (16, 8, 8)  # 64 px / VAE factor 8, SD3's 16 latent channels
    img = w.decode(torch.randn(3, *w.latent_shape))
    assert img.shape == (3, 3, 64, 64) and img.dtype == torch.float32 and img.device.type == "cpu"
    assert 0 <= img.min() and img.max() <= 1
    z = w.encode_images(img)
    assert z.shape == (3, *w.latent_shape) and torch.isfinite(z).all()
    heads = w.reward(img, ["a cat"] * 3)
    assert set(heads) == {"reward", "pickscore"} and heads["reward"].shape == (3,) and heads["reward"].device.type == "cpu"
    assert torch.equal(heads["reward"], heads["pickscore"])  # weight 1, the only head
    f = w.features.embed(img)
    assert f.shape[0] == 3 and torch.allclose(f.norm(dim=1), torch.ones(3), atol=1e-5)


def test_bf16_weights_with_fp32_lora_and_velocity(models, tmp_path):
    w32 = world_of(models, tmp_path)
    w16 = world_of(models, tmp_path, "sd3.dtype=bf16")
    base = [p for n, p in w16.transformer.named_parameters() if "lora" not in n]
    assert {p.dtype for p in base} == {torch.bfloat16}
    assert {p.dtype for p in w16.trainable_parameters().values()} == {torch.float32}
    assert w16.encode(["a cat"]).hidden.dtype == torch.bfloat16
    x = torch.randn(2, *w32.latent_shape, generator=torch.Generator().manual_seed(1))
    cond32, cond16 = w32.encode(["a cat", "a dog"]), w16.encode(["a cat", "a dog"])
    with torch.no_grad():
        v32, v16 = w32.velocity(x, torch.tensor(0.5), cond32), w16.velocity(x, torch.tensor(0.5), cond16)
    assert v16.dtype == torch.float32 and torch.isfinite(v16).all()
    rel = (v16 - v32).norm() / v32.norm()
    assert 0 < rel < 0.1, rel  # the same network, computed in bf16


def test_gradient_checkpointing_gives_the_same_gradients(models, tmp_path):
    grads = []
    for extra in ([], ["sd3.gradient_checkpointing=true"]):
        w = world_of(models, tmp_path, *extra)
        assert w.transformer.is_gradient_checkpointing == bool(extra)
        params = w.trainable_parameters()
        w.transformer.train()
        x = torch.randn(2, *w.latent_shape, generator=torch.Generator().manual_seed(2))
        w.velocity(x, torch.tensor(0.6), w.encode(["a cat", "a dog"])).pow(2).mean().backward()
        grads.append({k: p.grad.clone() for k, p in params.items() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for k in grads[0]:
        assert torch.allclose(grads[0][k], grads[1][k], atol=1e-6, rtol=1e-5), k


def test_full_finetune_uses_a_frozen_copy_as_reference(models, tmp_path):
    w = world_of(models, tmp_path, "model.finetune=full")
    params = w.trainable_parameters()
    assert len(params) == len(list(w.transformer.parameters())) and all(p.dtype == torch.float32 for p in params.values())
    cond = w.encode(["a cat"])
    x = torch.randn(1, *w.latent_shape)
    with torch.no_grad(), w.reference():
        r0 = w.velocity(x, torch.tensor(0.5), cond)
    with torch.no_grad():
        for p in params.values():
            p.add_(0.01)
        v1 = w.velocity(x, torch.tensor(0.5), cond)
        with w.reference():
            r1 = w.velocity(x, torch.tensor(0.5), cond)
    assert torch.equal(r0, r1) and not torch.allclose(v1, r1)


def test_missing_weights_say_how_to_get_them(models, tmp_path):
    from drift.worlds import check_available
    from drift.worlds.sd3.backend import SD3WeightsError, load_pipeline

    with pytest.raises(SD3WeightsError, match=r"model.path='/nonexistent/sd3'.*model_index.json.*huggingface-cli download"):
        load_pipeline("/nonexistent/sd3", torch.float32, torch.float32)
    os.environ["HF_HOME"], old = str(tmp_path / "hf"), os.environ.get("HF_HOME")
    try:  # a hub id absent from an empty cache, offline (HF_HUB_OFFLINE=1 in conftest)
        cfg = make_config({**items(models, tmp_path), "model.path": "stabilityai/stable-diffusion-3.5-medium"})
        with pytest.raises(ConfigError, match=r"not in the Hugging Face cache.*accept its licence"):
            check_available(cfg)
    finally:
        os.environ.pop("HF_HOME") if old is None else os.environ.__setitem__("HF_HOME", old)
    cfg = make_config({**items(models, tmp_path), "sd3.pickscore_path": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match=r"sd3.pickscore_path=.*no such file"):
        check_available(cfg)
    cfg = make_config({**items(models, tmp_path), "sd3.aesthetic_path": "", "sd3.eval_rewards": "aesthetic"})
    with pytest.raises(ConfigError, match=r"sd3.aesthetic_path='': .*no default location"):
        check_available(cfg)
    from drift.worlds.sd3.rewards import RewardWeightsError

    with pytest.raises(RewardWeightsError):  # a reward folder without weights: the rewards module's own error
        world_of(models, tmp_path, f"sd3.pickscore_path={tmp_path}")


def test_resolution_beyond_the_position_embedding_is_refused(models, tmp_path):
    with pytest.raises(ConfigError, match=r"sd3.resolution=1024: .*pos_embed_max_size 32 allows at most 512 px"):
        world_of(models, tmp_path, "sd3.resolution=1024")


# ------------------------------------------------------------------------------------------------
# Prompt files
# ------------------------------------------------------------------------------------------------
def test_text_and_jsonl_prompt_files(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("# comment\n\na cat\n  a dog  \na cat\n")
    assert [e.text for e in read_prompt_file(str(txt))] == ["a cat", "a dog"]
    jl = tmp_path / "p.jsonl"
    jl.write_text('{"prompt": "a cat", "split": "eval", "tag": "single"}\n\n{"prompt": "a dog"}\n{"prompt": "a cow", "split": "train"}\n')
    entries = read_prompt_file(str(jl))
    assert [(e.text, e.split) for e in entries] == [("a cat", "eval"), ("a dog", None), ("a cow", "train")]
    assert entries[0].meta == {"tag": "single"}
    tr, ev = load_prompt_splits(str(jl), eval_fraction=0.5)
    assert "a cat" in ev and "a cow" in tr and ("a dog" in ev) == (hash_split("a dog", 0.5) == "eval")
    other = tmp_path / "eval.txt"
    other.write_text("a horse\na cow\n")
    tr, ev = load_prompt_splits(str(jl), str(other))
    assert tr == ["a dog"] and ev == ["a cat", "a horse", "a cow"]


def test_hash_split_is_deterministic_and_order_free(tmp_path):
    texts = [f"prompt number {i}" for i in range(400)]
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("\n".join(texts))
    b.write_text("\n".join(reversed(texts)))
    (tra, eva), (trb, evb) = load_prompt_splits(str(a), eval_fraction=0.25), load_prompt_splits(str(b), eval_fraction=0.25)
    assert set(eva) == set(evb) and set(tra) == set(trb) and not set(tra) & set(eva)
    assert 0.18 < len(eva) / 400 < 0.32
    tr, ev = load_prompt_splits("prompts/drift_sd3_v1.txt")  # the shipped set, found from the repository root
    assert len(tr) + len(ev) >= 100 and len(ev) >= 16


@pytest.mark.parametrize("content, name, pattern", [
    (None, "missing.txt", r"missing\.txt.*cannot read"),
    ("# only a comment\n\n", "empty.txt", r"empty\.txt.*holds no prompt"),
    ('{"prompt": "ok"}\n{"prompt": \n', "bad.jsonl", r"bad\.jsonl, line 2: not valid JSON"),
    ('{"text": "a cat"}\n', "nokey.jsonl", r"nokey\.jsonl, line 1: .*\"prompt\""),
    ('{"prompt": "a cat", "split": "test"}\n', "split.jsonl", r"split\.jsonl, line 1: \"split\"='test'"),
    ('{"prompt": "a cat", "split": "train"}\n', "noeval.jsonl", r"noeval\.jsonl.*the eval split is empty"),
])
def test_bad_prompt_files_are_named(tmp_path, content, name, pattern):
    p = tmp_path / name
    if content is not None:
        p.write_text(content)
    with pytest.raises(PromptFileError, match=pattern):
        load_prompt_splits(str(p))


# ------------------------------------------------------------------------------------------------
# Config and presets
# ------------------------------------------------------------------------------------------------
def test_sd3_section_is_absent_for_other_worlds():
    shapes = make_config([])
    assert "sd3" not in shapes.to_dict() and shapes.model.path.endswith(os.path.join("assets", "base"))
    sd3 = make_config(["model.world=sd3"])
    d = sd3.to_dict()
    assert d["sd3"]["dtype"] == "bf16" and d["model"]["path"] == "stabilityai/stable-diffusion-3.5-medium"
    assert d["model"]["features"] == "dreamsim"
    assert config_from_dict(d).to_dict() == d
    assert make_config(["model.world=sd3", "sd3.resolution=256"]).science_hash() != sd3.science_hash()
    with pytest.raises(ConfigError, match=r"sd3\.\*=.*sd3.dtype: 'bf16' -> 'fp16'.*model.world='sd3' only"):
        make_config(["sd3.dtype=fp16"])


@pytest.mark.parametrize("extra, pattern", [
    (["sd3.dtype=fp8"], r"sd3.dtype='fp8': must be one of"),
    (["sd3.resolution=500"], r"sd3.resolution=500: must be a positive multiple of 16"),
    (["sd3.w_pickscore=0"], r"must not all be 0"),
    (["sd3.eval_rewards=pickscore,imagereward"], r"sd3.eval_rewards=.*unknown reward\(s\) \['imagereward'\]"),
    (["model.features=lpips"], r"model.features='lpips': .*one of \('dreamsim', 'clip', 'dino'\)"),
    (["sd3.device=tpu"], r"sd3.device='tpu'"),
])
def test_bad_sd3_settings_are_named(extra, pattern):
    with pytest.raises(ConfigError, match=pattern):
        make_config(["model.world=sd3", *extra])


def test_sd3_grids_hold_flow_grpo_settings_and_leave_shapes_grids_alone():
    sys.path.insert(0, ROOT)
    from experiments.grids import expand, load
    from experiments.grids.presets import SD3, as_overrides

    for name in ("pareto_sd3", "ablation_sd3"):
        grid = load(name)
        pts = expand(grid)
        assert pts and all(p.cfg.model.world == "sd3" for p in pts)
        c = pts[0].cfg
        assert (c.model.lora_rank, c.model.lora_alpha, c.sample.shift, c.sample.cfg, c.eval.num_steps) == (32, 64.0, 3.0, 4.5, 40)
        assert (c.sample.num_steps, c.sample.noise_level, c.sd3.resolution, c.train.clip_range) == (10, 0.7, 512, 1e-4)
    assert expand(load("pareto"))[0].cfg.model.world == "shapes"
    assert make_config(as_overrides(SD3)).model.lora_rank == 32


def test_mid_size_is_sd35_medium_per_layer():
    from diffusers import SD3Transformer2DModel

    from drift.worlds.sd3.tiny import _configs

    c = _configs("mid", 49408, 200)["transformer"]
    with torch.device("meta"):
        n = sum(p.numel() for p in SD3Transformer2DModel(**c).parameters())
    assert 100e6 < n < 300e6, n
    assert c["num_attention_heads"] * c["attention_head_dim"] == 1536 and c["joint_attention_dim"] == 4096


def test_prompt_file_edited_in_place_is_refused_on_resume(models, tmp_path):
    """The run hash holds the prompt file's path; its content is fingerprinted in config.json."""
    from drift.train import prepare_run_dir

    pf = tmp_path / "prompts.txt"
    pf.write_text("a red cat\na blue dog\na green bird\na cup on a table\n")
    cfg = make_config(items(models, tmp_path, f"sd3.prompts={pf}"))
    prepare_run_dir(cfg)
    prepare_run_dir(cfg)  # unchanged: fine
    pf.write_text("a red cat\na blue dog\na green bird\na bowl on a table\n")
    with pytest.raises(ConfigError, match=r"model_fingerprint\.prompts"):
        prepare_run_dir(cfg)


def test_sd3_world_fulfils_the_contract(models, tmp_path):
    from test_world_contract import check_world_contract

    check_world_contract(world_of(models, tmp_path), make_config(items(models, tmp_path)))


# ------------------------------------------------------------------------------------------------
# Paraphrases (DRIFT's P2 on the SD3 world): JSONL "paraphrases" fields and the sd3.paraphrases file
# ------------------------------------------------------------------------------------------------
OURS = "prompts/drift_sd3_v1.paraphrases.jsonl"


def test_jsonl_paraphrases_are_read_and_never_move_the_split(tmp_path):
    texts = [f"a prompt number {i}" for i in range(40)]
    plain, with_p = tmp_path / "plain.jsonl", tmp_path / "with.jsonl"
    plain.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    with_p.write_text("".join(json.dumps({"prompt": t, "paraphrases": [f" {t}, reworded ", f"reworded {t}"], "tag": 1})
                              + "\n" for t in texts))
    e = read_prompt_file(str(with_p))[3]
    assert e.paraphrases == (f"{texts[3]}, reworded", f"reworded {texts[3]}") and e.meta == {"tag": 1} and e.line == 4
    assert load_prompt_splits(str(with_p)) == load_prompt_splits(str(plain))  # splits hash the original text only


@pytest.mark.parametrize("paraphrases, rule", [
    ("a kitten", r"must be a list of strings, not str"),
    (["a kitten", 3], r"item 1 \(3\) must be a non-empty string"),
    (["  "], r"item 0 \('  '\) must be a non-empty string"),
    (["a kitten", " a cat "], r"item 1 \(' a cat '\) repeats the prompt"),
    (["a kitten", "a kitten"], r"item 1 \('a kitten'\) repeats an earlier paraphrase"),
])
def test_bad_paraphrases_are_named_with_file_line_and_rule(tmp_path, paraphrases, rule):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps({"prompt": "a dog"}) + "\n" + json.dumps({"prompt": "a cat", "paraphrases": paraphrases}) + "\n")
    with pytest.raises(PromptFileError, match=rf"bad\.jsonl, line 2: \"paraphrases\" of 'a cat': {rule}"):
        read_prompt_file(str(p))


def test_a_repeated_prompt_with_other_paraphrases_is_refused(tmp_path):
    p = tmp_path / "dup.jsonl"
    p.write_text('{"prompt": "a cat", "paraphrases": ["a kitten"]}\n{"prompt": "a dog"}\n'
                 '{"prompt": "a cat", "paraphrases": ["one cat"]}\n')
    with pytest.raises(PromptFileError, match=r"dup\.jsonl, line 3: 'a cat' repeats line 1 with other \"paraphrases\""):
        read_prompt_file(str(p))
    p.write_text('{"prompt": "a cat", "paraphrases": ["a kitten"]}\n{"prompt": "a cat"}\n')  # a bare repeat: kept once
    assert read_prompt_file(str(p))[0].paraphrases == ("a kitten",)


def test_paraphrase_files_are_checked_against_the_prompt_set(tmp_path):
    from drift.prompts import read_paraphrases

    side = tmp_path / "side.jsonl"
    prompts, held = ["a cat", "a dog", "a cow"], ["a cow"]
    side.write_text('{"prompt": "a cat", "paraphrases": ["a kitten", "one cat"]}\n{"prompt": "a dog"}\n')
    assert read_paraphrases(str(side), prompts, held) == {"a cat": ("a kitten", "one cat")}
    cases = [('{"prompt": "a bird", "paraphrases": ["one bird"]}\n', r"line 1: \"prompt\"='a bird' is not a prompt of the prompt set"),
             ('{"prompt": "a dog"}\n{"prompt": "a cat", "paraphrases": ["a kitten", "a cow"]}\n',
              r"line 2: \"paraphrases\" of 'a cat' hold 'a cow', the text of an eval or validation prompt"),
             ('{"prompt": "a dog"}\n', r"holds no paraphrase")]
    for text, pattern in cases:
        side.write_text(text)
        with pytest.raises(PromptFileError, match=r"side\.jsonl.*" + pattern):
            read_paraphrases(str(side), prompts, held)
    txt = tmp_path / "side.txt"
    txt.write_text("a cat\n")
    with pytest.raises(PromptFileError, match=r"side\.txt.*must be a JSONL file"):
        read_paraphrases(str(txt), prompts, held)


def test_the_shipped_paraphrases_cover_exactly_the_training_prompts():
    from drift.prompts import carve_validation, read_paraphrases

    cfg = make_config(["model.world=sd3"])  # the defaults: prompts/drift_sd3_v1.txt, eval_fraction 0.25
    pool, ev = load_prompt_splits(cfg.sd3.prompts, cfg.sd3.eval_prompts, cfg.sd3.eval_fraction)
    train, val = carve_validation(pool)
    table = read_paraphrases(OURS, pool + ev, ev + val)  # none is a held-out prompt's text
    assert list(table) == train and len(train) == 60 and all(len(v) == 3 for v in table.values())
    every = [t for v in table.values() for t in v]
    assert len(set(every)) == len(every) and not set(every) & set(pool + ev)


def test_sd3_paraphrases_setting_keeps_old_run_directories(tmp_path):
    base = make_config(["model.world=sd3"])
    assert "paraphrases" not in base.to_dict()["sd3"]  # at its default: config.json and the hash predate the field
    on = make_config(["model.world=sd3", f"sd3.paraphrases={OURS}"])
    assert on.to_dict()["sd3"]["paraphrases"] == OURS and on.science_hash() != base.science_hash()
    assert config_from_dict(on.to_dict()).to_dict() == on.to_dict() and config_from_dict(base.to_dict()).to_dict() == base.to_dict()
    assert on.input_paths()["paraphrases"].endswith(OURS) and "paraphrases" not in base.input_paths()
    with pytest.raises(ConfigError, match=r"sd3.paraphrases='p.txt': must be '' or a JSONL file"):
        make_config(["model.world=sd3", "sd3.paraphrases=p.txt"])


@pytest.mark.parametrize("kind", ["paraphrase", "both"])
def test_p2_on_sd3_needs_a_paraphrase_file(kind):
    from drift.worlds import offers

    with pytest.raises(ConfigError, match=rf"drift\.prompt='{kind}': model\.world='sd3' offers no paraphrases with this "
                                          r"config: sd3\.paraphrases='' names no paraphrase file; set it to a JSONL file.*"
                                          r"sd3\.paraphrases=prompts/drift_sd3_v1\.paraphrases\.jsonl.*'cads' or 'embed'"):
        make_config(["model.world=sd3", "method=drift", f"drift.prompt={kind}"])
    cfg = make_config(["model.world=sd3", "method=drift", f"drift.prompt={kind}", f"sd3.paraphrases={OURS}"])
    assert offers(cfg, "paraphrase") and not offers(make_config(["model.world=sd3"]), "paraphrase")
    assert offers(make_config([]), "paraphrase")  # the shapes world: always


def test_sd3_world_offers_paraphrases_iff_configured(models, tmp_path):
    import random

    from test_world_contract import check_world_contract

    from drift.worlds import check_available

    on = make_config(items(models, tmp_path, f"sd3.paraphrases={OURS}"))
    w = world_of(models, tmp_path, f"sd3.paraphrases={OURS}")
    check_world_contract(w, on)
    assert w.paraphrase is not None and len(w.paraphrases) == 60
    rng = random.Random(0)
    got = {w.paraphrase("a dog", rng) for _ in range(50)}
    assert got == {"one dog", "a single dog", "an image of a dog"}
    held = w.eval_texts[0]
    assert w.paraphrase(held, rng) == held  # a prompt without paraphrases: itself
    side = tmp_path / "eval_only.jsonl"
    side.write_text(json.dumps({"prompt": held, "paraphrases": [held + ", reworded"]}) + "\n")
    with pytest.raises(ConfigError, match=rf"sd3.paraphrases='{side}': none of the 60 training prompts .* has a paraphrase"):
        check_available(make_config(items(models, tmp_path, f"sd3.paraphrases={side}")))  # preflight, before any work


def test_drift_p2_on_sd3_rewards_the_original_prompt(models, tmp_path, monkeypatch):
    """Every sample conditioned on a paraphrase (prompt_scale 1); the training reward still sees the original
    prompts. The world's reward and encode are wrapped to record their inputs (and then run unchanged)."""
    from drift.train import train
    from drift.worlds.sd3.backend import SD3World, load_prompt_sets

    phase, rewarded, encoded = ["start"], [], []
    real_reward, real_encode = SD3World.reward, SD3World.encode
    monkeypatch.setattr(SD3World, "reward", lambda self, im, ps: rewarded.append((phase[0], list(ps))) or real_reward(self, im, ps))
    monkeypatch.setattr(SD3World, "encode", lambda self, ts: encoded.extend(ts) or real_encode(self, ts))
    cfg = make_config(items(models, tmp_path, "method=drift", "drift.prompt=paraphrase", "drift.prompt_scale=1",
                            "drift.prompt_schedule=constant", "train.iterations=1", f"sd3.paraphrases={OURS}"))
    train(cfg, progress=False, on_phase=lambda ph, it: phase.__setitem__(0, ph))
    assert [x["step"] for x in rows(cfg.run_dir())] == [0, 1]
    sets = load_prompt_sets(cfg)
    (trained,) = [ps for ph, ps in rewarded if ph == "reward"]  # the iteration's training reward
    assert trained and set(trained) <= set(sets.train)
    of = {t: p for p, v in sets.paraphrases.items() for t in v}
    used = set(encoded) & set(of)
    assert used and {of[t] for t in used} <= set(trained)  # the policy was conditioned on their paraphrases


# ------------------------------------------------------------------------------------------------
# Fidelity to Flow-GRPO's SD3 trainer (the shapes-world halves and the reference transcriptions: test_fidelity.py)
# ------------------------------------------------------------------------------------------------
def test_f1_detached_uncond_gradient_on_the_sd3_world(models, tmp_path):
    from test_fidelity import check_cfg_gradients

    w = world_of(models, tmp_path)
    with torch.no_grad():
        for k, p in w.trainable_parameters().items():
            if "lora_B" in k:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    check_cfg_gradients(w, ["a red cat", "a blue dog"])


def test_f2_lora_targets_are_checked_against_the_sd3_transformer(models, tmp_path):
    from drift.worlds import check_available

    cfg = make_config(items(models, tmp_path, "model.lora_targets=attn.to_q,to_zz"))
    with pytest.raises(ConfigError, match=r"model.lora_targets=.*\['to_zz'\] match no module.*'attn2.to_q'"):
        check_available(cfg)  # from transformer/config.json, before the pipeline is loaded
    w = world_of(models, tmp_path)
    adapted = {n.split(".lora_A")[0] for n in w.trainable_parameters() if ".lora_A" in n}
    assert adapted and not any(".attn2." in n for n in adapted)  # tiny has dual attention in block 0
    assert "transformer_blocks.0.attn.to_q" in adapted


def test_f5_shift_comes_from_the_scheduler_and_shapes_defaults_are_named(models, tmp_path):
    from drift.sde import sigma_schedule
    from drift.worlds import check_available

    w = world_of(models, tmp_path, "sample.shift=0")
    assert w.default_shift == 3.0  # the tiny pipeline's scheduler config, as SD3.5-M's
    assert torch.equal(w.sigma_schedule(10, 0), sigma_schedule(10, 3.0, "diffusers"))
    assert make_config(["model.world=sd3"]).sample.shift == 0  # the engine default: the model's own
    with pytest.warns(UserWarning, match=r"train.lr=0.001 \(Flow-GRPO SD3.5-M: 0.0003\).*train.clip_range=0.01"):
        check_available(make_config(items(models, tmp_path)))


def test_f7_sampling_micro_batch_is_bitwise_on_the_sd3_world(models, tmp_path):
    from test_fidelity import check_micro_batch_is_bitwise

    check_micro_batch_is_bitwise(world_of(models, tmp_path), ["a red cat", "a blue dog", "a cow", "a car"], (2,))


# ------------------------------------------------------------------------------------------------
# Export: a diffusers LoRA that the standard pipeline loads, in a fresh process
# ------------------------------------------------------------------------------------------------
FRESH_PIPELINE = r"""
import json, sys
import torch
from diffusers import StableDiffusion3Pipeline
from drift.evaluate import EVAL_NOISE_SEED
base, lora, out, prompts, seeds, steps, cfg, seq = sys.argv[1:9]
prompts, seeds, steps, cfg, seq = json.loads(prompts), int(seeds), int(steps), float(cfg), int(seq)
pipe = StableDiffusion3Pipeline.from_pretrained(base, torch_dtype=torch.float32)
pipe.load_lora_weights(lora)
g = torch.Generator().manual_seed(EVAL_NOISE_SEED)  # the suite's fixed evaluation noise (drift.evaluate.eval_noise)
noise = torch.randn(len(prompts), seeds, 16, 8, 8, generator=g).flatten(0, 1)
texts = [p for p in prompts for _ in range(seeds)]
img = pipe(prompt=texts, latents=noise, num_inference_steps=steps, guidance_scale=cfg, height=64, width=64,
           max_sequence_length=seq, output_type="pt").images
torch.save(img.cpu().float(), out)
"""


def test_export_loads_with_load_lora_weights_and_reproduces_the_final_eval(models, tmp_path):
    import subprocess

    from drift.train import train
    from drift.viz import read_grid_tile

    cfg = make_config(items(models, tmp_path, "eval.num_steps=4", "train.lr=0.05",
                            "model.lora_targets=attn.to_q,attn.to_k,attn.add_q_proj"))
    train(cfg, progress=False)
    run_dir = cfg.run_dir()
    export = os.path.join(run_dir, "export")
    with open(os.path.join(export, "drift_export.json")) as f:
        info = json.load(f)
    assert info["step"] == 2 and info["weights"] == "ema" and info["world"] == "sd3"
    from drift.prompts import load_prompt_splits

    prompts = load_prompt_splits(cfg.sd3.prompts, cfg.sd3.eval_prompts, cfg.sd3.eval_fraction)[1][: cfg.eval.num_prompts]
    out = str(tmp_path / "img.pt")
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", FRESH_PIPELINE, models["sd3"], os.path.join(export, "lora"), out, json.dumps(prompts),
                    str(cfg.eval.seeds), str(cfg.eval.num_steps), str(cfg.sample.cfg), str(cfg.sd3.max_sequence_length)],
                   check=True, env=env, cwd=str(tmp_path))
    img = torch.load(out).view(len(prompts), cfg.eval.seeds, 3, 64, 64)
    grid = os.path.join(run_dir, "samples", "eval_000002.png")
    for i in range(cfg.eval.grid_prompts):
        for j in range(cfg.eval.seeds):
            tile = read_grid_tile(grid, i, j, 64, 64)
            assert (tile - (img[i, j] * 255).round() / 255).abs().max() <= 1.5 / 255, (i, j)
    # the base pipeline's images differ: the exported LoRA is what reproduces them
    r = subprocess.run([sys.executable, "-c", FRESH_PIPELINE.replace("pipe.load_lora_weights(lora)", ""), models["sd3"], "x",
                        out, json.dumps(prompts), str(cfg.eval.seeds), str(cfg.eval.num_steps), str(cfg.sample.cfg),
                        str(cfg.sd3.max_sequence_length)], env=env, cwd=str(tmp_path))
    assert r.returncode == 0
    base = torch.load(out).view(len(prompts), cfg.eval.seeds, 3, 64, 64)
    assert (base - img).abs().max() > 1e-3
