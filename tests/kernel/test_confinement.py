"""What a program run under `shell:exec` can reach: only what the agent's `fs:` grants
name, no network, not the tools server, not the process that started it.

Every program here is a granted one (git, python3, sh through a git alias); what
it tries is what an agent steered by injected text would try. The Landlock
ruleset is real: this machine's kernel offers it, as the dev node's does.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.kernel.stack import Stack, kernel_stack
from toka.tools import gitws, ops, sandbox

JSON = dict[str, Any]

pytestmark = pytest.mark.skipif(
    sandbox.abi_version() < 4, reason="needs Landlock ABI 4 (this machine and the dev node have 7)"
)


def layout(ws: Path) -> None:
    for d in ("public", "private", "notes"):
        (ws / d).mkdir()
    (ws / "public" / "readme.txt").write_text("public words")
    (ws / "private" / "key.txt").write_text("the secret")
    (ws / "notes" / "a.md").write_text("old note")


async def run(stack: Stack, argv: list[str], **extra: Any) -> JSON:
    resp = await stack.http.post("/v1/tools/shell.exec", json={"argv": argv, **extra})
    assert resp.status_code == 200, resp.text
    answer: JSON = resp.json()
    return answer


async def test_a_git_alias_runs_a_shell_that_cannot_read_outside_the_grant(tmp_path: Path) -> None:
    async with kernel_stack(tmp_path, ["git-access", "fs:read:public/**"]) as stack:
        layout(stack.workspace)
        answer = await run(
            stack, ["git", "-c", "alias.x=!cat public/readme.txt private/key.txt", "x"]
        )
    assert "public words" in answer["stdout"]
    assert "the secret" not in answer["stdout"] + answer["stderr"]
    assert "Permission denied" in answer["stderr"]


async def test_python_cannot_read_or_write_outside_its_grant(tmp_path: Path) -> None:
    caps = ["python-execution", "fs:read:public/**", "fs:write:notes/**"]
    script = """
import json, os
seen = {}
for path in ("public/readme.txt", "private/key.txt", "/etc/hostname", "/proc/1/environ"):
    try:
        seen[path] = open(path).read()[:40]
    except OSError as err:
        seen[path] = type(err).__name__
for path in ("notes/new.md", "private/x", "public/x", "x"):
    try:
        open(path, "w").write("written")
        seen[path] = "written"
    except OSError as err:
        seen[path] = type(err).__name__
print(json.dumps(seen))
"""
    async with kernel_stack(tmp_path, caps) as stack:
        layout(stack.workspace)
        answer = await run(stack, ["python3", "-c", script])
        seen = json.loads(answer["stdout"])
        assert seen["public/readme.txt"] == "public words"
        assert seen["private/key.txt"] == "PermissionError"
        assert seen["/proc/1/environ"] == "PermissionError"
        assert seen["notes/new.md"] == "written"
        for outside in ("private/x", "public/x", "x"):
            assert seen[outside] == "PermissionError"
            assert not (stack.workspace / outside).exists()


async def test_no_program_opens_a_tcp_connection_even_to_loopback(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    datagrams = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    datagrams.bind(("127.0.0.1", 0))
    datagrams.settimeout(0.5)
    script = f"""
import socket
for port in ({port}, KERNEL):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5)
        print("connected", port)
    except OSError as err:
        print("refused", type(err).__name__)
for family, kind in ((socket.AF_INET, socket.SOCK_DGRAM), (socket.AF_INET6, socket.SOCK_DGRAM),
                     (socket.AF_NETLINK, socket.SOCK_RAW)):
    try:
        socket.socket(family, kind).sendto(b"out", ("127.0.0.1", UDP))
        print("sent")
    except OSError as err:
        print("refused", type(err).__name__)
"""
    try:
        async with kernel_stack(tmp_path, ["python-execution"]) as stack:
            kernel = stack.http.base_url.port
            udp = str(datagrams.getsockname()[1])
            code = script.replace("KERNEL", str(kernel)).replace("UDP", udp)
            answer = await run(stack, ["python3", "-c", code])
        with pytest.raises(TimeoutError):
            datagrams.recv(100)
    finally:
        listener.close()
        datagrams.close()
    assert "connected" not in answer["stdout"]
    assert "sent" not in answer["stdout"]
    assert answer["stdout"].count("refused PermissionError") == 5, answer


async def test_a_program_cannot_use_the_tools_socket_to_skip_the_kernel(tmp_path: Path) -> None:
    """The socket is a path, not a file Landlock guards: the tools server itself refuses
    whatever it started."""
    script = f"""
import json, os, socket
body = json.dumps({{"path": "private/key.txt"}}).encode()
request = b"POST /fs.read HTTP/1.1\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(body) + body

def ask(s):
    try:
        s.sendall(request)
        return s.recv(4096).decode(errors="replace").split("\\r\\n")[0]
    except OSError as err:
        return type(err).__name__

s = socket.socket(socket.AF_UNIX)
s.connect({str(tmp_path / "tools.sock")!r})
print("direct", ask(s))
# A child connects and exits before the server looks at who it was.
for _ in range(30):
    s = socket.socket(socket.AF_UNIX)
    child = os.fork()
    if child == 0:
        s.connect({str(tmp_path / "tools.sock")!r})
        os._exit(0)
    os.waitpid(child, 0)
    print("handed", ask(s))
"""
    async with kernel_stack(tmp_path, ["python-execution"]) as stack:
        layout(stack.workspace)
        answer = await run(stack, ["python3", "-c", script])
    lines = answer["stdout"].splitlines()
    assert "the secret" not in answer["stdout"]
    assert lines[0] == "direct HTTP/1.1 403 Forbidden"
    assert len(lines) == 31
    assert not [line for line in lines if " 200 " in line]


async def test_home_is_not_the_workspace_so_a_written_gitconfig_configures_nothing(
    tmp_path: Path,
) -> None:
    marker = tmp_path / f"pwned-{uuid.uuid4().hex}"
    caps = ["git-access", "fs:read:**", "fs:write:**"]
    async with kernel_stack(tmp_path, caps) as stack:
        stack.workspace.joinpath(".gitconfig").write_text(
            f"[alias]\n\tx = !touch {marker}\n[core]\n\tpager = touch {marker}\n"
        )
        answer = await run(stack, ["git", "x"])
        env = await run(stack, ["git", "var", "GIT_PAGER"])
    assert answer["exit_code"] != 0
    assert "is not a git command" in answer["stderr"]
    assert env["stdout"].strip() == "cat"
    assert not marker.exists()


async def test_a_program_not_installed_is_never_run_from_the_workspace(tmp_path: Path) -> None:
    async with kernel_stack(tmp_path, ["shell:exec:mytool", "fs:read:**"]) as stack:
        tool = stack.workspace / "mytool"
        tool.write_text("#!/bin/sh\necho ran from the workspace\n")
        tool.chmod(0o755)
        resp = await stack.http.post("/v1/tools/shell.exec", json={"argv": ["mytool"]})
    assert resp.status_code == 404, resp.text
    assert "program not found" in resp.json()["message"]


def test_the_path_of_programs_has_no_empty_or_relative_entry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TOKA_TOOLS_EXTRA_PATH", ":bin:/opt/cargo/bin:")
    entries = ops.exec_path().split(":")
    assert "" not in entries
    assert all(e.startswith("/") for e in entries)
    assert "/opt/cargo/bin" in entries


async def test_the_agent_cannot_send_its_own_confinement(tmp_path: Path) -> None:
    async with kernel_stack(tmp_path, ["python-execution"]) as stack:
        layout(stack.workspace)
        resp = await stack.http.post(
            "/v1/tools/shell.exec",
            json={
                "argv": ["python3", "-c", "print(open('private/key.txt').read())"],
                "confine": {"read": ["**"], "write": ["**"], "mode": "BestEffort"},
            },
        )
    assert resp.status_code == 422, resp.text
    assert "the secret" not in resp.text


# --- the tools side, called as the kernel calls it


def confine(read: list[str] = (), write: list[str] = ()) -> JSON:  # type: ignore[assignment]
    return {"read": list(read), "write": list(write), "mode": "Enforced"}


def test_a_narrow_write_grant_lets_programs_change_only_the_files_it_names(
    tmp_path: Path,
) -> None:
    layout(tmp_path)
    (tmp_path / "notes" / "deep").mkdir()
    script = """
for path in ("notes/a.md", "notes/b.md", "notes/deep/c.md"):
    try:
        open(path, "w").write("new")
        print(path, "written")
    except OSError as err:
        print(path, type(err).__name__)
"""
    answer = ops.shell_exec(
        tmp_path,
        {"argv": ["python3", "-c", script], "confine": confine(write=["notes/*.md"])},
    )
    assert answer["stdout"].splitlines() == [
        "notes/a.md written",
        # Landlock names files, not patterns: a program cannot create new ones here.
        "notes/b.md PermissionError",
        "notes/deep/c.md PermissionError",
    ]
    assert (tmp_path / "notes" / "a.md").read_text() == "new"


def test_a_write_grant_alone_lets_a_program_write_but_not_read(tmp_path: Path) -> None:
    layout(tmp_path)
    script = """
open("notes/b.md", "w").write("new")
try:
    print(open("notes/a.md").read())
except OSError as err:
    print(type(err).__name__)
"""
    answer = ops.shell_exec(
        tmp_path, {"argv": ["python3", "-c", script], "confine": confine(write=["notes/**"])}
    )
    assert answer["stdout"].split() == ["PermissionError"]
    assert (tmp_path / "notes" / "b.md").read_text() == "new"


def test_a_granted_directory_that_is_a_symlink_grants_nothing(tmp_path: Path) -> None:
    """An earlier program (or a dependency's result) made `public` lead to `private`."""
    layout(tmp_path)
    (tmp_path / "public" / "readme.txt").unlink()
    (tmp_path / "public").rmdir()
    (tmp_path / "public").symlink_to("private")
    answer = ops.shell_exec(
        tmp_path,
        {"argv": ["cat", "public/key.txt"], "confine": confine(read=["public/**"])},
    )
    assert "the secret" not in answer["stdout"]
    assert "Permission denied" in answer["stderr"]


def test_a_timeout_kills_everything_the_program_started(tmp_path: Path) -> None:
    answer = ops.shell_exec(
        tmp_path,
        {
            "argv": ["sh", "-c", "sleep 300 & echo $!; sleep 300"],
            "timeout_seconds": 1,
            "confine": confine(),
        },
    )
    assert answer["timed_out"] is True
    left = int(answer["stdout"].split()[0])
    assert gone(left)


def gone(pid: int) -> bool:
    """Dead (or a zombie not yet collected), waiting a little for SIGKILL to land."""
    for _ in range(100):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return True
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return True
        time.sleep(0.05)
    return False


def test_output_is_capped_while_it_is_read_not_after(tmp_path: Path) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    answer = ops.shell_exec(
        tmp_path,
        {
            "argv": [
                "python3",
                "-c",
                "import sys\nfor _ in range(400): sys.stdout.write('x' * 1_000_000)",
            ],
            "confine": confine(),
        },
    )
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert answer["truncated"] is True
    assert len(answer["stdout"]) == ops.MAX_OUTPUT
    assert grown_mib < 100  # 400 MB went through; only the tail was kept


def test_programs_run_under_a_process_limit(tmp_path: Path) -> None:
    answer = ops.shell_exec(
        tmp_path,
        {
            "argv": [
                "python3",
                "-c",
                "import resource; print(resource.getrlimit(resource.RLIMIT_NPROC)[0])",
            ],
            "confine": confine(),
        },
    )
    assert int(answer["stdout"]) == ops.MAX_PROCESSES


def test_each_answer_says_what_confined_the_program(tmp_path: Path) -> None:
    answer = ops.shell_exec(tmp_path, {"argv": ["true"], "confine": confine()})
    assert answer["sandbox"]["mode"] == "Enforced"
    assert answer["sandbox"]["landlock"] == sandbox.abi_version()
    assert {"filesystem", "tcp"} <= set(answer["sandbox"]["guarantees"])


def test_without_landlock_programs_run_only_when_the_agent_opted_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The one stand-in here: a kernel without Landlock cannot be had on this machine.
    monkeypatch.setattr(sandbox, "abi_version", lambda: 0)
    with pytest.raises(ops.ToolError) as refused:
        ops.shell_exec(tmp_path, {"argv": ["true"], "confine": confine()})
    assert refused.value.status == 403
    assert "BestEffort" in str(refused.value)
    answer = ops.shell_exec(
        tmp_path, {"argv": ["true"], "confine": {**confine(), "mode": "BestEffort"}}
    )
    assert answer["exit_code"] == 0
    assert answer["sandbox"]["mode"] == "Unconfined"


# --- the repository is Toka's: programs may read it (all paths granted) but never change it


def prepared(tmp_path: Path) -> tuple[Path, Path, JSON]:
    ws, volume = tmp_path / "ws", tmp_path / "git"
    volume.mkdir()
    state = ops.prepare_workspace(
        ws,
        {
            "TOKA_GIT_DIR": str(volume),
            "TOKA_WORKSPACE_SEED_DIR": str(seed(tmp_path)),
            "TOKA_AGENT_NAME": "a",
        },
    )
    assert state["state"] == "Ready", state
    return ws, gitws.git_dir(ws), state


def seed(tmp_path: Path) -> Path:
    d = tmp_path / "seed"
    d.mkdir()
    (d / "public__readme.txt").write_text("public words")
    (d / "private__key.txt").write_text("the secret")
    return d


def test_the_repository_lives_outside_the_work_tree(tmp_path: Path) -> None:
    ws, history, _ = prepared(tmp_path)
    assert not (ws / ".git").exists()
    assert (history / "HEAD").is_file()
    assert sorted(p.name for p in ws.iterdir()) == ["private", "public"]


def test_a_filter_written_by_a_program_never_runs_in_tokas_own_git(tmp_path: Path) -> None:
    ws, history, state = prepared(tmp_path)
    marker = tmp_path / f"pwned-{uuid.uuid4().hex}"
    script = f"""
import os, subprocess
os.makedirs(".git", exist_ok=True)
open(".git/config", "w").write("[filter \\"x\\"]\\n\\tclean = touch {marker}\\n")
open(".gitattributes", "w").write("* filter=x\\n")
for hook in ("pre-commit", "post-commit"):
    os.makedirs(".git/hooks", exist_ok=True)
    open(".git/hooks/" + hook, "w").write("#!/bin/sh\\ntouch {marker}\\n")
    os.chmod(".git/hooks/" + hook, 0o755)
try:
    open({str(history / "config")!r}, "a").write("[filter \\"x\\"]\\n\\tclean = touch {marker}\\n")
    print("history written")
except OSError as err:
    print("history", type(err).__name__)
"""
    answer = ops.shell_exec(
        ws,
        {"argv": ["python3", "-c", script], "confine": confine(read=["**"], write=["**"])},
    )
    assert answer["stdout"].strip() == "history PermissionError"
    committed = ops.Workspace(ws, state, {}).commit({"message": "t: done", "author": "a"})
    assert committed["committed"] is True
    assert not marker.exists()
    files = gitws.run_git(ws, "ls-files").stdout.decode().split()
    assert ".gitattributes" in files
    assert not any(f.startswith(".git/") for f in files)


@pytest.mark.parametrize(
    ("read", "sees_history"), [(["**"], True), (["public/**"], False)], ids=["all", "part"]
)
def test_programs_see_the_history_only_when_every_path_is_granted(
    tmp_path: Path, read: list[str], sees_history: bool
) -> None:
    ws, _, _ = prepared(tmp_path)
    answer = ops.shell_exec(
        ws,
        {"argv": ["git", "show", "HEAD:private/key.txt"], "confine": confine(read=read)},
    )
    assert ("the secret" in answer["stdout"]) is sees_history
    assert (answer["exit_code"] == 0) is sees_history


def test_programs_that_leave_their_session_end_with_their_call(tmp_path: Path) -> None:
    """`setsid` escapes the process group the timeout kills, at any depth; the tools server
    (subreaper of what it runs) ends such leftovers when the call returns."""
    ws, sock = tmp_path / "ws", tmp_path / "tools.sock"
    ws.mkdir()
    env = {
        **os.environ,
        "TOKA_TOOLS_SOCKET": str(sock),
        "TOKA_WORKSPACE": str(ws),
        "TOKA_WORKSPACE_SHARED": "1",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "toka.cli", "tools"], env=env, stdout=subprocess.DEVNULL
    )
    # A chain twenty deep, each in its own session, each waiting for the next and
    # recording its PID; the program itself (the leader) returns once all are there.
    script = """
import os, time
for level in range(20):
    child = os.fork()
    if child:
        if level == 0:
            while not os.path.exists("out/pids") or len(open("out/pids").read().split()) < 20:
                time.sleep(0.05)
            os._exit(0)
        os.waitpid(child, 0)
        os._exit(0)
    os.setsid()
    open("out/pids", "a").write(f"{os.getpid()}\\n")
time.sleep(120)
"""
    try:
        for _ in range(200):
            if sock.exists():
                break
            time.sleep(0.05)
        (ws / "out").mkdir()
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=30) as tools:
            answer = tools.post(
                "http://tools/shell.exec",
                json={
                    "argv": ["python3", "-c", script],
                    "confine": confine(read=["out/**"], write=["out/**"]),
                },
            ).json()
        assert answer["exit_code"] == 0, answer
        pids = [int(p) for p in (ws / "out" / "pids").read_text().split()]
        assert len(pids) == 20
        assert all(gone(pid) for pid in pids)
    finally:
        server.terminate()
        server.wait(10)


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="int 0x80 is x86_64's other ABI")
def test_no_socket_through_the_32_bit_system_call_interface(tmp_path: Path) -> None:
    """A 64-bit program may make 32-bit calls (int 0x80), which have other numbers: the
    filter refuses every call of another ABI rather than letting them all through."""
    script = """
import ctypes, mmap
# mov eax, 359 (i386 socket); ebx = AF_INET; ecx = SOCK_DGRAM; edx = 0; int 0x80
code = (b"\\x53\\xb8" + (359).to_bytes(4, "little") + b"\\xbb\\x02\\0\\0\\0"
        + b"\\xb9\\x02\\0\\0\\0\\xba\\0\\0\\0\\0\\xcd\\x80\\x5b\\xc3")
page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
page.write(code)
call = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
print(call())
"""
    answer = ops.shell_exec(tmp_path, {"argv": ["python3", "-c", script], "confine": confine()})
    assert answer["exit_code"] == 0, answer
    assert int(answer["stdout"]) < 0  # -EACCES: no descriptor
