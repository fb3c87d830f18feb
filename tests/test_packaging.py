"""Packaging: the install lines use the committed constraints file, every requirement the project
installs is pinned there, the extras split by audience, and the console scripts point at real functions."""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import re
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONSTRAINTS = os.path.join(ROOT, "constraints", "ci.txt")


def _pyproject() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def _pins() -> dict[str, str]:
    pins = {}
    with open(CONSTRAINTS) as f:
        for ln in f:
            ln = ln.split("#", 1)[0].strip()
            if ln:
                name, eq, ver = ln.partition("==")
                assert eq, f"constraints/ci.txt: {ln!r} is not an exact pin (name==version)"
                pins[_norm(name)] = ver.strip()
    return pins


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _req_name(req: str) -> tuple[str, set[str], str]:
    """(normalised name, extras, marker) of a requirement string such as 'foo[bar]>=1; python_version<"4"'."""
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[([^\]]*)\])?([^;]*)(;(.*))?$", req)
    assert m, req
    extras = {e.strip() for e in (m.group(3) or "").split(",") if e.strip()}
    return _norm(m.group(1)), extras, (m.group(6) or "").strip()


def _marker_true(marker: str, extras: set[str]) -> bool:
    if not marker:
        return True
    try:
        from packaging.markers import Marker
    except ImportError:  # pragma: no cover - packaging ships with pip's vendored copy and most venvs
        return "extra" not in marker
    return any(Marker(marker).evaluate({"extra": e}) for e in (extras or {""}))


def test_make_setup_and_ci_install_with_the_constraints_file():
    with open(os.path.join(ROOT, "Makefile")) as f:
        make = f.read()
    installs = [ln for ln in make.splitlines() if "pip install" in ln and "$(VENV)/bin/pip" in ln and "--upgrade pip" not in ln]
    assert installs, "Makefile: no pip install line for the .venv"
    assert "CONSTRAINTS := constraints/ci.txt" in make
    for ln in installs:
        assert "-c $(CONSTRAINTS)" in ln, f"Makefile installs without the constraints file: {ln.strip()}"
    assert re.search(r"^\$\(VENV\)/\.installed:.*\$\(CONSTRAINTS\)", make, re.M), \
        "a changed constraints file must re-install (.installed depends on it)"
    assert re.search(r"^constraints:", make, re.M), "no 'make constraints' target to refresh the file"
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci = f.read()
    assert re.search(r"^make setup\b", ci, re.M), ".ci/run must install through 'make setup'"
    for ln in ci.splitlines():
        if "pip install" in ln and not ln.lstrip().startswith("#"):
            assert "-c constraints/ci.txt" in ln, f".ci/run installs without the constraints file: {ln.strip()}"


def test_every_installed_requirement_is_pinned():
    """Walk the requirement tree of drift-bench with the extras CI installs: every package is pinned in
    constraints/ci.txt, and the installed version is the pinned one (a local label such as +cpu aside)."""
    pins = _pins()
    make = open(os.path.join(ROOT, "Makefile")).read()
    extras = set(re.search(r"^EXTRAS \?= (.+)$", make, re.M).group(1).split(","))
    proj = _pyproject()["project"]
    todo = [(_req_name(r)[0], set()) for r in proj["dependencies"]]
    for e in extras:
        for r in proj["optional-dependencies"][e]:
            n, ex, _ = _req_name(r)
            if n != "drift-bench":
                todo.append((n, ex))
            else:
                todo += [(_req_name(r2)[0], set()) for e2 in ex for r2 in proj["optional-dependencies"][e2]]
    seen, missing, wrong = set(), [], []
    while todo:
        name, ex = todo.pop()
        if (name, frozenset(ex)) in seen:
            continue
        seen.add((name, frozenset(ex)))
        if name not in pins:
            missing.append(name)
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            missing.append(f"{name} (not installed)")
            continue
        if dist.version.split("+")[0] != pins[name].split("+")[0]:
            wrong.append(f"{name}: installed {dist.version}, pinned {pins[name]}")
        for r in dist.requires or []:
            n, ex2, marker = _req_name(r)
            if _marker_true(marker, ex):
                todo.append((n, ex2))
    assert not missing, f"not pinned in constraints/ci.txt (run make constraints): {sorted(set(missing))}"
    assert not wrong, "installed versions differ from constraints/ci.txt: " + "; ".join(sorted(wrong))


def test_constraints_respect_the_package_ranges():
    """Every direct requirement's pin lies inside the range pyproject.toml declares."""
    from packaging.requirements import Requirement

    pins = _pins()
    proj = _pyproject()["project"]
    reqs = list(proj["dependencies"]) + [r for rs in proj["optional-dependencies"].values() for r in rs]
    for r in reqs:
        req = Requirement(r)
        if _norm(req.name) == "drift-bench":
            continue
        assert _norm(req.name) in pins, f"{req.name} is not pinned"
        assert req.specifier.contains(pins[_norm(req.name)], prereleases=True), \
            f"{req.name}=={pins[_norm(req.name)]} is outside pyproject.toml's {req.specifier}"


def test_extras_by_audience():
    proj = _pyproject()["project"]
    core = {_req_name(r)[0] for r in proj["dependencies"]}
    opt = proj["optional-dependencies"]
    sd3 = {_req_name(r)[0] for r in opt["sd3"]}
    assert {"transformers", "open-clip-torch", "dreamsim", "torchvision", "huggingface-hub"} <= sd3
    assert not (core & sd3), f"SD3-only packages in the core set: {core & sd3}"
    assert "mlflow" not in core and "mlflow" in {_req_name(r)[0] for r in opt["tracking"]}
    assert "scikit-learn" not in core | sd3 and "accelerate" not in core | sd3
    assert isinstance(proj["license"], str), "project.license must be an SPDX string (a table is deprecated)"


def test_console_scripts_resolve():
    scripts = _pyproject()["project"]["scripts"]
    assert {"drift-train", "drift-sweep", "drift-frontier"} <= set(scripts)
    for name, target in scripts.items():
        mod, func = target.split(":")
        assert callable(getattr(importlib.import_module(mod), func)), f"{name} -> {target}"
    include = _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    for pkg in ("drift*", "baselines*", "experiments*", "analysis*"):
        assert pkg in include, f"{pkg} is not packaged: a non-editable install would lack it"


def test_a_world_without_its_extra_fails_naming_it(monkeypatch):
    """The SD3 world in a core-only install: a ConfigError naming the missing modules and the [sd3] extra,
    before anything is imported or written; the shapes world needs none of them."""
    import importlib.util

    from drift.config import ConfigError, make_config
    from drift.worlds import EXTRAS, check_available, check_extras

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("dreamsim", "open_clip") else real(name, *a))
    try:
        check_extras("sd3")
        raise AssertionError("no error without dreamsim")
    except ConfigError as e:
        assert "[sd3] extra" in str(e) and "'open_clip'" in str(e) and "'dreamsim'" in str(e) and "pip install" in str(e)
    check_available(make_config([]))  # shapes: fine without them
    extra_pkgs = {_req_name(r)[0] for r in _pyproject()["project"]["optional-dependencies"]["sd3"]}
    assert len(EXTRAS["sd3"][1]) == len(extra_pkgs)  # one import name per package of the [sd3] extra
