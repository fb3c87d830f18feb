"""The World protocol (drift/worlds/types.py), checked on the shapes world; tests/test_sd3.py runs the
same check on a tiny random SD3 pipeline."""

import warnings

import pytest
import torch

from drift.config import ConfigError, make_config
from drift.worlds import CAPABILITIES, offers
from drift.worlds.types import Cond, World


def check_world_contract(world, cfg) -> None:
    """Every member of the protocol is there, and each call returns what the protocol says (``cfg``: the config
    the world was built from; what it offers beyond the protocol is decided from it)."""
    assert isinstance(world, World), [m for m in getattr(World, "__protocol_attrs__", ()) if not hasattr(world, m)]
    assert offers(cfg, "paraphrase") == (world.paraphrase is not None), cfg.model.world
    prompts = world.train_prompts()[:2]
    assert len(world.eval_prompts(2)) == 2
    with warnings.catch_warnings():  # a small prompt file may hold fewer validation prompts than asked for
        warnings.simplefilter("ignore")
        splits = {s: {world.prompt_text(p) for p in world.eval_prompts(10_000, s)} for s in ("test", "validation")}
    train = {world.prompt_text(p) for p in world.train_prompts()}
    assert not (train & splits["test"]) and not (train & splits["validation"]) and not (splits["test"] & splits["validation"])
    texts = [world.prompt_text(p) for p in prompts]
    cond = world.encode(texts)
    assert isinstance(cond, Cond) and len(cond) == 2
    sigmas = world.sigma_schedule(3, 1.0)
    assert sigmas.shape == (4,) and float(sigmas[0]) == pytest.approx(1.0) and float(sigmas[-1]) == 0.0
    x = torch.randn(2, *world.latent_shape).to(world.device)
    with torch.no_grad():
        v = world.velocity(x, sigmas[1].to(world.device), cond)
        with world.reference():
            v_ref = world.velocity(x, sigmas[1].to(world.device), cond)
        images = world.decode(x).clamp(0, 1)
    assert v.shape == x.shape and v_ref.shape == x.shape
    assert images.ndim == 4 and images.shape[:2] == (2, 3) and images.device.type == "cpu"
    heads = world.reward(images, prompts)
    assert heads["reward"].shape == (2,) and all(h.shape == (2,) for h in heads.values())
    f = world.features.embed(images)
    assert f.shape[0] == 2 and torch.allclose(f.norm(dim=1), torch.ones(2), atol=1e-4)
    params = world.trainable_parameters()
    assert params and all(p.requires_grad for p in params.values())
    extras = world.eval_extras(images.view(1, 2, *images.shape[1:]), prompts[:1])
    assert all(isinstance(val, float) for val in extras.values())
    per_prompt = world.eval_extras_per_prompt(images.view(1, 2, *images.shape[1:]), prompts[:1])
    assert set(per_prompt) == set(extras) and all(len(v) == 1 for v in per_prompt.values())
    for k, v in per_prompt.items():  # one prompt: its value is the mean over prompts
        assert v[0] == pytest.approx(extras[k], nan_ok=True, rel=1e-5, abs=1e-7), k
    held = world.heldout_features
    if held is not None:
        h = held.embed(images)
        assert h.shape[0] == 2 and torch.allclose(h.norm(dim=1), torch.ones(2), atol=1e-4)


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_shapes_world_fulfils_the_contract(tmp_path, finetune):
    from drift.worlds import make_world

    torch.manual_seed(0)
    cfg = make_config([f"out={tmp_path}", f"model.finetune={finetune}"])
    world = make_world(cfg)
    check_world_contract(world, cfg)
    if finetune == "full":  # the reference is a frozen copy, not the trained module
        assert world._ref_copy is not None and world.policy_net() is world.transformer


def test_drift_asks_for_paraphrases_not_for_a_world_name(monkeypatch):
    make_config(["method=drift", "drift.prompt=both"])
    monkeypatch.setitem(CAPABILITIES, "shapes", {"paraphrase": lambda cfg: "none here"})
    with pytest.raises(ConfigError, match=r"drift\.prompt='both': model\.world='shapes' offers no paraphrases "
                                          r"with this config: none here; or use drift\.prompt='cads'"):
        make_config(["method=drift", "drift.prompt=both"])
