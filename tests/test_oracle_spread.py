"""The positive control baselines/oracle_spread.py: its bonus and the advantages it gives, analytically."""

import math
from types import SimpleNamespace

import pytest
import torch

from baselines.oracle_spread import Options, SPEC, geometry_spread
from drift.advantages import group_advantages
from drift.config import ConfigError
from drift.contract import ShapeInput, method_spec


def heads(pos_x, pos_y, size, obj, judge_all):
    t = lambda v: torch.tensor([v], dtype=torch.float32)  # noqa: E731  one group
    return {"pos_x": t(pos_x), "pos_y": t(pos_y), "size": t(size), "object": t(obj), "judge_all": t(judge_all)}


def test_spread_is_the_mean_distance_to_the_other_objects():
    # three objects on a line in x (same y, same size), one sample without an object
    h = heads([0.2, 0.5, 0.8, 0.5], [0.5, 0.5, 0.5, 0.5], [0.25, 0.25, 0.25, 0.0], [1, 1, 1, 0], [1, 1, 1, 0])
    b = geometry_spread(h["pos_x"], h["pos_y"], h["size"], h["object"])
    assert b[0].tolist() == pytest.approx([(0.3 + 0.6) / 2, (0.3 + 0.3) / 2, (0.6 + 0.3) / 2, 0.0], abs=1e-6)
    # size enters as w * sqrt(area): two objects at one place, areas 0.04 and 0.16 -> |0.2 - 0.4| * w
    h = heads([0.5, 0.5], [0.5, 0.5], [0.04, 0.16], [1, 1], [1, 1])
    assert geometry_spread(h["pos_x"], h["pos_y"], h["size"], h["object"], 2.0)[0].tolist() == pytest.approx([0.4, 0.4])
    # a group with fewer than two objects gets no bonus
    h = heads([0.2, 0.8], [0.5, 0.5], [0.1, 0.0], [1, 0], [1, 0])
    assert geometry_spread(h["pos_x"], h["pos_y"], h["size"], h["object"]).abs().sum() == 0


@pytest.mark.parametrize("correct_only", [False, True])
def test_advantages_follow_the_equation(correct_only):
    r = torch.tensor([[1.0, 1.0, 1.0, 0.5]])
    h = heads([0.2, 0.5, 0.9, 0.5], [0.5, 0.1, 0.5, 0.5], [0.25, 0.09, 0.25, 0.16], [1, 1, 1, 1], [1, 0, 1, 0])
    alpha = 0.7
    shaped, m = SPEC.build(Options(alpha=alpha, correct_only=correct_only)).shape_rewards(ShapeInput(r, None, None, 4, 0, 1, h))
    z = torch.stack([h["pos_x"][0], h["pos_y"][0], h["size"][0].sqrt()], 1)
    b = torch.tensor([sum(float((z[i] - z[j]).norm()) for j in range(4) if j != i) / 3 for i in range(4)])
    if correct_only:
        b = b * h["judge_all"][0]
    assert shaped[0].tolist() == pytest.approx((r[0] + alpha * b).tolist(), abs=1e-6)
    assert m["oracle/bonus_mean"] == pytest.approx(alpha * float(b.mean()), abs=1e-6)
    # equal task rewards: Flow-GRPO gives no advantage to the first three; the oracle ranks them by spread
    adv, _ = group_advantages(shaped, 1e-4, False)
    plain, _ = group_advantages(r, 1e-4, False)
    assert plain[0, :3].tolist() == pytest.approx([plain[0, 0].item()] * 3)
    assert adv[0].argmax() == 2 and (adv[0, 2] > adv[0, 0])  # the outlier (0.9, 0.5) is the most different
    assert not torch.allclose(adv, plain)


def test_it_is_registered_and_refuses_a_world_without_judge_geometry():
    assert method_spec("oracle_spread") is SPEC
    with pytest.raises(ConfigError, match=r"model\.world='sd3': method=oracle_spread needs judge-level position"):
        SPEC.validate(SimpleNamespace(model=SimpleNamespace(world="sd3")))
    with pytest.raises(ValueError, match=r"lack \['pos_x', 'pos_y'"):
        SPEC.build(Options()).shape_rewards(ShapeInput(torch.zeros(1, 2), None, None, 4, 0, 1, {"size": torch.zeros(1, 2)}))
    with pytest.raises(ConfigError, match=r"oracle_spread\.alpha=-1\.0: must be >= 0"):
        Options(alpha=-1.0)
    assert math.isfinite(Options().alpha)
