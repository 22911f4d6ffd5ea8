"""The cluster path: a Milvus *server* URI (Milvus Lite's own server mode on 127.0.0.1) instead of
an embedded .db, through Ray. Flags must equal the embedded run's."""

import pyarrow.parquet as pq
import pytest

from logoscan.config import RayConfig, ScanConfig
from logoscan.sweep import run_scan


def _pairs(summary):
    return {(r["item_id"], r["label"]) for p in summary["outputs"]["queues"].values()
            for r in pq.read_table(p).to_pylist()}


def test_server_uri_sweep_matches_embedded_run(sample, milvus_server, tmp_path):
    from logoscan.gallery import build
    from logoscan.models import default_artifact_path, load_artifact
    model, cfg = load_artifact(default_artifact_path("embedder"))
    meta = build(sample["references"], milvus_server, "logos", model, cfg)
    assert meta["gallery_version"] == sample["meta"]["gallery_version"]  # same refs + model → same version

    def scan(uri, out, engine):
        return run_scan(ScanConfig(manifest=sample["manifest"], milvus_uri=uri, collection="logos", out=str(out),
                                   run_id="srv", engine=engine,
                                   ray=RayConfig(num_cpus=2, fetch_batch=4)))

    served = scan(milvus_server, tmp_path / "served", "ray")
    embedded = scan(sample["milvus"], tmp_path / "embedded", "local")
    assert _pairs(served) == _pairs(embedded) and _pairs(served)
    assert served["rows_in"] == served["rows_scanned"] + served["rows_errored"]


SERVE_AND_WAIT = """
import sys, time
from logoscan.lite_server import serving
with serving(sys.argv[1]) as uri:
    print(uri, flush=True)
    time.sleep(120)
"""


def _served_uri(proc) -> str:
    for line in proc.stdout:  # the log line milvus.lite_served comes first
        if line.startswith("http://127.0.0.1:"):
            return line.strip()
    raise AssertionError("the child printed no URI")


def test_a_driver_killed_alone_leaves_no_server_holding_the_db(tmp_path):
    """The run's milvus-lite server dies with the process that started it (SIGKILL of that process
    alone, not its group): the next run serves the same .db."""
    import signal
    import subprocess
    import sys

    from pymilvus import MilvusClient

    from logoscan.lite_server import serving
    db = str(tmp_path / "g.db")
    child = subprocess.Popen([sys.executable, "-c", SERVE_AND_WAIT, db], stdout=subprocess.PIPE, text=True)
    _served_uri(child)
    child.send_signal(signal.SIGKILL)
    child.wait()
    with serving(db) as uri:  # waits out the old server's exit (it holds the lock until then)
        assert MilvusClient(uri).list_collections() == []


def test_a_db_in_use_is_refused_with_a_clear_error(tmp_path, monkeypatch):
    import subprocess
    import sys

    import pytest

    from logoscan import lite_server
    from logoscan.gallery import GalleryError
    monkeypatch.setattr(lite_server, "LOCK_WAIT_S", 2.0)
    db = str(tmp_path / "g.db")
    holder = subprocess.Popen([sys.executable, "-c", SERVE_AND_WAIT, db], stdout=subprocess.PIPE, text=True)
    try:
        _served_uri(holder)
        with pytest.raises(GalleryError, match="g.db.*another .*using the .db"):
            with lite_server.serving(db):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_a_server_that_crashes_while_starting_is_started_again(tmp_path, monkeypatch):
    """The killed-driver drill once saw the resumed run's server abort at start (the killed run's
    server still exiting); a second start came up. A server that always crashes is an error."""
    import subprocess
    import sys
    import tempfile

    import pytest
    from pymilvus import MilvusClient

    from logoscan import lite_server
    real, starts = lite_server._start, []
    abort = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGABRT)"]

    def crash_first(db):
        starts.append(db)
        if len(starts) > 1:
            return real(db)
        err = tempfile.TemporaryFile()
        return subprocess.Popen(abort, stderr=err), err, "http://127.0.0.1:9"

    monkeypatch.setattr(lite_server, "_start", crash_first)
    db = str(tmp_path / "g.db")
    with lite_server.serving(db) as uri:
        assert MilvusClient(uri).list_collections() == []
    assert len(starts) == 2

    monkeypatch.setattr(lite_server, "LOCK_WAIT_S", 2.0)
    monkeypatch.setattr(lite_server, "_start", lambda db: (subprocess.Popen(abort), tempfile.TemporaryFile(),
                                                           "http://127.0.0.1:9"))
    with pytest.raises(lite_server.LiteServerError, match="exited with code -6"):
        with lite_server.serving(db):
            pass


def test_a_server_that_dies_during_a_failed_run_is_reported_with_its_exit(tmp_path):
    """Searchers only see "cannot connect"; the run's log says the served Milvus Lite ended, and how."""
    import os
    import signal

    import psutil
    from structlog.testing import capture_logs

    from logoscan.lite_server import serving
    with capture_logs() as logs, pytest.raises(RuntimeError, match="the run failed"):
        with serving(str(tmp_path / "g.db")):
            server = [p for p in psutil.Process().children() if "milvus_lite" in " ".join(p.cmdline())]
            assert len(server) == 1
            server[0].send_signal(signal.SIGKILL)
            # wait until it has exited, without reaping it (Popen must see how it ended; psutil's
            # zombie status comes before the last of its threads is gone)
            os.waitid(os.P_PID, server[0].pid, os.WEXITED | os.WNOWAIT)
            raise RuntimeError("the run failed")
    died = [e for e in logs if e["event"] == "milvus.lite_server_died"]
    assert len(died) == 1 and died[0]["code"] == -signal.SIGKILL


def test_a_server_that_dies_just_after_it_answered_is_started_again(tmp_path, monkeypatch):
    """Seen in a fresh-clone run: the served Lite answered, then aborted (gRPC epoll EBADF, SIGABRT),
    and every matcher failed to connect. It is watched for a moment and started again."""
    import signal

    from pymilvus import MilvusClient

    from logoscan import lite_server
    real, ups = lite_server._wait_until_up, []

    def die_after_first(proc, err, served, uri):
        real(proc, err, served, uri)
        ups.append(proc.pid)
        if len(ups) == 1:
            proc.send_signal(signal.SIGABRT)

    monkeypatch.setattr(lite_server, "_wait_until_up", die_after_first)
    with lite_server.serving(str(tmp_path / "g.db")) as uri:
        assert MilvusClient(uri).list_collections() == []
    assert len(ups) == 2 and ups[0] != ups[1]


def _served():
    """This process's Milvus Lite server processes right now: none while one is being replaced."""
    import psutil
    out = []
    for p in psutil.Process().children():
        try:
            if "milvus_lite" in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:  # it exited (or became a zombie) while being looked at
            pass
    return out


def _served_pid():
    server = _served()
    assert len(server) == 1
    return server[0]


def _until(cond, timeout_s=30.0):
    import time
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        if cond():
            return True
        time.sleep(0.2)
    return False


def test_a_server_that_dies_mid_run_is_started_again_on_the_same_uri(tmp_path):
    """A run's served Milvus Lite that aborts while the run uses it (seen in a full test run: gRPC
    epoll EBADF, SIGABRT, seconds after it had answered) is started again on the same port with
    its collections loaded, so the matchers' retried searches find it; the run goes on."""
    import signal

    from pymilvus import MilvusClient
    from structlog.testing import capture_logs

    from logoscan.lite_server import serving
    with capture_logs() as logs, serving(str(tmp_path / "g.db")) as uri:
        c = MilvusClient(uri)
        c.create_collection("refs", dimension=4)
        c.insert("refs", [{"id": 7, "vector": [1.0, 0.0, 0.0, 0.0]}])
        c.load_collection("refs")
        first = _served_pid()
        first.send_signal(signal.SIGABRT)
        assert _until(lambda: any(e["event"] == "milvus.lite_server_restarted" for e in logs))
        assert _served_pid().pid != first.pid
        hits = MilvusClient(uri).search("refs", data=[[1.0, 0.0, 0.0, 0.0]], limit=1)  # no load() here
        assert hits[0][0]["id"] == 7
    died = [e for e in logs if e["event"] == "milvus.lite_server_died"]
    restarted = [e for e in logs if e["event"] == "milvus.lite_server_restarted"]
    assert len(died) == 1 and died[0]["restarting"] and died[0]["code"] == -signal.SIGABRT
    assert len(restarted) == 1 and restarted[0]["loaded"] == ["refs"] and restarted[0]["uri"] == uri


def test_a_server_hanging_after_a_fatal_signal_is_replaced(tmp_path):
    """The fourth time, the server's fatal-signal handler kept the process alive for two minutes,
    answering nothing, after its log said SIGABRT (it then died of SIGALRM). A log with that mark
    counts as a dead server: it is killed and started again."""
    from logoscan.lite_server import _answers, serving
    with serving(str(tmp_path / "g.db")) as uri:
        first = _served_pid()
        with open(f"/proc/{first.pid}/fd/2", "ab") as log:  # its log file, as the handler writes it
            log.write(b"*** SIGABRT received at time=1796127021 on cpu 0 ***\n")
        assert _until(lambda: not first.is_running() or first.status() == "zombie")
        # between the old server's end and the new one's start there is none: poll, don't assert
        assert _until(lambda: [p.pid for p in _served()] not in ([], [first.pid]))
        assert _served_pid().pid != first.pid
        assert _until(lambda: _answers(uri))
