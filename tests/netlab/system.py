"""The tool's reach into the system: running iproute2/nft/tc commands, entering a network
namespace from this process (for sockets and sysctls), and starting and stopping processes by
their real PID. Nothing here knows the topology.
"""

import contextlib
import ctypes
import errno
import os
import signal
import subprocess
import time

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)


class SystemError_(RuntimeError):
    """A command or system call failed; the message says which and why."""


def run(args, ns=None, check=True, input=None, timeout=30):
    """Run a command (inside namespace `ns` when given, through `ip netns exec`, which execs the
    command in place). Returns stdout; raises SystemError_ with stderr when it fails."""
    full = (["ip", "netns", "exec", ns] if ns else []) + [str(a) for a in args]
    try:
        p = subprocess.run(full, input=input, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise SystemError_(f"{full[0]}: not installed (make deps installs it)") from None
    except subprocess.TimeoutExpired:
        raise SystemError_(f"{' '.join(full)}: no answer within {timeout} s") from None
    if check and p.returncode != 0:
        raise SystemError_(f"{' '.join(full)}: {p.stderr.strip() or p.stdout.strip() or p.returncode}")
    return p.stdout


def ip_batch(ns, lines):
    """Several `ip` commands in one process, inside `ns` (None: the caller's namespace)."""
    if not lines:
        return
    run(["ip"] + (["-n", ns] if ns else []) + ["-batch", "-"], input="\n".join(lines) + "\n")


def netns_list():
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


@contextlib.contextmanager
def in_netns(name):
    """Move this thread into namespace `name` for the block. Sockets made inside stay in that
    namespace after the block; sysctl files opened inside are that namespace's."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY)
    except FileNotFoundError:
        os.close(own)
        raise SystemError_(f"network namespace {name} does not exist") from None
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            e = ctypes.get_errno()
            raise SystemError_(f"setns({name}): {os.strerror(e)}")
        try:
            yield
        finally:
            if _libc.setns(own, CLONE_NEWNET) != 0:
                # Staying in the wrong namespace would send everything that follows elsewhere.
                os._exit(70)
    finally:
        os.close(target)
        os.close(own)


def sysctl(ns, settings):
    """Write sysctls inside namespace `ns`: {'net/ipv4/ip_forward': '1', ...}. Keys that this
    kernel lacks are skipped when they start with '?'."""
    with in_netns(ns):
        for key, value in settings.items():
            optional = key.startswith("?")
            path = "/proc/sys/" + key.lstrip("?")
            try:
                with open(path, "w") as f:
                    f.write(str(value))
            except FileNotFoundError:
                if not optional:
                    raise SystemError_(f"sysctl {path} does not exist in {ns}") from None


def proc_start_time(pid):
    """The process's start time in clock ticks (field 22 of /proc/PID/stat), or None if gone.
    A PID plus its start time names one process even after the PID is reused."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def alive(pid, start_time=None):
    st = proc_start_time(pid)
    if st is None:
        return False
    if start_time is not None and st != start_time:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (FileNotFoundError, IndexError):
        return False


def netns_pids(ns):
    """PIDs of every process whose network namespace is `ns` (what `ip netns pids` prints)."""
    out = run(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in out.split() if p.isdigit()]


def spawn(args, ns=None, log=None, env=None, cwd=None):
    """Start a long-lived process (inside `ns`), detached from our session, output to `log`.
    Returns (pid, start_time) of the process itself: `ip netns exec` execs in place, so the PID
    is the program's, which this checks."""
    full = (["ip", "netns", "exec", ns] if ns else []) + [str(a) for a in args]
    out = open(log, "ab") if log else subprocess.DEVNULL
    try:
        p = subprocess.Popen(
            full,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
            start_new_session=True,
            env=env,
            cwd=cwd,
            close_fds=True,
        )
    except FileNotFoundError:
        raise SystemError_(f"{full[0]}: not installed") from None
    finally:
        if log:
            out.close()
    # Wait until `ip` has exec'd the program (its comm changes), so the PID we keep is the
    # program's and not the wrapper's.
    if ns:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{p.pid}/comm") as f:
                    comm = f.read().strip()
            except FileNotFoundError:
                break
            if comm != "ip":
                break
            if p.poll() is not None:
                break
            time.sleep(0.005)
    # Reap it later in the background if it dies while we still run; afterwards init does.
    _children.append(p)
    return p.pid, proc_start_time(p.pid)


_children = []


def exit_code(pid):
    """The exit status of a process that spawn() started and that has ended, else None."""
    for p in _children:
        if p.pid == pid:
            return p.poll()
    return None


def reap():
    for p in list(_children):
        if p.poll() is not None:
            _children.remove(p)


def stop(pid, start_time=None, grace=2.0):
    """SIGTERM the process (only if it is still the one we started), SIGKILL after `grace`."""
    if not alive(pid, start_time):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        reap()
        if not alive(pid, start_time):
            return
        time.sleep(0.02)
    if alive(pid, start_time):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and alive(pid, start_time):
        reap()
        time.sleep(0.02)


def pidfd_wait(pid, timeout):
    """Wait up to `timeout` s for `pid` to exit. Returns True if it has exited."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except OSError as e:
        if e.errno == errno.ESRCH:
            return True
        raise
    try:
        import select

        r, _, _ = select.select([fd], [], [], timeout)
        return bool(r)
    finally:
        os.close(fd)


def realtime(priority):
    """Raise this process to SCHED_FIFO `priority` (children start as normal processes), so that
    the link emulator and the probes keep their timing on a busy machine. They block in select()
    nearly all the time; the kernel's RT throttling bounds them anyway. Falls back to nice -10.
    Returns what it got."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(priority))
        return f"SCHED_FIFO {priority}"
    except (OSError, AttributeError):
        pass
    try:
        os.setpriority(os.PRIO_PROCESS, 0, -10)
        return "nice -10"
    except OSError:
        return "normal"


def normal_priority():
    try:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except OSError:
        pass
