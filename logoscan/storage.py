"""Where bytes live: local paths, ``file://`` URIs and ``s3://bucket/key``.

One pyarrow filesystem per scheme. S3 credentials come from the standard AWS chain (env vars,
profile, instance role) — never from logoscan config. An S3-compatible endpoint is taken from
``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` (how boto3 and the AWS CLI spell it too).
"""
from __future__ import annotations

import functools
import os
import random
import time
from urllib.parse import urlparse

import pyarrow.fs as pafs

SUPPORTED_SCHEMES = ("", "file", "s3")


class UnsupportedURI(ValueError):
    pass


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def check_uri(uri: str) -> None:
    scheme = urlparse(uri).scheme
    # a Windows drive letter parses as a one-letter scheme; we do not support Windows paths anyway
    if scheme not in SUPPORTED_SCHEMES:
        raise UnsupportedURI(f"unsupported URI scheme {scheme!r} in {uri!r} (use a local path, "
                             "file:// or s3://)")


S3_SDK_ATTEMPTS = 3  # the AWS SDK's own tries per request, under fetch.retries (so 3 × (1 + retries) GETs at most)


@functools.lru_cache(maxsize=4)
def _s3(endpoint: str | None, region: str | None) -> pafs.S3FileSystem:
    kw = {}
    if endpoint:
        u = urlparse(endpoint)
        kw["endpoint_override"] = u.netloc or u.path
        kw["scheme"] = u.scheme or "https"
    return pafs.S3FileSystem(region=region or "us-east-1", **kw,
                             retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=S3_SDK_ATTEMPTS))


def s3_filesystem() -> pafs.S3FileSystem:
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return _s3(endpoint, os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION"))


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a URI."""
    check_uri(uri)
    if is_s3(uri):
        return s3_filesystem(), uri[len("s3://"):]
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def read_bytes(uri: str, max_bytes: int | None = None) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        data = f.read(max_bytes + 1) if max_bytes else f.read()
    if max_bytes and len(data) > max_bytes:
        raise ValueError(f"{uri} is larger than the {max_bytes}-byte limit")
    return data


# What an S3 endpoint (or the network on the way) says when trying again later can succeed:
# throttling, 5xx, dropped connections. The SDK's own retries (S3_SDK_ATTEMPTS, short backoff)
# ride out a blip; this outer loop waits longer, jittered, for an endpoint that throttles for seconds.
TRANSIENT = ("SlowDown", "SLOW_DOWN", "Throttl", "THROTTL", "SERVICE_UNAVAILABLE", "TooManyRequests",
             "RequestTimeout", "InternalError", "INTERNAL_FAILURE", "ServiceUnavailable", "NETWORK_CONNECTION",
             "Connection", "Timeout", "timed out", " 500", " 502", " 503", " 504")


def is_transient(e: BaseException) -> bool:
    return isinstance(e, (OSError, ConnectionError, TimeoutError)) and not isinstance(
        e, (FileNotFoundError, PermissionError, IsADirectoryError)) and any(t in str(e) for t in TRANSIENT)


def read_bytes_retrying(uri: str, max_bytes: int | None, retries: int, base_s: float,
                        sleep=time.sleep) -> bytes:
    """read_bytes with bounded retries and jittered exponential backoff on transient errors;
    the last error, naming the attempts, is raised when they are spent."""
    for attempt in range(retries + 1):
        try:
            return read_bytes(uri, max_bytes)
        except Exception as e:  # noqa: BLE001
            if attempt == retries or not is_transient(e):
                if not attempt:
                    raise
                try:
                    again = type(e)(f"{e} (after {attempt + 1} attempts)")
                except Exception:  # noqa: BLE001 - an exception type with other arguments
                    again = OSError(f"{e} (after {attempt + 1} attempts)")
                raise again from e
            sleep(base_s * (2 ** attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


def write_bytes(uri: str, data: bytes) -> None:
    """Whole or nothing: locally a hidden temp file renamed into place; on S3 one object PUT
    (a multipart upload too is visible only once complete)."""
    fs, path = resolve(uri)
    _ensure_parent(fs, path)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = os.path.join(os.path.dirname(path),  # hidden: listings skip it
                           f".{os.path.basename(path)}.{os.getpid()}.{random.getrandbits(32):08x}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return
    with fs.open_output_stream(path) as f:
        f.write(data)


def _ensure_parent(fs: pafs.FileSystem, path: str) -> None:
    # S3 has no directories: creating one would leave marker objects behind
    if isinstance(fs, pafs.LocalFileSystem):
        os.makedirs(os.path.dirname(path), exist_ok=True)


def absolute(uri: str) -> str:
    """A local path made absolute (against the working directory, once, where the user typed it),
    so that what is stored with it (summary.json's outputs, a reference's image_uri) still points
    at the same file when read from another directory. s3:// and file:// URIs are unchanged."""
    if not uri or is_s3(uri) or "://" in uri:
        return uri
    return os.path.abspath(uri)


def other_files(uri: str, suffix: str) -> list[str]:
    """Files under a folder / prefix that ``list_files(uri, suffix)`` does not return, names
    starting with "_" or "." aside (markers, checksums): what a reader of ``suffix`` files would
    silently leave out."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    base = path.rstrip("/") + "/"
    return sorted(i.path for i in fs.get_file_info(pafs.FileSelector(path, recursive=True))
                  if i.type == pafs.FileType.File and not i.path.endswith(suffix)
                  and not any(part.startswith(("_", ".")) for part in i.path[len(base):].split("/")))


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def list_files(uri: str, suffix: str) -> list[str]:
    """A single file, or every ``*suffix`` file under a folder / prefix (sorted, recursive),
    skipping names below it that start with "_" or "." (staging, checkpoints, markers).
    Returns URIs in the same spelling as ``uri`` (s3:// stays s3://)."""
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return [uri]
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"no such file or prefix: {uri}")
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    base = path.rstrip("/") + "/"
    found = sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(suffix)
                   and not any(part.startswith(("_", ".")) for part in i.path[len(base):].split("/")))
    return [("s3://" + p) if is_s3(uri) else p for p in found]


def delete_dir(uri: str) -> None:
    fs, path = resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)


def move_file(src: str, dst: str) -> None:
    """Publish one staged file: an atomic rename locally; copy + delete on S3 (which has no
    rename — readers trust the run's _SUCCESS marker, written last, not the listing)."""
    fs, s = resolve(src)
    _, d = resolve(dst)
    _ensure_parent(fs, d)
    if isinstance(fs, pafs.LocalFileSystem):
        os.replace(s, d)
    else:
        fs.copy_file(s, d)
        fs.delete_file(s)


def delete_file(uri: str) -> None:
    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.File:
        fs.delete_file(path)


def copy_dir(src: str, dst: str) -> list[str]:
    """Copy every file under folder/prefix ``src`` to ``dst`` (local or s3://, either way), e.g. a
    trained model artifact to S3. Returns the destination URIs."""
    sfs, s = resolve(src)
    infos = [i for i in sfs.get_file_info(pafs.FileSelector(s, recursive=True)) if i.type == pafs.FileType.File]
    if not infos:
        raise FileNotFoundError(f"nothing to copy under {src}")
    out = []
    for i in infos:
        rel = i.path[len(s.rstrip("/")) + 1:]
        with sfs.open_input_stream(i.path) as f:
            write_bytes(join(dst, rel), f.read())
        out.append(join(dst, rel))
    return out
