"""Property-based fuzzing (hypothesis) of every input surface written by hand: key=value overrides,
grids (and the sweep's own arguments), Slurm profile TOMLs, prompt files, the analysis CSV and run
directories with damaged files.

The property, everywhere: an input is either accepted, and then what was parsed round-trips (written
back and read again it is the same value, and it is the value the text spelled: no silent coercion),
or refused with the project's error type (ConfigError, GridError, PromptFileError,
AnalysisInputError, CheckpointError) naming the field / file / line. Never another exception.

Derandomised (the same examples on every run) and bounded (``max_examples``), so CI time is fixed.
The inputs that found bugs are kept as explicit ``@example`` regression cases, each commented.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
import tempfile
import typing

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from hypothesis import HealthCheck, event, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from drift import config as C  # noqa: E402
from drift.methods import METHODS, method_spec  # noqa: E402


def fuzz(n: int):
    """Bounded, derandomised: the same ``n`` examples on every run, no example database."""
    return settings(max_examples=n, derandomize=True, deadline=None, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.filter_too_much])


# ================================================================================================
# Values as a person types them: valid literals of each type, near misses and junk
# ================================================================================================
ASCII_INT = re.compile(r"[+-]?[0-9]+")
ASCII_FLOAT = re.compile(r"[+-]?(([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|inf|infinity)", re.I)
BOOL_WORDS = {"true", "1", "yes", "on", "false", "0", "no", "off"}

junk = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=12)
near_numbers = st.sampled_from(["1.5", "1e3", "3_000", "٣", "１２", "0x10", "nan", "NaN", "-inf", "inf", " 4 ",
                                "4.0", "+2", "-0", "1,2", "", " ", "True", "none", "null", "1e400", "--1"])
typed_literal = st.one_of(st.integers(-3, 64).map(str), st.floats(allow_nan=False, width=32).map(repr),
                          st.sampled_from(sorted(BOOL_WORDS)), near_numbers, junk)


def field_table() -> dict[str, typing.Any]:
    """dotted key -> annotated type, for every config field and every method option."""
    out = {}
    secs = {"": C.RunConfig, "model.": C.ModelConfig, "reward.": C.RewardConfig, "sample.": C.SampleConfig,
            "train.": C.TrainConfig, "eval.": C.EvalConfig, "sd3.": C.SD3Config}
    for pre, cls in secs.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if pre == "" and f.name in (*C.SECTIONS, "options"):
                continue
            out[pre + f.name] = hints[f.name]
    for m in METHODS:
        cls = method_spec(m).options_cls
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            out[f"{m}.{f.name}"] = hints[f.name]
    return out


FIELDS = field_table()
SAFE_KEYS = [k for k in FIELDS if k not in ("out", "tracking_uri")]  # nothing that writes outside tmp


def value_of(cfg, key: str):
    head, _, rest = key.partition(".")
    if not rest:
        return getattr(cfg, key)
    if head in C.SECTIONS:
        return getattr(getattr(cfg, head), rest)
    return getattr(cfg.options, rest)


def spelled(tp, raw: str, got) -> bool:
    """Does the accepted ``got`` say what ``raw`` spelled (no silent coercion)?"""
    s = raw.strip()
    if tp is bool:
        return s.lower() in BOOL_WORDS and got is (s.lower() in ("true", "1", "yes", "on"))
    if tp is int:
        return bool(ASCII_INT.fullmatch(s)) and got == int(s) and type(got) is int
    if tp is float:
        return bool(ASCII_FLOAT.fullmatch(s)) and type(got) is float and got == float(s)
    if tp is str:
        return got == raw
    return True  # tuples: checked by the round trip


# ================================================================================================
# 1. key=value overrides (python -m drift.train ..., sweep --set)
# ================================================================================================
@st.composite
def override_lists(draw):
    method = draw(st.sampled_from(sorted(METHODS)))
    keys = draw(st.lists(st.sampled_from(SAFE_KEYS + ["nope", "train.nope", "a.b.c", ".x", "x.", " seed"]),
                         max_size=4, unique=True))
    keys = [k for k in keys if k.partition(".")[0] not in METHODS or k.startswith(method + ".")] + \
        draw(st.lists(st.sampled_from([k for k in SAFE_KEYS if k.startswith(method + ".")] or ["seed"]), max_size=1))
    items = [f"method={method}"]
    for k in dict.fromkeys(keys):
        items.append(f"{k}={draw(typed_literal)}")
    if draw(st.booleans()):
        items.append(draw(st.sampled_from(["noequals", "=1", "seed=1", " seed=2", "seed =3"])))
    return items


@fuzz(300)
@given(override_lists())
# Regression cases found by this fuzzer (each was accepted before the fix):
@example(["method=flow_grpo", "seed=٣"])                 # a non-ASCII digit became seed 3
@example(["method=flow_grpo", "train.iterations=3_000"])  # Python's digit separator became 3000
@example(["method=flow_grpo", "train.lr=nan"])            # NaN accepted for a float field without a range check
@example(["method=flow_grpo", "seed=1", " seed=2"])       # the same key twice (once with a space) silently kept the last
def test_overrides_are_accepted_exactly_or_refused_naming_the_key(items):
    stripped = [it.partition("=")[0].strip() for it in items if "=" in it]
    try:
        cfg = C.make_config(items)
    except C.ConfigError as e:
        msg = str(e)
        keys = [it.partition("=")[0].strip() for it in items] + [it for it in items]
        assert any(k and k in msg for k in keys), (items, msg)  # names the key (or the bad item)
        event("refused")
        return
    event("accepted")
    assert len(set(stripped)) == len(stripped), f"a key given twice was accepted: {items}"
    given_ = C.parse_overrides(items)
    for k, raw in given_.items():
        if k in FIELDS:
            assert spelled(FIELDS[k], raw, value_of(cfg, k)), (k, raw, value_of(cfg, k))
    back = C.config_from_dict(json.loads(json.dumps(cfg.to_dict())))  # config.json round trip
    assert back == cfg and back.run_dir() == cfg.run_dir()


# ================================================================================================
# 2. Grids (experiments/grids/*.py) and the sweep's own arguments
# ================================================================================================
from experiments.grids import Arm, Grid, GridError, expand  # noqa: E402
from experiments import sweep as sweep_mod  # noqa: E402

BUDGET = {"train.iterations": 1, "sample.groups_per_iter": 2, "sample.group_size": 2, "sample.num_steps": 2,
          "eval.num_prompts": 2, "eval.seeds": 1, "eval.num_steps": 2}
grid_values = st.one_of(st.integers(-2, 6), st.floats(-1, 2, allow_nan=False), st.sampled_from(["x", "", "1", "none"]),
                        st.booleans())


@st.composite
def grids(draw):
    arms = []
    for i in range(draw(st.integers(0, 3))):
        method = draw(st.sampled_from(sorted(METHODS)))
        opts = [k for k in FIELDS if k.startswith(method + ".")] + ["sample.group_size", "train.lr", "bogus"]
        fixed = {"method": method} if draw(st.integers(0, 9)) else {}
        axes = {}
        for k in draw(st.lists(st.sampled_from(opts), max_size=2, unique=True)):
            axes[k] = draw(st.one_of(st.lists(grid_values, max_size=3), st.sampled_from(["abc", 3])))
        arms.append(Arm(draw(st.sampled_from([f"a{i}", "a0"])), fixed, axes))
    seeds = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
    base = {k: draw(grid_values) for k in draw(st.lists(st.sampled_from(["train.lr", "seed", "sample.cfg", "x.y"]),
                                                          max_size=1, unique=True))}
    return Grid(name="g", doc="fuzz", arms=tuple(arms), seeds=seeds, base=base, budget=BUDGET)


@fuzz(150)
@given(grids())
def test_grids_expand_exactly_or_are_refused_naming_the_grid(grid):
    out = tempfile.mkdtemp(prefix="fuzzgrid")
    try:
        pts = expand(grid, common={"experiment": "g", "out": out, "threads": 1, "tracking_uri": "none"})
    except GridError as e:
        assert "grid 'g'" in str(e) or "--world" in str(e), str(e)
        event("refused")
        return
    event("accepted")
    n = sum(math.prod(len(v) for v in a.axes.values()) for a in grid.arms) * len(grid.seeds)
    assert len(pts) == n and len({p.run_dir for p in pts}) == n
    for p in pts:
        assert C.make_config(p.overrides) == p.cfg  # the point is exactly its overrides
        for k, v in p.knobs.items():
            assert value_of(p.cfg, k) == v or str(value_of(p.cfg, k)) == str(v) or \
                (isinstance(v, (int, float)) and not isinstance(v, bool) and value_of(p.cfg, k) == v), (k, v)


sweep_args = st.lists(st.one_of(
    st.tuples(st.just("--set"), st.one_of(typed_literal.map(lambda v: f"train.lr={v}"), junk, st.just("seed=1"))),
    st.tuples(st.just("--only"), st.one_of(junk, st.sampled_from(["0,1", "9", "-1", "1,,2", " 2 ", "0x1"]))),
    st.tuples(st.just("--parallel"), near_numbers),
    st.tuples(st.just("--world"), st.sampled_from(["shapes", "sd3", "mars"])),
    st.tuples(st.just("--grid"), st.sampled_from(["smoke", "nope", ""]))), max_size=3)


@fuzz(60)
@given(sweep_args)
def test_sweep_arguments_are_refused_before_any_work(args):
    argv = ["--grid", "smoke", "--dry-run", "--executor", "local", "--out", tempfile.mkdtemp(prefix="fuzzsweep")]
    for a in args:
        argv += list(a)
    try:
        rc = sweep_mod.main(argv)
    except SystemExit as e:  # argparse: usage error (exit 2) naming the option
        assert e.code == 2
        event("usage error")
        return
    assert rc in (0, 2)
    event(f"rc {rc}")


# ================================================================================================
# 3. Slurm profiles (slurm/<name>.toml)
# ================================================================================================
PROFILE_FIELDS = {f.name: f for f in dataclasses.fields(sweep_mod.SlurmProfile)}


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return {"inf": "inf", "-inf": "-inf", "nan": "nan"}.get(repr(v), repr(v))
    if isinstance(v, str):
        return json.dumps(v).replace("\x7f", "\\u007f")
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


def toml_text(table: dict) -> str:
    return "[slurm]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in table.items())


toml_scalars = st.one_of(st.integers(-3, 100), st.one_of(st.floats(-1, 1e3), st.just(float("nan")), st.just(float("inf"))), st.booleans(),
                         st.text(max_size=8), st.just(None))
toml_values = st.one_of(toml_scalars, st.lists(st.one_of(st.text(max_size=8), st.integers(0, 3)), max_size=3),
                        st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2))


@st.composite
def profile_texts(draw):
    hints = typing.get_type_hints(sweep_mod.SlurmProfile)
    valid = {int: st.integers(1, 64), float: st.floats(0.5, 512), dict: st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2)}
    table = {}
    for k in draw(st.lists(st.sampled_from([*PROFILE_FIELDS, "partitoin", "tpn"]), max_size=5, unique=True)):
        good = valid.get(hints.get(k), st.lists(st.text(max_size=6), max_size=2) if k == "setup" else st.text(max_size=8))
        table[k] = draw(st.one_of(good, good, good, toml_values))
    table = {k: v for k, v in table.items() if v is not None}
    text = toml_text(table)
    mangle = draw(st.sampled_from(["none", "none", "none", "none", "no header", "garbage line", "truncate", "bytes", "top key"]))
    if mangle == "no header":
        text = text.replace("[slurm]\n", "")
    elif mangle == "garbage line":
        text += draw(st.sampled_from(["= 3\n", "x = \n", "[slurm]\n", "a = 'unterminated\n", "[[x]]\n"]))
    elif mangle == "truncate":
        text = text[: draw(st.integers(0, len(text)))]
    elif mangle == "top key":
        text = 'cpus_per_task = 2\n' + text
    data = text.encode()
    if mangle == "bytes":
        data += bytes([0xff, 0xfe])
    return data


def profile_toml(p) -> str:
    return toml_text({k: getattr(p, k) for k in PROFILE_FIELDS if getattr(p, k) is not None})


@fuzz(200)
@given(profile_texts())
# Regression cases found by this fuzzer (before the fix: a traceback, or a value silently changed):
@example(b"[slurm]\nx = \n")                        # tomllib.TOMLDecodeError escaped as a traceback
@example(b"[slurm]\npartition = 1\n\xff\xfe")       # UnicodeDecodeError traceback
@example(b"[slurm]\ncpus_per_task = 1.5\n")         # accepted; int(1.5) = 1 CPU at submission
@example(b"[slurm]\ngpus_per_node = inf\n")         # accepted; OverflowError when submitting
@example(b"[slurm]\nmem_gb = \"\"\n")              # accepted; ValueError float('') when submitting
@example(b"[slurm]\npartition = nan\n")             # a float accepted as the partition name
@example(b"[slurm]\nsetup = \"module load x\"\n")  # a string accepted as a list: one shell line per character
@example(b"[slurm]\nadditional = 3\n")              # TypeError: 'int' object is not iterable
@example(b"cpus_per_task = 2\n")                    # no [slurm] header: silently all defaults
@example(b"[slurm]\ntasks_per_node = 0\n")          # out of range, accepted by the loader
def test_slurm_profiles_load_exactly_or_are_refused_naming_the_file(data):
    d = tempfile.mkdtemp(prefix="fuzzprof")
    path = os.path.join(d, "p.toml")
    with open(path, "wb") as f:
        f.write(data)
    try:
        prof, where = sweep_mod.SlurmProfile.load(path)
    except GridError as e:
        assert path in str(e), str(e)
        event("refused")
        return
    event("accepted")
    hints = typing.get_type_hints(sweep_mod.SlurmProfile)
    import tomllib

    table = tomllib.loads(data.decode())["slurm"]
    for k, v in table.items():  # what the file says, unchanged (no coercion)
        assert getattr(prof, k) == v and type(getattr(prof, k)) is type(v), (k, v, getattr(prof, k))
        assert hints[k] is not int or type(v) is int, (k, v)
    with open(path, "w") as f:
        f.write(profile_toml(prof))
    assert sweep_mod.SlurmProfile.load(path)[0] == prof  # round trip
    prof.executor_params("x")  # and usable
