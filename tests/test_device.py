"""The shapes world's device (the top-level ``device``): validated by field, outside the config hash, refused with a
clear error where CUDA is absent, and passed to every point by the sweep's --device (many runs on one GPU)."""

import os
import subprocess
import sys

import pytest
import torch

from drift.config import ConfigError, make_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_device_is_validated_by_field_and_is_not_part_of_the_run_identity():
    with pytest.raises(ConfigError, match="device"):
        make_config(["device=tpu"])
    with pytest.raises(ConfigError, match="sd3.device"):
        make_config(["model.world=sd3", "device=cuda"])
    assert make_config(["device=cuda"]).science_hash() == make_config([]).science_hash()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_cuda_without_cuda_is_refused_naming_the_field():
    from drift.worlds import make_world

    with pytest.raises(ConfigError, match="device='cuda': CUDA is not available"):
        make_world(make_config(["device=cuda"]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_shapes_world_runs_on_cuda():
    from drift.worlds import make_world

    w = make_world(make_config(["device=cuda"]))
    c = w.encode(["a red circle"])
    v = w.velocity(torch.randn(1, *w.latent_shape, device=w.device), torch.tensor(0.5, device=w.device), c)
    assert v.device.type == "cuda" and w.features.embed(w.decode(v)).device.type == "cpu"


def test_sweep_passes_device_and_jobs_to_every_point_without_starting_work(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "sweep.py"), "--grid", "smoke", "--dry-run",
                        "--executor", "local", "--jobs", "8", "--device", "cuda", "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "device=cuda" in r.stdout and "8 at once" in r.stdout
    assert not os.listdir(tmp_path)  # a dry run writes nothing
