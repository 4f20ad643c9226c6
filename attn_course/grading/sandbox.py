"""One OS sandbox per graded notebook, in one of two layers (the kernel's place: ``places``).

A submission is untrusted code. Its kernel runs in the strongest layer this machine allows:

**bwrap** (bubblewrap, Linux): new user, PID, network, IPC, UTS, cgroup and mount namespaces
(whichever this machine allows; ``Sandbox.applied`` lists what is really in force), no
capabilities, uid 65534 inside and no further user namespaces; a read-only view of the runtime
only (``/usr``, the Python installation, the virtual environment, a few files of ``/etc``), a
stripped copy of ``attn_course`` (``KERNEL_FILES``: no task's reference, no solution
notebook), ``/proc/sys`` read-only, and private size-limited ``/tmp``, ``HOME`` and ``/dev/shm``.

**fallback** (root only, where bwrap cannot run: inside an unprivileged container, or where
AppArmor forbids user namespaces): no namespaces, so file permissions keep the course package,
the solutions and the uploads from the kernel's unprivileged uid (``exposed_paths``,
``hide_from_others``), it imports the stripped copy, and Landlock lets it write only beneath
its work area (``confine``).

In both layers, when the grader is root, each kernel runs as its own unprivileged host uid in a
place of its own (``places``: a tmpfs work area, cgroups for memory, CPU and processes), and a
seccomp filter refuses the network, ptrace, mounts and namespaces (``confine``). Everywhere:
setrlimit (address space per process, file size, no core files, processes), a minimal
environment, dying with the grader, and the grader's hard wall clock per notebook, which kills
the whole sandbox. ``detect(kind)`` finds out at start what works here; ``Sandbox.describe()``
is what the report says about it. ``kind="none"`` runs kernels as the grader's own user, for
notebooks you trust; the report says so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .places import UID_BASE, UID_SPAN, Limits, Place, can_mount_tmpfs, detect_cgroups, reachable_by_others

# The files of ``attn_course`` a kernel may import, relative to the package folder: the
# in-notebook Checker (silent under the grader) and the harness that calls the learner's
# functions. None of them holds or imports a task's reference (tests/grading/test_sandbox.py checks).
KERNEL_FILES: tuple[str, ...] = (
    "__init__.py", "_validation.py", "check.py", "utils.py",  # utils: the FLOP counter of grading/rules.py
    "grading/__init__.py", "grading/codec.py", "grading/compare.py", "grading/harness.py", "grading/tasks.py",
    "grading/catalog.py",  # check.py imports it; the stripped copy has no exercise to find
    "grading/fixtures.py", "grading/planted_bugs.py",  # objects built in the kernel from plain data (ex05, ex06)
    "grading/rules.py", "grading/drivers.py",  # the rules measured in a call; drivers of class tasks
)
INSIDE_UID = 65534  # "nobody" inside the user namespace
HOME_INSIDE = "/tmp/home"
SANDBOXED_KINDS = ("bwrap", "fallback")  # the layers that isolate a kernel ("none" does not)
_ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "passwd", "group", "nsswitch.conf", "localtime",
              "mime.types")


@dataclass
class Sandbox:
    """What grading kernels run in: ``kind`` is "bwrap", "fallback" or "none"."""

    kind: str
    bwrap: str = ""
    version: str = ""
    applied: list[str] = field(default_factory=list)  # isolation really in force
    missing: list[str] = field(default_factory=list)  # isolation this machine did not allow
    limits: Limits = field(default_factory=Limits)
    flags: list[str] = field(default_factory=list)  # the namespace/identity flags that passed the probe
    cgroups: dict[str, str] = field(default_factory=dict)  # hierarchy folder -> controllers ("" = none usable)
    as_root: bool = False  # each kernel gets its own unprivileged uid, tmpfs work area
    seccomp: bool = False
    landlock: bool = False  # fallback: writes only beneath the work area
    exposed: list[str] = field(default_factory=list)  # fallback: course paths a kernel's uid could read

    @property
    def isolated(self) -> bool:
        return self.kind in SANDBOXED_KINDS

    @property
    def layer(self) -> str:
        return {"bwrap": "bwrap (namespaces)",
                "fallback": "fallback (unprivileged uid, file permissions, Landlock, seccomp, rlimits, cgroup)",
                "none": "none"}[self.kind]

    def describe(self) -> dict:
        return {"kind": self.kind, "layer": self.layer, "version": self.version, "applied": list(self.applied),
                "missing": list(self.missing), "limits": asdict(self.limits), "summary": self.summary()}

    def summary(self) -> str:
        if not self.isolated:
            return ("UNSANDBOXED: kernels ran as the grader's own user, with its files, network and processes "
                    "in reach (--sandbox none)")
        head = f"bwrap {self.version}" if self.kind == "bwrap" else "fallback layer (no bwrap here)"
        text = f"{head}: " + ", ".join(self.applied)
        if self.missing:
            text += "; not available here: " + ", ".join(self.missing)
        return text

    def command(self, argv: list[str], place: Place, package: str | None, binds: dict[str, str] | None = None,
                ) -> list[str]:
        """``argv`` (the kernel's command) wrapped in the sandbox, run in ``place``.

        The command first enters the place's cgroups and takes its uid (as root), then the
        namespaces (bwrap), then sets the limits and the confinement (``confine``), then becomes
        the kernel.
        ``binds`` maps a runtime folder to a path its uid can reach (see ``stage_runtime``).
        """
        python = argv[0]
        env = kernel_env(self, place.work, package)
        # The filter's file in the package the kernel sees: bwrap binds the stripped copy where the
        # real package is; the fallback layer reads the copy (the real one is hidden from its uid).
        own = Path(package) if package and self.kind == "fallback" else Path(_package_dir()).resolve()
        limited = [python, "-I", "-c", _LIMITS_SNIPPET, str(self.limits.memory_bytes), str(self.limits.processes),
                   str(self.limits.file_bytes), "1" if self.seccomp else "0", "1" if self.landlock else "0",
                   str(own / "grading" / "confine.py"), place.work, *argv]
        enter: list[str] = []
        if place.cgroups or place.uid >= 0:
            enter = [sys.executable, "-I", "-S", "-c", _ENTER_SNIPPET, str(len(place.cgroups)), *place.cgroups,
                     str(place.uid), str(place.gid)]
        if self.kind != "bwrap":  # the same minimal environment, set by env(1) instead of bwrap
            return enter + ["/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items())] + limited
        args = [*enter, self.bwrap, *self.flags, "--die-with-parent", "--new-session"]
        # The private /tmp first: bwrap mounts in order, so a runtime, package or work folder that
        # lives under /tmp (a checkout in /tmp, say) is bound on top of it instead of hidden by it.
        args += ["--proc", "/proc", "--ro-bind", "/proc/sys", "/proc/sys", "--dev", "/dev",
                 "--size", str(self.limits.shm_bytes), "--tmpfs", "/dev/shm",
                 "--size", str(self.limits.tmp_bytes), "--tmpfs", "/tmp", "--dir", HOME_INSIDE]
        args += _runtime_mounts(binds or {})
        real_pkg = Path(_package_dir()).resolve()
        solutions = real_pkg.parent / "exercises"
        if solutions.is_dir() and any(str(solutions).startswith(r + os.sep) for r in runtime_roots()):
            args += ["--tmpfs", str(solutions)]  # a checkout inside the runtime: hide its exercises
        if package is not None:
            args += ["--ro-bind", package, str(real_pkg)]
        args += ["--ro-bind", place.inputs, place.inputs, "--bind", place.work, place.work, "--chdir", place.work,
                 "--clearenv"]
        for key, value in env.items():
            args += ["--setenv", key, value]
        return args + ["--", *limited]


# Run first, as the grader (root): join the kernel's cgroups, then drop to its uid and gid with no
# supplementary groups; everything started after this, bwrap included, is that unprivileged user.
_ENTER_SNIPPET = (
    "import ctypes, os, signal, sys\n"
    "n = int(sys.argv[1]); uid, gid = int(sys.argv[2 + n]), int(sys.argv[3 + n])\n"
    "for cg in sys.argv[2:2 + n]:\n"
    "    with open(cg + '/cgroup.procs', 'w') as f:\n"
    "        f.write(str(os.getpid()))\n"
    "if uid >= 0:\n"
    "    os.setgroups([]); os.setresgid(gid, gid, gid); os.setresuid(uid, uid, uid)\n"
    "    ctypes.CDLL(None).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG: die with the grader\n"
    "os.execv(sys.argv[4 + n], sys.argv[4 + n:])\n"
)

# Run inside the sandbox: set the limits and the seccomp filter, then become the kernel. The
# limits are set here, not on bwrap, because a process limit must count the sandbox's user only.
_LIMITS_SNIPPET = (
    "import os, resource, sys\n"
    "mem, nproc, fsize, sec, ll = (int(a) for a in sys.argv[1:6])\n"
    "for lim, value in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_NPROC, nproc),\n"
    "                   (resource.RLIMIT_FSIZE, fsize), (resource.RLIMIT_CORE, 0)):\n"
    "    try:\n"
    "        resource.setrlimit(lim, (value, value))\n"
    "    except (ValueError, OSError):\n"
    "        pass\n"
    "if sec or ll:\n"
    "    import runpy\n"
    "    runpy.run_path(sys.argv[6])['confine'](sec, [sys.argv[7], '/dev/null'] if ll else None)\n"
    "os.chdir(sys.argv[7])  # its work area, in every layer\n"
    "os.execv(sys.argv[8], sys.argv[8:])\n"
)


def _package_dir() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def kernel_env(sandbox: Sandbox, workdir: str, package: str | None = None) -> dict[str, str]:
    """The whole environment of a grading kernel (nothing else of the grader's is passed on).

    ``package`` is the stripped copy of ``attn_course``: bwrap binds it where the real one is;
    the fallback layer puts its folder first on PYTHONPATH.

    Outside bwrap, HOME and TMPDIR are fresh folders in the kernel's own work area, so that an
    IPython startup file or a matplotlib config one upload writes does not reach the next.
    """
    bindir = os.path.dirname(sys.executable)
    inside = sandbox.kind == "bwrap"
    home = HOME_INSIDE if inside else os.path.join(workdir, "home")
    tmp = "/tmp" if inside else os.path.join(workdir, "tmp")
    return {
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
        # Inside bwrap this folder holds only the stripped copy of the package.
        "PYTHONPATH": (os.path.dirname(package) if package and sandbox.kind == "fallback"
                       else str(Path(_package_dir()).resolve().parent)),
    }


def runtime_roots() -> list[str]:
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


def _runtime_mounts(binds: dict[str, str]) -> list[str]:
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
    for root in runtime_roots():
        if not root.startswith("/usr/"):
            args += ["--ro-bind", binds.get(root, root), root]
    return args


def stripped_package(dest: str) -> str:
    """Copy the kernel's share of ``attn_course`` into ``dest``; return the copy's package folder."""
    src = _package_dir()
    pkg = os.path.join(dest, "attn_course")
    for rel in KERNEL_FILES + ("grading/confine.py",):
        target = os.path.join(pkg, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(os.path.join(src, rel), target)
    for dirpath, _dirnames, filenames in os.walk(dest):
        os.chmod(dirpath, 0o755)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o644)
    return pkg


# ----------------------------------------------------------------------------------------------
# Finding out what works here
# ----------------------------------------------------------------------------------------------

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


def _as_uid(uid: int) -> dict:
    """subprocess options that run a command as ``uid`` (no groups), when we are root."""
    if uid < 0:
        return {}
    return {"user": uid, "group": uid, "extra_groups": []}


def _probe(bwrap: str, flags: list[str], uid: int) -> bool:
    cmd = [bwrap, *flags, "--die-with-parent", "--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/lib", "/lib64"):
        if os.path.islink(top):
            cmd += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            cmd += ["--ro-bind", top, top]
    cmd += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--", "/usr/bin/env", "true"]
    try:
        return subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=30, **_as_uid(uid)).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def find_bwrap() -> str | None:
    if not sys.platform.startswith("linux"):
        return None
    return shutil.which("bwrap") or next((p for p in ("/usr/bin/bwrap", "/usr/local/bin/bwrap") if os.access(p, os.X_OK)), None)


def _confine_works(what: str) -> bool:
    """Whether ``confine.py`` can load ``what`` ("seccomp" or "landlock") on this machine."""
    try:
        path = str(Path(_package_dir()).resolve() / "grading" / "confine.py")
        return subprocess.run([sys.executable, "-I", path, what], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _limits_applied(sandbox: Sandbox) -> None:
    ctrls = {c for v in sandbox.cgroups.values() for c in v.split(",") if c}
    applied, missing = sandbox.applied, sandbox.missing
    if sandbox.as_root:
        applied.append("own unprivileged host uid and gid per kernel (never root)")
        if can_mount_tmpfs():
            applied.append("work area on its own size-limited nosuid,nodev tmpfs")
        else:
            missing.append("work area on its own filesystem (mounts are not allowed here: a per-file limit only)")
    applied.append("setrlimit: address space, file size, no core files")
    if sandbox.as_root or os.geteuid() != 0:
        applied.append("setrlimit: processes")
    for c, what in (("memory", "memory of all processes, tmpfs and shm included"), ("cpu", "CPU share"),
                    ("pids", "process count")):
        (applied if c in ctrls else missing).append(f"cgroup: {what}")
    v2 = any(os.path.exists(os.path.join(folder, "cgroup.controllers")) for folder in sandbox.cgroups)
    (applied if "cpuacct" in ctrls or (v2 and ctrls) else missing).append(
        "cgroup: CPU time accounting (the tasks' CPU rules)")
    if sandbox.seccomp:
        applied.append("seccomp: no network, ptrace, mounts, namespaces, kernel keyrings, bpf")
    else:
        missing.append("seccomp filter (pyseccomp/libseccomp not usable)")
    applied += ["minimal environment", "dies with the grader", "hard wall clock per notebook (kills the whole sandbox)"]


def detect(kind: str = "auto", limits: Limits | None = None) -> Sandbox | None:
    """The sandbox to grade in, or ``None`` when ``kind`` cannot be had here.

    "auto": bwrap where it works, else (as root) the fallback layer; "bwrap" and "fallback"
    ask for that layer; "none" runs kernels unsandboxed.
    """
    limits = limits or Limits()
    root = os.geteuid() == 0
    cgroups = detect_cgroups() if root else {}
    if kind == "none":
        return Sandbox("none", limits=limits, missing=["every isolation (--sandbox none)"], cgroups=cgroups)
    seccomp = _confine_works("seccomp")
    if kind in ("auto", "bwrap"):
        box = _detect_bwrap(limits, root, cgroups, seccomp)
        if box is not None or kind == "bwrap":
            return box
    if not root or fallback_blocker():
        return None
    box = Sandbox("fallback", limits=limits, cgroups=cgroups, as_root=True, seccomp=seccomp,
                  landlock=_confine_works("landlock"))
    box.applied.append("no namespaces: the kernel's uid reads what any unprivileged user reads")
    if box.landlock:
        box.applied.append("Landlock: writes only beneath its own work area")
    else:
        box.missing.append("Landlock (writes outside the work area, e.g. the host's /tmp, are not refused; "
                           "what the kernel's uid leaves there is removed when it stops)")
    _limits_applied(box)
    box.exposed = exposed_paths()
    if box.exposed:
        box.missing.append("readable by any user here: " + ", ".join(box.exposed))
    return box


def _detect_bwrap(limits: Limits, root: bool, cgroups: dict[str, str], seccomp: bool) -> Sandbox | None:
    bwrap = find_bwrap()
    if bwrap is None:
        return None
    uid = UID_BASE + UID_SPAN if root else -1  # probe as an unprivileged uid, as kernels will run
    try:
        version = subprocess.run([bwrap, "--version"], capture_output=True, text=True, timeout=10).stdout.split()[-1]
    except (OSError, subprocess.SubprocessError, IndexError):
        version = "?"
    chosen = list(_OPTIONAL)
    dropped: list[str] = []
    while chosen and not _probe(bwrap, [f for _, fl in chosen for f in fl], uid):
        # Give up the first flag whose removal makes it work, else the first one.
        for i in range(len(chosen)):
            trial = chosen[:i] + chosen[i + 1:]
            if _probe(bwrap, [f for _, fl in trial for f in fl], uid):
                dropped.append(chosen[i][0])
                chosen = trial
                break
        else:
            dropped.append(chosen.pop(0)[0])
    if not chosen or not _probe(bwrap, [f for _, fl in chosen for f in fl], uid):
        return None
    if root and not any("user namespace" in name for name, _ in chosen):
        return None  # without a user namespace bwrap would need root's privileges: use the fallback
    flags = [f for _, fl in chosen for f in fl]
    box = Sandbox("bwrap", bwrap=bwrap, version=version, missing=dropped, limits=limits, flags=flags,
                  cgroups=cgroups, as_root=root, seccomp=seccomp)
    box.applied = ["mount namespace (read-only runtime, no course sources or solutions, private /tmp, HOME "
                   "and /dev/shm, read-only /proc/sys)"]
    box.applied += [name for name, _ in reversed(chosen)]
    _limits_applied(box)
    return box


def fallback_blocker() -> str:
    """Why the fallback layer cannot run here ("" if it can): its kernels run as an unprivileged
    uid with no mount namespace, so the Python runtime must be readable by any user."""
    hidden = [r for r in runtime_roots() if not reachable_by_others(r)]
    if hidden:
        return ("the fallback layer runs kernels as an unprivileged user, who cannot reach the Python runtime at "
                + ", ".join(hidden) + " (install the grader with a Python outside a private home folder)")
    return ""


def exposed_paths() -> list[str]:
    """Course paths an unrelated unprivileged user could read: the package (the tasks' references
    and definitions) and the solution notebooks (in the fallback layer a kernel's uid is such a
    user; it imports the stripped copy instead)."""
    pkg = Path(_package_dir()).resolve()
    found = []
    for p in (pkg, pkg.parent / "exercises" / "source"):
        if p.exists() and reachable_by_others(str(p)):
            found.append(str(p))
    return found


def hide_from_others(paths: list[str]) -> list[str]:
    """Take the 'others' permission bits off ``paths`` (the fallback layer's protection of the
    solutions and references); return the ones that could not be changed."""
    failed = []
    for p in paths:
        try:
            os.chmod(p, os.stat(p).st_mode & ~0o007)
        except OSError:
            failed.append(p)
    return failed
