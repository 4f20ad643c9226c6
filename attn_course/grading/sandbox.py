"""One OS sandbox per graded notebook: bubblewrap (``bwrap``) on Linux.

A submission is untrusted code. Its kernel runs inside ``bwrap`` with

- new user, PID, network, IPC, UTS, cgroup and mount namespaces (whichever of these this
  machine allows; ``Sandbox.applied`` lists what is really in force), no capabilities, uid
  65534 inside, and no further user namespaces;
- a read-only view of the runtime only: ``/usr``, the Python installation, the virtual
  environment and a few files of ``/etc``. Not the instructor's home, not the other uploads,
  not the report location, not the course checkout: the ``attn_course`` package seen inside
  is a stripped copy (``KERNEL_FILES``) without the exercise definitions (the references) or
  any library module that holds a task's reference, and the solution notebooks are absent;
- a private, size-limited, writable ``/tmp`` and ``HOME``; one writable work folder that
  holds the kernel's sockets and the results file; a read-only folder with the inputs;
- a minimal environment (no tokens, no agent sockets, no terminal multiplexer variables);
- limits on address space, processes and file size (``Limits``), set inside the sandbox with
  setrlimit; where the grader is root (exempt from RLIMIT_NPROC even inside a user namespace),
  the process limit is a pids cgroup instead, when one can be made, and a kernel's cgroup is
  also how every process it left is found and killed, with or without the sandbox;
- ``--die-with-parent``: it ends with the grader. The grader's hard wall clock per notebook
  kills ``bwrap`` itself, which ends the PID namespace and so every process in it, however
  it forked or detached.

``detect(kind)`` finds out at start what works on this machine; ``Sandbox.describe()`` is
what the report says about it. ``kind="none"`` runs kernels as the grader's own user (still
with a minimal environment and a fresh HOME per kernel); the report says so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

# The files of ``attn_course`` a kernel may import, relative to the package folder: the
# in-notebook Checker (silent under the grader) and the harness that calls the learner's
# functions. None of them holds or imports a task's reference (tests/test_sandbox.py checks).
KERNEL_FILES: tuple[str, ...] = (
    "__init__.py", "_checks.py", "check.py",
    "grading/__init__.py", "grading/codec.py", "grading/compare.py", "grading/harness.py", "grading/tasks.py",
    "grading/fixtures.py", "grading/planted_bugs.py",  # objects built in the kernel from plain data (ex05, ex06)
)
INSIDE_UID = 65534  # "nobody" inside the user namespace
HOME_INSIDE = "/tmp/home"
_ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "passwd", "group", "nsswitch.conf", "localtime",
              "mime.types")


@dataclass(frozen=True)
class Limits:
    """Per-kernel limits, set with setrlimit inside the sandbox (and on the tmpfs sizes)."""

    memory_bytes: int = 6 << 30  # address space per process: torch reserves far more than it touches
    processes: int = 256  # processes and threads of the sandbox's user (one user namespace each)
    file_bytes: int = 256 << 20  # largest file a kernel may write
    tmp_bytes: int = 512 << 20  # size of the private /tmp (HOME is inside it)


@dataclass
class Sandbox:
    """What grading kernels run in: ``kind`` is "bwrap" or "none"."""

    kind: str
    bwrap: str = ""
    version: str = ""
    applied: list[str] = field(default_factory=list)  # isolation really in force
    missing: list[str] = field(default_factory=list)  # isolation this machine did not allow
    limits: Limits = field(default_factory=Limits)
    flags: list[str] = field(default_factory=list)  # the namespace/identity flags that passed the probe
    pids_cgroup: str = ""  # a cgroup folder of the pids controller we may create children in ("" if none)

    @property
    def isolated(self) -> bool:
        return self.kind == "bwrap"

    def describe(self) -> dict:
        return {"kind": self.kind, "version": self.version, "applied": list(self.applied),
                "missing": list(self.missing), "limits": asdict(self.limits),
                "summary": self.summary()}

    def summary(self) -> str:
        if not self.isolated:
            return ("UNSANDBOXED: kernels ran as the grader's own user, with its files, network and processes "
                    "in reach (--sandbox none)")
        text = f"bwrap {self.version}: " + ", ".join(self.applied)
        if self.missing:
            text += "; not available here: " + ", ".join(self.missing)
        return text

    def command(self, argv: list[str], workdir: str, inputs: str, package: str | None,
                cgroup: str | None = None) -> list[str]:
        """``argv`` (the kernel's command) wrapped in the sandbox, with the limits applied inside.

        With ``cgroup`` (a folder made by ``new_cgroup``) the command first moves itself into it,
        so that every process the kernel ever forks is counted there and can be found to be killed.
        """
        python = argv[0]
        env = kernel_env(self, workdir)
        limited = [python, "-I", "-c", _LIMITS_SNIPPET, str(self.limits.memory_bytes), str(self.limits.processes),
                   str(self.limits.file_bytes), *argv]
        enter = ["/bin/sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', cgroup] if cgroup else []
        if not self.isolated:
            return enter + limited
        args = [*enter, self.bwrap, *self.flags, "--die-with-parent", "--new-session"]
        # The private /tmp first: bwrap mounts in order, so a runtime, package or work folder that
        # lives under /tmp (a checkout in /tmp, say) is bound on top of it instead of hidden by it.
        args += ["--proc", "/proc", "--dev", "/dev",
                 "--size", str(self.limits.tmp_bytes), "--tmpfs", "/tmp", "--dir", HOME_INSIDE]
        args += _runtime_mounts()
        real_pkg = Path(_package_dir()).resolve()
        solutions = real_pkg.parent / "exercises"
        if solutions.is_dir() and any(str(solutions).startswith(r + os.sep) for r in _runtime_roots()):
            args += ["--tmpfs", str(solutions)]  # a checkout inside the runtime: hide its exercises
        if package is not None:
            args += ["--ro-bind", package, str(real_pkg)]
        args += ["--ro-bind", inputs, inputs, "--bind", workdir, workdir, "--chdir", workdir, "--clearenv"]
        for key, value in env.items():
            args += ["--setenv", key, value]
        return args + ["--", *limited]


# Run first inside the sandbox: set the limits, then become the kernel. The limits are set
# here, not on bwrap, because a process limit must count the sandbox's own user only.
_LIMITS_SNIPPET = (
    "import os, resource, sys\n"
    "mem, nproc, fsize = (int(a) for a in sys.argv[1:4])\n"
    "for lim, value in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_NPROC, nproc),\n"
    "                   (resource.RLIMIT_FSIZE, fsize), (resource.RLIMIT_CORE, 0)):\n"
    "    try:\n"
    "        resource.setrlimit(lim, (value, value))\n"
    "    except (ValueError, OSError):\n"
    "        pass\n"
    "os.execv(sys.argv[4], sys.argv[4:])\n"
)


def _package_dir() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def kernel_env(sandbox: Sandbox, workdir: str) -> dict[str, str]:
    """The whole environment of a grading kernel (nothing else of the grader's is passed on).

    Without a sandbox, HOME is a fresh folder per kernel all the same, so that an IPython
    startup file or a matplotlib config one upload writes does not reach the next.
    """
    bindir = os.path.dirname(sys.executable)
    home = HOME_INSIDE if sandbox.isolated else os.path.join(workdir, "home")
    tmp = "/tmp" if sandbox.isolated else os.path.join(workdir, "tmp")
    env = {
        "PATH": f"{bindir}:/usr/local/bin:/usr/bin:/bin",
        "HOME": home,
        "TMPDIR": tmp,
        "LANG": "C.UTF-8",
        "ATTN_COURSE_GRADING": "1",
        "MPLBACKEND": "Agg",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_NUM_THREADS": "1",  # several kernels share the cores; tiny tensors gain nothing from threads
        "IPYTHONDIR": f"{home}/.ipython",
        "MPLCONFIGDIR": f"{tmp}/matplotlib",
        "JUPYTER_PLATFORM_DIRS": "1",
        # Inside the sandbox this folder holds only the stripped copy of the package.
        "PYTHONPATH": str(Path(_package_dir()).resolve().parent),
    }
    return env


def _runtime_roots() -> list[str]:
    """Folders that hold the Python runtime and its packages (bound read-only)."""
    roots = {sys.base_prefix, sys.prefix, os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix),
             os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))}
    # Package folders outside the prefixes (a user site, say), but never a folder of sources.
    roots |= {os.path.realpath(p) for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages")}
    roots = {r for r in roots if r and os.path.isdir(r) and r != "/"}
    keep = []
    for r in sorted(roots, key=len):
        if not any(r == k or r.startswith(k + os.sep) for k in keep):
            keep.append(r)
    return keep


def _runtime_mounts() -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    for name in _ETC_FILES:
        path = f"/etc/{name}"
        if os.path.exists(path):
            args += ["--ro-bind", path, path]
    for root in _runtime_roots():
        if not root.startswith("/usr/"):
            args += ["--ro-bind", root, root]
    return args


def stripped_package(dest: str) -> str:
    """Copy the kernel's share of ``attn_course`` into ``dest``; return the copy's package folder."""
    src = _package_dir()
    pkg = os.path.join(dest, "attn_course")
    for rel in KERNEL_FILES:
        target = os.path.join(pkg, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(os.path.join(src, rel), target)
    for dirpath, _dirnames, filenames in os.walk(dest):
        os.chmod(dirpath, 0o755)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o644)
    return pkg


def _pids_cgroup_base() -> str:
    """A cgroup folder (pids controller) this process may create children in, or "".

    cgroup v1 as root (CI containers); cgroup v2 where the pids controller is delegated to us.
    Root inside a user namespace is exempt from RLIMIT_NPROC, so there this is the process limit.
    """
    candidates = ["/sys/fs/cgroup/pids"]
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                candidates.append("/sys/fs/cgroup" + line[3:].rstrip("/"))
    except OSError:
        pass
    for base in candidates:
        test = os.path.join(base, f"attn-course-probe-{os.getpid()}")
        try:
            os.mkdir(test)
        except OSError:
            continue
        try:
            if os.path.exists(os.path.join(test, "pids.max")):
                return base
        finally:
            try:
                os.rmdir(test)
            except OSError:
                pass
    return ""


def new_cgroup(base: str, name: str, max_pids: int | None) -> str | None:
    """A child cgroup of ``base`` with a process limit (None: no limit of its own); None if it cannot be made."""
    path = os.path.join(base, name)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return None
    try:
        with open(os.path.join(path, "pids.max"), "w") as f:
            f.write("max" if max_pids is None else str(max_pids))
    except OSError:
        kill_cgroup(path)
        return None
    return path


def kill_cgroup(path: str | None, rounds: int = 50) -> None:
    """Kill every process in the cgroup until it is empty (a process that keeps forking cannot
    outrun this: its forks land in the same cgroup, under its process limit), then remove it."""
    if not path:
        return
    import signal
    import time

    for _ in range(rounds):
        try:
            pids = [int(p) for p in Path(path, "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            break
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.02)
    try:
        os.rmdir(path)
    except OSError:
        pass


# Namespace and identity flags, in the order they are given up when the probe fails.
_OPTIONAL = [
    ("no further user namespaces", ["--disable-userns"]),
    ("no capabilities", ["--cap-drop", "ALL"]),
    ("cgroup namespace", ["--unshare-cgroup"]),
    ("uts namespace", ["--unshare-uts", "--hostname", "grading"]),
    ("ipc namespace", ["--unshare-ipc"]),
    ("network namespace (no network)", ["--unshare-net"]),
    ("pid namespace", ["--unshare-pid"]),
    (f"user namespace (uid {INSIDE_UID})", ["--unshare-user", "--uid", str(INSIDE_UID), "--gid", str(INSIDE_UID)]),
]


def _probe(bwrap: str, flags: list[str]) -> bool:
    cmd = [bwrap, *flags, "--die-with-parent", *_runtime_mounts(), "--proc", "/proc", "--dev", "/dev",
           "--tmpfs", "/tmp", "--", "/usr/bin/env", "true"]
    try:
        return subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def find_bwrap() -> str | None:
    if not sys.platform.startswith("linux"):
        return None
    return shutil.which("bwrap") or next((p for p in ("/usr/bin/bwrap", "/usr/local/bin/bwrap") if os.access(p, os.X_OK)), None)


def detect(kind: str = "auto", limits: Limits | None = None) -> Sandbox | None:
    """The sandbox to grade in; ``None`` when ``kind`` is "auto" or "bwrap" and bwrap does not work here."""
    limits = limits or Limits()
    cgroup = _pids_cgroup_base() if os.geteuid() == 0 else ""
    if kind == "none":
        return Sandbox("none", limits=limits, missing=["every isolation (--sandbox none)"], pids_cgroup=cgroup)
    bwrap = find_bwrap()
    if bwrap is None:
        return None
    try:
        version = subprocess.run([bwrap, "--version"], capture_output=True, text=True, timeout=10).stdout.split()[-1]
    except (OSError, subprocess.SubprocessError, IndexError):
        version = "?"
    chosen = list(_OPTIONAL)
    dropped: list[str] = []
    while chosen and not _probe(bwrap, [f for _, fl in chosen for f in fl]):
        # Give up the first flag whose removal makes it work, else the first one.
        for i in range(len(chosen)):
            trial = chosen[:i] + chosen[i + 1:]
            if _probe(bwrap, [f for _, fl in trial for f in fl]):
                dropped.append(chosen[i][0])
                chosen = trial
                break
        else:
            dropped.append(chosen.pop(0)[0])
    if not _probe(bwrap, [f for _, fl in chosen for f in fl]):
        return None
    flags = [f for _, fl in chosen for f in fl]
    applied = ["mount namespace (read-only runtime, no course sources or solutions, private /tmp and HOME)"]
    applied += [name for name, _ in reversed(chosen)]
    applied += ["minimal environment", "setrlimit: address space, file size"]
    if os.geteuid() != 0:
        applied.append("setrlimit: processes")
    elif cgroup:
        applied.append("cgroup: processes")
    else:
        # Root inside a user namespace is exempt from RLIMIT_NPROC; the PID namespace still bounds
        # what a fork bomb can reach, and the wall clock still ends it.
        dropped.append("process limit (root without a writable pids cgroup)")
    applied += ["dies with the grader", "hard wall clock per notebook (kills the whole sandbox)"]
    return Sandbox("bwrap", bwrap=bwrap, version=version, applied=applied, missing=dropped, limits=limits,
                   flags=flags, pids_cgroup=cgroup)
