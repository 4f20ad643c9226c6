"""Calling a learner's function: in this process (the checker) or inside a grading kernel.

``call_local`` turns whatever the function does (return, raise, mutate its inputs) into an
``Outcome``; it never lets an exception out, so a learner sees a message, not our traceback.
``call_in_kernel`` is what the grader injects into a submission's kernel: it reads the cases
from a file, calls the function, and writes encoded outcomes back (see ``codec``).
"""

from __future__ import annotations

import importlib
import os
import sys
import time
import traceback
from typing import Any

import torch

from .codec import encode
from .compare import Outcome, clone_inputs
from .fixtures import resolve as resolve_fixtures
from .rules import broken_rule
from .rules import watch as watch_rules
from .tasks import Case

_PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _learner_frame(exc: BaseException) -> str:
    """'line 3 in softmax: return e / s' for the innermost frame outside attn_course and torch."""
    frames = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in frames if not os.path.abspath(f.filename).startswith(_PKG_DIR)]
    # Prefer the innermost frame that is the learner's code (not a library's).
    user = [f for f in mine if "site-packages" not in f.filename and "/lib/python" not in f.filename]
    frame = (user or mine or frames or [None])[-1]
    if frame is None:
        return ""
    line = (frame.line or "").strip()
    return f"line {frame.lineno} in {frame.name}" + (f": {line}" if line else "")


def resolve_forbidden(names: tuple[str, ...]) -> tuple[dict[Any, str], dict[str, str]]:
    """Dotted names -> ({code object: name}, {builtin __name__: name}) to watch for."""
    codes: dict[Any, str] = {}
    builtins: dict[str, str] = {}
    for dotted in names:
        parts = dotted.split(".")
        obj: Any = None
        for i in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            try:
                for attr in parts[i:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                obj = None
            break
        if obj is None:
            continue
        # A decorated function (``@torch.no_grad()``, ``functools.wraps``): watch the function
        # itself, not the decorator's wrapper that every decorated function shares.
        while getattr(obj, "__wrapped__", None) is not None:
            obj = obj.__wrapped__
        code = getattr(obj, "__code__", None)
        if code is not None:
            codes[code] = dotted
        elif getattr(obj, "__name__", None):
            builtins.setdefault(obj.__name__, dotted)  # C functions: matched by name (torch.softmax, Tensor.softmax)
    return codes, builtins


def driven(fn: Any, driver: str) -> Any:
    """``fn`` itself, or ``drivers.<driver>`` bound to it (a task on a class the learner writes)."""
    if not driver:
        return fn
    from . import drivers

    run = drivers.DRIVERS[driver]
    return lambda *args, **kwargs: run(fn, *args, **kwargs)


def call_local(fn: Any, case: Case, forbidden: tuple[str, ...] = (), rule: str = "", driver: str = "") -> Outcome:
    """Call ``fn`` on one case (through ``driver`` when the task has one), watching the case's
    rules (``rules``) and the forbidden calls."""
    fn = driven(fn, driver)
    args, kwargs = clone_inputs(case.args), clone_inputs(case.kwargs)
    # Fixture markers become their objects for the call only (built before the forbidden-call
    # watch starts); args_after keeps the markers.
    call_args, call_kwargs = resolve_fixtures(args), resolve_fixtures(kwargs)
    codes, builtins = resolve_forbidden(forbidden) if forbidden else ({}, {})
    used: list[str] = []

    def watch(frame: Any, event: str, arg: Any) -> None:
        # A profile hook sees every call the learner's function makes, however it was imported.
        if event == "call" and frame.f_code in codes:
            used.append(codes[frame.f_code])
        elif event == "c_call" and getattr(arg, "__name__", None) in builtins:
            used.append(builtins[arg.__name__])

    start = time.perf_counter()
    try:
        if codes or builtins:
            sys.setprofile(watch)
        try:
            with torch.no_grad(), watch_rules(case.max_numel, case.max_flops) as (sizes, flops):
                out = fn(*call_args, **call_kwargs)
        finally:
            if codes or builtins:
                sys.setprofile(None)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # SystemExit too: a learner's exit() must not end the check
        msg = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        return Outcome(False, error_type=type(exc).__name__, error_message=msg, error_where=_learner_frame(exc),
                       seconds=time.perf_counter() - start)
    return Outcome(True, output=out, args_after=args, kwargs_after=kwargs, seconds=time.perf_counter() - start,
                   forbidden_used=used[0] if used else "",
                   rule_broken=broken_rule(sizes, flops, case.max_numel, case.max_flops, rule))


def lookup_function(namespace: dict[str, Any], name: str) -> tuple[Any, str | None]:
    """The learner's function (or class, for a task with a driver), or a message saying why it can't be graded."""
    if name not in namespace:
        return None, f"no function or class named `{name}` is defined in the notebook"
    fn = namespace[name]
    if not callable(fn):
        return None, f"`{name}` is a {type(fn).__name__}, not a function"
    module = getattr(fn, "__module__", None)
    if module != "__main__":
        how = f"class {name}:" if isinstance(fn, type) else f"def {name}(...)"
        return None, (f"`{name}` must be defined in the notebook with `{how}`; "
                      f"it comes from module `{module}`")
    return fn, None


def call_in_kernel(name: str, in_path: str, out_path: str, namespace: dict[str, Any]) -> None:
    """Run inside a grading kernel: call ``namespace[name]`` on each case in ``in_path``."""
    data = torch.load(in_path, weights_only=True)
    forbidden = tuple(data["forbidden"])
    rule, driver = str(data.get("rule", "")), str(data.get("driver", ""))
    cases = [Case(c["name"], tuple(c["args"]), dict(c["kwargs"]), max_numel=int(c.get("max_numel", 0)),
                  max_flops=int(c.get("max_flops", 0))) for c in data["cases"]]
    fn, problem = lookup_function(namespace, name)
    result: dict[str, Any] = {"missing": problem, "outcomes": []}
    if fn is not None:
        for case in cases:
            o = call_local(fn, case, forbidden, rule, driver)
            result["outcomes"].append({
                "ok": o.ok,
                "output": encode(o.output),
                "args_after": encode(list(o.args_after)) if o.args_after is not None else None,
                "kwargs_after": encode(o.kwargs_after) if o.kwargs_after is not None else None,
                "error_type": o.error_type,
                "error_message": o.error_message,
                "error_where": o.error_where,
                "seconds": o.seconds,
                "forbidden_used": o.forbidden_used,
                "rule_broken": o.rule_broken,
            })
    tmp = out_path + ".tmp"
    torch.save(result, tmp)
    os.replace(tmp, out_path)
