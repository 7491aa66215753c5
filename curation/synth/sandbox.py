"""Run untrusted Python (model-generated code) in a contained child process.

Layers, each used where this machine allows it (:func:`sandbox_capabilities` says which):

* a fresh network namespace with only a downed loopback (``unshare --net``), so no
  connection can leave the box; without one, a best-effort ``socket`` blocker instead;
* a fresh pid namespace whose init (our bootstrap) runs the code as its child: when the code
  exits or we kill the run, the kernel kills and reaps everything it started (no orphans,
  no zombies), and the code can neither see (own ``/proc``) nor signal processes outside it;
* a fresh mount namespace in which every filesystem is read-only except the working
  directory, itself a size-capped tmpfs (``max_disk_bytes``), so nothing can be written
  outside it and no disk can be filled;
* a throw-away uid (when we are root): the child cannot write anywhere its uid does not
  own, cannot signal our processes, and ``RLIMIT_NPROC`` is enforced (the kernel never
  enforces it for root). The uid is unique per run, so leftovers can be found and killed;
* no capabilities and no way to gain any (``PR_SET_NO_NEW_PRIVS``, so setuid binaries do
  not elevate), including as root of a user namespace;
* rlimits set in the child before the code runs: CPU seconds, address space, process
  count, file size, no core dumps;
* a new session whose process group is SIGKILLed on wall-time expiry, followed by a sweep
  of every process still owned by the run's uid (daemons that called ``setsid``);
* an empty environment (nothing inherited, so no secrets), a private working directory that is
  deleted afterwards, stdin/stdout/stderr as files (bounded by the file-size limit, so a
  print loop cannot fill our memory) and output truncated to a bound when read back.

* a lifeline: the sandbox's init holds the read end of a pipe whose write end only the calling
  process holds, so when that process dies, even by SIGKILL, the init exits and the kernel kills
  everything in the pid namespace (without namespaces, ``PR_SET_PDEATHSIG`` kills the code's own
  process). Working directories are named after their owner (pid and start time) and those of
  dead owners are removed by the next sandbox start in any process (:func:`sweep_stale_workdirs`).

Fail closed: :func:`run_python` refuses to run code when any of the namespaces, the read-only
filesystem or (as root) the throw-away uid is missing here (:class:`SandboxUnavailable`, naming
what is missing and how to enable it), unless the caller allows a weaker sandbox
(``allow_weaker=True``; the project file's ``synthesis.sandbox.allow_weaker``); code rows then
record which isolation was used (:func:`sandbox_isolation`). The rlimits are always set: when
they cannot be, the run raises :class:`SandboxSetupError`.

Not covered: world-readable files stay readable (the code may read the repository, never
secrets kept out of reach of an unprivileged user); without the mount layer, world-writable
directories (``/tmp``, ``/dev/shm``) stay writable. Where namespaces are missing (no
``unshare``, no user namespaces) the network block is only an in-process best effort, and
processes the code starts do not follow the caller's death (with a throw-away uid, the next
sandbox start kills them).
:class:`SandboxSetupError` means the sandbox could not start: no verdict on the code.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAIN_FILE = "main.py"
"""Name of the code file inside the working directory (tracebacks show it)."""

# Range of throw-away uids/gids. Below 65534 (nobody) so it fits containers that map only
# 64k ids; above the usual ranges of login (1000+) and system users.
_UID_BASE = 40000
_UID_SPAN = 20000

_SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"


class SandboxSetupError(RuntimeError):
    """The sandbox itself could not start (the code never ran): a machine problem, not a verdict."""


class SandboxUnavailable(SandboxSetupError):
    """Some isolation layer is missing on this machine and a weaker sandbox was not allowed: nothing ran."""


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits for one run. Defaults suit short unit-test programs (HumanEval-style)."""

    cpu_seconds: float = 10.0
    # Wall time covers start-up and waiting on a busy machine, so it is looser than CPU time
    # (the HumanEval README's own check used a 20 s timeout per task).
    wall_seconds: float = 20.0
    memory_bytes: int = 1 << 30
    max_processes: int = 16
    max_file_bytes: int = 16 << 20
    # Everything the code may store in its working directory (a tmpfs of this size, where the
    # read-only layer is available; see sandbox_capabilities()["workdir_tmpfs"]).
    max_disk_bytes: int = 64 << 20
    network: bool = False
    # How much of stdout/stderr comes back (head and tail are kept).
    max_output_bytes: int = 64 << 10

    def __post_init__(self) -> None:
        for name in (
            "cpu_seconds",
            "wall_seconds",
            "memory_bytes",
            "max_processes",
            "max_file_bytes",
            "max_disk_bytes",
            "max_output_bytes",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"SandboxLimits.{name} must be positive, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class SandboxResult:
    """What a sandboxed run did. ``ok`` means exit status 0 and no limit hit."""

    ok: bool
    exit_code: int | None
    stdout: str
    stderr: str
    timed_out: bool
    # "wall_time", "cpu_time", "memory", "file_size", "disk", "signal:<NAME>", or None.
    killed_reason: str | None
    duration_s: float


# ---------------------------------------------------------------------------------------------
# The bootstrap: runs first inside the child, applies limits, then executes main.py.
# Written for any Python 3.8+, since the sandbox interpreter may not be ours.
# ---------------------------------------------------------------------------------------------

_BOOT = r"""
import os, sys, traceback
cfg = {cfg!r}


def _setup():
    import resource
    for name, soft, hard in cfg["rlimits"]:
        lim = getattr(resource, name)
        try:
            resource.setrlimit(lim, (soft, hard))
        except (ValueError, OSError):
            # Cannot raise above an inherited hard limit: clamp to it instead of running unlimited.
            cur = resource.getrlimit(lim)[1]
            if cur == resource.RLIM_INFINITY:
                raise
            resource.setrlimit(lim, (min(soft, cur), cur))
    if cfg["readonly"]:
        _readonly_mounts(cfg["workdir"].encode(), cfg["disk_bytes"], cfg["uid"])
    if cfg["uid"] is not None:
        os.setgroups([])
        os.setgid(cfg["uid"])
        os.setuid(cfg["uid"])
    if cfg["namespaces"]:
        _drop_privileges()
    if cfg["block_sockets"]:
        _block_sockets()
    if cfg["namespaces"]:
        _become_init(cfg["status_fd"], cfg["lifeline_fd"])
    else:
        _follow_parent(cfg["parent_pid"])
        # Setup done: say so (the parent treats anything else as a sandbox failure, not a verdict).
        os.write(cfg["status_fd"], b"ready")
        os.close(cfg["status_fd"])


def _follow_parent(parent_pid):
    # No namespace init to hold a lifeline: ask the kernel to SIGKILL this process when the caller dies
    # (set after setuid, which clears it), then make sure the caller did not die before we asked.
    import ctypes, signal
    PR_SET_PDEATHSIG = 1
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent_pid:
        os._exit(137)


def _readonly_mounts(work, disk_bytes, uid):
    # We are root in a private mount namespace: make every filesystem read-only except the
    # working directory, which becomes a size-capped tmpfs (so no write can fill a disk). Open
    # files, such as our stdout, belong to the outer namespace's mounts and stay writable.
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]

    def mount(src, target, flags, fstype=None, data=None):
        if libc.mount(src, target, fstype, flags, data) != 0:
            e = ctypes.get_errno()
            raise OSError(e, "mount on %r: %s" % (target, os.strerror(e)))

    MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
    # Flags a remount must repeat (the kernel refuses to drop them inside a user namespace).
    keep_flags = {{"nosuid": 2, "nodev": 4, "noexec": 8, "noatime": 1024, "nodiratime": 2048,
                  "relatime": 1 << 21, "strictatime": 1 << 24}}
    mount(None, b"/", MS_REC | MS_PRIVATE)
    # The tmpfs hides what the parent wrote there (main.py...): carry it over.
    saved = {{}}
    for name in os.listdir(work):
        with open(os.path.join(work, name), "rb") as f:
            saved[name] = f.read()
    opts = "size=%d,mode=0700" % disk_bytes + (",uid=%d,gid=%d" % (uid, uid) if uid is not None else "")
    mount(b"tmpfs", work, MS_NOSUID | MS_NODEV, b"tmpfs", opts.encode())
    for name, data in saved.items():
        path = os.path.join(work, name)
        with open(path, "wb") as f:
            f.write(data)
        if uid is not None:
            os.chown(path, uid, uid)
    with open("/proc/self/mountinfo", "rb") as f:
        infos = [line.split() for line in f]
    for info in infos:
        target = info[4].decode("unicode_escape").encode("latin-1")  # mountinfo escapes as \040
        if target == work or target.startswith((b"/proc", b"/sys")):
            continue
        if target.startswith(b"/dev") and not target.startswith((b"/dev/shm", b"/dev/mqueue")):
            continue  # device nodes (/dev/null) must stay usable; shm and mqueue are writable dirs
        keep = sum(keep_flags.get(o, 0) for o in info[5].decode().split(","))
        mount(None, target, MS_REMOUNT | MS_BIND | MS_RDONLY | keep)
    os.chdir(work)


def _drop_privileges():
    # In a user namespace (unprivileged host) the code would run as that namespace's root and could
    # simply remount everything writable again: drop every capability for good. Everywhere, forbid
    # gaining privileges through setuid binaries (su, mount...).
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)

    def check(ret, what):
        if ret != 0:
            e = ctypes.get_errno()
            raise OSError(e, "%s: %s" % (what, os.strerror(e)))

    PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_SET_NO_NEW_PRIVS = 24, 28, 38
    if os.getuid() == 0:
        # SECBIT_NOROOT, SECBIT_NO_SETUID_FIXUP and SECBIT_KEEP_CAPS_LOCKED, each locked: uid 0
        # gets no capabilities back on exec.
        check(libc.prctl(PR_SET_SECUREBITS, 0x2F, 0, 0, 0), "securebits")
        for cap in range(64):
            if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                break  # past the last capability this kernel knows
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
        data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable (x2 words): all empty
        check(libc.capset(header, data), "capset")
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def _block_sockets():
    # Best effort only (C extensions and ctypes get around it): used where no namespace exists.
    import socket, _socket

    def denied(*a, **k):
        raise PermissionError(1, "network access is disabled in this sandbox")

    class NoSocket(socket.socket):
        def __init__(self, *a, **k):
            denied()

    socket.socket = _socket.socket = NoSocket
    for n in ("create_connection", "socketpair", "fromfd", "getaddrinfo", "gethostbyname",
              "gethostbyname_ex", "create_server"):
        if hasattr(socket, n):
            setattr(socket, n, denied)


def _become_init(status_fd, lifeline_fd):
    # We are pid 1 of a fresh pid namespace. Run the code as our child and stay behind as a minimal
    # init: reap orphans, and when the child ends, report its raw wait status and exit, which makes
    # the kernel kill everything else left in the namespace. The same happens when the lifeline
    # reads end-of-file: the caller died (even by SIGKILL) and nobody will enforce the limits.
    # The watcher starts before the code exists: a fork bomb in the child would otherwise use up RLIMIT_NPROC
    # (which counts threads) before init could start it. The forked child has no copy of the thread.
    import threading

    def watch():
        try:
            while os.read(lifeline_fd, 1):
                pass
        except OSError:
            pass
        os._exit(137)

    threading.Thread(target=watch, daemon=True).start()
    child = os.fork()
    if child == 0:
        os.close(status_fd)
        os.close(lifeline_fd)
        return
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(70)
        except InterruptedError:
            continue
        if pid == child:
            os.write(status_fd, str(status).encode())
            if os.WIFEXITED(status):
                os._exit(os.WEXITSTATUS(status))
            os._exit(128 + os.WTERMSIG(status))


try:
    _setup()
except BaseException as e:
    msg = "setup-error: %s: %s" % (type(e).__name__, e)
    os.write(cfg["status_fd"], msg.encode())
    sys.stderr.write("distillery sandbox " + msg + "\n")
    os._exit(125)
sys.argv = [{main!r}]
# A fresh __main__ module, as runpy does: the code sees none of this bootstrap's names (a
# solution that forgot an import must fail here as it would anywhere else).
import types
main = types.ModuleType("__main__")
main.__file__ = {main!r}
main.__builtins__ = __builtins__
sys.modules["__main__"] = main
try:
    with open({main!r}, encoding="utf-8") as f:
        code = compile(f.read(), {main!r}, "exec", dont_inherit=True)
    del f
    exec(code, main.__dict__)
except SystemExit:
    raise
except BaseException as e:
    # Skip this bootstrap's own frame so the traceback starts in main.py.
    traceback.print_exception(type(e), e, e.__traceback__.tb_next)
    sys.stderr.flush()
    raise SystemExit(1)
"""


@dataclass(frozen=True)
class _Plan:
    """How runs are launched on this machine (found once by probing, see :func:`_plan`)."""

    python: str
    unshare: str | None  # util-linux ``unshare`` when new namespaces (net, pid, mount) work here
    readonly: bool  # all filesystems read-only except the working directory
    drop_uid: bool  # we are root: run as a throw-away uid
    python_version: str = ""
    notes: tuple[str, ...] = ()


_uid_lock = threading.Lock()
_uids_in_use: set[int] = set()


def _uid_owned_pids(uid: int, live_only: bool = False) -> list[int]:
    if not os.path.isdir("/proc"):
        return []  # not Linux: nothing to sweep (and no namespaces either)
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid != uid:
                    continue
                # Zombies cannot be killed, only reaped by their parent; skip them when sweeping.
                if live_only and _proc_state(name) in ("Z", "X"):
                    continue
                pids.append(int(name))
            except OSError:
                continue  # exited while we looked
    return pids


def _proc_state(pid: str) -> str:
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    return stat[stat.rindex(b")") + 2 :][:1].decode()  # the comm field may contain spaces and ')'


def _allocate_uid() -> int:
    rng = random.Random()
    with _uid_lock:
        for _ in range(100):
            uid = _UID_BASE + rng.randrange(_UID_SPAN)
            # Skip uids used by a concurrent run here, or by any live process (another sandboxing
            # process on the machine), so the final sweep only ever kills this run's processes.
            if uid not in _uids_in_use and not _uid_owned_pids(uid):
                _uids_in_use.add(uid)
                return uid
    raise RuntimeError("sandbox: no free throw-away uid found; too many concurrent runs?")


def _release_uid(uid: int) -> None:
    with _uid_lock:
        _uids_in_use.discard(uid)


def _kill_uid(uid: int, rounds: int = 50) -> int:
    """SIGKILL every process owned by ``uid`` until none is left; return how many were killed."""
    killed = 0
    for _ in range(rounds):
        pids = _uid_owned_pids(uid, live_only=True)
        if not pids:
            return killed
        for pid in pids:
            # A pidfd pins the process, so a pid recycled between the scan and the kill cannot
            # hit an innocent process: re-check the owner through the pinned handle's /proc entry.
            try:
                fd = os.pidfd_open(pid)
            except OSError:
                continue
            try:
                if os.stat(f"/proc/{pid}").st_uid == uid:
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                    killed += 1
            except OSError:
                pass
            finally:
                os.close(fd)
        time.sleep(0.01)
    return killed


_WORKDIR_PREFIX = "distillery-sandbox-"
# <prefix><owner pid>.<owner start time>[.u<uid>]-<random>: who owns it, and the throw-away uid it ran as.
_WORKDIR = re.compile(r"^distillery-sandbox-(?P<pid>\d+)\.(?P<start>\d+)(?:\.u(?P<uid>\d+))?-[^/]+$")


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot): with the pid, names one process for good."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(b")") + 2 :].split()[19].decode()  # field 22 of proc(5), counted after comm


def _workdir_prefix(uid: int | None) -> str:
    pid = os.getpid()
    return f"{_WORKDIR_PREFIX}{pid}.{_start_time(pid) or 0}" + (f".u{uid}" if uid is not None else "") + "-"


def sweep_stale_workdirs(directory: str | None = None) -> list[str]:
    """Remove sandbox working directories whose owning process is gone (a caller killed mid-run), after
    killing what is left of their throw-away uid; return the paths removed. Directories of live owners,
    and of uids a live owner uses, are left alone."""
    directory = directory or tempfile.gettempdir()
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    stale: list[tuple[str, int | None]] = []
    live_uids: set[int] = set()
    for name in names:
        m = _WORKDIR.match(name)
        if m is None:
            continue
        uid = int(m["uid"]) if m["uid"] else None
        if _start_time(int(m["pid"])) == m["start"]:
            if uid is not None:
                live_uids.add(uid)
        else:
            stale.append((os.path.join(directory, name), uid))
    removed = []
    for path, uid in stale:
        with _uid_lock:
            mine = uid in _uids_in_use
        if uid is not None and uid not in live_uids and not mine:
            _kill_uid(uid)  # without namespaces, processes the code started may have survived their caller
        _remove_tree(path)
        if not os.path.exists(path):
            removed.append(path)
    return removed


@functools.lru_cache(maxsize=1)
def _swept_once() -> None:
    # Once per process, at the first sandbox start: what dead callers left behind.
    sweep_stale_workdirs()


def _python_candidates() -> list[str]:
    cands = [sys.executable, getattr(sys, "_base_executable", ""), os.path.realpath(sys.executable)]
    cands += [shutil.which(n) or "" for n in (f"python{sys.version_info[0]}.{sys.version_info[1]}", "python3")]
    cands += [f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}", "/usr/bin/python3"]
    seen: list[str] = []
    for c in cands:
        if c and os.path.isfile(c) and c not in seen:
            seen.append(c)
    return seen


@functools.lru_cache(maxsize=1)
def _plan() -> _Plan:
    is_root = os.geteuid() == 0
    unshare = shutil.which("unshare") or ("/usr/bin/unshare" if os.path.exists("/usr/bin/unshare") else None)
    probe = "import sys, json, math, re, collections\nprint('%d.%d.%d' % sys.version_info[:3])\n"
    # Strongest first. The throw-away uid needs an interpreter it may read: a Python under /root
    # (pyenv, a root-owned venv) is not, so a system Python may be picked instead of ours.
    layers = [
        (True, True, True),
        (True, False, True),
        (False, False, True),
        (True, True, False),
        (True, False, False),
        (False, False, False),
    ]
    failures: list[str] = []
    for use_ns, readonly, drop in layers:
        if (use_ns and not unshare) or (drop and not is_root):
            continue
        for py in _python_candidates():
            plan = _Plan(py, unshare if use_ns else None, readonly, drop)
            try:
                res = _run(plan, probe, SandboxLimits(wall_seconds=30), "", {})
            except (OSError, SandboxSetupError) as e:
                failures.append(f"{plan}: {e}")
                continue
            if not (res.ok and res.stdout.strip()):
                failures.append(f"{plan}: {res.stderr.strip()[-300:]}")
                continue
            notes = []
            if py != sys.executable:
                notes.append(f"sandbox interpreter {py}: ours ({sys.executable}) is not usable there")
            if not use_ns:
                notes.append("no namespaces: sockets blocked in-process (best effort), no pid namespace")
            if not readonly:
                notes.append("filesystems stay writable where the sandbox user may write")
            if is_root and not drop:
                notes.append("code runs as root: RLIMIT_NPROC is not enforced")
            return _Plan(py, plan.unshare, readonly, drop, res.stdout.strip(), tuple(notes))
    raise RuntimeError(
        "sandbox: could not start Python in any sandbox configuration here; tried:\n" + "\n".join(failures[-6:])
    )


def sandbox_capabilities() -> dict[str, Any]:
    """Which isolation layers are active on this machine (for provenance records)."""
    plan = _plan()
    return {
        "python": plan.python,
        "python_version": plan.python_version,
        "python_flags": ["-S", "-s", "-B"],
        "network_namespace": plan.unshare is not None,
        "pid_namespace": plan.unshare is not None,
        "mount_namespace": plan.unshare is not None,
        "readonly_filesystem": plan.readonly,
        "workdir_tmpfs": plan.readonly,
        "socket_blocker": plan.unshare is None,
        "no_capabilities": plan.unshare is not None or plan.drop_uid,
        "no_new_privs": plan.unshare is not None,
        "throwaway_uid": plan.drop_uid,
        "nproc_enforced": plan.drop_uid or os.geteuid() != 0,
        "rlimits": ["RLIMIT_CPU", "RLIMIT_AS", "RLIMIT_NPROC", "RLIMIT_FSIZE", "RLIMIT_CORE"],
        "process_group_kill": True,
        "uid_sweep": plan.drop_uid,
        "running_as_root": os.geteuid() == 0,
        "parent_death_kill": True,  # lifeline to the namespace init, else PR_SET_PDEATHSIG
        "scrubbed_env": True,
        "temp_workdir": True,
        "notes": list(plan.notes),
    }


# What a full sandbox has, and how to get each layer where it is missing.
_ISOLATION_LAYERS: tuple[tuple[str, str], ...] = (
    (
        "namespaces",
        "no network, pid and mount namespaces, so no read-only filesystem either (needs util-linux "
        "`unshare` and user namespaces; as a non-root user: `sysctl user.max_user_namespaces` above 0, "
        "`kernel.unprivileged_userns_clone=1` on Debian kernels, `kernel.apparmor_restrict_unprivileged_userns=0` "
        "on Ubuntu 23.10+; in a container: a seccomp/AppArmor profile that allows `unshare`, e.g. "
        "`--security-opt seccomp=unconfined`)",
    ),
    (
        "readonly_filesystem",
        "no read-only filesystem outside the working directory (the mount namespace cannot remount "
        "filesystems or mount a tmpfs; in a container, allow mounts in user namespaces)",
    ),
    (
        "throwaway_uid",
        "no throw-away uid (running as root, the code would run as root: the sandbox needs a Python an "
        "unprivileged uid can read and run, e.g. /usr/bin/python3, and permission to change uid, CAP_SETUID)",
    ),
)


def _missing_layers(caps: dict[str, Any]) -> list[tuple[str, str]]:
    present = {
        "namespaces": caps["network_namespace"] and caps["pid_namespace"] and caps["mount_namespace"],
        "readonly_filesystem": caps["readonly_filesystem"],
        # Only root needs another uid: an unprivileged caller's code already runs as nobody special.
        "throwaway_uid": caps["throwaway_uid"] or not caps["running_as_root"],
    }
    return [(name, how) for name, how in _ISOLATION_LAYERS if not present[name]]


def sandbox_isolation() -> dict[str, Any]:
    """Which isolation generated code runs under here, for provenance: ``level`` ``full`` or ``weaker``,
    the ``missing`` layers and the ``layers`` in use."""
    caps = sandbox_capabilities()
    missing = [name for name, _ in _missing_layers(caps)]
    layers = sorted(k for k, v in caps.items() if v is True and k != "running_as_root")
    return {"level": "weaker" if missing else "full", "missing": missing, "layers": layers}


def require_isolation(allow_weaker: bool = False) -> dict[str, Any]:
    """:func:`sandbox_isolation`, or :class:`SandboxUnavailable` naming what is missing (and how to enable
    it) when the sandbox is not complete here and ``allow_weaker`` is not set."""
    caps = sandbox_capabilities()
    missing = _missing_layers(caps)
    if missing and not allow_weaker:
        names = {name for name, _ in missing}
        # Without namespaces there is no mount layer to fix: one explanation covers both.
        hows = [how for name, how in missing if not (name == "readonly_filesystem" and "namespaces" in names)]
        raise SandboxUnavailable(
            "refusing to run generated code: the sandbox is incomplete on this machine: "
            + "; ".join(hows)
            + (f". Probe notes: {'; '.join(caps['notes'])}" if caps["notes"] else "")
            + ". Enable what is missing, or accept a weaker sandbox with `synthesis: {sandbox: {allow_weaker: "
            "true}}` in the project file (every code row's provenance then records the isolation used)."
        )
    return sandbox_isolation()


def _rlimits(limits: SandboxLimits, nproc_base: int) -> list[tuple[str, int, int]]:
    cpu = max(1, int(limits.cpu_seconds + 0.999))
    return [
        # Soft limit sends SIGXCPU; the hard limit one second later is a SIGKILL backstop.
        ("RLIMIT_CPU", cpu, cpu + 1),
        ("RLIMIT_AS", limits.memory_bytes, limits.memory_bytes),
        ("RLIMIT_NPROC", nproc_base + limits.max_processes, nproc_base + limits.max_processes),
        ("RLIMIT_FSIZE", limits.max_file_bytes, limits.max_file_bytes),
        ("RLIMIT_CORE", 0, 0),
    ]


def _user_task_count(uid: int) -> int:
    """Tasks (processes and threads) ``uid`` already runs: RLIMIT_NPROC counts them all."""
    total = 0
    for pid in _uid_owned_pids(uid):
        try:
            total += len(os.listdir(f"/proc/{pid}/task"))
        except OSError:
            continue
    return total


def _read_bounded(path: Path, bound: int) -> str:
    size = path.stat().st_size
    with path.open("rb") as f:
        if size <= bound:
            data = f.read()
        else:
            # The head shows what the program printed first, the tail how it ended (tracebacks).
            head = f.read(bound // 2)
            f.seek(size - bound // 2)
            tail = f.read()
            data = head + f"\n...[{size - len(head) - len(tail)} bytes truncated]...\n".encode() + tail
    return data.decode("utf-8", errors="replace")


def _killed_reason(code: int | None, timed_out: bool, stderr: str) -> str | None:
    if timed_out:
        return "wall_time"
    if code is None or code == 0:
        return None
    if code == -signal.SIGXCPU:
        return "cpu_time"
    if code == -signal.SIGXFSZ:
        return "file_size"
    if code < 0:
        try:
            return f"signal:{signal.Signals(-code).name}"
        except ValueError:
            return f"signal:{-code}"
    last = stderr.rstrip().rsplit("\n", 1)[-1]
    if last.startswith("MemoryError"):
        return "memory"
    # Python ignores SIGXFSZ, so an oversized write surfaces as OSError EFBIG instead.
    if f"[Errno {errno.EFBIG}]" in last or "File too large" in last:
        return "file_size"
    if f"[Errno {errno.ENOSPC}]" in last:
        return "disk"  # the working directory's tmpfs is full (max_disk_bytes)
    return None


def _remove_tree(path: str) -> None:
    def fix_and_retry(func: Any, p: str, _exc: Any) -> None:
        # Sandboxed code may have chmod-ed its own files away; we own the tree in the end.
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)

    shutil.rmtree(path, onerror=fix_and_retry)
    if os.path.exists(path):
        shutil.rmtree(path, ignore_errors=True)


def _unshare_prefix(unshare: str, network: bool) -> list[str]:
    # A pid namespace (everything the code starts dies with its init; --kill-child ties that init
    # to the unshare process we start and may kill), a mount namespace (private mounts; unshare
    # makes propagation private) and, unless allowed, a network namespace (no route out).
    # --mount-proc: a /proc of the new pid namespace, so the code cannot read other processes'
    # command lines (which may carry tokens).
    cmd = [unshare, "--pid", "--fork", "--kill-child", "--mount", "--mount-proc"]
    if not network:
        cmd.append("--net")
    if os.geteuid() != 0:
        cmd.append("--map-root-user")  # a user namespace lets an unprivileged user own the others
    return [*cmd, "--"]


def _exit_code(returncode: int, status_path: Path) -> int:
    """The code's own exit status: from the init's report when it ran under one (see _BOOT)."""
    try:
        raw = status_path.read_text().strip()
    except OSError:
        raw = ""
    if not raw.isdigit():
        return returncode
    status = int(raw)
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _wait_unreaped(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait until ``proc`` exits, leaving it a zombie; False on timeout."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (OSError, AttributeError):
        # No pidfd (old kernel): reaping wait; the group kill after it is then slightly racy.
        try:
            proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        # A pidfd turns readable when the process exits, without reaping it.
        ready, _, _ = select.select([pidfd], [], [], timeout)
        return bool(ready)
    finally:
        os.close(pidfd)


def run_python(
    code: str,
    limits: SandboxLimits | None = None,
    stdin: str = "",
    files: dict[str, str] | None = None,
    *,
    allow_weaker: bool = False,
) -> SandboxResult:
    """Run ``code`` as ``main.py`` in a fresh sandbox and return what happened.

    ``files`` are extra text files written next to ``main.py`` (name -> content), e.g. a module the
    code imports. Nothing the code writes survives the call. Raises :class:`SandboxUnavailable` when
    an isolation layer is missing here, unless ``allow_weaker`` (see :func:`require_isolation`).
    """
    for name in files or {}:
        if os.path.basename(name) != name or name in ("", ".", "..", MAIN_FILE):
            raise ValueError(f"sandbox file name {name!r} must be a plain file name (not {MAIN_FILE})")
    require_isolation(allow_weaker)
    return _run(_plan(), code, limits or SandboxLimits(), stdin, files or {})


def _run(plan: _Plan, code: str, limits: SandboxLimits, stdin: str, files: dict[str, str]) -> SandboxResult:
    _swept_once()
    uid = _allocate_uid() if plan.drop_uid else None
    try:
        root = tempfile.mkdtemp(prefix=_workdir_prefix(uid))
    except BaseException:
        if uid is not None:
            _release_uid(uid)
        raise
    try:
        return _run_in(root, plan, uid, code, limits, stdin, files)
    finally:
        if uid is not None:
            _kill_uid(uid)
            _release_uid(uid)
        _remove_tree(root)


def _run_in(
    root: str, plan: _Plan, uid: int | None, code: str, limits: SandboxLimits, stdin: str, files: dict[str, str]
) -> SandboxResult:
    work = os.path.join(root, "work")
    os.mkdir(work, 0o700)
    for name, content in {**files, MAIN_FILE: code}.items():
        with open(os.path.join(work, name), "w", encoding="utf-8") as f:
            f.write(content)
    if uid is not None:
        os.chmod(root, 0o711)  # the uid may enter its own dir but not list ours
        for name in [".", *os.listdir(work)]:
            os.chown(os.path.join(work, name), uid, uid)
    in_path, out_path, err_path = (Path(root, n) for n in ("stdin", "stdout", "stderr"))
    in_path.write_text(stdin, encoding="utf-8")

    namespaces = plan.unshare is not None
    status_path = Path(root, "status")
    # The bootstrap reports setup failures here (and, as a namespace init, the code's wait status).
    status_fd = os.open(status_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    # The lifeline: only we hold the write end (os.pipe fds are not inherited by other children), so
    # the sandbox's init reads end-of-file when this process dies, however it dies.
    lifeline_read, lifeline_write = os.pipe() if namespaces else (None, None)
    # The bootstrap's init counts against RLIMIT_NPROC too (which counts threads): its main thread and the
    # lifeline's watcher, hence the + 2.
    nproc_base = (0 if uid is not None else _user_task_count(os.getuid())) + (2 if namespaces else 0)
    cfg = {
        "rlimits": _rlimits(limits, nproc_base),
        "status_fd": status_fd,
        "workdir": work,
        "disk_bytes": limits.max_disk_bytes,
        "readonly": plan.readonly and namespaces,
        "uid": uid if namespaces else None,
        "block_sockets": not limits.network and not namespaces,
        "namespaces": namespaces,
        "lifeline_fd": lifeline_read,
        "parent_pid": os.getpid(),
    }
    boot = _BOOT.format(cfg=cfg, main=MAIN_FILE)
    cmd: list[str] = []
    kw: dict[str, Any] = {}
    if namespaces:
        # The bootstrap sets up mounts as root, then drops to the uid itself.
        cmd += _unshare_prefix(plan.unshare or "unshare", limits.network)
        kw = {"pass_fds": (status_fd, lifeline_read)}
    else:
        kw = {"pass_fds": (status_fd,)}
        if uid is not None:
            kw |= {"user": uid, "group": uid, "extra_groups": []}
    # -S: no site-packages, -s: no user site, -B: no .pyc writes. Not -I/-E: the environment is
    # already ours alone, and -E would drop PYTHONHASHSEED, which makes runs repeatable.
    cmd += [plan.python, "-S", "-s", "-B", "-c", boot]
    env = {
        "PATH": _SAFE_PATH,
        "HOME": work,
        "TMPDIR": work,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "PYTHONIOENCODING": "utf-8",
        "PYTHONDONTWRITEBYTECODE": "1",
    }

    start = time.monotonic()
    timed_out = False
    with in_path.open("rb") as fin, out_path.open("wb") as fout, err_path.open("wb") as ferr:
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=fin,
                stdout=fout,
                stderr=ferr,
                cwd=work,
                env=env,
                start_new_session=True,
                close_fds=True,
                **kw,
            )
        except BaseException:
            if lifeline_write is not None:
                os.close(lifeline_write)
            raise
        finally:
            os.close(status_fd)
            if lifeline_read is not None:
                os.close(lifeline_read)
        try:
            timed_out = not _wait_unreaped(proc, limits.wall_seconds)
        finally:
            # Kill the whole group even after a normal exit: background children must not outlive us.
            # The leader is not reaped yet, so its pid cannot have been recycled as another group's id.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            if lifeline_write is not None:
                os.close(lifeline_write)
    duration = time.monotonic() - start
    stdout = _read_bounded(out_path, limits.max_output_bytes)
    stderr = _read_bounded(err_path, limits.max_output_bytes)
    if not timed_out:
        raw = status_path.read_text(errors="replace").strip()
        if not raw or raw.startswith("setup-error"):
            # The code never ran: unshare or the bootstrap (namespaces, uid, rlimits) failed. Not the
            # code's fault, so not a result.
            detail = raw or stderr.strip()[-500:] or f"exit status {proc.returncode}"
            raise SandboxSetupError(f"sandbox setup failed ({plan.python}, namespaces via {plan.unshare}): {detail}")
    # Without namespaces the code could have rewritten the status file: only an init's report is trusted.
    exit_code = None if timed_out else _exit_code(proc.returncode, status_path) if namespaces else proc.returncode
    reason = _killed_reason(exit_code, timed_out, stderr)
    return SandboxResult(
        ok=exit_code == 0 and reason is None,
        exit_code=exit_code,
        stdout=stdout,
        stderr=stderr,
        timed_out=timed_out,
        killed_reason=reason,
        duration_s=duration,
    )
