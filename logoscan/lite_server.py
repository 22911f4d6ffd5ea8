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
import time
from typing import Iterator

from logoscan.gallery import GalleryError, release_lite
from logoscan.log import get_logger

log = get_logger(__name__)
START_TIMEOUT_S = 60.0
SETTLE_S = 1.5  # a server that answered is watched this long before the run uses it (_still_up)
LOCK_WAIT_S = 30.0  # a server left by a killed run is exiting (it got SIGTERM when its parent died)


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
            _stop(proc, err)
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
    try:
        yield served
    except BaseException:
        # the run failed: if the server is gone, say how it ended (a searcher only sees "cannot
        # connect"; its log is in a temporary file that closes with it)
        if proc.poll() is not None:
            tail = _log_text(err).strip().splitlines()[-5:]
            log.error("milvus.lite_server_died", db=uri, uri=served, pid=proc.pid, code=proc.returncode,
                      stderr=" | ".join(tail)[-800:] or "no message")
        raise
    finally:
        _stop(proc, err)


class _Locked(Exception):
    pass


class _Crashed(LiteServerError):
    """The server died of a signal (an abort, a segfault) before it answered."""


def _start(db: str):
    port = _free_port()
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
        if proc.poll() is not None:
            why = _log_text(err).strip().splitlines()[-3:]
            raise _Crashed(f"milvus-lite server for {uri} exited with code {proc.returncode} just after it "
                           f"answered: {' | '.join(why) or 'no message'}")
        time.sleep(0.1)


def _stop(proc, err) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    err.close()
