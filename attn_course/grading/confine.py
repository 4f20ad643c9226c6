"""What a grading kernel is confined by from inside: a seccomp filter and, in the fallback layer, Landlock.

Run by path as the sandbox's last step before the kernel starts (it imports nothing of the
course); both hold for the kernel and everything it starts, and ``no_new_privs`` is set, so
no setuid program can lift them.

**seccomp** (libseccomp, through ``pyseccomp``) allows everything a notebook needs and
refuses, with EPERM, what only an escape needs:

- sockets other than local (AF_UNIX) and netlink ones: no network, in the fallback layer too,
  where there is no network namespace;
- ptrace and reading or writing other processes' memory;
- mounts, pivot_root, chroot, new namespaces (unshare, setns, and clone/clone3 with namespace
  flags), kernel keyrings, bpf, perf events, userfaultfd, io_uring, loading kernel modules,
  kexec, reboot, swap, quotas, accounting, clock and host name changes, file handles.

**Landlock** (through the ``landlock`` package; fallback layer only, where no mount namespace
gives the kernel filesystems of its own): writing, creating, removing or renaming anything is
allowed only beneath the kernel's work area (a size-limited tmpfs) and on ``/dev/null``, so
the host's ``/tmp`` and ``/dev/shm`` cannot be filled. Reading stays as any user's.
"""

from __future__ import annotations

import errno
import socket

# Syscalls a grading kernel never needs (refused with EPERM).
DENIED = (
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "move_mount", "open_tree", "fsopen",
    "fsmount", "fsconfig", "fspick", "mount_setattr",
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "reboot",
    "swapon", "swapoff", "quotactl", "acct", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    "sethostname", "setdomainname", "open_by_handle_at", "name_to_handle_at", "lookup_dcookie",
    "syslog", "vhangup", "iopl", "ioperm", "personality",
)
# clone(2) flags that make new namespaces: NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET, NEWTIME.
_NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000, 0x00000080)


def seccomp_filter():
    """The filter (not loaded)."""
    import pyseccomp as sc

    f = sc.SyscallFilter(defaction=sc.ALLOW)
    deny = sc.ERRNO(errno.EPERM)
    for name in DENIED:
        try:
            f.add_rule(deny, name)
        except (ValueError, OSError, RuntimeError):
            pass  # a syscall this architecture does not have
    # Only local sockets: AF_UNIX carries the kernel's messages; AF_NETLINK lets the message
    # library list network interfaces (it cannot send anything); everything else is refused.
    f.add_rule(deny, "socket", sc.Arg(0, sc.GT, socket.AF_NETLINK))
    for family in range(socket.AF_UNIX + 1, socket.AF_NETLINK):
        f.add_rule(deny, "socket", sc.Arg(0, sc.EQ, family))
    # New namespaces through clone(2); clone3 passes its flags in memory a filter cannot read, so
    # it answers ENOSYS and the C library falls back to clone.
    for flag in _NAMESPACE_FLAGS:
        f.add_rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    return f


def restrict_writes(writable: list[str]) -> None:
    """Landlock: every kind of write is refused except beneath ``writable`` (folders or files)."""
    from landlock.plumbing import FSAccess, landlock_abi_version
    from landlock.porcelain import Ruleset

    writes = (FSAccess.WRITE_FILE | FSAccess.REMOVE_DIR | FSAccess.REMOVE_FILE | FSAccess.MAKE_CHAR
              | FSAccess.MAKE_DIR | FSAccess.MAKE_REG | FSAccess.MAKE_SOCK | FSAccess.MAKE_FIFO
              | FSAccess.MAKE_BLOCK | FSAccess.MAKE_SYM)
    if landlock_abi_version() >= 2:
        writes |= FSAccess.REFER  # links and renames across folders
    if landlock_abi_version() >= 3:
        writes |= FSAccess.TRUNCATE
    ruleset = Ruleset(restrict_rules=writes)
    file_writes = FSAccess.WRITE_FILE | (FSAccess.TRUNCATE if landlock_abi_version() >= 3 else 0)
    for path in writable:
        import os

        ruleset.allow(path, rules=writes if os.path.isdir(path) else file_writes)
    ruleset.apply()


def confine(seccomp: bool, writable: list[str] | None = None) -> None:
    """Load the seccomp filter (``seccomp``) and, with ``writable``, the Landlock write rules."""
    if writable is not None:
        restrict_writes(writable)
    if seccomp:
        seccomp_filter().load()


if __name__ == "__main__":  # the grader's probe: does each of them work on this machine?
    import sys

    confine(seccomp="seccomp" in sys.argv, writable=["/dev/null"] if "landlock" in sys.argv else None)
