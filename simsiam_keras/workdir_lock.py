"""One workdir, one run: a lock file that names its holder and is taken over once it is gone.

`WorkdirLock(workdir)` creates `WORKDIR/run.lock` with `O_CREAT | O_EXCL` (atomic on local file
systems and on NFS v3 and later), holding the host, process id, process start time and the
time it was taken. While the run lives, a daemon thread refreshes the file's modification time
every `heartbeat_s` seconds. A second process that finds the file stops at once with one line
naming the holder (`WorkdirBusy`), unless the holder is gone:

* on the same host, its process no longer exists (or is another process with the same id:
  the start times differ);
* on another host (a shared file system), its heartbeat is older than `stale_s` seconds.

A lock left by a process that died (SIGKILL, a lost node) is then taken over, and `taken_over`
says whose it was. The takeover renames the old file away first, so that of two processes
taking over at once only one wins. Under multi-worker training only the chief, the one process
that writes, holds the lock.
"""

import datetime
import json
import os
import socket
import threading
import time

FILE = "run.lock"


class WorkdirBusy(Exception):  # noqa: N818 (a state, not a failure of this process)
    """Another live process holds the workdir's lock."""


def _start_time(pid):
    """The start time of process `pid` in clock ticks since boot (Linux), else None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid, start_time):
    """Whether process `pid` exists here and is the one that started at `start_time`."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    now = _start_time(pid)
    return start_time is None or now is None or now == start_time


def describe(holder):
    """`pid 123 on host h, since 2026-01-01 12:00:00 UTC` for a lock's contents."""
    return f"pid {holder.get('pid')} on host {holder.get('host')!r}, since {holder.get('since')}"


class WorkdirLock:
    """The lock of `workdir`; `acquire()` takes it (or raises `WorkdirBusy`), `release()` frees it.

    Args:
        workdir: the run's directory (created if missing; removed again on release when the
            run wrote nothing else into it).
        heartbeat_s: seconds between refreshes of the file's modification time.
        stale_s: a lock of another host not refreshed for this long is taken over.

    Attributes:
        path: the lock file.
        taken_over: the contents of a dead holder's lock this one replaced, else None.
    """

    def __init__(self, workdir, heartbeat_s=30.0, stale_s=300.0):
        self.workdir = workdir
        self.path = os.path.join(workdir, FILE)
        self.heartbeat_s = heartbeat_s
        self.stale_s = stale_s
        self.taken_over = None
        self._mine = None
        self._created_dir = False
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False

    def _read(self, path=None):
        try:
            with open(path or self.path) as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # unreadable (being written, or damaged): judged by its age below

    def _stale(self, holder):
        """Whether the process that wrote `holder` (the lock's contents) is gone."""
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            return not _alive(holder["pid"], holder.get("start_time"))
        try:
            age = time.time() - os.stat(self.path).st_mtime
        except FileNotFoundError:
            return True
        return age > self.stale_s

    def acquire(self):
        """Takes the lock; returns self.

        Raises:
            WorkdirBusy: a live process holds it.
        """
        if not os.path.isdir(self.workdir):
            os.makedirs(self.workdir, exist_ok=True)
            self._created_dir = True
        me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "start_time": _start_time(os.getpid()),
            "since": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        }
        for _ in range(5):  # a few rounds: others may take over or release meanwhile
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read()
                if holder is None:
                    continue  # released meanwhile
                if not self._stale(holder):
                    raise WorkdirBusy(
                        f"{self.workdir!r} is in use by another run: {describe(holder)} (lock "
                        f"file {self.path}). Wait for it to end, or stop it; a lock left by a "
                        "process that died is taken over by the next run."
                    ) from None
                self._take_over(holder)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
                f.flush()
                os.fsync(f.fileno())
            self._mine = me
            self._thread = threading.Thread(target=self._beat, daemon=True, name="workdir-lock")
            self._thread.start()
            return self
        raise WorkdirBusy(f"{self.workdir!r}: could not take its lock {self.path} (contended).")

    def _take_over(self, holder):
        """Moves a dead holder's lock away, unless someone replaced it meanwhile."""
        aside = f"{self.path}.stale-{os.getpid()}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another process took it over first
        moved = self._read(aside)
        if moved == holder:
            os.remove(aside)
            self.taken_over = holder
            return
        try:  # it was a new holder's lock: put it back (link fails if a third one exists)
            os.link(aside, self.path)
        except FileExistsError:
            pass
        os.remove(aside)

    def _beat(self):
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except OSError:
                pass

    def held(self):
        """Whether the lock file still holds this process's contents."""
        return self._mine is not None and self._read() == self._mine

    def release(self):
        """Frees the lock (if this process still holds it); removes an unused new workdir."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._mine is not None and self.held():
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
        self._mine = None
        if self._created_dir:
            try:
                os.rmdir(self.workdir)  # only when empty: a run that failed before writing
            except OSError:
                pass
