"""OS confinement of executed programs: a Landlock ruleset built from the agent's `fs:` grants.

The kernel checks `shell:exec:<prog>` against argv[0] only; what the program
then does (its arguments, `git -c alias.x='!sh …'`, a script it was given)
is out of the kernel's sight. So each `shell.exec` child is confined by the
Linux kernel before exec, and everything it spawns inherits the confinement:

- files: read (and run) only what an `fs:read` grant covers, write only what
  an `fs:write` grant covers, plus read-only system directories (programs and
  their libraries) and a private scratch directory (HOME and TMPDIR);
- network: no TCP connect or bind at all (ABI 4+), and a seccomp filter
  allows no socket but a Unix one (no UDP, raw or netlink; no io_uring);
  `http.fetch` in the kernel is the agent's only way out;
- scopes (ABI 6+): no signal to, and no abstract Unix socket of, a process
  outside the confinement (the tools server, the kernel).

Landlock rules name file hierarchies, not globs. A grant ending in `/**` (or
`**` alone) becomes a rule on its directory; a narrower glob becomes rules on
the files that match it when the program starts — existing files only, so a
program cannot create new files under a narrow write grant (the fs.write tool
can). Confinement is never wider than the grant.

Workspace paths are opened for their rules following no symlink (`beneath`): a
directory swapped for a symlink while the rules are made grants nothing.

Stdlib only (ctypes): the tools sidecar stays small. Building the ruleset
happens in the tools process; the child makes three system calls before exec.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from toka.contract import CONFIG_DIR
from toka.paths import glob_regex
from toka.tools import beneath

# System call numbers are the same on every architecture (generic table, Linux 5.13+).
SYS_CREATE_RULESET = 444
SYS_ADD_RULE = 445
SYS_RESTRICT_SELF = 446
CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH = 1
RULE_NET_PORT = 2
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36

FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
FS_IOCTL_DEV = 1 << 15  # ABI 5
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1

# Rights that make sense on a regular file (the kernel refuses the others there).
FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
READ = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
WRITE = (
    FS_WRITE_FILE
    | FS_REMOVE_DIR
    | FS_REMOVE_FILE
    | FS_MAKE_DIR
    | FS_MAKE_REG
    | FS_MAKE_SYM
    | FS_REFER
    | FS_TRUNCATE
)
# Read-only places a program needs to start: itself, its libraries, its configuration.
SYSTEM_READ = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt")
DEVICES_RW = ("/dev/null", "/dev/zero", "/dev/full")
DEVICES_RO = ("/dev/urandom", "/dev/random")
MAX_MATCHES = 10_000
_FILE = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


class _RulesetAttr(ctypes.Structure):
    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    )


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_prctl = _libc.prctl


def abi_version() -> int:
    """The Landlock ABI this kernel offers; 0 when Landlock is missing or disabled."""
    try:
        version = _syscall(SYS_CREATE_RULESET, None, ctypes.c_size_t(0), CREATE_RULESET_VERSION)
    except (AttributeError, OSError):
        return 0
    return max(0, int(version))


def handled_fs(abi: int) -> int:
    rights = (1 << 13) - 1
    if abi >= 2:
        rights |= FS_REFER
    if abi >= 3:
        rights |= FS_TRUNCATE
    if abi >= 5:
        rights |= FS_IOCTL_DEV
    return rights


def guarantees(abi: int) -> list[str]:
    """What a ruleset enforces at this ABI, in the words the Agent's status uses."""
    out = []
    if abi >= 1:
        out.append("filesystem")
    if abi >= 3:
        out.append("truncate")
    if abi >= 4:
        out.append("tcp")
    if abi >= 5:
        out.append("deviceIoctl")
    if abi >= 6:
        out += ["signals", "abstractUnixSockets"]
    if socket_filter() is not None:
        out.append("unixSocketsOnly")
    return out


@dataclass
class Confinement:
    """The places a program may read and write, with their Landlock rights: absolute
    paths outside the workspace (`rules`), and paths inside it (`beneath`: relative,
    whole tree or one file), opened later without following any symlink."""

    rules: list[tuple[str, int]] = field(default_factory=list)
    beneath: list[tuple[str, int, bool]] = field(default_factory=list)


def literal_prefix(glob: str) -> tuple[list[str], list[str]]:
    """(the glob's leading segments without wildcards, the rest)."""
    segments = [s for s in glob.split("/") if s not in ("", ".")]
    for i, seg in enumerate(segments):
        if any(c in seg for c in "*?"):
            return segments[:i], segments[i:]
    return segments, []


@functools.cache
def system_read() -> tuple[str, ...]:
    """Where programs and their libraries live, read-only. `/etc` entry by entry where an
    `/etc/toka` (CONFIG_DIR) exists (Toka's own configuration on a developer's machine; pods
    mount nothing there for tools): what it holds reaches the agent only through its grants."""
    if not os.path.exists(CONFIG_DIR):
        return tuple(p for p in SYSTEM_READ if os.path.isdir(p))
    out = [p for p in SYSTEM_READ if p != "/etc" and os.path.isdir(p)]
    with contextlib.suppress(OSError), os.scandir("/etc") as entries:
        for entry in entries:
            real = os.path.realpath(entry.path)
            if entry.path != CONFIG_DIR and not real.startswith(("/proc/", "/sys/", CONFIG_DIR)):
                out.append(entry.path)
    return tuple(sorted(out))


def confinement(
    workspace: Path,
    read: Iterable[str],
    write: Iterable[str],
    scratch: Path,
    extra_read: Sequence[str] = (),
) -> Confinement:
    """The rules for a program run in `workspace` under these `fs:` globs."""
    out = Confinement()
    for path in (*system_read(), *extra_read):
        out.rules.append((path, READ))
    for path in DEVICES_RW:
        if os.path.exists(path):
            out.rules.append((path, FS_READ_FILE | FS_WRITE_FILE | FS_TRUNCATE | FS_IOCTL_DEV))
    for path in DEVICES_RO:
        if os.path.exists(path):
            out.rules.append((path, FS_READ_FILE))
    out.rules.append((str(scratch), READ | WRITE))
    # Write grants give no read: a program reads only where an fs:read grant says it may.
    for globs, rights in ((read, READ), (write, WRITE)):
        for glob in globs:
            for rel, is_tree in _glob_targets(workspace, glob, make=rights == WRITE):
                out.beneath.append((rel, rights if is_tree else rights & FILE_RIGHTS, is_tree))
    return out


def _glob_targets(workspace: Path, glob: str, *, make: bool) -> list[tuple[str, bool]]:
    """(relative path, whole tree?) for one glob: its directory for `dir/**` (made if it
    is a write grant's and missing), else the files matching it now."""
    prefix, rest = literal_prefix(glob)
    base = "/".join(prefix)
    if rest == ["**"] or (not rest and not prefix):
        if make:
            with contextlib.suppress(OSError):
                beneath.make_dirs(workspace, base)
        return [(base, True)]
    if not rest:
        return [(base, False)]
    pattern = glob_regex(glob)
    found: list[tuple[str, bool]] = []
    with contextlib.suppress(OSError):
        for rel in beneath.walk_files(workspace, base):
            if pattern.fullmatch(rel):
                found.append((rel, False))
                if len(found) >= MAX_MATCHES:
                    break
    return found


def build_ruleset(
    abi: int,
    rules: Iterable[tuple[str, int]],
    workspace: Path | None = None,
    inside: Iterable[tuple[str, int, bool]] = (),
) -> int:
    """A Landlock ruleset file descriptor holding `rules` (absolute paths) and `inside`
    (paths in `workspace`, opened following no symlink: a rule lands on what the grant
    names or nowhere); handles every right the ABI knows."""
    fs_rights = handled_fs(abi)
    attr = _RulesetAttr(
        handled_access_fs=fs_rights,
        handled_access_net=(NET_BIND_TCP | NET_CONNECT_TCP) if abi >= 4 else 0,
        scoped=(SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL) if abi >= 6 else 0,
    )
    size = 8 if abi < 4 else 16 if abi < 6 else ctypes.sizeof(_RulesetAttr)
    fd = _syscall(SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"landlock_create_ruleset: {os.strerror(err)}")
    try:
        for path, rights in rules:
            with contextlib.suppress(OSError):  # gone since it was listed: nothing to allow
                _add_rule(fd, os.open(path, os.O_PATH | os.O_CLOEXEC), rights & fs_rights, path)
        parents: dict[str, int] = {}  # a narrow glob's files share a few directories
        try:
            for rel, rights, tree in inside:
                assert workspace is not None
                try:
                    if tree:
                        target = beneath.open_beneath(workspace, rel, os.O_PATH | os.O_DIRECTORY)
                    else:
                        parent, _, name = rel.rpartition("/")
                        if parent not in parents:
                            parents[parent] = beneath.open_beneath(
                                workspace, parent, os.O_PATH | os.O_DIRECTORY
                            )
                        target = os.open(name, _FILE, dir_fd=parents[parent])
                except OSError:
                    continue  # missing, or a symlink on the way: nothing to allow
                _add_rule(fd, target, rights & fs_rights, rel)
        finally:
            for parent_fd in parents.values():
                os.close(parent_fd)
    except BaseException:
        os.close(fd)
        raise
    return int(fd)


def _add_rule(ruleset: int, target: int, rights: int, name: str) -> None:
    """Allow `rights` beneath the open `target` (closed here): all of them on a directory,
    the file ones on a regular file, none on anything else (a symlink, a device)."""
    try:
        mode = os.fstat(target).st_mode
        if stat.S_ISDIR(mode):
            allowed = rights
        elif stat.S_ISREG(mode) or stat.S_ISCHR(mode):
            allowed = rights & FILE_RIGHTS
        else:
            return
        attr = _PathBeneathAttr(allowed_access=allowed, parent_fd=target)
        if allowed and _syscall(SYS_ADD_RULE, ruleset, RULE_PATH_BENEATH, ctypes.byref(attr), 0):
            err = ctypes.get_errno()
            raise OSError(err, f"landlock_add_rule {name}: {os.strerror(err)}")
    finally:
        os.close(target)


def restrictor(ruleset_fd: int | None) -> Callable[[], None]:
    """What the child runs between fork and exec: no new privileges, the socket filter,
    then the ruleset (None: no Landlock here)."""
    program = socket_filter()

    def restrict() -> None:
        if _prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        if program is not None and _prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, program, 0, 0):
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")
        if ruleset_fd is not None and _syscall(SYS_RESTRICT_SELF, ruleset_fd, 0) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self")

    return restrict


# Landlock (ABI <= 7) covers TCP only: a seccomp filter refuses every socket but a Unix
# one (no UDP, no raw, no netlink), io_uring (which could open sockets around it), and
# every call through another ABI (x86_64's int 0x80, x32), which has other numbers.
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
_ARCHES = {"x86_64": (0xC000003E, 41, 0x40000000), "aarch64": (0xC00000B7, 198, 0xFFFFFFFF)}
_IO_URING_SETUP = 425


class _SockFilter(ctypes.Structure):
    _fields_ = (
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    )


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter)))


@functools.cache
def socket_filter() -> ctypes._Pointer[_SockFprog] | None:
    """The filter program for this machine's architecture; None where it is not known."""
    known = _ARCHES.get(os.uname().machine)
    if known is None:
        return None
    arch, socket_nr, foreign = known
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    allow, refuse = 0x7FFF0000, 0x00050000 | 13  # SECCOMP_RET_ERRNO | EACCES
    code = [
        (ld, 0, 0, 4),  # arch
        (jeq, 0, 6, arch),  # another ABI (int 0x80 on x86_64): refused, every call
        (ld, 0, 0, 0),  # system call number
        (jge, 4, 0, foreign),  # x32 calls on x86_64
        (jeq, 3, 0, _IO_URING_SETUP),
        (jeq, 0, 3, socket_nr),
        (ld, 0, 0, 16),  # socket()'s domain
        (jeq, 1, 0, 1),  # AF_UNIX
        (ret, 0, 0, refuse),
        (ret, 0, 0, allow),
    ]
    filters = (_SockFilter * len(code))(*(_SockFilter(*c) for c in code))
    prog = _SockFprog(len(code), ctypes.cast(filters, ctypes.POINTER(_SockFilter)))
    _KEEP.append(filters)
    return ctypes.pointer(prog)


_KEEP: list[object] = []


_SUBREAPER: list[bool] = []


def become_subreaper() -> None:
    """Orphaned descendants are re-parented to this process instead of PID 1."""
    if _prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0:
        _SUBREAPER.append(True)


def is_subreaper() -> bool:
    """Whether the orphans of what this process started are its own (it asked, or it is
    its PID namespace's init)."""
    return bool(_SUBREAPER) or os.getpid() == 1
