"""A grading kernel's place on the machine, and taking it down again.

Where the grader runs as root each kernel gets (``make_place``): an unprivileged host uid and
gid of its own (``UID_BASE + n``, no groups), a work area that is a size-limited
``nosuid,nodev`` tmpfs readable by that uid alone, an inputs folder it may read but not write,
and a cgroup per hierarchy (v1 or v2) that caps the memory of all its processes (tmpfs and
shared memory included), its CPU share and its process count, and through which every process
it leaves can be found. ``release_place`` kills those processes, unmounts the work area and
removes the folders (``remove_tree``: no recursion, no link followed) as soon as the kernel
stops. The sandbox layers (``sandbox``) decide what runs in a place; this module only makes it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

# Host uids of grading kernels when the grader is root: far above any login or service
# account and outside the usual subordinate-uid ranges; one per kernel (cycled).
UID_BASE = 1_610_000_000
UID_SPAN = 100_000
# Each grading run takes a block of UID_SPAN uids of its own (``runner.grading_run``), so that two
# graders on one machine never share a kernel uid (cleaning up one run kills its uids' processes).
# Blocks 0 and 1 are the sandbox probe's.
UID_BLOCKS = range(2, 42)
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
    shared_tmp: bool = False  # it could write to the machine's own /tmp (no mount namespace of its own)


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


def can_mount_tmpfs() -> bool:
    """Whether this process may mount a tmpfs (root outside an unprivileged container)."""
    import tempfile

    folder = tempfile.mkdtemp(prefix="attn-course-mount-probe-")
    try:
        mount("tmpfs", folder, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m")
    except OSError:
        return False
    else:
        unmount(folder)
        return True
    finally:
        try:
            os.rmdir(folder)
        except OSError:
            pass


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


def reachable_by_others(path: str) -> bool:
    """Whether a user with no relation to the owner can read ``path`` (every folder on the way: o+x)."""
    p = Path(path).resolve()
    try:
        for parent in reversed(p.parents):
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
        return bool(os.stat(p).st_mode & stat.S_IROTH)
    except OSError:
        return False


def stage_runtime(run_root: str, roots: list[str]) -> tuple[dict[str, str], list[str]]:
    """Bind (read-only) each runtime folder an unprivileged uid cannot reach (a Python under
    /root, say) into ``run_root``; return ({folder: reachable path}, problems)."""
    binds: dict[str, str] = {}
    problems: list[str] = []
    for i, root in enumerate(roots):
        if reachable_by_others(root):
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

# cpuacct: v1 only (its own hierarchy or beside cpu), for the CPU time a task's rule reads; v2
# accounts CPU time in every cgroup's cpu.stat.
_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids")


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
            files = {"memory": "memory.limit_in_bytes", "cpu": "cpu.cfs_quota_us", "cpuacct": "cpuacct.usage",
                     "pids": "pids.max"}
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

def make_place(limits: Limits, run_root: str, name: str, *, own_uid: bool, private_home: bool,
               run_cgroups: dict[str, str], serial: int, uid_base: int = UID_BASE) -> Place:
    """Folders, identity, work filesystem and cgroups of one kernel (its base folder: ``run_root/name``).

    ``own_uid`` (root only): an unprivileged uid of its own, a tmpfs work area, cgroups;
    ``private_home``: HOME and TMPDIR folders in the work area (where no sandbox gives it its own)."""
    base = os.path.join(run_root, name)
    work, inputs = os.path.join(base, "work"), os.path.join(base, "in")
    os.mkdir(base, 0o711)
    os.mkdir(work, 0o700)
    os.mkdir(inputs, 0o750)
    place = Place(base, work, inputs)
    if own_uid:
        place.uid = place.gid = uid_base + serial % UID_SPAN
        os.chown(inputs, 0, place.gid)  # the kernel may read its inputs, never write them
        try:
            mount("tmpfs", work, "tmpfs", _MS_NOSUID | _MS_NODEV,
                  f"size={limits.work_bytes},mode=0700,uid={place.uid},gid={place.gid}")
            place.mounted = True
        except OSError:
            os.chown(work, place.uid, place.gid)
        place.cgroups = new_cgroups(run_cgroups, name, limits)
    if private_home:
        place.shared_tmp = own_uid
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
        kill_uid(place.uid)  # a process that was never in a cgroup (none could be made here)
        if place.mounted and unmount(place.work):
            place.mounted = False
        remove_tree(place.base)
        if place.shared_tmp:
            remove_owned(place.uid, SHARED_TMP)
    except Exception:
        pass


SHARED_TMP = ("/tmp", "/var/tmp", "/dev/shm")  # world-writable folders a kernel without namespaces could fill


def remove_owned(uid: int, folders: tuple[str, ...]) -> None:
    """Remove what ``uid`` left at the top of ``folders`` (its processes are gone by then)."""
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_uid != uid:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    remove_tree(entry.path)
                else:
                    os.unlink(entry.path)
            except OSError:
                continue


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
# Reading and moving a kernel's limits while it runs (the rules a task's idea sets, ``rules``)


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _memory_folder(cgroups: list[str]) -> tuple[str, bool] | None:
    """(the cgroup folder with the memory controller, whether it is v2)."""
    for path in cgroups:
        if os.path.exists(os.path.join(path, "memory.max")):
            return path, True
        if os.path.exists(os.path.join(path, "memory.limit_in_bytes")):
            return path, False
    return None


def memory_usage(cgroups: list[str]) -> int | None:
    """Bytes charged to the kernel's memory cgroup now (processes, tmpfs, shared memory), or None."""
    found = _memory_folder(cgroups)
    if found is None:
        return None
    path, v2 = found
    return _read_int(os.path.join(path, "memory.current" if v2 else "memory.usage_in_bytes"))


def memory_limit(cgroups: list[str]) -> int | None:
    found = _memory_folder(cgroups)
    if found is None:
        return None
    path, v2 = found
    return _read_int(os.path.join(path, "memory.max" if v2 else "memory.limit_in_bytes"))


def set_memory_limit(cgroups: list[str], limit: int) -> bool:
    """Move the kernel's memory limit (as root); False where there is no memory cgroup or it refused.

    v1 keeps memory+swap >= memory: lowering sets memory first, raising sets memory+swap first.
    """
    found = _memory_folder(cgroups)
    if found is None:
        return False
    path, v2 = found
    if v2:
        return _write(path, "memory.max", str(limit))
    current = _read_int(os.path.join(path, "memory.limit_in_bytes")) or 0
    order = (("memory.limit_in_bytes", "memory.memsw.limit_in_bytes") if limit < current
             else ("memory.memsw.limit_in_bytes", "memory.limit_in_bytes"))
    ok = True
    for name in order:
        if os.path.exists(os.path.join(path, name)):
            ok = _write(path, name, str(limit)) and ok
    return ok


def oom_kills(cgroups: list[str]) -> int:
    """How many processes the out-of-memory killer has killed in the kernel's cgroup so far."""
    found = _memory_folder(cgroups)
    if found is None:
        return 0
    path, v2 = found
    try:
        text = Path(path, "memory.events" if v2 else "memory.oom_control").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill" and value.strip().isdigit():
            return int(value)
    return 0


def cpu_seconds_used(cgroups: list[str]) -> float | None:
    """CPU time used by every process of the kernel so far (the cgroup's accounting), or None."""
    for path in cgroups:
        ns = _read_int(os.path.join(path, "cpuacct.usage"))
        if ns is not None:
            return ns / 1e9
        try:
            for line in Path(path, "cpu.stat").read_text().splitlines():
                if line.startswith("usage_usec "):
                    return int(line.split()[1]) / 1e6
        except (OSError, ValueError):
            pass
    return None
