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
import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import Iterator

from logoscan.log import get_logger

log = get_logger(__name__)
START_TIMEOUT_S = 60.0


class LiteServerError(RuntimeError):
    pass


def is_lite(uri: str) -> bool:
    return bool(uri) and "://" not in uri


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    from logoscan.gallery import release_lite
    db = os.path.abspath(uri)
    os.makedirs(os.path.dirname(db) or ".", exist_ok=True)
    release_lite(uri)  # this process may hold the file's lock from an earlier in-process client
    port = _free_port()
    cmd = [sys.executable, "-m", "milvus_lite", "server", "--data-dir", db, "--host", "127.0.0.1",
           "--port", str(port)]
    # its log goes to a file, not a pipe: a pipe nobody reads fills up and stalls the server
    err = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    served = f"http://127.0.0.1:{port}"
    t0 = time.time()
    try:
        while not _answers(served):
            if proc.poll() is not None:
                err.seek(0)
                why = err.read().decode(errors="replace").strip().splitlines()[-3:]
                raise LiteServerError(f"milvus-lite server for {uri} exited with code {proc.returncode}: "
                                      f"{' | '.join(why) or 'no message'} (is another process using the .db?)")
            if time.time() - t0 > START_TIMEOUT_S:
                raise LiteServerError(f"milvus-lite server for {uri} did not answer within {START_TIMEOUT_S:.0f} s")
            time.sleep(0.2)
        log.info("milvus.lite_served", db=uri, uri=served, start_s=round(time.time() - t0, 2), pid=proc.pid)
        yield served
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        err.close()
