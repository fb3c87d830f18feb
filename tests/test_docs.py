"""The docs stand alone: every repository path and every § / "Sec." reference in the README, docs/,
slurm/README.md and the Python docstrings resolves inside the repository, and nothing points to files
outside it (a developer's notes folder, another checkout)."""

from __future__ import annotations

import ast
import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOP = sorted(d for d in os.listdir(ROOT) if not d.startswith(".") and d not in ("runs", "build", "outputs")) + [".ci"]
PY_DIRS = ("drift", "baselines", "experiments", "analysis", "benchmarks", "tests")


def markdown_files() -> list[str]:
    files = [os.path.join(ROOT, f) for f in ("README.md", "BENCHMARKS.md", "DEVELOPERS.md") if os.path.exists(os.path.join(ROOT, f))]
    files += sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))) + sorted(glob.glob(os.path.join(ROOT, "slurm", "*.md")))
    return files


def python_files() -> list[str]:
    out = []
    for d in PY_DIRS:
        for r, dirs, names in os.walk(os.path.join(ROOT, d)):
            dirs[:] = [x for x in dirs if x not in ("__pycache__", "assets", "results")]
            out += [os.path.join(r, n) for n in names if n.endswith(".py")]
    return sorted(out)


def docstrings(path: str) -> str:
    """Every module, class and function docstring of a Python file, and its comments."""
    with open(path) as f:
        src = f.read()
    tree = ast.parse(src)
    parts = [ast.get_docstring(n, clean=False) or "" for n in ast.walk(tree)
             if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    parts += [ln.split("#", 1)[1] for ln in src.splitlines() if "#" in ln and ln.lstrip().startswith("#")]
    return "\n".join(parts)


def texts() -> list[tuple[str, str]]:
    out = [(p, open(p).read()) for p in markdown_files()]
    out += [(p, docstrings(p)) for p in python_files()]
    for extra in ("Makefile", ".ci/run", "pyproject.toml", *glob.glob("slurm/*.toml", root_dir=ROOT),
                  *glob.glob("slurm/*.sh", root_dir=ROOT)):
        if os.path.exists(os.path.join(ROOT, extra)):
            out.append((os.path.join(ROOT, extra), open(os.path.join(ROOT, extra)).read()))
    return out


def headings(md_path: str) -> set[str]:
    """Section numbers of a markdown file's headings ('## 3. Gains' -> '3'; '### 2.1 x' -> '2.1')."""
    with open(md_path) as f:
        return {m.group(1) for m in re.finditer(r"^#+\s+(\d+(?:\.\d+)*)[.\s]", f.read(), re.M)}


PATH_RE = re.compile(r"(?<![\w/.$<{~-])((?:%s)/[\w./*-]*[\w*/])" % "|".join(re.escape(t) for t in TOP))
LINK_RE = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
SECTION_RE = re.compile(r"(?:([\w/.-]+\.md)\s*(?:§|\bSec\.)|§)\s*(\d+(?:\.\d+)*)")
"""'file.md §3', 'file.md Sec. 3' or a bare '§3' (a bare 'Sec. 3' after a paper's name cites the paper)."""
CHECKED_EXT = (".md", ".py", ".toml", ".sh", ".txt", ".json", ".jsonl", ".png", ".safetensors", ".tex", ".csv", "/")


def _exists(path: str) -> bool:
    return bool(glob.glob(path)) if "*" in path else os.path.exists(path)


def test_no_reference_outside_the_repository():
    bad = []
    for path, text in texts():
        for i, ln in enumerate(text.splitlines(), 1):
            if re.search(r"(?<![/\w$])shared/|shared/reference|/work/|\.\./\.\./", ln):
                bad.append(f"{os.path.relpath(path, ROOT)}: {ln.strip()[:120]}")
    assert not bad, "references to files outside the repository:\n" + "\n".join(bad)


def test_every_repository_path_resolves():
    bad = []
    for path, text in texts():
        here = os.path.dirname(path)
        for m in PATH_RE.finditer(text):
            p = m.group(1).split("::")[0].rstrip(".,:;)")
            before = text[max(0, m.start() - 60):m.start()].lower()
            if (any(c in p for c in "<>{}$") or not p.endswith(CHECKED_EXT) and "*" not in p  # metric keys: drift/x
                    or any(s.isupper() for s in re.split(r"[/.]", p))  # placeholders: slurm/NAME.toml
                    or "writes" in before or "written" in before):  # an output the command creates
                continue
            if not _exists(os.path.join(ROOT, p)):
                bad.append(f"{os.path.relpath(path, ROOT)}: {p}")
        if path.endswith(".md"):
            for m in LINK_RE.finditer(text):
                link = m.group(1)
                if re.match(r"[a-z]+://|mailto:", link):
                    continue
                if not _exists(os.path.normpath(os.path.join(here, link))):
                    bad.append(f"{os.path.relpath(path, ROOT)}: link {link}")
    assert not bad, "paths that do not exist in the repository:\n" + "\n".join(sorted(set(bad)))


def test_every_section_reference_resolves():
    bad = []
    for path, text in texts():
        for m in SECTION_RE.finditer(text):
            name, sec = m.group(1), m.group(2)
            if name:
                cands = [os.path.join(os.path.dirname(path), name), os.path.join(ROOT, name), os.path.join(ROOT, "docs", name)]
                target = next((c for c in cands if os.path.exists(c)), None)
            else:  # a bare § refers to the markdown file it is in; a docstring must name its file
                target = path if path.endswith(".md") else None
            ctx = text[max(0, m.start() - 40):m.end()].replace("\n", " ")
            if target is None:
                bad.append(f"{os.path.relpath(path, ROOT)}: '{ctx}' names no file of the repository")
            elif sec not in headings(target):
                bad.append(f"{os.path.relpath(path, ROOT)}: '{ctx}': {os.path.relpath(target, ROOT)} has no section {sec}")
    assert not bad, "section references that do not resolve:\n" + "\n".join(bad)


@pytest.mark.parametrize("text, ok", [("see docs/analysis.md §7", True), ("see docs/analysis.md §77", False),
                                      ("methods.md §1.2", False), ("drift/nope.py", False), ("drift/sde.py", True)])
def test_the_checker_itself(text, ok):
    """The resolvers above find what they should (so the tests above can fail)."""
    found_bad = False
    for m in SECTION_RE.finditer(text):
        name, sec = m.group(1), m.group(2)
        target = next((c for c in (os.path.join(ROOT, name), os.path.join(ROOT, "docs", name)) if os.path.exists(c)), None)
        found_bad |= target is None or sec not in headings(target)
    for m in PATH_RE.finditer(text):
        found_bad |= not _exists(os.path.join(ROOT, m.group(1)))
    assert found_bad != ok
