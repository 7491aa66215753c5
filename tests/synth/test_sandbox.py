"""The sandbox contains what generated code might do: network, fork bomb, memory bomb,
endless loops, writes outside its directory, output floods, and leftover processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from curation.synth.sandbox import SandboxLimits, run_python, sandbox_capabilities

CAPS = sandbox_capabilities()
# Tight limits keep each containment test to a few seconds.
TIGHT = SandboxLimits(cpu_seconds=2, wall_seconds=5, memory_bytes=256 << 20, max_processes=4, max_file_bytes=1 << 20)


def test_runs_code_with_stdin_and_exit_code() -> None:
    ok = run_python("import sys\nprint(input()[::-1])\n", stdin="abc\n")
    assert ok.ok and ok.exit_code == 0 and ok.stdout == "cba\n" and ok.killed_reason is None
    bad = run_python("import sys\nsys.stderr.write('bye')\nsys.exit(3)\n")
    assert not bad.ok and bad.exit_code == 3 and bad.stderr == "bye" and bad.killed_reason is None


def test_code_sees_a_clean_namespace_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTILLERY_TEST_SECRET", "s3cret-value")
    env = run_python("import os\nprint(sorted(os.environ.items()))\n")
    assert env.ok and "s3cret-value" not in env.stdout and "DISTILLERY_TEST_SECRET" not in env.stdout
    # The bootstrap's own imports must not leak into the program: a forgotten import fails.
    missing = run_python("print(os.getcwd())\n")
    assert missing.exit_code == 1 and "NameError: name 'os' is not defined" in missing.stderr
    assert 'File "main.py", line 1' in missing.stderr


def test_hash_seed_is_fixed_so_runs_repeat() -> None:
    code = "print(hash('distillery'), list({'a', 'b', 'c', 'd', 'e'}))\n"
    assert run_python(code).stdout == run_python(code).stdout


def test_extra_files_are_importable() -> None:
    helper = "def twice(x):\n    return 2 * x\n"
    res = run_python("import helper\nprint(helper.twice(21))\n", files={"helper.py": helper})
    assert res.ok and res.stdout == "42\n"
    with pytest.raises(ValueError, match="plain file name"):
        run_python("pass", files={"../evil.py": ""})


def test_network_is_unreachable_even_to_a_local_listener() -> None:
    # A listener on this machine's loopback: reachable from an ordinary child process (checked
    # below, so the test can fail), unreachable from the sandbox.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    code = (
        "import socket\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=3)\n"
        "    print('CONNECTED')\n"
        "except OSError as e:\n"
        "    print('BLOCKED', type(e).__name__)\n"
    )
    try:
        plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=10)
        assert plain.stdout.startswith("CONNECTED")
        res = run_python(code, TIGHT)
    finally:
        server.close()
    assert res.stdout.startswith("BLOCKED"), res
    assert "CONNECTED" not in res.stdout


def test_fork_bomb_is_contained_and_bounded_in_time() -> None:
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    limits = SandboxLimits(cpu_seconds=1, wall_seconds=2, max_processes=4)
    before = time.monotonic()
    res = run_python(bomb, limits)
    assert not res.ok and res.killed_reason in ("wall_time", "cpu_time")
    assert time.monotonic() - before < limits.wall_seconds + 3
    # The machine still works: a normal run right after succeeds.
    assert run_python("print('alive')", TIGHT).stdout == "alive\n"


def test_memory_bomb_hits_the_memory_limit() -> None:
    res = run_python("a = []\nwhile True:\n    a.append(bytearray(10 ** 7))\n", TIGHT)
    assert not res.ok and res.killed_reason == "memory"
    assert res.duration_s < TIGHT.wall_seconds


def test_busy_loop_hits_the_cpu_limit() -> None:
    res = run_python("while True:\n    pass\n", SandboxLimits(cpu_seconds=1, wall_seconds=10))
    assert not res.ok and res.killed_reason == "cpu_time" and not res.timed_out
    assert res.duration_s < 5


def test_sleeping_code_hits_the_wall_time_limit() -> None:
    res = run_python("import time\ntime.sleep(60)\n", SandboxLimits(cpu_seconds=5, wall_seconds=1))
    assert res.timed_out and res.killed_reason == "wall_time" and res.exit_code is None
    assert res.duration_s < 3


@pytest.mark.skipif(
    not (CAPS["throwaway_uid"] or CAPS["readonly_filesystem"]),
    reason="needs a throw-away uid (root) or a read-only mount namespace",
)
def test_writes_stay_inside_the_working_directory(tmp_path: Path) -> None:
    target = tmp_path / "escaped.txt"
    code = (
        "import os\n"
        "open('inside.txt', 'w').write('fine')\n"
        "print(os.getcwd())\n"
        "try:\n"
        f"    open({str(target)!r}, 'w').write('escaped')\n"
        "    print('WROTE')\n"
        "except OSError as e:\n"
        "    print('DENIED', type(e).__name__)\n"
    )
    res = run_python(code, TIGHT)
    assert res.ok, res
    workdir, verdict = res.stdout.splitlines()
    assert verdict.startswith("DENIED") and not target.exists()
    assert not Path(workdir).exists()  # the working directory is removed afterwards


@pytest.mark.skipif(not CAPS["readonly_filesystem"], reason="needs a read-only mount namespace")
def test_world_writable_directories_are_read_only() -> None:
    code = (
        "for d in ('/tmp', '/dev/shm', '/var/tmp'):\n"
        "    try:\n"
        "        open(d + '/distillery-sandbox-escape', 'w').close()\n"
        "        print('WROTE', d)\n"
        "    except OSError:\n"
        "        print('DENIED', d)\n"
    )
    res = run_python(code, TIGHT)
    assert res.ok, res
    assert "WROTE" not in res.stdout and res.stdout.count("DENIED") == 3
    assert not Path("/tmp/distillery-sandbox-escape").exists()


@pytest.mark.skipif(not CAPS["workdir_tmpfs"], reason="needs a mount namespace for the tmpfs")
def test_stored_files_are_capped_by_the_disk_limit() -> None:
    fill = "i = 0\nwhile True:\n    open(f'f{i}', 'wb').write(b'x' * (1 << 20))\n    i += 1\n"
    res = run_python(fill, SandboxLimits(max_disk_bytes=8 << 20, wall_seconds=10))
    assert not res.ok and res.killed_reason == "disk" and res.duration_s < 5
    assert "No space left on device" in res.stderr


def _pids_with_token(token: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if token.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.skipif(
    not (CAPS["pid_namespace"] or CAPS["uid_sweep"]),
    reason="needs a pid namespace or a throw-away uid to find escaped processes",
)
def test_no_process_outlives_the_run() -> None:
    # A daemon that leaves the process group (setsid) and would sleep for a minute, marked with a
    # token in its command line so this test can find it from outside.
    token = f"distillery-daemon-{os.getpid()}-{time.monotonic_ns()}"
    code = (
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        f"    os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', {token!r}])\n"
        "time.sleep(1.5)\n"
    )
    seen_during: list[int] = []

    def watch() -> None:
        deadline = time.monotonic() + 1.2
        while not seen_during and time.monotonic() < deadline:
            seen_during.extend(_pids_with_token(token))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    res = run_python(code, TIGHT)
    watcher.join()
    assert res.ok, res
    assert seen_during, "the daemon never showed up: this test would not notice a leak"
    deadline = time.monotonic() + 2
    while _pids_with_token(token) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _pids_with_token(token) == []


@pytest.mark.skipif(not CAPS["no_new_privs"], reason="needs the namespace layer")
def test_code_holds_no_capabilities_and_cannot_remount() -> None:
    code = (
        "import ctypes, os\n"
        "status = open('/proc/self/status').read()\n"
        "print(status.split('CapEff:')[1].split()[0], status.split('NoNewPrivs:')[1].split()[0])\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "print(libc.mount(None, b'/', None, 32 | 4096, None))  # MS_REMOUNT | MS_BIND, read-write\n"
    )
    res = run_python(code, TIGHT)
    assert res.ok and res.stdout.split() == ["0000000000000000", "1", "-1"], res


@pytest.mark.skipif(not CAPS["pid_namespace"], reason="needs a pid namespace")
def test_code_cannot_see_other_processes() -> None:
    res = run_python("import os\nprint(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))\n")
    assert res.ok and res.stdout.strip() == "[1, 2]"  # its init and itself


def test_output_is_bounded_and_keeps_head_and_tail() -> None:
    limits = SandboxLimits(max_output_bytes=1000)
    res = run_python("print('START')\nprint('x' * 100000)\nprint('END')\n", limits)
    assert res.ok and len(res.stdout) < 1100
    assert res.stdout.startswith("START") and res.stdout.rstrip().endswith("END") and "truncated" in res.stdout


def test_output_flood_and_big_files_hit_the_file_size_limit() -> None:
    flood = run_python("while True:\n    print('x' * 10000)\n", TIGHT)
    assert not flood.ok and flood.killed_reason == "file_size"
    big = run_python("with open('big', 'wb') as f:\n    f.write(b'x' * (4 << 20))\n", TIGHT)
    assert not big.ok and big.killed_reason == "file_size"


def test_concurrent_runs_do_not_interfere() -> None:
    results: dict[int, str] = {}

    def work(i: int) -> None:
        results[i] = run_python(f"import time\ntime.sleep(0.2)\nprint({i} * {i})\n").stdout

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: f"{i * i}\n" for i in range(4)}


def test_capabilities_are_consistent() -> None:
    caps = sandbox_capabilities()
    assert os.access(caps["python"], os.X_OK)
    assert caps["network_namespace"] != caps["socket_blocker"]
    assert caps["nproc_enforced"] or os.geteuid() == 0


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="cpu_seconds"):
        SandboxLimits(cpu_seconds=0)
