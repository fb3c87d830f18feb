"""The shapes world: generator, judge accuracy on ground truth, prompts, reward, features."""

import random

import pytest
import torch

from drift.worlds.shapes import world
from drift.worlds.shapes.reward import shapes_reward


def test_judge_accuracy_on_ground_truth():
    prompts, scenes, images = world.ground_truth_batch(2000, seed=0)
    v = world.judge(images)
    assert (v.fg == scenes.fg).float().mean() == 1.0
    assert (v.bg == scenes.bg).float().mean() == 1.0
    assert (v.shape == scenes.shape).float().mean() >= 0.998
    # position and size are read back too
    assert torch.allclose(v.cx * 32, scenes.cx, atol=1.0)
    assert torch.allclose(v.cy[scenes.shape != 2] * 32, scenes.cy[scenes.shape != 2], atol=1.0)
    c = world.correctness(prompts, v)
    assert c["all"].mean() >= 0.998


def test_judge_sees_no_object_on_blank_image():
    blank = torch.zeros(2, 3, 32, 32)
    blank[1] = torch.tensor(world.PALETTE["white"]).view(3, 1, 1)
    v = world.judge(blank)
    assert (v.fg == -1).all() and (v.shape == -1).all()
    assert v.bg.tolist() == [world.BG_COLOURS.index("black"), world.BG_COLOURS.index("white")]


def test_renderer_is_deterministic_and_varied():
    p = [world.Prompt("red", "circle", "blue")] * 64
    a = world.render(world.sample_scenes(p, torch.Generator().manual_seed(3)))
    b = world.render(world.sample_scenes(p, torch.Generator().manual_seed(3)))
    assert torch.equal(a, b)
    v = world.judge(a)
    assert v.cx.std() > 0.1 and v.area.std() > 0.03  # real within-prompt variety


def test_free_attributes_are_drawn_and_scored_as_free():
    p = world.Prompt(None, "square", "black")
    scenes = world.sample_scenes([p] * 200, torch.Generator().manual_seed(0))
    assert len(set(scenes.fg.tolist())) == 6  # black is not an fg colour
    c = world.correctness([p] * 200, world.judge(world.render(scenes)))
    assert c["all"].mean() == 1.0


def test_prompt_validation_and_splits():
    with pytest.raises(ValueError, match="fg='red' equals bg='red'|must be one of"):
        world.Prompt("red", "circle", "red")
    with pytest.raises(ValueError, match="Prompt.shape='hexagon'"):
        world.Prompt("red", "hexagon", "blue")
    train, val, ev = world.prompt_split("train"), world.prompt_split("validation"), world.prompt_split("eval")
    assert set(train).isdisjoint(ev) and set(val).isdisjoint(ev) and set(train).isdisjoint(val)
    assert len(train) + len(val) + len(ev) == len(world.all_prompts())
    assert {p.kind for p in ev} == {"full", "free_fg", "free_shape", "free_bg"}


def test_paraphrase_keeps_tokens_in_vocab():
    from drift.worlds.shapes.model import UNK, ShapesTokenizer, build_vocab

    tok = ShapesTokenizer(build_vocab())
    rng = random.Random(0)
    texts = [p.paraphrase(rng) for p in world.all_prompts() for _ in range(3)]
    ids = tok(texts)
    assert not (ids == tok.index[UNK]).any()


def test_reward_prefers_correct_and_large():
    prompts, scenes, images = world.ground_truth_batch(256, seed=1)
    r = shapes_reward(images, prompts, "partial", 1.0, 2.0, 0.0)
    assert torch.allclose(r["judge"], torch.ones(256))
    assert torch.allclose(r["reward"], 1.0 + 2.0 * r["size"])
    full = [i for i, p in enumerate(prompts) if p.kind == "full"]
    wrong = [world.Prompt("purple" if prompts[i].fg != "purple" else "orange", prompts[i].shape, prompts[i].bg) for i in full]
    r2 = shapes_reward(images[full], wrong, "partial", 1.0, 0.0, 0.0)
    assert torch.allclose(r2["judge"], torch.full((len(full),), 2 / 3))
