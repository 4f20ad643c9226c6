"""Read the submitted source for forbidden calls: the grader-side twin of the kernel's profile watch.

``harness.call_local`` watches calls with ``sys.setprofile`` inside the learner's kernel, which
the learner controls (a thread, ``functools.partial``, ``torch.ops`` slip past it). This module
decides from the notebook's text instead, in the grader's process: it finds the task's
``def``, follows every global name it can reach (other defs, classes, lambdas, top-level
assignments and imports), and flags a reference that resolves to a forbidden name, to a
library equivalent of one, or to a lookup it cannot follow (``eval``, ``getattr(x, name)``).
It over-approximates on purpose: every binding of a reached name counts, not only the last.

Upload text is untrusted: sizes are capped before parsing, cells are parsed one by one, and
every walk over a tree is a loop with its own stack (no recursion over a tree an upload built).
"""

from __future__ import annotations

import ast
import builtins
from collections import deque

from .tasks import Task

MAX_CHARS = 2 * 1024 * 1024  # all code cells together
# ast.parse takes about 2 s per million tokens; words + punctuation approximate the tokens.
MAX_TOKENS = 100_000
_PUNCT = "\n;,()[]{}=.:+-*/%<>&|^~@"

# A library function that computes the same thing as a forbidden one, keyed by the forbidden
# name's last part (``torch.softmax`` -> ``softmax``): a task that forbids it forbids these too.
EQUIVALENTS: dict[str, tuple[str, ...]] = {
    # log_softmax(x).exp() is softmax; the modules and distributions call softmax inside.
    "softmax": ("_softmax", "_safe_softmax", "log_softmax", "_log_softmax", "softmin", "Softmax",
                "LogSoftmax", "Softmin", "Softmax2d", "Categorical", "OneHotCategorical", "logits_to_probs"),
    # The modules and fused kernels that run scaled dot-product attention inside.
    "scaled_dot_product_attention": ("MultiheadAttention", "multi_head_attention_forward", "flex_attention",
                                     "_scaled_dot_product_attention_math", "_scaled_dot_product_flash_attention",
                                     "_scaled_dot_product_efficient_attention", "TransformerEncoderLayer",
                                     "TransformerDecoderLayer"),
    "multi_head_attention_forward": ("MultiheadAttention",),
    "conv2d": ("Conv2d", "convolution", "_convolution"),
    "gru_cell": ("GRUCell", "GRU"),
}
# torch's operator registries and private namespaces: every op again, under other names.
BACKDOORS = frozenset({"ops", "_C", "_VF", "_refs", "_prims", "_decomp", "_ops"})
# Lookups whose target the grader cannot know from the text.
DYNAMIC_NAMES = frozenset({"eval", "exec", "compile", "__import__", "globals", "vars", "locals", "__builtins__",
                           "get_ipython", "breakpoint"})
# ... and introspection, which reads a function instead of testing it (ex06's planted bugs).
DYNAMIC_ATTRS = frozenset({"__dict__", "__globals__", "__builtins__", "__subclasses__", "__code__", "f_globals",
                           "f_locals", "f_builtins", "user_ns", "__closure__", "cell_contents", "__wrapped__"})
DYNAMIC_MODULES = ("importlib", "inspect", "pickle", "marshal", "ctypes", "gc", "runpy", "builtins", "dill",
                   "sys.modules", "sys._getframe", "operator.attrgetter", "operator.methodcaller")
_GETATTRS = frozenset({"getattr", "setattr", "delattr", "hasattr"})  # the name is their 2nd argument
_GETATTR_METHODS = frozenset({"__getattribute__", "__getattr__", "__setattr__"})  # ... their 1st
_KNOWN = frozenset(dir(builtins)) | {"display", "In", "Out", "__name__", "__doc__"}  # IPython's too

_ASK = "which this task asks you to write yourself"
_DYNAMIC = "which the grader cannot check for forbidden calls"


class _Rules:
    """What a task forbids, as dotted names and as the last parts that match on any object."""

    def __init__(self, task: Task) -> None:
        self.dotted: set[str] = set()
        self.attrs: dict[str, str] = {}  # attribute name -> "" (forbidden) or the name it stands in for
        for name in task.forbidden:
            *owner, last = name.split(".")
            if owner and owner[-1][:1].isupper() and owner[-1] != "Tensor" and last in ("forward", "__call__"):
                # Calling a module runs its forward: forbid the class itself (``MultiheadAttention``).
                name, last = ".".join(owner), owner[-1]
            self.dotted.add(name)
            self.attrs[last] = ""
            for eq in EQUIVALENTS.get(last, ()):
                self.attrs.setdefault(eq, last)
        self.torch = any(n.startswith("torch.") for n in task.forbidden)
        self.course = any(n.startswith("attn_course.") for n in task.forbidden)

    def attr(self, name: str, shown: str) -> str | None:
        if name in self.attrs:
            of = self.attrs[name]
            return f"uses `{shown}`" + (f", a library equivalent of `{of}`" if of else "") + "{via}, " + _ASK
        if name in DYNAMIC_ATTRS or (self.torch and name in BACKDOORS and name != "ops"):
            return f"uses `{shown}`{{via}}, {_DYNAMIC}"
        return None

    def dotted_name(self, dotted: str) -> str | None:
        parts = dotted.split(".")
        if any(dotted == f or dotted.startswith(f + ".") for f in self.dotted):
            return f"uses `{dotted}`{{via}}, {_ASK}"
        for p in parts[1:]:
            found = self.attr(p, dotted)
            if found:
                return found
        if self.torch and parts[0] == "torch" and "ops" in parts:
            return f"uses `{dotted}`{{via}}, {_DYNAMIC}"
        if any(dotted == m or dotted.startswith(m + ".") for m in DYNAMIC_MODULES):
            return f"uses `{dotted}`{{via}}, {_DYNAMIC}"
        if self.course and parts[0] == "attn_course" and len(parts) > 1 and parts[1] != "check":
            return f"uses `{dotted}`{{via}}; this task allows only `attn_course.check` from the course package"
        return None

    def string(self, text: str) -> str | None:
        # getattr(torch, "softmax"), operator.methodcaller("softmax"), co_names=("softmax",), ...
        for part in text.split(".") if len(text) < 200 else ():
            if part in self.attrs:
                return f"uses the name `{part}` in a string{{via}}, {_ASK}"
        return None


def _blank_magics(src: str) -> str:
    """IPython's ``%magic`` and ``!shell`` lines become ``pass`` so that the rest parses."""
    if "%" not in src and "!" not in src:
        return src
    lines = src.split("\n")
    for i, line in enumerate(lines):
        body = line.lstrip()
        if body[:1] in ("%", "!"):
            lines[i] = line[: len(line) - len(body)] + "pass"
    return "\n".join(lines)


def _walk_scope(nodes: list[ast.AST]):
    """Nodes of one scope: stops at nested functions, lambdas, classes and comprehensions."""
    stack = list(nodes)
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef, ast.ListComp,
                                 ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            stack.extend(ast.iter_child_nodes(node))


def _bindings(nodes: list[ast.AST]) -> tuple[dict[str, str | None], list[str], dict[str, list[ast.AST]]]:
    """Names bound in one scope: {name: dotted module path for imports, else None}, star-imported
    modules, and the names an attribute or item store changes (``softmax.__code__ = ...``)."""
    bound: dict[str, str | None] = {}
    star: list[str] = []
    touched: dict[str, list[ast.AST]] = {}
    for node in _walk_scope(nodes):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.setdefault(node.name, None)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            bound.setdefault(node.id, None)
        elif isinstance(node, ast.Import):
            for a in node.names:
                bound[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            for a in node.names:
                if a.name == "*":
                    star.append(module)
                else:
                    bound[a.asname or a.name] = f"{module}.{a.name}"
        elif isinstance(node, (ast.Attribute, ast.Subscript)) and isinstance(node.ctx, (ast.Store, ast.Del)):
            root = node
            while isinstance(root, (ast.Attribute, ast.Subscript)):
                root = root.value
            if isinstance(root, ast.Name):
                touched.setdefault(root.id, []).append(node)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.setdefault(node.name, None)
    return bound, star, touched


def _args(fn: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> list[str]:
    a = fn.args
    names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
    return names + [x.arg for x in (a.vararg, a.kwarg) if x is not None]


def forbidden_in_source(sources: list[str], task: Task) -> str | None:
    """None when the notebook's ``def <task.name>`` reaches nothing ``task`` forbids; else why not."""
    if not task.forbidden:
        return None
    sources = [s if isinstance(s, str) else "" for s in sources]
    tokens = 0 if sum(len(s) for s in sources) <= MAX_CHARS else MAX_TOKENS + 1
    for src in sources:
        if tokens > MAX_TOKENS:
            break
        tokens += len(src.split()) + sum(src.count(c) for c in _PUNCT)
    if tokens > MAX_TOKENS:
        return "the notebook's code is too large for the grader to check for forbidden calls"
    top: dict[str, list[ast.AST]] = {}  # global name -> the top-level statements that bind it, in order
    imports: dict[str, list[str]] = {}  # global name -> the modules or objects it was imported as
    stars: list[str] = []
    unparsed: list[str] = []
    for src in sources:
        try:
            tree = ast.parse(_blank_magics(src))
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            unparsed.append(src)  # the kernel cannot run it either, unless IPython syntax hides code in it
            continue
        for stmt in tree.body:
            bound, star, touched = _bindings([stmt])
            stars += star
            for name, dotted in bound.items():
                (imports.setdefault(name, []).append(dotted) if dotted is not None
                 else top.setdefault(name, []).append(stmt))
            for name in touched:
                top.setdefault(name, []).append(stmt)
    rules = _Rules(task)
    name = task.name
    # A task is a function or, graded through a driver, a class (ex08's caches).
    defs = [s for s in top.get(name, []) if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    if not defs:
        return f"no `def {name}` in a code cell the grader can parse"
    # Python keeps the last def; statements that change the function afterwards count too.
    later = top[name][top[name].index(defs[-1]) + 1:]
    work: deque[tuple[ast.AST, dict[str, str | None], dict[str, str | None], str]] = deque(
        (s, {}, {}, "") for s in [defs[-1], *later])
    seen_names, seen_nodes = {name}, {id(defs[-1])} | {id(s) for s in later}

    def found(why: str, via: str) -> str:
        return f"`{name}` " + why.format(via=f" (through `{via}`)" if via else "")

    def reach(ref: str) -> str | None:
        """A global name is used: judge what it was imported as, and queue what defines it."""
        if ref in DYNAMIC_NAMES and ref not in top:
            return f"uses `{ref}`{{via}}, {_DYNAMIC}"
        if ref in seen_names:
            return None
        seen_names.add(ref)
        for dotted in imports.get(ref, []) + [f"{m}.{ref}" for m in stars]:
            why = rules.dotted_name(dotted)
            if why:
                return why
        for stmt in top.get(ref, []):
            if id(stmt) not in seen_nodes:
                seen_nodes.add(id(stmt))
                work.append((stmt, {}, {}, ""))
        if ref not in top and ref not in imports and not stars and ref not in _KNOWN:
            return f"uses `{ref}`{{via}}, which no code cell the grader can parse defines"
        return None

    while work:
        node, scope, fn_scope, via = work.popleft()
        why = None
        children: list[tuple[ast.AST, dict, dict, str]] = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            outer = [*getattr(node, "decorator_list", []), *node.args.defaults,
                     *(d for d in node.args.kw_defaults if d is not None)]
            children += [(n, scope, fn_scope, via) for n in outer]
            body = node.body if isinstance(node.body, list) else [node.body]
            bound, _, _ = _bindings(body)
            inner = {**fn_scope, **dict.fromkeys(_args(node)), **bound}
            for g in _walk_scope(body):
                if isinstance(g, ast.Global):
                    for n in g.names:
                        inner.pop(n, None)
            children += [(n, inner, inner, via) for n in body]
        elif isinstance(node, ast.ClassDef):
            children += [(n, scope, fn_scope, via) for n in [*node.decorator_list, *node.bases, *node.keywords]]
            class_scope = {**scope, **_bindings(node.body)[0]}
            children += [(n, class_scope, fn_scope, via) for n in node.body]  # methods don't see class names
        elif isinstance(node, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            targets = {n.id: None for g in node.generators for n in ast.walk(g.target) if isinstance(n, ast.Name)}
            inner = {**scope, **targets}
            children += [(n, inner, inner, via) for n in ast.iter_child_nodes(node)]
        elif isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Store):
            if node.id in scope:
                why = rules.dotted_name(scope[node.id]) if scope[node.id] else None
            else:
                why = reach(node.id)
        elif isinstance(node, ast.Attribute):
            # One pass down the chain a.b.c: judge each attribute and each dotted prefix once.
            attrs, base = [], node
            while isinstance(base, ast.Attribute):
                attrs.append(base.attr)
                base = base.value
            attrs.reverse()
            root = base.id if isinstance(base, ast.Name) else "…"
            shown = ".".join([root, *attrs])[:80]
            if isinstance(base, ast.Name):  # what an import made of the root: name the library's path
                bases = [scope[base.id]] if base.id in scope else imports.get(base.id, [])
                for dotted in (d for d in bases if d):
                    for i in range(min(len(attrs), 8)):  # forbidden names are shorter than that
                        why = why or rules.dotted_name(".".join([dotted, *attrs[: i + 1]]))
            why = why or next((w for w in (rules.attr(a, shown) for a in attrs) if w), None)
            children.append((base, scope, fn_scope, via))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            why = rules.string(node.value)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            module = "." * getattr(node, "level", 0) + (getattr(node, "module", None) or "")
            for a in node.names:
                why = why or rules.dotted_name(a.name if isinstance(node, ast.Import) else f"{module}.{a.name}")
        elif isinstance(node, ast.Call):
            f = node.func
            fname = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            key = node.args[1] if fname in _GETATTRS and len(node.args) > 1 else (
                node.args[0] if fname in _GETATTR_METHODS | {"attrgetter", "methodcaller"} and node.args else None)
            if key is not None and not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
                why = f"uses `{fname}` with a computed name{{via}}, {_DYNAMIC}"
            children.append((f, scope, fn_scope, via))
            shown = fname if isinstance(f, ast.Name) else f"…{fname}"
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
                shown = f"{f.value.id}.{fname}"
            children += [(n, scope, fn_scope, shown) for n in [*node.args, *node.keywords]]
        if why is None and not children and not isinstance(node, (ast.Name, ast.Attribute, ast.Constant)):
            children = [(n, scope, fn_scope, via) for n in ast.iter_child_nodes(node)]
        if why:
            return found(why, via)
        work.extend(children)
    for src in unparsed:  # IPython syntax can hide a def from ast: the names we reached must not be in it
        hidden = next((n for n in sorted(seen_names) if n in src), None)
        if hidden:
            return f"`{name}` uses `{hidden}`, which a code cell the grader cannot parse mentions"
    return None
