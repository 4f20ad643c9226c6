"""The package's two layers stay apart: read every module's imports and check the rules.

1. Only ``attn_course.labs`` imports ``attn_course.labs``: the attention library (the top-level
   mechanism modules, ``apps``), the plotting helpers and the grading system never do.
2. No module imports another module's private (underscore) name. Shared validation is public
   in ``attn_course._validation``; the module ``_validation`` itself may be imported.
3. No import cycles between the package's modules (imports inside functions count too, and so
   do dynamic imports by name: ``importlib.import_module("pkg.mod")``, or an f-string such as
   ``f"pkg.exercises.{name}"``, which imports every module its constant prefix names).

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
    found += dynamic_imports(tree, modules)
    return found


def _string_prefix(node: ast.AST, constants: dict[str, str]) -> tuple[str, bool]:
    """The text of a string expression as far as it is known: ``(prefix, whole string known)``.

    Constants, f-strings (up to their first unknown part) and module-level string constants count.
    """
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value, True
    if isinstance(node, ast.Name) and node.id in constants:
        return constants[node.id], True
    if isinstance(node, ast.JoinedStr):
        text = ""
        for part in node.values:
            inner = part.value if isinstance(part, ast.FormattedValue) else part
            piece, whole = _string_prefix(inner, constants)
            text += piece
            if not whole:
                return text, False
        return text, True
    return "", False


def dynamic_imports(tree: ast.Module, modules: dict[str, Path]) -> list[tuple[str, None, int]]:
    """``importlib.import_module(...)`` / ``__import__(...)`` calls whose argument names package modules.

    A fully known name imports that module; a known prefix (``f"pkg.exercises.{name}"``) counts as
    importing every module whose name starts with it: the static graph cannot tell which.
    """
    constants = {
        t.id: n.value.value
        for n in tree.body
        if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)
        for t in n.targets
        if isinstance(t, ast.Name)
    }
    found: list[tuple[str, None, int]] = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and node.args):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name not in ("import_module", "__import__"):
            continue
        text, whole = _string_prefix(node.args[0], constants)
        if not text:
            continue
        if whole:
            found += [(text, None, node.lineno)] if text in modules else []
        else:
            found += [(m, None, node.lineno) for m in modules if m.startswith(text) and m != text]
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
        {"_validation.py": "def require(x):\n    return x\n", "mech.py": "from pkg._validation import require\n",
         "labs/exp.py": "from pkg.mech import require\nfrom pkg import _validation\n"},
    )
    assert layering_violations(root) == []
    assert import_cycles(root) == []


def test_checks_catch_a_cycle_through_a_dynamic_import(tmp_path):
    """The grader's old shape: ``tasks`` imported every exercise by name, every exercise imported ``tasks``."""
    root = _package(tmp_path, {
        "tasks.py": ("import importlib\nNAMES = ('ex01',)\nPACKAGE = 'pkg.exercises'\n"
                     "def load():\n    return [importlib.import_module(f'{PACKAGE}.{n}') for n in NAMES]\n"),
        "exercises/__init__.py": "",
        "exercises/ex01.py": "from pkg.tasks import load\n",
    })
    assert import_cycles(root) == [["pkg.exercises.ex01", "pkg.tasks", "pkg.exercises.ex01"]]
    (root / "tasks.py").write_text("import importlib\ndef load(n):\n    return importlib.import_module('pkg.exercises.ex01')\n")
    assert import_cycles(root) == [["pkg.exercises.ex01", "pkg.tasks", "pkg.exercises.ex01"]]
    # discovery in a module of its own, which the exercises do not import: no cycle
    (root / "tasks.py").write_text("x = 1\n")
    (root / "catalog.py").write_text("import importlib\ndef load(n):\n    return importlib.import_module(f'pkg.exercises.{n}')\n")
    (root / "exercises/ex01.py").write_text("from pkg.tasks import x\n")
    assert import_cycles(root) == []


def test_the_exercise_catalogue_is_seen_importing_the_exercises():
    modules = module_names(PACKAGE)
    path = modules["attn_course.grading.catalog"]
    seen = {m for m, _n, _l in imports_of("attn_course.grading.catalog", path, modules)}
    assert "attn_course.exercises.ex01_softmax_attention" in seen


def test_checks_catch_an_import_cycle(tmp_path):
    root = _package(tmp_path, {"a.py": "from pkg import b\n", "b.py": "def f():\n    from pkg.a import x\n"})
    cycles = import_cycles(root)
    assert cycles and set(cycles[0]) == {"pkg.a", "pkg.b"}
