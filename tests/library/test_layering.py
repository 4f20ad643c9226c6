"""The package's two layers stay apart: read every module's imports and check the rules.

1. Only ``attn_course.labs`` imports ``attn_course.labs``: the attention library (the top-level
   mechanism modules, ``apps``), the plotting helpers and the grading system never do.
2. No module imports another module's private (underscore) name. Shared validation is public
   in ``attn_course._checks``; the module ``_checks`` itself may be imported.
3. No import cycles between the package's modules (imports inside functions count too).

The checks are functions of a package folder, so the tests below also run them on a small
package with planted violations and make sure each one is caught.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "attn_course"


def module_names(root: Path) -> dict[str, Path]:
    """``{"pkg.sub.mod": path}`` for every ``.py`` file below ``root`` (a package folder)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = (root.name, *path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    """The absolute module an ``ImportFrom`` names (relative imports resolved)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, str | None, int]]:
    """``(imported module, imported name or None, line)`` for every import in the file.

    ``from pkg import sub`` where ``sub`` is a module counts as importing the module ``pkg.sub``.
    Attribute access ``alias._name`` on an imported package module counts as importing ``_name``.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: list[tuple[str, str | None, int]] = []
    aliases: dict[str, str] = {}
    root = next(iter(modules)).split(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == root:
                    found.append((alias.name, None, node.lineno))
                    if alias.asname:
                        aliases[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node, is_package)
            if target.split(".")[0] != root:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in modules:
                    found.append((sub, None, node.lineno))
                    aliases[alias.asname or alias.name] = sub
                else:
                    found.append((target, alias.name, node.lineno))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            found.append((aliases[node.value.id], node.attr, node.lineno))
    return found


def layering_violations(root: Path, labs: str = "labs") -> list[str]:
    """Rules 1 and 2 for the package in ``root``; one line per violation."""
    modules = module_names(root)
    labs_prefix = f"{root.name}.{labs}"
    problems = []
    for module, path in modules.items():
        in_labs = module == labs_prefix or module.startswith(labs_prefix + ".")
        for target, name, line in imports_of(module, path, modules):
            where = f"{path.relative_to(root.parent)}:{line}"
            if not in_labs and (target == labs_prefix or target.startswith(labs_prefix + ".")):
                problems.append(f"{where}: library module {module} imports the lab {target}")
            if name and name.startswith("_") and not name.startswith("__") and target != module:
                problems.append(f"{where}: {module} imports the private name {name} from {target}")
    return problems


def import_cycles(root: Path) -> list[list[str]]:
    """Rule 3: the cycles of the module import graph (each as a list of modules)."""
    modules = module_names(root)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for target, _name, _line in imports_of(module, path, modules):
            # importing pkg.sub.mod also runs pkg/__init__ and pkg/sub/__init__: not an edge we own,
            # so only the named module counts
            if target in modules and target != module:
                graph[module].add(target)
    cycles, state, stack = [], {}, []

    def visit(m: str) -> None:
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return cycles


# --------------------------------------------------------------------------- the real package


def test_the_package_has_both_layers():
    modules = module_names(PACKAGE)
    assert "attn_course.labs" in modules, "attn_course/labs/ is missing"
    for mechanism in ("scoring", "masking", "attention", "multihead", "positional", "transformer", "seq2seq"):
        assert f"attn_course.{mechanism}" in modules, f"the library module attn_course.{mechanism} is missing"


def test_library_never_imports_labs_and_nobody_imports_private_names():
    problems = layering_violations(PACKAGE)
    assert not problems, "layering broken:\n" + "\n".join(problems)


def test_no_import_cycles():
    cycles = import_cycles(PACKAGE)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize(
    "path, name",
    [
        ("attn_course.attention", "scaled_dot_product_attention"),
        ("attn_course.masking", "masked_softmax"),
        ("attn_course.scoring", "AdditiveScore"),
        ("attn_course.multihead", "MultiHeadAttention"),
        ("attn_course.positional", "apply_rope"),
        ("attn_course.transformer", "TransformerBlock"),
        ("attn_course.seq2seq", "BahdanauDecoder"),
    ],
)
def test_documented_names_stay_importable(path, name):
    import importlib

    assert hasattr(importlib.import_module(path), name)


# --------------------------------------------------------------------------- the checks catch violations


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for rel, text in {"__init__.py": "", "labs/__init__.py": "", **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_checks_catch_a_library_module_importing_a_lab(tmp_path):
    root = _package(tmp_path, {"mech.py": "def f():\n    from pkg.labs.exp import run\n", "labs/exp.py": "run = 1\n"})
    assert any("imports the lab pkg.labs.exp" in p for p in layering_violations(root))


def test_checks_catch_private_names_in_every_form(tmp_path):
    root = _package(
        tmp_path,
        {
            "a.py": "_helper = 1\n",
            "b.py": "from pkg.a import _helper\n",
            "c.py": "from . import a\nx = a._helper\n",
            "d.py": "import pkg.a as m\ny = m._helper\n",
            "labs/e.py": "from ..a import _helper\n",
        },
    )
    problems = layering_violations(root)
    for module in ("pkg.b", "pkg.c", "pkg.d", "pkg.labs.e"):
        assert any(f"{module} imports the private name _helper" in p for p in problems), problems


def test_checks_allow_labs_importing_library_and_public_checks(tmp_path):
    root = _package(
        tmp_path,
        {"_checks.py": "def require(x):\n    return x\n", "mech.py": "from pkg._checks import require\n",
         "labs/exp.py": "from pkg.mech import require\nfrom pkg import _checks\n"},
    )
    assert layering_violations(root) == []
    assert import_cycles(root) == []


def test_checks_catch_an_import_cycle(tmp_path):
    root = _package(tmp_path, {"a.py": "from pkg import b\n", "b.py": "def f():\n    from pkg.a import x\n"})
    cycles = import_cycles(root)
    assert cycles and set(cycles[0]) == {"pkg.a", "pkg.b"}
