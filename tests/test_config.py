"""Config validation: every error names the field, the value and the rule."""

import pytest

from drift.config import ConfigError, config_from_dict, diff_configs, make_config


def test_defaults_and_overrides():
    cfg = make_config(["train.lr=3e-4", "sample.group_size=4", "seed=3", "method=flow_grpo_kl", "flow_grpo_kl.beta=0.01"])
    assert cfg.train.lr == 3e-4 and cfg.sample.group_size == 4 and cfg.seed == 3
    assert cfg.options.beta == 0.01
    assert config_from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()


@pytest.mark.parametrize("items, pattern", [
    (["train.lrr=1"], r"train\.lrr=.*unknown field"),
    (["train.lr=fast"], r"train\.lr='fast': must be of type float"),
    (["sample.group_size=1"], r"sample\.group_size=1: must be >= 2"),
    (["sample.group_size=2.5"], r"sample\.group_size=.*must be of type int"),
    (["method=dpo"], r"method='dpo': unknown method"),
    (["flow_grpo_kl.beta=0.1"], r"flow_grpo_kl\.beta=.*option of method 'flow_grpo_kl', but method is 'flow_grpo'"),
    (["method=flow_grpo_kl", "flow_grpo_kl.beta=0"], r"flow_grpo_kl\.beta=0\.0: must be > 0"),
    (["bogus=1"], r"bogus=.*unknown key"),
    (["train.micro_batch=5"], r"train\.micro_batch=5: must divide"),
    (["sample.sde_type=ddim"], r"sample\.sde_type='ddim'"),
    (["nonsense"], r"must look like key=value"),
    (["train.ema=maybe"], r"train\.ema='maybe': must be a boolean"),
])
def test_bad_input_is_named(items, pattern):
    with pytest.raises(ConfigError, match=pattern):
        make_config(items)


def test_run_dir_is_deterministic_and_seed_separated():
    a, b = make_config(["seed=0"]), make_config(["seed=0"])
    c = make_config(["seed=1"])
    d = make_config(["seed=0", "train.lr=1e-4"])
    assert a.run_dir() == b.run_dir()
    assert a.science_hash() == c.science_hash() and a.run_dir() != c.run_dir()
    assert a.science_hash() != d.science_hash()
    assert "T" not in a.run_dir().split("/")[-1]  # no timestamp
    assert diff_configs(a.to_dict(), d.to_dict()) == ["train.lr: 0.001 -> 0.0001"]
