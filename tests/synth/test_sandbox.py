"""The sandbox contains what generated code might do: network, fork bomb, memory bomb,
endless loops, writes outside its directory, output floods, and leftover processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from curation.synth.sandbox import SandboxLimits, run_python, sandbox_capabilities, sandbox_isolation

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
    assert res.duration_s < 3  # refused at once, not a connect timeout


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
    assert res.duration_s < 3
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
    assert res.duration_s < 3
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
    assert res.duration_s < 3  # the run ends with its main program, not with the daemon's minute
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
    res = run_python(
        "import os\nps = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\nprint(ps == [1, os.getpid()])\n"
    )
    assert res.ok and res.stdout.strip() == "True"  # its init (pid 1) and itself, nothing of ours


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


# ---------------------------------------------------------------------------------------------
# Containment, one test per case of issue 14, each with the time it took.
# ---------------------------------------------------------------------------------------------


def test_external_addresses_and_name_lookups_fail_at_once() -> None:
    # No route out: every attempt fails immediately (not after a connect timeout), so nothing can leak and
    # nothing can hang. 192.0.2.1 is TEST-NET-1 (RFC 5737); the lookups would need a DNS server.
    code = (
        "import socket, time\n"
        "for target in (('192.0.2.1', 80), ('1.1.1.1', 443), ('example.com', 80)):\n"
        "    started = time.monotonic()\n"
        "    try:\n"
        "        socket.create_connection(target, timeout=5)\n"
        "        print('CONNECTED', target[0])\n"
        "    except OSError as e:\n"
        "        print('BLOCKED', target[0], round(time.monotonic() - started, 2), type(e).__name__)\n"
    )
    res = run_python(code, TIGHT)
    assert res.ok, res
    lines = res.stdout.splitlines()
    assert len(lines) == 3 and all(line.startswith("BLOCKED") for line in lines), res.stdout
    assert all(float(line.split()[2]) < 1.0 for line in lines)
    assert res.duration_s < 3


def test_an_8_gb_allocation_is_refused_by_the_memory_limit() -> None:
    res = run_python("data = bytearray(8 << 30)\nprint('ALLOCATED')\n")  # default limits: 1 GiB
    assert not res.ok and res.killed_reason == "memory" and "ALLOCATED" not in res.stdout
    assert res.duration_s < 3


@pytest.mark.skipif(
    not (CAPS["throwaway_uid"] or CAPS["readonly_filesystem"]),
    reason="needs a throw-away uid (root) or a read-only mount namespace",
)
def test_writes_to_the_callers_home_are_denied() -> None:
    home = Path.home()
    target = home / f"distillery-sandbox-escape-{os.getpid()}-{time.monotonic_ns()}"
    code = (
        "import os\n"
        "open(os.path.expanduser('~/own-home.txt'), 'w').write('fine')  # HOME is the working directory\n"
        "try:\n"
        f"    open({str(target)!r}, 'w').write('escaped')\n"
        "    print('WROTE')\n"
        "except OSError as e:\n"
        "    print('DENIED', type(e).__name__)\n"
    )
    try:
        res = run_python(code, TIGHT)
        assert res.ok, res
        assert res.stdout.startswith("DENIED") and not target.exists()
        assert res.duration_s < 3
    finally:
        target.unlink(missing_ok=True)


@pytest.mark.skipif(
    not (CAPS["pid_namespace"] or CAPS["throwaway_uid"]),
    reason="needs a pid namespace or a throw-away uid (the code could signal our processes)",
)
def test_code_cannot_kill_its_parent_or_our_processes() -> None:
    # A bystander of ours, and the sandbox's parent: neither may be signalled.
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    code = (
        "import os, signal\n"
        f"for pid in (os.getppid(), {bystander.pid}, {os.getpid()}):\n"
        "    try:\n"
        "        os.kill(pid, signal.SIGKILL)\n"
        "        print('KILLED', pid)\n"
        "    except OSError as e:\n"
        "        print('DENIED', pid, type(e).__name__)\n"
    )
    try:
        res = run_python(code, TIGHT)
        # Inside a pid namespace the parent is its init (pid 1), which ignores signals it has no handler for;
        # our own pids there name nothing or its own processes.
        assert res.ok, res
        assert bystander.poll() is None, "the sandboxed code killed a process of ours"
        assert "KILLED" not in res.stdout or CAPS["pid_namespace"], res.stdout
        assert res.duration_s < 3
    finally:
        bystander.kill()
        bystander.wait()


def test_a_gigabyte_of_stdout_is_cut_at_the_file_size_limit() -> None:
    flood = "import sys\nchunk = b'x' * (1 << 20)\nfor _ in range(1024):\n    sys.stdout.buffer.write(chunk)\n"
    limits = SandboxLimits()
    res = run_python(flood, limits)
    assert not res.ok and res.killed_reason == "file_size"
    assert len(res.stdout) <= limits.max_output_bytes + 100 and "truncated" in res.stdout
    assert res.duration_s < 5


# ---------------------------------------------------------------------------------------------
# Fail closed: a missing isolation layer stops generated code unless a weaker sandbox is allowed.
# ---------------------------------------------------------------------------------------------


@pytest.mark.fail_closed
@pytest.mark.usefixtures("no_namespaces")
def test_missing_namespaces_refuse_to_run_code_with_a_clear_error(tmp_path: Path) -> None:
    from curation.synth.sandbox import SandboxUnavailable, require_isolation

    marker = tmp_path / "ran"
    with pytest.raises(SandboxUnavailable) as refused:
        run_python(f"open({str(marker)!r}, 'w').close()\n", TIGHT)
    message = str(refused.value)
    assert "refusing to run generated code" in message and "no network, pid and mount namespaces" in message
    assert "unshare" in message and "user namespaces" in message  # how to enable them
    assert "synthesis: {sandbox: {allow_weaker: true}}" in message  # or how to accept less
    assert not marker.exists()
    with pytest.raises(SandboxUnavailable):
        require_isolation()


@pytest.mark.usefixtures("no_namespaces")
def test_an_allowed_weaker_sandbox_runs_and_says_what_it_lacks() -> None:
    from curation.synth.sandbox import require_isolation, sandbox_isolation

    res = run_python(
        "import socket\ntry:\n    socket.socket()\nexcept OSError:\n    print('BLOCKED')\n", TIGHT, allow_weaker=True
    )
    assert res.ok and res.stdout == "BLOCKED\n", res  # the in-process socket blocker stands in
    isolation = require_isolation(allow_weaker=True)
    assert isolation == sandbox_isolation()
    assert isolation["level"] == "weaker" and "namespaces" in isolation["missing"]
    assert "socket_blocker" in isolation["layers"] and "network_namespace" not in isolation["layers"]


@pytest.mark.fail_closed
def test_root_without_a_throwaway_uid_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from curation.synth import sandbox

    full = sandbox._plan()
    monkeypatch.setattr(sandbox, "_plan", lambda: sandbox._Plan(full.python, full.unshare, full.readonly, False))
    monkeypatch.setattr(sandbox.os, "geteuid", lambda: 0)
    with pytest.raises(sandbox.SandboxUnavailable, match="no throw-away uid"):
        run_python("print(1)")
    assert sandbox.sandbox_isolation()["missing"][-1] == "throwaway_uid"


@pytest.mark.fail_closed
@pytest.mark.skipif(sandbox_isolation()["level"] != "full", reason="this machine lacks an isolation layer")
def test_the_full_sandbox_needs_no_permission() -> None:
    assert sandbox_isolation()["missing"] == []
    assert run_python("print('ok')").stdout == "ok\n"  # allow_weaker is off by default


def test_a_setup_failure_is_no_verdict_even_without_namespaces(monkeypatch: pytest.MonkeyPatch) -> None:
    # An rlimit that cannot be set: the code must not run under missing limits, nor count as failing.
    from curation.synth import sandbox

    full = sandbox._plan()
    plan = sandbox._Plan(full.python, None, False, full.drop_uid, full.python_version)
    monkeypatch.setattr(sandbox, "_plan", lambda: plan)
    monkeypatch.setattr(sandbox, "_rlimits", lambda limits, base: [("RLIMIT_NO_SUCH_LIMIT", 1, 1)])
    with pytest.raises(sandbox.SandboxSetupError, match="setup-error"):
        run_python("print('RAN')", TIGHT, allow_weaker=True)


# ---------------------------------------------------------------------------------------------
# Parent death: the sandbox dies with the pipeline, and the next run removes what was left.
# ---------------------------------------------------------------------------------------------

# The code comes through the environment: in the command line, its token would mark this process too.
_PARENT = """
import os, sys
sys.path.insert(0, {repo!r})
from curation.synth import sandbox
if {weak!r}:
    full = sandbox._plan()
    plan = sandbox._Plan(full.python, None, False, full.drop_uid, full.python_version)
    sandbox._plan = lambda: plan
code = os.environ["DISTILLERY_TEST_CODE"]
sandbox.run_python(code, sandbox.SandboxLimits(cpu_seconds=60, wall_seconds=60), allow_weaker=True)
"""


def _wait_for(predicate: object, timeout: float) -> float | None:
    """Seconds until ``predicate()`` held, or None if it never did within ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():  # type: ignore[operator]
            return time.monotonic() - started
        time.sleep(0.02)
    return None


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["full", "no_namespaces"])
def test_the_sandbox_dies_with_a_sigkilled_pipeline_and_its_workdir_is_swept(mode: str) -> None:
    import tempfile

    if mode == "full" and not CAPS["pid_namespace"]:
        pytest.skip("needs a pid namespace")
    repo = str(Path(__file__).resolve().parents[2])
    token = f"distillery-orphan-{os.getpid()}-{time.monotonic_ns()}"
    sleeper = f"os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', {token!r}])\n"
    # The code's own process becomes a sleeper, after starting a daemon that leaves its session.
    code = f"import os, sys\nif os.fork() == 0:\n    os.setsid()\n    {sleeper}{sleeper}"
    # Its own temp dir (traversable by a throw-away uid), so the sweep below touches nothing else.
    scratch = tempfile.mkdtemp(prefix="distillery-test-sweep-")
    os.chmod(scratch, 0o711)
    env = {**os.environ, "TMPDIR": scratch, "DISTILLERY_TEST_CODE": code}
    script = _PARENT.format(repo=repo, weak=mode != "full")
    parent = subprocess.Popen(
        [sys.executable, "-c", script],
        env=env,
        start_new_session=True,
    )
    try:
        assert _wait_for(lambda: len(_pids_with_token(token)) == 2, 20) is not None, "the sleepers never started"
        workdirs = [p for p in Path(scratch).iterdir() if p.name.startswith(f"distillery-sandbox-{parent.pid}.")]
        assert len(workdirs) == 1
        os.killpg(parent.pid, signal.SIGKILL)  # the whole pipeline process group, as `kill -9 -PGID`
        parent.wait()
        if mode == "full":
            # Everything in the pid namespace, the setsid daemon included, is gone at once.
            took = _wait_for(lambda: not _pids_with_token(token), 2)
            assert took is not None, "sandboxed processes outlived their SIGKILLed parent"
        else:
            # Without namespaces only the code's own process follows its parent (PR_SET_PDEATHSIG).
            took = _wait_for(lambda: len(_pids_with_token(token)) <= 1, 2)
            assert took is not None, "the sandboxed process outlived its SIGKILLed parent"
        print(f"\n{mode}: sandbox gone {took:.2f} s after the parent's SIGKILL")
        assert workdirs[0].exists()  # nobody was left to remove it...
        nxt = subprocess.run(
            [sys.executable, "-c", script],
            env={**env, "DISTILLERY_TEST_CODE": "pass"},
            timeout=60,
            capture_output=True,
            text=True,
        )
        assert nxt.returncode == 0, nxt.stderr
        assert not workdirs[0].exists()  # ...so the next sandbox start did
        if CAPS["throwaway_uid"]:
            # The daemon's uid is in the workdir's name: the sweep killed what escaped the process group too.
            assert _wait_for(lambda: not _pids_with_token(token), 2) is not None
    finally:
        for pid in _pids_with_token(token):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.killpg(parent.pid, signal.SIGKILL)
        shutil.rmtree(scratch, ignore_errors=True)


def test_sweep_removes_only_workdirs_of_dead_owners(tmp_path: Path) -> None:
    from curation.synth.sandbox import _start_time, sweep_stale_workdirs

    me = f"{os.getpid()}.{_start_time(os.getpid())}"
    dead = tmp_path / f"distillery-sandbox-{os.getpid()}.1-abc"  # our pid, another start time: a reused pid
    live = tmp_path / f"distillery-sandbox-{me}-def"
    unrelated = tmp_path / "distillery-sandbox-legacy"
    for d in (dead, live, unrelated):
        (d / "work").mkdir(parents=True)
        (d / "work" / "main.py").write_text("pass")
    assert sweep_stale_workdirs(str(tmp_path)) == [str(dead)]
    assert not dead.exists() and live.exists() and unrelated.exists()
