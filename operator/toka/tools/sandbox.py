"""OS confinement of executed programs: a Landlock ruleset built from the agent's `fs:` grants.

The kernel checks `shell:exec:<prog>` against argv[0] only; what the program
then does (its arguments, `git -c alias.x='!sh …'`, a script it was given)
is out of the kernel's sight. So each `shell.exec` child is confined by the
Linux kernel before exec, and everything it spawns inherits the confinement:

- files: read (and run) only what an `fs:read` grant covers, write only what
  an `fs:write` grant covers, plus read-only system directories (programs and
  their libraries) and a private scratch directory (HOME and TMPDIR);
- network: no TCP connect or bind at all (ABI 4+); `http.fetch` in the kernel
  is the agent's only way out;
- scopes (ABI 6+): no signal to, and no abstract Unix socket of, a process
  outside the confinement (the tools server, the kernel).

Landlock rules name file hierarchies, not globs. A grant ending in `/**` (or
`**` alone) becomes a rule on its directory; a narrower glob becomes rules on
the files that match it when the program starts — existing files only, so a
program cannot create new files under a narrow write grant (the fs.write tool
can). Confinement is never wider than the grant.

Stdlib only (ctypes): the tools sidecar stays small. Building the ruleset
happens in the tools process; the child does two system calls before exec.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from toka.paths import glob_regex

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
    if abi < 1:
        return []
    out = ["filesystem"]
    if abi >= 3:
        out.append("truncate")
    if abi >= 4:
        out.append("tcp")
    if abi >= 5:
        out.append("deviceIoctl")
    if abi >= 6:
        out += ["signals", "abstractUnixSockets"]
    return out


@dataclass
class Confinement:
    """The places a program may read and write, as absolute paths with Landlock rights."""

    rules: list[tuple[str, int]] = field(default_factory=list)
    # Writable grants whose directory did not exist yet (made so the rule has something to name).
    made: list[str] = field(default_factory=list)


def literal_prefix(glob: str) -> tuple[list[str], list[str]]:
    """(the glob's leading segments without wildcards, the rest)."""
    segments = [s for s in glob.split("/") if s not in ("", ".")]
    for i, seg in enumerate(segments):
        if any(c in seg for c in "*?"):
            return segments[:i], segments[i:]
    return segments, []


def confinement(
    workspace: Path,
    read: Iterable[str],
    write: Iterable[str],
    scratch: Path,
    extra_read: Sequence[str] = (),
) -> Confinement:
    """The rules for a program run in `workspace` under these `fs:` globs."""
    root = workspace.resolve()
    out = Confinement()
    for path in (*SYSTEM_READ, *extra_read):
        if os.path.isdir(path):
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
            for path, is_tree in _glob_targets(
                root, glob, make=rights & FS_WRITE_FILE != 0, out=out
            ):
                out.rules.append((path, rights if is_tree else rights & FILE_RIGHTS))
    return out


def _glob_targets(root: Path, glob: str, *, make: bool, out: Confinement) -> list[tuple[str, bool]]:
    """(path, whole tree?) for one glob: its directory for `dir/**`, else the files matching."""
    prefix, rest = literal_prefix(glob)
    base = root.joinpath(*prefix)
    if base.is_symlink() or not _plain(root, base):
        # A rule names the inode a path leads to: through a symlink that is somewhere the
        # grant may not name (`public` -> `private`, made by an earlier program).
        return []
    if rest == ["**"] or (not rest and not prefix):
        if not base.exists() and make:
            base.mkdir(parents=True, exist_ok=True)
            out.made.append(str(base))
        return [(str(base), True)] if base.is_dir() else []
    if not rest:
        return [(str(base), False)] if base.is_file() else []
    if not base.is_dir():
        return []
    pattern = glob_regex(glob)
    found: list[tuple[str, bool]] = []
    skip = len(str(root)) + 1
    stack = [str(base)]
    while stack and len(found) < MAX_MATCHES:
        with contextlib.suppress(OSError), os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    if entry.name != ".git":
                        stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False) and pattern.fullmatch(entry.path[skip:]):
                    found.append((entry.path, False))
    return found[:MAX_MATCHES]


def _plain(root: Path, path: Path) -> bool:
    """Whether `path` (under the resolved `root`) has no symlink on its way: it is its own
    real path. A path not made yet counts as plain where its existing part is."""
    while not path.exists() and path != root and root in path.parents:
        path = path.parent
    return os.path.realpath(path) == str(path)


def build_ruleset(abi: int, rules: Iterable[tuple[str, int]]) -> int:
    """A Landlock ruleset file descriptor holding `rules`; handles every right the ABI knows."""
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
            try:
                target = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # gone since it was listed: nothing to allow
            try:
                is_dir = stat.S_ISDIR(os.fstat(target).st_mode)
                allowed = rights & fs_rights & (~0 if is_dir else FILE_RIGHTS)
                beneath = _PathBeneathAttr(allowed_access=allowed, parent_fd=target)
                if allowed and _syscall(
                    SYS_ADD_RULE, fd, RULE_PATH_BENEATH, ctypes.byref(beneath), 0
                ):
                    err = ctypes.get_errno()
                    raise OSError(err, f"landlock_add_rule {path}: {os.strerror(err)}")
            finally:
                os.close(target)
    except BaseException:
        os.close(fd)
        raise
    return int(fd)


def restrictor(ruleset_fd: int) -> Callable[[], None]:
    """What the child runs between fork and exec: no new privileges, then the ruleset."""

    def restrict() -> None:
        if _prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        if _syscall(SYS_RESTRICT_SELF, ruleset_fd, 0) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self")

    return restrict


def become_subreaper() -> None:
    """Orphaned descendants are re-parented to this process instead of PID 1."""
    _prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
