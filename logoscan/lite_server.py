"""Milvus Lite's own server mode for one run: the embedded default served on loopback.

A Milvus Lite ``.db`` may be opened by one process only. To let a pool of matcher actors (other
processes, possibly other nodes' workers on a cluster) search it, the run starts
``milvus-lite server --data-dir <the .db> --host 127.0.0.1`` as a child process, everything in
the run (the driver's gallery reads and every matcher) talks to its ``http://127.0.0.1:<port>``,
and the server is stopped when the run ends. The laptop and the cluster then run one code path:
a server URI. A URI that is already a server (``http://``/``https://``) is used as it is.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Iterator

from logoscan.gallery import GalleryError, release_lite
from logoscan.log import get_logger

log = get_logger(__name__)
START_TIMEOUT_S = 60.0
SETTLE_S = 1.5  # a server that answered is watched this long before the run uses it (_still_up)
LOCK_WAIT_S = 30.0  # a server left by a killed run is exiting (it got SIGTERM when its parent died)
WATCH_S = 0.5  # how often the run's server is looked at while the run uses it (_Watch)
MAX_RESTARTS = 3  # a server that keeps dying during one run is not started a fourth time
# what the server's fatal-signal handler (abseil's) writes first; the process can then hang in the
# handler for minutes, alive but answering nothing, before it dies (of SIGALRM: exit code -14)
FATAL_MARK = "*** SIG"


class LiteServerError(GalleryError):
    """The run's Milvus Lite server did not start (the .db is in use, or it failed)."""


def is_lite(uri: str) -> bool:
    return bool(uri) and "://" not in uri


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


try:  # looked up here, not in the forked child (no imports between fork and exec)
    _PRCTL = ctypes.CDLL("libc.so.6", use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: the run's own `finally` still stops the server
    _PRCTL = None


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the process that started it dies, so a driver
    killed with SIGKILL does not leave a server holding the .db's lock."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _answers(uri: str) -> bool:
    from pymilvus import MilvusClient
    try:
        c = MilvusClient(uri, dedicated=True, timeout=5)
        c.list_collections()
        c.close()
        return True
    except Exception:  # noqa: BLE001 - not up yet
        return False


@contextlib.contextmanager
def serving(uri: str, enabled: bool = True) -> Iterator[str]:
    """Yield a URI many processes can search: ``uri`` itself if it is a server (or ``enabled`` is
    false), else the URI of a ``milvus-lite server`` child that owns the ``.db`` until the block
    ends. The child is stopped (and waited for) on every way out, errors included."""
    if not enabled or not is_lite(uri):
        yield uri
        return
    db = os.path.abspath(uri)
    os.makedirs(os.path.dirname(db) or ".", exist_ok=True)
    release_lite(uri)  # this process may hold the file's lock from an earlier in-process client
    t0 = time.time()
    while True:
        proc, err, served = _start(db)
        try:
            _wait_until_up(proc, err, served, uri)
            _still_up(proc, err, uri)
            break
        except (_Locked, _Crashed) as e:
            # a killed run's server still exiting: the new one finds the .db locked, or (seen once in
            # the killed-driver drill) aborts at start. Either is started again; a .db that really
            # cannot be served fails every time, and the last error is raised
            _stop(proc, err, hard=isinstance(e, _Crashed))
            if time.time() - t0 > LOCK_WAIT_S:
                raise (LiteServerError(str(e)) if isinstance(e, _Crashed) else LiteServerError(
                    f"milvus-lite server for {uri}: {e} for {LOCK_WAIT_S:.0f} s: is another logoscan run, "
                    "`milvus-lite server` or Python process using the .db?")) from None
            log.warning("milvus.lite_start_retry", db=uri, error=str(e)[:300])
            time.sleep(1.0)
        except BaseException:
            _stop(proc, err)
            raise
    log.info("milvus.lite_served", db=uri, uri=served, start_s=round(time.time() - t0, 2), pid=proc.pid)
    watch = _Watch(db, uri, served, proc, err)
    try:
        yield served
    except BaseException:
        watch.stop()
        # the run failed: if the server is gone, say how it ended (a searcher only sees "cannot
        # connect"; its log is in a temporary file that closes with it)
        if not watch.reported and (watch.proc.poll() is not None or _fatal(watch.err)):
            _report_death(watch.proc, watch.err, uri, served)
        raise
    finally:
        watch.stop()
        _stop(watch.proc, watch.err)


def _fatal(err) -> bool:
    """Whether the server's log says it got a fatal signal (it may still be alive, hanging)."""
    return FATAL_MARK in _log_text(err)


def _report_death(proc, err, uri: str, served: str, **extra) -> None:
    tail = _log_text(err).strip().splitlines()[-5:]
    log.error("milvus.lite_server_died", db=uri, uri=served, pid=proc.pid, code=proc.poll(),
              stderr=" | ".join(tail)[-800:] or "no message", **extra)


class _Watch:
    """While the run uses it, the served Milvus Lite is looked at every WATCH_S. One that died, or
    whose log shows a fatal signal (gRPC's "epoll_wait error: Bad file descriptor", then SIGABRT:
    seen three times in test runs, once after the server had answered for seconds; its cause is
    not known), is killed and started again on the same port, so the URI every matcher holds
    stays valid: their searches and connections are retried for ``match.unavailable_s`` and pick
    the new server up. At most MAX_RESTARTS times per run; after that the run fails as before,
    with the death logged. Why not Ray or pymilvus machinery: the server is a plain child process
    of the driver, outside Ray, and pymilvus only retries calls."""

    def __init__(self, db: str, uri: str, served: str, proc, err):
        self.db, self.uri, self.served = db, uri, served
        self.port = int(served.rsplit(":", 1)[1])
        self.proc, self.err = proc, err
        self.restarts, self.reported = 0, False
        self._stop = threading.Event()
        # the servers it starts are its own children: PR_SET_PDEATHSIG follows the thread that
        # forked, so they get SIGTERM when this thread ends, which is at the end of the run
        self._thread = threading.Thread(target=self._run, name="milvus-lite-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        seen = 0  # how much of the current server's log was read already
        while not self._stop.wait(WATCH_S):
            self.err.seek(seen)
            new = self.err.read()
            fatal = FATAL_MARK.encode() in new
            seen += max(len(new) - len(FATAL_MARK), 0)  # a mark cut in two is found next time
            if self.proc.poll() is None and not fatal:
                continue
            seen = 0
            restart = self.restarts < MAX_RESTARTS
            _report_death(self.proc, self.err, self.uri, self.served, restarting=restart)
            self.reported = True
            if not restart:
                return
            _stop(self.proc, self.err, hard=True)
            self.restarts += 1
            if not self._restart():
                return

    def _restart(self) -> bool:
        t0 = time.time()
        while not self._stop.is_set():
            proc, err, _ = _start(self.db, self.port)
            self.proc, self.err = proc, err  # the run's `finally` stops whichever is current
            try:
                _wait_until_up(proc, err, self.served, self.uri)
                _still_up(proc, err, self.uri)
            except (LiteServerError, _Locked) as e:  # crashed again, the port or the .db not free yet
                _stop(proc, err, hard=True)
                if time.time() - t0 > LOCK_WAIT_S:
                    log.error("milvus.lite_restart_failed", db=self.uri, uri=self.served, error=str(e)[:300])
                    return False
                time.sleep(1.0)
                continue
            self.reported = False
            loaded = _load_all(self.served)
            log.warning("milvus.lite_server_restarted", loaded=loaded, db=self.uri, uri=self.served, pid=proc.pid,
                        restart=self.restarts, took_s=round(time.time() - t0, 2))
            return True
        return True


class _Locked(Exception):
    pass


class _Crashed(LiteServerError):
    """The server died of a signal (an abort, a segfault) before it answered."""


def _load_all(served: str) -> list[str]:
    """Load every collection of a restarted server: it comes back with them released, and a
    search of a released collection fails (code 101) where a searcher expects one that answers."""
    from pymilvus import MilvusClient
    names = []
    try:
        c = MilvusClient(served, dedicated=True, timeout=30)
        for name in c.list_collections():
            c.load_collection(name)
            names.append(name)
        c.close()
    except Exception as e:  # noqa: BLE001 - the searchers' own retries say what is wrong
        log.warning("milvus.lite_reload_failed", uri=served, error=str(e)[:300])
    return names


def _start(db: str, port: int | None = None):
    port = port or _free_port()
    cmd = [sys.executable, "-m", "milvus_lite", "server", "--data-dir", db, "--host", "127.0.0.1",
           "--port", str(port)]
    # its log goes to a file, not a pipe: a pipe nobody reads fills up and stalls the server. In the
    # driver's process group (a group kill takes it too), and SIGTERM'd if the driver dies alone
    err = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, preexec_fn=_die_with_parent)
    return proc, err, f"http://127.0.0.1:{port}"


def _log_text(err) -> str:
    """What the server wrote to its log file so far."""
    err.seek(0)
    return err.read().decode(errors="replace")


def _wait_until_up(proc, err, served: str, uri: str) -> None:
    t0 = time.time()
    while not _answers(served):
        if proc.poll() is not None:
            text = _log_text(err)
            if "DataDirLockedError" in text:
                raise _Locked("another process holds the .db's lock")
            why = text.strip().splitlines()[-3:]
            raise (_Crashed if proc.returncode < 0 else LiteServerError)(
                f"milvus-lite server for {uri} exited with code {proc.returncode}: {' | '.join(why) or 'no message'}")
        if time.time() - t0 > START_TIMEOUT_S:
            raise LiteServerError(f"milvus-lite server for {uri} did not answer within {START_TIMEOUT_S:.0f} s")
        time.sleep(0.2)


def _still_up(proc, err, uri: str) -> None:
    """A server that answered can still abort a moment later: seen twice in fresh-clone test runs,
    its log ending "epoll_wait error: Bad file descriptor | *** SIGABRT received", after which
    every matcher failed to connect for match.unavailable_s. Watch it for SETTLE_S; if it died,
    it is a crash at start like any other (started again by ``serving``)."""
    deadline = time.time() + SETTLE_S
    while time.time() < deadline:
        # a fatal signal's handler can keep the process alive, answering nothing, for minutes
        # (the fourth time: code -14, SIGALRM, two minutes after its log said SIGABRT)
        if proc.poll() is not None or _fatal(err):
            why = _log_text(err).strip().splitlines()[-3:]
            raise _Crashed(f"milvus-lite server for {uri} exited with code {proc.poll()} just after it "
                           f"answered: {' | '.join(why) or 'no message'}")
        time.sleep(0.1)


def _stop(proc, err, hard: bool = False) -> None:
    """Stop the server and close its log; ``hard``: SIGKILL at once (one hanging in its fatal-signal
    handler does not heed SIGTERM)."""
    if proc.poll() is None:
        proc.kill() if hard else proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    err.close()
