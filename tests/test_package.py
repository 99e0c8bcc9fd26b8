"""The package as a whole: one owner per concept, the import graph, the docs and the layout."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from helpers import REPO, cli, ok

from deep_components.run_folder import CONTENTS

RUN_FILE_NAMES = tuple(CONTENTS) + (".lock",)


def _string_constants(path: Path):
    tree = ast.parse(path.read_text())
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docs.add(id(body[0].value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            yield node.lineno, node.value


def test_only_the_run_folder_module_names_its_files():
    """No module but deep_components/run_folder.py (nor a bench script) reads or writes a run
    folder's files by name: no string in their code (docstrings aside) holds one."""
    found = []
    for path in sorted((REPO / "deep_components").rglob("*.py")) + sorted((REPO / "bench").glob("*.py")):
        if path.name == "run_folder.py" and path.parent.name == "deep_components":
            continue
        for line, text in _string_constants(path):
            found += [f"{path.relative_to(REPO)}:{line}: {name}" for name in RUN_FILE_NAMES
                      if name in text]
    assert found == []
    # and the check itself finds a name where one is written
    assert any(".lock" in t for _, t in _string_constants(REPO / "deep_components" / "run_folder.py"))


def test_the_docs_list_every_run_folder_file():
    ops = (REPO / "docs" / "operations.md").read_text()
    section = ops.split("## Run folders", 1)[1].split("\n## ", 1)[0]
    for name in CONTENTS:
        assert f"  {name}" in section, name


# ------------------------------------------------------------------------------ the import graph
def _module_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (at the top or inside functions); a package's
    ``from . import x`` counts as importing ``x``, not the package."""
    pkg = REPO / "deep_components"
    mods = {}
    for p in pkg.rglob("*.py"):
        parts = p.relative_to(REPO).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    graph = {}
    for name, path in mods.items():
        here = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in mods}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")[:len(here.split(".")) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                subs = {f"{target}.{a.name}" for a in node.names} & set(mods)
                deps |= subs if (subs and node.module is None) else ({target} & set(mods)) | subs
        deps.discard(name)
        graph[name] = deps
    return graph


def test_no_module_imports_one_that_imports_it_back():
    graph = _module_graph()
    assert len(graph) > 60 and "deep_components.training" in graph["deep_components.cli"]
    state: dict[str, int] = {}
    cycles = []

    def visit(m, path):
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycles.append(path[path.index(d):] + [d])
            elif d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_data_and_spec_load_no_model_and_no_loss():
    code = ("import sys, deep_components.data, deep_components.spec; "
            "print(sorted(m for m in sys.modules if m.startswith(('deep_components.models', "
            "'deep_components.loss', 'deep_components.specs'))))")
    r = ok(cli("-c", code))
    assert r.stdout.strip() == "[]"


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_no_module_is_executed_twice_by_an_entry_point(command):
    """``python -m deep_components.<command>`` runs its module once, as __main__: nothing it
    loads imports it again under its own name."""
    code = ("import runpy, sys\n"
            f"sys.argv = ['{command}', '--help']\n"
            "try:\n"
            f"    runpy.run_module('deep_components.{command}', run_name='__main__', alter_sys=True)\n"
            "except SystemExit:\n"
            "    pass\n"
            f"print('AGAIN' if 'deep_components.{command}' in sys.modules else 'ONCE', "
            "'deep_components.cli' in sys.modules)")
    r = ok(cli("-c", code))
    assert r.stdout.strip().splitlines()[-1] == "ONCE True"


# --------------------------------------------------------------------------------- the docs
DOCS = [REPO / "README.md", REPO / "data" / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    s = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return s.replace(" ", "-")


def test_every_link_in_the_docs_resolves():
    checked = 0
    for doc in DOCS:
        text = doc.read_text()
        anchors = {_slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            where = (doc.parent / path).resolve() if path else doc
            assert where.exists(), f"{doc.relative_to(REPO)}: {target}"
            if anchor:
                heads = {_slug(h) for h in re.findall(r"^#+ (.+)$", where.read_text(), re.M)}
                assert anchor in (heads if path else anchors), f"{doc.relative_to(REPO)}: {target}"
            checked += 1
    assert checked >= 20


def test_the_docs_describe_the_software_not_its_history():
    for doc in DOCS:
        for n, line in enumerate(doc.read_text().splitlines(), 1):
            assert not re.search(r"\b(issues?|commits?)\b", line, re.I), f"{doc.name}:{n}: {line}"


def test_the_readme_is_a_front_door():
    assert len((REPO / "README.md").read_text().splitlines()) <= 200


def test_the_readme_layout_is_the_file_tree():
    """Each module of the package has one line in the README's Layout, and each line there is a
    file or folder that exists."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("## Layout", 1)[1].split("```", 2)[1]
    listed, stack = set(), []
    for line in block.strip("\n").splitlines():
        indent = (len(line) - len(line.lstrip(" "))) // 2
        name = line.split()[0]
        stack = stack[:indent] + [name.rstrip("/")]
        path = "/".join(stack)
        assert (REPO / path).exists(), path
        if not name.endswith("/"):
            assert path not in listed, f"{path} twice"
            listed.add(path)
    files = {str(p.relative_to(REPO)) for p in (REPO / "deep_components").rglob("*")
             if p.suffix in (".py", ".cpp") and p.name != "__init__.py"
             and "__pycache__" not in p.parts}
    assert listed == files, (sorted(files - listed), sorted(listed - files))
