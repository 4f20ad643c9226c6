"""One OS sandbox per graded notebook, in one of two layers, plus the kernel's own place on disk.

A submission is untrusted code. Its kernel runs in the strongest layer this machine allows:

**bwrap** (bubblewrap, Linux): new user, PID, network, IPC, UTS, cgroup and mount namespaces
(whichever this machine allows; ``Sandbox.applied`` lists what is really in force), no
capabilities, uid 65534 inside and no further user namespaces; a read-only view of the runtime
only (``/usr``, the Python installation, the virtual environment, a few files of ``/etc``), a
stripped copy of ``attn_course`` (``KERNEL_FILES``: no task's reference, no solution
notebook), ``/proc/sys`` read-only, and private size-limited ``/tmp``, ``HOME`` and ``/dev/shm``.

**fallback** (root only, where bwrap cannot run: inside an unprivileged container, or where
AppArmor forbids user namespaces): the kernel runs as an unprivileged uid of its own, its work
area readable by that uid alone, a seccomp filter (libseccomp, through ``pyseccomp``) forbids
the network, ptrace, mounts and namespaces, and the same limits apply. It sees the machine's
files as any unprivileged user does: ``Sandbox.exposed`` lists what of the course it could read.

In both layers, when the grader is root:

- **never host root inside**: each kernel runs as its own unprivileged host uid and gid
  (``UID_BASE + n``, no supplementary groups), so a file it writes is not owned by root, a
  sysctl is not writable, and one kernel cannot signal or read another;
- **aggregate limits enforced by the OS** (a cgroup per kernel, v1 or v2): memory of all its
  processes together (its tmpfs and shared memory included), a CPU share, a process count;
- **its work area is its own filesystem**: a size-limited ``nosuid,nodev`` tmpfs, unmounted
  (not walked) as soon as the kernel stops.

Everywhere: setrlimit (address space per process, file size, no core files, processes), a
minimal environment, ``--die-with-parent``, and the grader's hard wall clock per notebook,
which kills the whole sandbox. ``detect(kind)`` finds out at start what works here;
``Sandbox.describe()`` is what the report says about it. ``kind="none"`` runs kernels as the
grader's own user, for notebooks you trust; the report says so.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
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
# Host uids of grading kernels when the grader is root: far above any login or service
# account and outside the usual subordinate-uid ranges; one per kernel (cycled).
UID_BASE = 1_610_000_000
UID_SPAN = 100_000
_ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "passwd", "group", "nsswitch.conf", "localtime",
              "mime.types")
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_BIND, _MS_REMOUNT, _MNT_DETACH = 1, 2, 4, 4096, 32, 2


@dataclass(frozen=True)
class Limits:
    """Per-kernel limits. ``total_memory_bytes`` and ``cpus`` need a cgroup (root); the rest is
    setrlimit inside the sandbox and the sizes of its filesystems."""

    memory_bytes: int = 6 << 30  # address space per process: torch reserves far more than it touches
    total_memory_bytes: int = 4 << 30  # all of a kernel's processes, tmpfs and shared memory together
    cpus: float = 1.0  # CPU time per wall-clock second, all processes together
    processes: int = 256  # processes and threads
    file_bytes: int = 256 << 20  # largest file a kernel may write
    tmp_bytes: int = 512 << 20  # the private /tmp (HOME is inside it)
    work_bytes: int = 512 << 20  # the work area (sockets, results)
    shm_bytes: int = 64 << 20  # /dev/shm


@dataclass
class Place:
    """Where one kernel lives: its folders, host identity and cgroups (made by ``make_place``)."""

    base: str
    work: str
    inputs: str
    uid: int = -1  # -1: the grader's own
    gid: int = -1
    cgroups: list[str] = field(default_factory=list)  # one folder per hierarchy; the kernel is put in each
    mounted: bool = False  # the work area is a tmpfs of its own


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
    exposed: list[str] = field(default_factory=list)  # fallback: course paths a kernel's uid could read

    @property
    def isolated(self) -> bool:
        return self.kind in ("bwrap", "fallback")

    @property
    def layer(self) -> str:
        return {"bwrap": "bwrap (namespaces)", "fallback": "fallback (unprivileged uid, seccomp, rlimits, cgroup)",
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
        namespaces (bwrap), then sets the limits and the seccomp filter, then becomes the kernel.
        ``binds`` maps a runtime folder to a path its uid can reach (see ``stage_runtime``).
        """
        python = argv[0]
        env = kernel_env(self, place.work)
        limited = [python, "-I", "-c", _LIMITS_SNIPPET, str(self.limits.memory_bytes), str(self.limits.processes),
                   str(self.limits.file_bytes), "1" if self.seccomp else "0",
                   str(Path(_package_dir()).resolve() / "grading" / "seccomp_filter.py"), *argv]
        enter: list[str] = []
        if place.cgroups or place.uid >= 0:
            enter = [sys.executable, "-I", "-S", "-c", _ENTER_SNIPPET, str(len(place.cgroups)), *place.cgroups,
                     str(place.uid), str(place.gid)]
        if self.kind != "bwrap":
            return enter + limited
        args = [*enter, self.bwrap, *self.flags, "--die-with-parent", "--new-session"]
        # The private /tmp first: bwrap mounts in order, so a runtime, package or work folder that
        # lives under /tmp (a checkout in /tmp, say) is bound on top of it instead of hidden by it.
        args += ["--proc", "/proc", "--ro-bind", "/proc/sys", "/proc/sys", "--dev", "/dev",
                 "--size", str(self.limits.shm_bytes), "--tmpfs", "/dev/shm",
                 "--size", str(self.limits.tmp_bytes), "--tmpfs", "/tmp", "--dir", HOME_INSIDE]
        args += _runtime_mounts(binds or {})
        real_pkg = Path(_package_dir()).resolve()
        solutions = real_pkg.parent / "exercises"
        if solutions.is_dir() and any(str(solutions).startswith(r + os.sep) for r in _runtime_roots()):
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
    "mem, nproc, fsize, sec = (int(a) for a in sys.argv[1:5])\n"
    "for lim, value in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_NPROC, nproc),\n"
    "                   (resource.RLIMIT_FSIZE, fsize), (resource.RLIMIT_CORE, 0)):\n"
    "    try:\n"
    "        resource.setrlimit(lim, (value, value))\n"
    "    except (ValueError, OSError):\n"
    "        pass\n"
    "if sec:\n"
    "    import runpy\n"
    "    runpy.run_path(sys.argv[5])['load']()\n"
    "os.execv(sys.argv[6], sys.argv[6:])\n"
)


def _package_dir() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def kernel_env(sandbox: Sandbox, workdir: str) -> dict[str, str]:
    """The whole environment of a grading kernel (nothing else of the grader's is passed on).

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
        # Inside bwrap this folder holds only the stripped copy of the package; in the fallback
        # layer the stripped copy is put first (see ``make_run``).
        "PYTHONPATH": str(Path(_package_dir()).resolve().parent),
    }


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
    for root in _runtime_roots():
        if not root.startswith("/usr/"):
            args += ["--ro-bind", binds.get(root, root), root]
    return args


def stripped_package(dest: str) -> str:
    """Copy the kernel's share of ``attn_course`` into ``dest``; return the copy's package folder."""
    src = _package_dir()
    pkg = os.path.join(dest, "attn_course")
    for rel in KERNEL_FILES + ("grading/seccomp_filter.py",):
        target = os.path.join(pkg, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(os.path.join(src, rel), target)
    for dirpath, _dirnames, filenames in os.walk(dest):
        os.chmod(dirpath, 0o755)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o644)
    return pkg


# ----------------------------------------------------------------------------------------------
# Mounts (root only): the work area's tmpfs, and runtime folders an unprivileged uid cannot reach
# ----------------------------------------------------------------------------------------------

def _libc():
    return ctypes.CDLL(None, use_errno=True)


def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    libc = _libc()
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    if libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags,
                  data.encode() if data else None) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount {target}: {os.strerror(e)}")


def unmount(target: str) -> bool:
    """Detach the filesystem at ``target`` (lazily: it goes when its last user does)."""
    libc = _libc()
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    return libc.umount2(target.encode(), _MNT_DETACH) == 0


def mounts_below(folder: str) -> list[str]:
    """Mount points at or below ``folder``, deepest first (from /proc/self/mountinfo)."""
    folder = os.path.realpath(folder)
    found = []
    try:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].encode().decode("unicode_escape")
            if point == folder or point.startswith(folder + os.sep):
                found.append(point)
    except (OSError, IndexError, UnicodeDecodeError):
        pass
    return sorted(set(found), key=len, reverse=True)


def _reachable_by_others(path: str) -> bool:
    """Whether a user with no relation to the owner can read ``path`` (every folder on the way: o+x)."""
    p = Path(path).resolve()
    try:
        for parent in reversed(p.parents):
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
        return bool(os.stat(p).st_mode & stat.S_IROTH)
    except OSError:
        return False


def stage_runtime(run_root: str) -> tuple[dict[str, str], list[str]]:
    """Bind (read-only) each runtime folder an unprivileged uid cannot reach (a Python under
    /root, say) into ``run_root``; return ({folder: reachable path}, problems)."""
    binds: dict[str, str] = {}
    problems: list[str] = []
    for i, root in enumerate(_runtime_roots()):
        if _reachable_by_others(root):
            continue
        target = os.path.join(run_root, "rt", str(i))
        os.makedirs(target, mode=0o755, exist_ok=True)
        os.chmod(os.path.dirname(target), 0o755)
        try:
            mount(root, target, None, _MS_BIND)
            mount(root, target, None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
            binds[root] = target
        except OSError as exc:
            problems.append(f"{root} ({exc.strerror})")
    return binds, problems


# ----------------------------------------------------------------------------------------------
# cgroups: memory, CPU and process limits per kernel (v1 hierarchies or the v2 unified one)
# ----------------------------------------------------------------------------------------------

_CONTROLLERS = ("memory", "cpu", "pids")


def _own_cgroup_paths() -> dict[str, str]:
    """{controller or "": path of this process's cgroup} from /proc/self/cgroup ("" is v2)."""
    out = {}
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, ctrls, path = line.split(":", 2)
            for c in (ctrls.split(",") if ctrls else [""]):
                out[c] = path
    except (OSError, ValueError):
        pass
    return out


def _cgroup_mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, fstype, controllers) of every cgroup filesystem."""
    found = []
    try:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, right = line.split(" - ", 1)
            fstype, _src, opts = right.split()[:3]
            if fstype in ("cgroup", "cgroup2"):
                found.append((left.split()[4], fstype, set(opts.split(","))))
    except (OSError, ValueError):
        pass
    return found


def _try_child(base: str, files: tuple[str, ...]) -> bool:
    test = os.path.join(base, f"attn-course-probe-{os.getpid()}")
    try:
        os.mkdir(test)
    except OSError:
        return False
    try:
        return all(os.path.exists(os.path.join(test, f)) for f in files)
    finally:
        try:
            os.rmdir(test)
        except OSError:
            pass


def detect_cgroups() -> dict[str, str]:
    """{folder we may create kernel cgroups in: "memory,cpu,pids" (what it controls)}."""
    own = _own_cgroup_paths()
    found: dict[str, str] = {}
    for point, fstype, opts in _cgroup_mounts():
        if fstype == "cgroup":
            ctrls = [c for c in _CONTROLLERS if c in opts]
            if not ctrls:
                continue
            base = point + own.get(ctrls[0], "/").rstrip("/")
            files = {"memory": "memory.limit_in_bytes", "cpu": "cpu.cfs_quota_us", "pids": "pids.max"}
            ok = [c for c in ctrls if _try_child(base, (files[c],))]
            if ok:
                found[base] = ",".join(ok)
        elif "" in own:
            base = point + own[""].rstrip("/")
            try:
                have = set(Path(base, "cgroup.controllers").read_text().split())
                enabled = set(Path(base, "cgroup.subtree_control").read_text().split())
                for c in (set(_CONTROLLERS) & have) - enabled:
                    try:
                        Path(base, "cgroup.subtree_control").write_text(f"+{c}")
                    except OSError:
                        pass
                enabled = set(Path(base, "cgroup.subtree_control").read_text().split())
            except OSError:
                continue
            files = {"memory": "memory.max", "cpu": "cpu.max", "pids": "pids.max"}
            ok = [c for c in _CONTROLLERS if c in enabled and _try_child(base, (files[c],))]
            if ok:
                found[base] = ",".join(ok)
    return found


def _write(folder: str, name: str, value: str) -> bool:
    try:
        Path(folder, name).write_text(value)
        return True
    except OSError:
        return False


def new_cgroups(parents: dict[str, str], name: str, limits: Limits | None) -> list[str]:
    """A child cgroup named ``name`` under each parent, with ``limits`` (None: no limits of its own)."""
    made = []
    for parent, ctrls in parents.items():
        path = os.path.join(parent, name)
        try:
            os.makedirs(path, exist_ok=True)
        except OSError:
            continue
        made.append(path)
        if limits is None:
            continue
        period = 100_000
        quota = max(1000, int(limits.cpus * period))
        if os.path.exists(os.path.join(path, "memory.max")):  # v2
            if "memory" in ctrls:
                _write(path, "memory.max", str(limits.total_memory_bytes))
                _write(path, "memory.swap.max", "0")
            if "cpu" in ctrls:
                _write(path, "cpu.max", f"{quota} {period}")
        else:  # v1
            if "memory" in ctrls:
                _write(path, "memory.limit_in_bytes", str(limits.total_memory_bytes))
                _write(path, "memory.memsw.limit_in_bytes", str(limits.total_memory_bytes))
            if "cpu" in ctrls:
                _write(path, "cpu.cfs_period_us", str(period))
                _write(path, "cpu.cfs_quota_us", str(quota))
        if "pids" in ctrls:
            _write(path, "pids.max", str(limits.processes))
    return made


def cgroup_procs(path: str) -> list[int]:
    try:
        return [int(p) for p in Path(path, "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def kill_cgroups(paths: list[str] | str | None, rounds: int = 100) -> None:
    """Kill every process in the cgroups until they are empty (a process that keeps forking cannot
    outrun this: its forks land in the same cgroup, under its process limit), then remove them."""
    if not paths:
        return
    paths = [paths] if isinstance(paths, str) else list(paths)
    for _ in range(rounds):
        pids = {p for path in paths for p in cgroup_procs(path)}
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.02)
    for path in paths:
        for _ in range(50):
            try:
                os.rmdir(path)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.02)  # a killed process still leaving


def kill_uid(uid: int) -> None:
    """Kill every process of a kernel's own uid (where it had no cgroup to be found in)."""
    if uid < 0:
        return
    for _ in range(50):
        found = False
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                if os.stat(entry.path).st_uid == uid:
                    found = True
                    os.kill(int(entry.name), signal.SIGKILL)
            except OSError:
                pass
        if not found:
            return
        time.sleep(0.02)


# ----------------------------------------------------------------------------------------------
# A kernel's place, and taking it down again
# ----------------------------------------------------------------------------------------------

def make_place(sandbox: Sandbox, run_root: str, name: str, run_cgroups: dict[str, str], serial: int) -> Place:
    """Folders, identity, work filesystem and cgroups of one kernel (its base folder: ``run_root/name``)."""
    base = os.path.join(run_root, name)
    work, inputs = os.path.join(base, "work"), os.path.join(base, "in")
    os.mkdir(base, 0o711)
    os.mkdir(work, 0o700)
    os.mkdir(inputs, 0o750)
    place = Place(base, work, inputs)
    if sandbox.as_root:
        place.uid = place.gid = UID_BASE + serial % UID_SPAN
        os.chown(inputs, 0, place.gid)  # the kernel may read its inputs, never write them
        try:
            mount("tmpfs", work, "tmpfs", _MS_NOSUID | _MS_NODEV,
                  f"size={sandbox.limits.work_bytes},mode=0700,uid={place.uid},gid={place.gid}")
            place.mounted = True
        except OSError:
            os.chown(work, place.uid, place.gid)
        place.cgroups = new_cgroups(run_cgroups, name, sandbox.limits)
    if sandbox.kind != "bwrap":
        for sub in ("home", "tmp"):
            os.mkdir(os.path.join(work, sub), 0o700)
            if place.uid >= 0:
                os.chown(os.path.join(work, sub), place.uid, place.gid)
    return place


def release_place(place: Place | None) -> None:
    """End every process of the kernel, then drop its work filesystem and folders (never raises)."""
    if place is None:
        return
    try:
        kill_cgroups(place.cgroups)
        place.cgroups = []
        if place.uid >= 0 and not place.mounted:
            kill_uid(place.uid)
        if place.mounted and unmount(place.work):
            place.mounted = False
        remove_tree(place.base)
    except Exception:
        pass


def remove_tree(path: str) -> None:
    """Remove a folder an upload may have filled, without recursion and without following links.

    A tree thousands of folders deep breaks a recursive walk (and paths longer than PATH_MAX):
    instead, each subfolder's entries are moved up into the top folder (renameat on folder
    descriptors, never a path through a link) until the top holds only files and empty folders.
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        top = os.open(path, flags)
    except FileNotFoundError:
        return
    except OSError:
        try:
            os.unlink(path)
        except OSError:
            pass
        return
    counter = 0
    try:
        for _ in range(10_000_000):
            names = os.listdir(top)
            if not names:
                break
            for name in names:
                try:
                    st = os.stat(name, dir_fd=top, follow_symlinks=False)
                    if not stat.S_ISDIR(st.st_mode):
                        os.unlink(name, dir_fd=top)
                        continue
                    try:
                        os.rmdir(name, dir_fd=top)
                        continue
                    except OSError as exc:
                        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                            continue
                    sub = os.open(name, flags, dir_fd=top)
                    try:
                        os.chmod(sub, 0o700)
                        for child in os.listdir(sub)[:10_000]:
                            counter += 1
                            os.rename(child, f".rm{counter}", src_dir_fd=sub, dst_dir_fd=top)
                    finally:
                        os.close(sub)
                except FileNotFoundError:
                    continue
                except OSError:
                    continue
    finally:
        os.close(top)
    try:
        os.rmdir(path)
    except OSError:
        pass


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


def _seccomp_works() -> bool:
    try:
        path = str(Path(_package_dir()).resolve() / "grading" / "seccomp_filter.py")
        return subprocess.run([sys.executable, "-I", path], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _limits_applied(sandbox: Sandbox) -> None:
    ctrls = {c for v in sandbox.cgroups.values() for c in v.split(",") if c}
    applied, missing = sandbox.applied, sandbox.missing
    if sandbox.as_root:
        applied.append("own unprivileged host uid and gid per kernel (never root)")
        applied.append("work area on its own size-limited nosuid,nodev tmpfs")
    applied.append("setrlimit: address space, file size, no core files")
    if sandbox.as_root or os.geteuid() != 0:
        applied.append("setrlimit: processes")
    for c, what in (("memory", "memory of all processes, tmpfs and shm included"), ("cpu", "CPU share"),
                    ("pids", "process count")):
        (applied if c in ctrls else missing).append(f"cgroup: {what}")
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
    seccomp = _seccomp_works()
    if kind in ("auto", "bwrap"):
        box = _detect_bwrap(limits, root, cgroups, seccomp)
        if box is not None or kind == "bwrap":
            return box
    if not root or fallback_blocker():
        return None
    box = Sandbox("fallback", limits=limits, cgroups=cgroups, as_root=True, seccomp=seccomp)
    box.applied.append("no namespaces: the kernel's uid sees what any unprivileged user sees")
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
    hidden = [r for r in _runtime_roots() if not _reachable_by_others(r)]
    if hidden:
        return ("the fallback layer runs kernels as an unprivileged user, who cannot reach the Python runtime at "
                + ", ".join(hidden) + " (install the grader with a Python outside a private home folder)")
    return ""


def exposed_paths() -> list[str]:
    """Course paths an unrelated unprivileged user could read: the solution notebooks and the
    exercise definitions (in the fallback layer a kernel's uid is such a user)."""
    pkg = Path(_package_dir()).resolve()
    found = []
    for p in (pkg / "exercises", pkg.parent / "exercises" / "source"):
        if p.exists() and _reachable_by_others(str(p)):
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
