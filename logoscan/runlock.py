"""One run id on one output at a time.

Two sweeps started with the same run id on the same ``--out`` would both scan, both append the
same regions to the embedding store and both publish. A run therefore holds a lock on
``OUT/_locks/<run_id>.lock`` from its start until it has published or failed:

- local disk: an ``fcntl`` lock on that file. The kernel drops it when the process ends, however
  it ends (a SIGKILLed driver does not block its own resume).
- S3: a lease object written with ``If-None-Match: *`` (S3's conditional write: only one writer
  can create it), renewed every ``LEASE_S / 4`` seconds by a thread while the run lives and
  deleted at the end. A lease not renewed for ``LEASE_S`` seconds (its driver died) is taken
  over. pyarrow's filesystem has no conditional write, hence boto3 here.

Names under ``_locks/`` start with "_", so no reader lists them as outputs.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from datetime import datetime, timezone

from logoscan import storage

LEASE_S = 120.0


class RunLocked(RuntimeError):
    """Another process holds this run id on this output."""


class RunLock:
    def __init__(self, out: str, run_id: str, lease_s: float = LEASE_S):
        from logoscan.output import safe_name
        self.out, self.run_id, self.lease_s = out, run_id, lease_s
        self.uri = storage.join(out, "_locks", f"{safe_name(run_id)}.lock")
        self._fd: int | None = None
        self._client_cached = None  # the S3 client the lease was taken with (renewed and deleted with it)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _holder(self) -> dict:
        return {"run_id": self.run_id, "host": socket.gethostname(), "pid": os.getpid(),
                "since": datetime.now(timezone.utc).isoformat(), "expires_at": time.time() + self.lease_s}

    def __enter__(self) -> "RunLock":
        (self._acquire_s3 if storage.is_s3(self.uri) else self._acquire_local)()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # ------------------------------------------------------------------ local

    def _acquire_local(self) -> None:
        import fcntl
        path = storage.resolve(self.uri)[1]
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunLocked(f"cannot write under the output {self.out!r} ({type(e).__name__}: {e.strerror or e}): "
                            "--out must be a writable folder") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                held = json.loads(os.pread(fd, 4096, 0) or b"{}")
            except ValueError:
                held = {}
            os.close(fd)
            raise RunLocked(f"run {self.run_id!r} is already running on {self.out} "
                            f"(pid {held.get('pid', '?')} on {held.get('host', '?')} since {held.get('since', '?')}): "
                            "wait for it, or use another --run-id") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self._holder()).encode(), 0)
        self._fd = fd

    # ------------------------------------------------------------------ S3

    def _client(self):
        import boto3
        return boto3.client("s3")  # endpoint and credentials from the standard AWS chain

    def _bucket_key(self) -> tuple[str, str]:
        bucket, _, key = self.uri[len("s3://"):].partition("/")
        return bucket, key

    def _acquire_s3(self) -> None:
        from botocore.exceptions import ClientError
        client, (bucket, key) = self._client(), self._bucket_key()
        for attempt in range(2):
            try:
                client.put_object(Bucket=bucket, Key=key, Body=json.dumps(self._holder()).encode(), IfNoneMatch="*")
                break
            except ClientError as e:
                code = e.response.get("Error", {}).get("Code", "")
                if code not in ("PreconditionFailed", "ConditionalRequestConflict"):
                    raise RunLocked(f"cannot write the run's lock at {self.uri} ({code}: {e})") from None
                try:
                    held = json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
                except (ClientError, ValueError):
                    held = {}
                if attempt == 0 and held.get("expires_at", 0) < time.time():
                    client.delete_object(Bucket=bucket, Key=key)  # its driver stopped renewing it
                    continue
                left = max(0.0, held.get("expires_at", 0) - time.time())
                raise RunLocked(f"run {self.run_id!r} is already running on {self.out} (pid {held.get('pid', '?')} on "
                                f"{held.get('host', '?')} since {held.get('since', '?')}; its lease runs {left:.0f} s "
                                "more unless renewed): wait for it, or use another --run-id") from None
        self._client_cached = client
        self._thread = threading.Thread(target=self._renew, name="logoscan-run-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        bucket, key = self._bucket_key()
        while not self._stop.wait(self.lease_s / 4):
            try:
                self._client_cached.put_object(Bucket=bucket, Key=key, Body=json.dumps(self._holder()).encode())
            except Exception:  # noqa: BLE001 - tried again at the next beat; the lease outlives a few misses
                pass

    # ------------------------------------------------------------------

    def release(self) -> None:
        if self._fd is not None:
            import fcntl
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self._thread = None
            bucket, key = self._bucket_key()
            try:
                self._client_cached.delete_object(Bucket=bucket, Key=key)
            except Exception:  # noqa: BLE001 - an undeleted lease expires by itself
                pass
