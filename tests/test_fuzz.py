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
from drift.contract import METHODS, method_spec  # noqa: E402


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


# ================================================================================================
# 4. Prompt files (text: one per line; JSONL: {"prompt", "split", "paraphrases", ...} per line)
# ================================================================================================
from drift.prompts import PromptFileError, load_prompt_splits, read_prompt_file  # noqa: E402

prompt_text = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=12)
json_line = st.one_of(
    st.fixed_dictionaries({"prompt": prompt_text}, optional={"split": st.sampled_from(["train", "eval", "test", None, 3]),
                                                             "tag": st.one_of(st.integers(), prompt_text),
                                                             "paraphrases": st.one_of(st.lists(prompt_text, max_size=3),
                                                                                      st.just("x"), st.just([3]))}),
    st.one_of(st.integers(), st.lists(st.integers(), max_size=2), st.just({"prompt": 3}), st.just({"text": "x"})))


@st.composite
def prompt_files(draw):
    jsonl = draw(st.booleans())
    if jsonl:
        lines = [json.dumps(o, ensure_ascii=draw(st.booleans())) for o in draw(st.lists(json_line, max_size=5))]
        if draw(st.integers(0, 5)) == 0:
            lines.append(draw(st.sampled_from(['{"prompt": "x"', "nope", "", "   "])))
    else:
        lines = draw(st.lists(prompt_text, max_size=6))
    data = draw(st.sampled_from(["\n", "\r\n"])).join(lines).encode()
    if draw(st.integers(0, 8)) == 0:
        data += b"\xff"
    return (".jsonl" if jsonl else ".txt"), data


def write_back(entries, path):
    with open(path, "w", encoding="utf-8") as f:
        for e in entries:
            f.write(json.dumps({"prompt": e.text, **({"split": e.split} if e.split else {}), **e.meta,
                                **({"paraphrases": list(e.paraphrases)} if e.paraphrases else {})}, ensure_ascii=False) + "\n")


@fuzz(200)
@given(prompt_files())
# Regression cases found by this fuzzer:
@example((".jsonl", '{"prompt": "a\u2028b"}'.encode()))  # valid JSONL (a raw U+2028 in a string) refused: splitlines() cut the line
@example((".txt", b"0\x1e0"))                          # one text line read as two prompts: splitlines() cuts at \x1e
def test_prompt_files_read_exactly_or_are_refused_naming_the_file(case):
    ext, data = case
    d = tempfile.mkdtemp(prefix="fuzzprompt")
    path = os.path.join(d, "p" + ext)
    with open(path, "wb") as f:
        f.write(data)
    try:
        entries = read_prompt_file(path)
    except PromptFileError as e:
        assert path in str(e) or repr(path) in str(e), str(e)
        m = re.search(r"line (\d+)", str(e))
        if m:  # the line named is a line of the file
            assert 1 <= int(m.group(1)) <= data.count(b"\n") + 1
        event("refused")
        return
    event("accepted")
    text = data.decode("utf-8")
    if ext == ".txt":  # every prompt is one stripped, non-comment line of the file, in order, once
        lines = [ln.strip() for ln in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
        want = list(dict.fromkeys(ln for ln in lines if ln and not ln.startswith("#")))
        assert [e.text for e in entries] == want
    back = os.path.join(d, "back.jsonl")
    write_back(entries, back)
    again = read_prompt_file(back)
    assert again == entries and [e.meta for e in again] == [e.meta for e in entries]  # paraphrases included
    try:
        tr, ev = load_prompt_splits(path, eval_fraction=0.5)
    except PromptFileError as e:
        assert "split is empty" in str(e)
        return
    assert set(tr).isdisjoint(ev) and set(tr) | set(ev) == {e.text for e in entries}


# ================================================================================================
# 5. The analysis CSV (analysis/frontier.py --csv)
# ================================================================================================
import csv  # noqa: E402
import io as _io  # noqa: E402

from analysis import io as aio  # noqa: E402

CSV_COLS = ["method", "seed", "step", "alignment", "diversity", "eval/alignment", "run", "config", "status", "eval/extra"]
GOOD_CELLS = {"method": st.sampled_from(["flow_grpo", "drift"]), "seed": st.integers(0, 2).map(str),
              "step": st.integers(0, 3).map(str), "alignment": st.floats(0, 1).map(repr),
              "status": st.sampled_from(["finished", "finished", "FAILED", "running"]),
              "other": st.sampled_from(["r1", "r2", "c1", ""])}
BAD_CELLS = {"method": st.sampled_from(["", " "]), "seed": st.sampled_from(["1.5", "a", "", "٣", "1e0"]),
             "step": st.sampled_from(["2.0", "x", "", "1_0"]), "alignment": st.sampled_from(["nan", "abc", "", "inf", "1,5"])}


def cell(col: str, noisy: bool):
    kind = "alignment" if col in ("diversity", "eval/alignment", "eval/extra") else col if col in GOOD_CELLS else "other"
    good = GOOD_CELLS[kind]
    return st.one_of(*[good] * 4, BAD_CELLS[kind]) if noisy and kind in BAD_CELLS else good


@st.composite
def csv_files(draw):
    extra = draw(st.lists(st.sampled_from(["run", "config", "status", "eval/extra"]), max_size=3, unique=True))
    cols = ["method", "seed", "step", "alignment", "diversity", *extra]
    if not draw(st.integers(0, 9)):  # a broken header: a column missing, repeated, or two alignment columns
        cols = draw(st.lists(st.sampled_from(CSV_COLS), min_size=1, max_size=7))
    noisy = draw(st.integers(0, 2)) == 0  # a third of the files have malformed cells
    rows = [[draw(cell(c, noisy)) for c in cols] for _ in range(draw(st.integers(0, 8)))]
    buf = _io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    w.writerows(rows)
    data = buf.getvalue().encode()
    cut = draw(st.sampled_from(["none"] * 12 + ["empty", "truncate", "bytes", "ragged"]))
    if cut == "empty":
        data = b""
    elif cut == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    elif cut == "bytes":
        data += b"\xff\xfe,\n"
    elif cut == "ragged":
        data += b"a,b,c,d,e,f,g,h,i,j,k,l\n"
    return data


def csv_oracle(data: bytes) -> list[dict]:
    return list(csv.DictReader(_io.StringIO(data.decode())))


@fuzz(60)
@given(csv_files())
# Regression cases found by this fuzzer (each raised a traceback or was silently changed before the fix):
@example(b"")                                                       # pandas EmptyDataError traceback
@example(b"method,seed,step,alignment,diversity\nflow_grpo,1.5,1,0.5,0.5\n")   # seed 1.5 became seed 1
@example(b"method,seed,step,alignment,diversity\nflow_grpo,0,x,0.5,0.5\n")     # ValueError int('x') traceback
@example(b"method,seed,step,alignment,diversity\nflow_grpo,0,1,abc,0.5\n")     # 'abc' became NaN, reported as "non-finite"
@example(b"method,seed,step,alignment,diversity\n,0,1,0.5,0.5\n")              # an empty method became the method 'nan'
@example(b"method,seed,step,alignment,diversity\nflow_grpo,0,1,0.5,0.5\n\xff\xfe,\n")  # UnicodeDecodeError traceback
@example(b"method,seed,seed,step,alignment,diversity\nflow_grpo,0,1,1,0.5,0.5\n")     # duplicated column silently renamed
def test_analysis_csv_is_read_exactly_or_refused_naming_file_line_column(data):
    d = tempfile.mkdtemp(prefix="fuzzcsv")
    path = os.path.join(d, "points.csv")
    with open(path, "wb") as f:
        f.write(data)
    try:
        ds = aio.load_csv(path)
    except aio.AnalysisInputError as e:
        assert path in str(e), str(e)
        event("refused: " + re.sub(r"\S*points.csv,?|line \d+|'.*", "", str(e))[:40])
        return
    event("accepted")
    rows = csv_oracle(data)
    header = next(csv.reader(_io.StringIO(data.decode())))
    acol = "eval/alignment" if "eval/alignment" in rows[0] else "alignment"
    assert len(set(header)) == len(header), header  # a repeated column is not silently renamed
    for r in rows:  # a malformed cell is refused, not coerced
        assert r["method"].strip(), r
        assert ASCII_INT.fullmatch(r["seed"].strip()) and ASCII_INT.fullmatch(r["step"].strip()), r
        for c in (acol, "diversity"):
            assert r[c].strip().lower() in ("", "nan") or ASCII_FLOAT.fullmatch(r[c].strip()), (c, r)
    for _, p in ds.points.iterrows():  # every kept point is a row of the file, exactly
        match = [r for r in rows if r["method"] == p["method"] and r["seed"].strip() == str(p["seed"])
                 and r["step"].strip() == str(p["step"]) and float(r[acol]) == p["alignment"]
                 and float(r["diversity"]) == p["diversity"]]
        assert match, (dict(p), rows)
        assert math.isfinite(p["alignment"]) and math.isfinite(p["diversity"])


# ================================================================================================
# 6. Run directories with damaged files
# ================================================================================================
import shutil  # noqa: E402
import warnings  # noqa: E402

import torch  # noqa: E402

from drift import launch  # noqa: E402
from drift import rundir, tracking  # noqa: E402
from drift.checkpoint import CheckpointError, load_latest, save_checkpoint  # noqa: E402

_TEMPLATE: dict[str, str] = {}


def finished_run_dir() -> str:
    """A finished run directory as the engine writes it (config.json, metrics.jsonl, final_eval.json, DONE,
    mlflow_run.json, two committed checkpoints), built once per session without training, then copied."""
    if "dir" not in _TEMPLATE:
        root = tempfile.mkdtemp(prefix="fuzzrun")
        cfg = C.make_config({"out": root, "train.iterations": 2, "tracking_uri": "none"})
        rd = cfg.run_dir()
        os.makedirs(rd)
        with open(os.path.join(rd, "config.json"), "w") as f:
            json.dump(cfg.to_dict(), f, indent=1)
        rows = [{"step": s, "reward/mean": 0.1 * s, "eval/alignment": 0.5 + 0.1 * s, "eval/diversity": 0.3 - 0.05 * s}
                for s in range(3)]
        with open(os.path.join(rd, "metrics.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        with open(os.path.join(rd, "final_eval.json"), "w") as f:
            json.dump({"final": rows[-1], "initial": rows[0]}, f)
        with open(os.path.join(rd, "DONE"), "w") as f:
            json.dump({"iterations": 2, "mlflow_run_id": None}, f)
        with open(os.path.join(rd, "mlflow_run.json"), "w") as f:
            json.dump({"uri": "none", "run_id": None, "last_pushed_step": 2, "inflight": None}, f)
        for s in (1, 2):
            save_checkpoint(rd, s, {"model/w": torch.full((3,), float(s))}, {"iteration": s, "opt_step": s})
        _TEMPLATE["dir"], _TEMPLATE["root"] = rd, root
    return _TEMPLATE["dir"]


def run_files(rd: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(r, n), rd) for r, _, ns in os.walk(rd) for n in ns)


@st.composite
def damaged_run_dirs(draw):
    src = finished_run_dir()
    dst = tempfile.mkdtemp(prefix="fuzzdamage")
    rd = os.path.join(dst, "run")
    shutil.copytree(src, rd)
    ops = []
    for _ in range(draw(st.integers(1, 2))):
        files = run_files(rd)
        name = draw(st.sampled_from(files))
        path = os.path.join(rd, name)
        size = os.path.getsize(path)
        op = draw(st.sampled_from(["truncate", "flip", "delete", "replace", "json", "stray"]))
        if op == "truncate":
            with open(path, "r+b") as f:
                f.truncate(draw(st.integers(0, max(0, size - 1))))
        elif op == "flip" and size:
            at = draw(st.integers(0, size - 1))
            with open(path, "r+b") as f:
                f.seek(at)
                b = f.read(1)
                f.seek(at)
                f.write(bytes([b[0] ^ (1 << draw(st.integers(0, 7)))]))
        elif op == "delete":
            os.remove(path)
        elif op == "replace":
            with open(path, "wb") as f:
                f.write(draw(st.binary(max_size=16)))
        elif op == "json":
            with open(path, "w") as f:
                f.write(draw(st.sampled_from(["[]", "5", "null", '{"step": "x"}', '{"files": []}', '{"step": 2}',
                                              '"text"', '{"run_id": 3}'])) + "\n")
        elif op == "stray":
            os.makedirs(os.path.join(rd, "checkpoints", "step_x"), exist_ok=True)
            with open(os.path.join(rd, "checkpoints", "step_x", "manifest.json"), "w") as f:
                f.write("{}")
        ops.append((op, name))
    return rd, ops


PROJECT_ERRORS = (aio.AnalysisInputError, CheckpointError, tracking.TrackingStateError, rundir.MetricsFileError)


@fuzz(60)
@given(damaged_run_dirs())
# Regression cases found by this fuzzer (a traceback, or a damaged file silently trusted, before the fix):
@example(("metrics.jsonl", b'{"step": 0}\n5\n{"step": 2}\n'))     # a JSON row that is not an object: TypeError
@example(("metrics.jsonl", b'{"step": 0}\n{"x": 1}\n{"step": 2}\n'))  # a row without a step: KeyError
@example(("mlflow_run.json", b'{"uri": "none", "run_'))            # JSONDecodeError traceback from Tracker()
@example(("checkpoints/step_000002/manifest.json", None))           # manifest's step 2 -> 3 (valid JSON): loaded as step 3
@example(("checkpoints/step_x/manifest.json", b"{}"))               # a stray folder: ValueError in committed_step
@example(("config.json", b"\xfb{}"))                                # UnicodeDecodeError traceback from the analysis
@example(("config.json", b"[]"))                                    # AttributeError: 'list' object has no attribute 'get'
@example(("metrics.jsonl", b'{"step": 0}\n\xff\n{"step": 2}\n'))   # bytes that are not UTF-8 mid-file: traceback
def test_damaged_run_directories_are_named_never_a_traceback(case):
    if not os.path.isabs(case[0]):  # an explicit regression case: (file, new content)
        src = finished_run_dir()
        rd = os.path.join(tempfile.mkdtemp(prefix="fuzzdamage"), "run")
        shutil.copytree(src, rd)
        path = os.path.join(rd, case[0])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if case[1] is None:
            text = open(path).read().replace('"step": 2', '"step": 3')
            assert text != open(path).read()
            open(path, "w").write(text)
        else:
            open(path, "wb").write(case[1])
    else:
        rd, _ = case
    name = os.path.basename(rd)
    with warnings.catch_warnings(record=True) as wlog:
        warnings.simplefilter("always")
        # (a) the analysis: kept, or excluded with a warning naming the run
        try:
            ds = aio.load_run_dirs([rd], root=os.path.dirname(rd))
        except aio.AnalysisInputError as e:
            assert f"run {name}" in str(e), str(e)  # the exclusion that left nothing, naming the run
            event("analysis: nothing to analyse")
        else:
            assert list(ds.runs["run"]) == [name]
            assert all(math.isfinite(v) for v in ds.points["alignment"]) and all(math.isfinite(v) for v in ds.points["diversity"])
            event("analysis: kept")
        # (b) the engine's readers: the metrics, the tracker state, the newest committed checkpoint
        try:
            rows = rundir.read_metrics(rd)
            assert all(isinstance(r, dict) and type(r["step"]) is int for r in rows)
            assert [r["step"] for r in rows] == sorted({r["step"] for r in rows})
        except (FileNotFoundError, *PROJECT_ERRORS) as e:
            assert rd in str(e), str(e)
        try:
            tracking.Tracker(rd, "none", "t", "r", {}, rd, resume_step=1)
        except PROJECT_ERRORS as e:
            assert rd in str(e), str(e)
        try:
            got = load_latest(rd)
        except CheckpointError as e:
            assert rd in str(e), str(e)
        else:
            if got is not None:  # what was saved at that step, exactly
                step, tensors, state = got
                assert step in (1, 2) and state == {"iteration": step, "opt_step": step}
                assert torch.equal(tensors["model/w"], torch.full((3,), float(step)))
        assert launch.committed_step(rd) in (None, 1, 2)
    for w in wlog:  # every warning names the file or folder it is about
        assert rd in str(w.message) or name in str(w.message), str(w.message)
