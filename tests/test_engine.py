"""End-to-end: the training loop on the committed base model, MLflow contents, skip and resume."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from drift.config import ConfigError, make_config
from drift.train import train

TINY = [
    "train.iterations=2", "sample.groups_per_iter=2", "sample.group_size=4", "sample.num_steps=4",
    "eval.num_prompts=4", "eval.seeds=2", "eval.num_steps=4", "eval.every=1", "eval.grid_prompts=2",
    "checkpoint_every=1",
]


def tiny(tmp_path, *extra, tracking="none"):
    items = dict(x.split("=", 1) for x in TINY + [f"out={tmp_path}", f"tracking_uri={tracking}"])
    items.update(x.split("=", 1) for x in extra)  # later items win
    return make_config(items)


def rows(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_two_iterations_with_mlflow(tmp_path):
    uri = "sqlite:///" + str(tmp_path / "mlflow.db")
    cfg = tiny(tmp_path, tracking=uri)
    final = train(cfg, progress=False)
    run_dir = cfg.run_dir()
    assert sorted(os.listdir(os.path.join(run_dir, "checkpoints"))) == ["step_000001", "step_000002"]
    r = rows(run_dir)
    assert [x["step"] for x in r] == [0, 1, 2]
    for key in ("reward/mean", "loss/policy", "loss/clipfrac", "diversity/train_pairwise", "sys/iter_seconds",
                "eval/alignment", "eval/diversity", "eval/diversity/vendi"):
        assert key in r[1], key
        assert isinstance(r[1][key], float)
    assert final["final"]["step"] == 2 and final["initial"]["step"] == 0
    assert os.path.exists(os.path.join(run_dir, "DONE"))

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("default")
    assert exp.artifact_location.startswith("file://" + str(tmp_path))  # never relative to the cwd
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == "0.001" and run.data.params["method"] == "flow_grpo"
    hist = client.get_metric_history(run.info.run_id, "reward/mean")
    assert sorted(m.step for m in hist) == [1, 2]
    assert len(client.get_metric_history(run.info.run_id, "eval/alignment")) == 3
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"final_eval.json", "config.json", "samples"} <= arts
    grids = {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
    assert {"samples/eval_000000.png", "samples/eval_000002.png"} <= grids  # every evaluation's grid

    # a finished run is skipped, and a changed config in the same directory is refused
    assert train(cfg, progress=False) == final
    assert len(client.search_runs([exp.experiment_id])) == 1


def test_changed_config_is_refused_with_a_diff(tmp_path):
    cfg = tiny(tmp_path)
    os.makedirs(cfg.run_dir())
    with open(os.path.join(cfg.run_dir(), "config.json"), "w") as f:
        d = cfg.to_dict()
        d["train"]["lr"] = 0.5
        json.dump(d, f)
    with pytest.raises(ConfigError, match=r"train\.lr: 0\.5 -> 0\.001"):
        train(cfg, progress=False)


def test_replaced_model_is_refused_on_resume(tmp_path):
    cfg = tiny(tmp_path, "train.iterations=1")
    train(cfg, progress=False)
    path = os.path.join(cfg.run_dir(), "config.json")
    with open(path) as f:
        d = json.load(f)
    d["model_fingerprint"]["path"] = "0" * 64  # as if the base model had been replaced under the same path
    with open(path, "w") as f:
        json.dump(d, f)
    os.remove(os.path.join(cfg.run_dir(), "DONE"))
    with pytest.raises(ConfigError, match=r"model_fingerprint\.path: '0000"):
        train(cfg, progress=False)


def test_missing_sd3_weights_fail_before_writing(tmp_path):
    cfg = tiny(tmp_path, "model.world=sd3")  # the default hub id, absent from the (offline) cache
    with pytest.raises(ConfigError, match="model.path='stabilityai/stable-diffusion-3.5-medium'.*huggingface-cli download"):
        train(cfg, progress=False)
    assert not os.path.exists(cfg.run_dir())


class Crash(Exception):
    pass


@pytest.mark.parametrize("phase, at", [("backward", 2), ("log", 1), ("checkpoint", 1)])
def test_resume_after_crash_is_exact(tmp_path, phase, at):
    ref = tiny(tmp_path / "a", "train.iterations=3", "method=flow_grpo_kl")
    train(ref, progress=False)
    uri = "sqlite:///" + str(tmp_path / "b" / "mlflow.db")
    cfg = tiny(tmp_path / "b", "train.iterations=3", "method=flow_grpo_kl", tracking=uri)

    def crash(p, it):
        if p == phase and it == at:
            raise Crash

    with pytest.raises(Crash):
        train(cfg, progress=False, on_phase=crash)
    train(cfg, progress=False)
    strip = lambda rs: [{k: v for k, v in r.items() if not k.startswith("sys/") or k == "sys/opt_steps"} for r in rs]  # noqa: E731
    assert strip(rows(cfg.run_dir())) == strip(rows(ref.run_dir()))
    wa = load_file(os.path.join(ref.run_dir(), "checkpoints", "step_000003", "tensors.safetensors"))
    wb = load_file(os.path.join(cfg.run_dir(), "checkpoints", "step_000003", "tensors.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("default")
    (run,) = client.search_runs([exp.experiment_id])  # one run, reopened on resume
    assert run.info.status == "FINISHED"
    for key in ("reward/mean", "eval/alignment", "loss/kl"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert len(steps) == len(set(steps)), (key, steps)  # no (key, step) twice
        assert steps, key


def test_base_model_card_matches_files():
    from drift.config import SHAPES_ASSETS
    from drift.worlds.shapes.pretrain import sha256_of

    for name in ("base", "features"):
        folder = os.path.join(SHAPES_ASSETS, name)
        with open(os.path.join(folder, "card.json")) as f:
            card = json.load(f)
        assert card["files"], name
        for rel, meta in card["files"].items():
            assert sha256_of(os.path.join(folder, rel)) == meta["sha256"], rel
            assert os.path.getsize(os.path.join(folder, rel)) == meta["bytes"]
        assert "quality" in card and card["train_seconds"] > 0
    with open(os.path.join(SHAPES_ASSETS, "base", "card.json")) as f:
        acc = json.load(f)["quality"]["judge_accuracy"]
    assert acc["fg"] >= 0.9 and acc["bg"] >= 0.9  # recorded quality; shape accuracy is reported in the card


def test_ratio_is_one_before_any_update(tmp_path):
    from drift.sampling import guided_velocity, sample_trajectories
    from drift.sde import sde_step_with_logprob, sigma_schedule
    from drift.worlds import make_world

    cfg = tiny(tmp_path)
    world = make_world(cfg)
    prompts = world.train_prompts()[:3]
    cond = world.encode([str(p) for p in prompts])
    uncond = world.encode([""] * 3)
    sig = sigma_schedule(cfg.sample.num_steps)
    g = torch.Generator().manual_seed(0)
    tr = sample_trajectories(world, cond, uncond, torch.randn(3, *world.latent_shape, generator=g), sig, 0.7, 3.0, g)
    for j in range(cfg.sample.num_steps - 1):
        v = guided_velocity(world, tr.xs[:, j], sig[j], cond, uncond, 3.0)
        lp = sde_step_with_logprob(v, tr.xs[:, j], sig[j], sig[j + 1], 0.7, sig[1], prev_sample=tr.xs[:, j + 1]).log_prob
        assert torch.allclose(torch.exp(lp - tr.log_probs[:, j]), torch.ones(3), atol=1e-5)
