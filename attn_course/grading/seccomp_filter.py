"""The seccomp filter every grading kernel runs under (libseccomp, through ``pyseccomp``).

Loaded by the sandbox's first step, after the limits and before the kernel starts; it holds
for the kernel and everything it starts (``no_new_privs`` is set, so no setuid program can
lift it). It allows everything a notebook needs and refuses, with EPERM, what only an escape
needs:

- sockets other than local (AF_UNIX) ones: no network, in the fallback layer too, where there
  is no network namespace;
- ptrace and reading or writing other processes' memory;
- mounts, pivot_root, chroot, new namespaces (unshare, setns, and clone/clone3 with namespace
  flags), kernel keyrings, bpf, perf events, userfaultfd, io_uring, loading kernel modules,
  kexec, reboot, swap, quotas, accounting, clock and host name changes, file handles.

This file is run by path inside the sandbox (it imports nothing of the course).
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


def build():
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


def load() -> None:
    """Load the filter into this process (it is inherited by every child)."""
    build().load()


if __name__ == "__main__":
    load()
