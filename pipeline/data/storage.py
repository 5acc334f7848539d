"""Byte storage for datasets: a local directory or an S3 prefix, behind one small interface.

    store = open_storage("s3://bucket/datasets/sudoku")   # or "/data/sudoku", "file:///data/sudoku"
    store.write_bytes("train/part-00000.parquet", data)   # atomic: readers see all of it or nothing
    store.read_bytes("meta.json"); store.size(key); store.list("train/"); store.open_input(key)

Local writes go to a temporary file in the target directory, are fsync'ed and renamed into
place. An S3 PUT is atomic by itself (an object appears complete or not at all). Dataset-level
atomicity is the writer's job: meta.json is written last (see pipeline/data/shards.py).

S3 uses boto3 with the standard credential chain and region; the endpoint comes from
`AWS_ENDPOINT_URL` (honoured by boto3), so S3-compatible stores work. Retries are ours, not
botocore's, so that they are bounded and visible: `TRM_S3_MAX_ATTEMPTS` (default 4) attempts with
exponential backoff starting at `TRM_S3_RETRY_BASE_S` (default 0.5 s) on connection errors,
timeouts, throttling and 5xx answers; after that a StorageError names the endpoint.
"""

from __future__ import annotations

import io
import os
import time
import uuid
from pathlib import Path
from typing import Protocol

from pipeline.data.errors import StorageAccessError, StorageError


class Storage(Protocol):
    uri: str

    def read_bytes(self, key: str) -> bytes: ...
    def write_bytes(self, key: str, data: bytes) -> None: ...
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int: ...
    def list(self, prefix: str = "") -> list[str]: ...
    def delete(self, key: str) -> None: ...
    def discard(self, keys: list[str]) -> None: ...
    def open_input(self, key: str, length: int | None = None): ...
    def check_writable(self) -> None: ...


def join(uri: str, key: str) -> str:
    return uri.rstrip("/") + "/" + key.lstrip("/")


def is_local(uri: str) -> bool:
    """A plain path or file:// URI (not s3://)."""
    return "://" not in uri or uri.startswith("file://")


def absolute(uri: str) -> str:
    """`uri` as every process can use it: a local path made absolute (Ray workers and trials
    run in other directories; Ray Train requires it), an s3:// URI without a trailing '/'."""
    if is_local(uri):
        return str(Path(uri.removeprefix("file://")).expanduser().resolve())
    return uri.rstrip("/")


def open_storage(uri: str, *, max_attempts: int | None = None, retry_base_s: float | None = None):
    """Storage for `uri`: `s3://bucket[/prefix]`, `file:///path` or a plain path."""
    if not isinstance(uri, str | os.PathLike) or not str(uri):
        raise ValueError(f"dataset URI must be a non-empty path or s3:// URI, got {uri!r}")
    uri = str(uri)
    if uri.startswith("s3://"):
        return S3Storage(uri, max_attempts=max_attempts, retry_base_s=retry_base_s)
    if "://" in uri and not uri.startswith("file://"):
        raise ValueError(f"unsupported URI scheme in {uri!r} (use a path, file:// or s3://)")
    return LocalStorage(uri.removeprefix("file://"))


class LocalStorage:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().absolute()
        self.uri = str(self.root)
        self.created = False  # check_writable made the root: discard may remove it again
        if self.root.exists() and not self.root.is_dir():
            raise StorageError(f"{self.root} exists and is not a directory")

    def _path(self, key: str) -> Path:
        return self.root / key

    def read_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:12]}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def list(self, prefix: str = "") -> list[str]:
        base = self._path(prefix)
        if not base.exists():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file())

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def discard(self, keys: list[str]) -> None:
        """Delete `keys` and the directories that leaves empty, the root too if check_writable
        created it: what an aborted build wrote, gone without a trace."""
        for key in keys:
            self.delete(key)
        dirs = {p for key in keys for p in self._path(key).parents if self.root in p.parents}
        if self.created:
            dirs.add(self.root)
        for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):  # deepest first
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()

    def open_input(self, key: str, length: int | None = None):
        import pyarrow as pa

        return pa.memory_map(str(self._path(key)), "r")

    def check_writable(self) -> None:
        self.created = self.created or not self.root.exists()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot create dataset directory {self.root}: {e}") from e


_RETRY_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError"}


def retry_policy(max_attempts: int | None = None, retry_base_s: float | None = None):
    """(attempts, base pause in s) of the project's S3 retries: the arguments, else
    `TRM_S3_MAX_ATTEMPTS` (4) and `TRM_S3_RETRY_BASE_S` (0.5); the pause doubles from the base
    after each failed attempt."""
    attempts = int(max_attempts or os.environ.get("TRM_S3_MAX_ATTEMPTS", 4))
    base_s = float(
        retry_base_s if retry_base_s is not None else os.environ.get("TRM_S3_RETRY_BASE_S", 0.5)
    )
    if attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {attempts}")
    return attempts, base_s


class S3Storage:
    def __init__(self, uri: str, *, max_attempts: int | None = None, retry_base_s=None):
        import boto3
        from botocore.config import Config

        rest = uri[len("s3://") :]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise ValueError(f"S3 URI {uri!r} has no bucket name")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.max_attempts, self.retry_base_s = retry_policy(max_attempts, retry_base_s)
        config = Config(
            retries={"total_max_attempts": 1},  # retries are ours (bounded, named in errors)
            connect_timeout=float(os.environ.get("TRM_S3_CONNECT_TIMEOUT_S", 5)),
            read_timeout=float(os.environ.get("TRM_S3_READ_TIMEOUT_S", 60)),
            max_pool_connections=16,
        )
        from botocore.exceptions import CredentialRetrievalError

        try:  # the credential chain runs here: a refusing credential endpoint fails now
            self.client = boto3.session.Session().client("s3", config=config)
        except CredentialRetrievalError as e:
            raise StorageError(f"cannot get AWS credentials for {self.uri}: {e}") from e
        self.endpoint = self.client.meta.endpoint_url

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, what: str, fn, **kwargs):
        """Run one S3 request with bounded retries; translate failures into StorageError."""
        from botocore.exceptions import (
            ClientError,
            ConnectionClosedError,
            ConnectTimeoutError,
            CredentialRetrievalError,
            EndpointConnectionError,
            IncompleteReadError,
            NoCredentialsError,
            PartialCredentialsError,
            ReadTimeoutError,
            ResponseStreamingError,
        )

        target = f"s3://{self.bucket}/{kwargs.get('Key', kwargs.get('Prefix', ''))}"
        last: Exception | None = None
        for attempt in range(self.max_attempts):
            if attempt:
                time.sleep(self.retry_base_s * 2 ** (attempt - 1))
            try:
                return fn(Bucket=self.bucket, **kwargs)
            except CredentialRetrievalError as e:  # e.g. refreshing expiring pod credentials
                raise StorageError(f"cannot get AWS credentials to {what} {target}: {e}") from e
            except (NoCredentialsError, PartialCredentialsError) as e:
                raise StorageAccessError(
                    f"no usable AWS credentials to {what} {target} at {self.endpoint}: {e}. "
                    "Set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or an instance role."
                ) from e
            except (
                EndpointConnectionError,
                ConnectTimeoutError,
                ReadTimeoutError,
                ConnectionClosedError,
                ResponseStreamingError,  # the connection dropped while the body streamed
                IncompleteReadError,
            ) as e:
                last = e
            except ClientError as e:
                err = e.response.get("Error", {})
                code = str(err.get("Code", ""))
                status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                if code in ("NoSuchBucket",) or (code == "404" and fn.__name__ == "head_bucket"):
                    raise StorageError(
                        f"bucket {self.bucket!r} does not exist at {self.endpoint}"
                    ) from e
                if code in ("NoSuchKey", "404", "NotFound"):
                    raise FileNotFoundError(f"{target} not found at {self.endpoint}") from e
                if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                    raise StorageAccessError(
                        f"access denied to {target} at {self.endpoint} ({code}): check the "
                        "credentials and the bucket policy"
                    ) from e
                if code in _RETRY_CODES or status >= 500:
                    last = e
                    continue
                raise StorageError(f"{what} {target} at {self.endpoint} failed: {e}") from e
        raise StorageError(
            f"S3 endpoint {self.endpoint} unreachable: {what} {target} failed "
            f"{self.max_attempts} times; last error: {last}"
        ) from last

    def _get_object_bytes(self, **kwargs) -> bytes:
        # the body is read inside the retried call: a connection can drop mid-download too
        return self.client.get_object(**kwargs)["Body"].read()

    def read_bytes(self, key: str) -> bytes:
        return self._call("read", self._get_object_bytes, Key=self._key(key))

    def read_range(self, key: str, start: int, stop: int) -> bytes:
        return self._call(
            "read", self._get_object_bytes, Key=self._key(key), Range=f"bytes={start}-{stop - 1}"
        )

    def write_bytes(self, key: str, data: bytes) -> None:
        self._call("write", self.client.put_object, Key=self._key(key), Body=data)

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except FileNotFoundError:
            return False
        return True

    def size(self, key: str) -> int:
        return int(self._call("stat", self.client.head_object, Key=self._key(key))["ContentLength"])

    def list(self, prefix: str = "") -> list[str]:
        full = self._key(prefix)
        keys, token = [], None
        while True:
            kw = {"Prefix": full, **({"ContinuationToken": token} if token else {})}
            resp = self._call("list", self.client.list_objects_v2, **kw)
            keys += [o["Key"] for o in resp.get("Contents", [])]
            if not resp.get("IsTruncated"):
                break
            token = resp["NextContinuationToken"]
        strip = len(self.prefix) + 1 if self.prefix else 0
        return sorted(k[strip:] for k in keys)

    def delete(self, key: str) -> None:
        self._call("delete", self.client.delete_object, Key=self._key(key))

    def discard(self, keys: list[str]) -> None:
        """Delete `keys` (S3 has no directories to clean up)."""
        for key in keys:
            self.delete(key)

    def open_input(self, key: str, length: int | None = None):
        """A seekable pyarrow file over ranged GETs; `length` (if known) saves a HEAD request."""
        import pyarrow as pa

        return pa.PythonFile(self.open_ranged(key, length), mode="r")

    def open_ranged(self, key: str, length: int | None = None) -> _RangeReader:
        """The raw reader behind open_input; its `prefetch(start, stop)` loads a range at once."""
        return _RangeReader(self, key, length)

    def check_writable(self) -> None:
        """Fail early (before any work) on a missing bucket, credentials or endpoint."""
        self._call("check bucket", self.client.head_bucket)


class _RangeReader(io.RawIOBase):
    """Seekable read-only view of one S3 object through ranged GETs, with one read-ahead block.

    Parquet reads the footer and then whole column chunks, so few large requests are made.
    """

    block = 1 << 20

    def __init__(self, store: S3Storage, key: str, length: int | None = None):
        self.store, self.key = store, key
        self.length = store.size(key) if length is None else length
        self.pos = 0
        self.buf_start, self.buf = 0, b""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.length}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def size(self) -> int:
        return self.length

    def prefetch(self, start: int, stop: int) -> None:
        """Load bytes [start, stop) with one request (a whole row group before parquet reads it)."""
        start, stop = max(0, start), min(self.length, stop)
        if not (self.buf_start <= start and stop <= self.buf_start + len(self.buf)):
            self.buf_start, self.buf = start, self.store.read_range(self.key, start, stop)

    def readinto(self, b) -> int:
        n = min(len(b), self.length - self.pos)
        if n <= 0:
            return 0
        start, end = self.pos, self.pos + n
        if not (self.buf_start <= start and end <= self.buf_start + len(self.buf)):
            stop = min(self.length, max(end, start + self.block))
            self.buf_start, self.buf = start, self.store.read_range(self.key, start, stop)
        off = start - self.buf_start
        b[:n] = self.buf[off : off + n]
        self.pos = end
        return n
