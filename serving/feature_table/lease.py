"""One writer per version: a lock file that is a lease, renewed while its job runs.

The lock is created only if absent (locally a hard link of the written file, which fails if the
lock exists; on S3 a PUT with `If-None-Match: *`,
through boto3: pyarrow's filesystem has no conditional write), so of two jobs starting together
exactly one gets it. Its holder rewrites it every lease/3 seconds with a later expiry. A job that
finds the lock expired (its holder crashed, or lost its machine; on the holder's own host, as soon as its process is
gone) takes it over with a swap that
only one taker can win: a rename of the expired file (local) or a PUT with `If-Match: <etag of
the expired lock>` (S3).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from serving.feature_table.files import is_local, local_path, read_bytes, temporary_name

DEFAULT_LEASE_S = 120.0


class VersionLockedError(RuntimeError):
    """Another job holds the version's lock (and its lease has not expired)."""


class Lease:
    """`with Lease(fs, path, what): ...` holds the lock for the block (see the module docstring)."""

    def __init__(self, fs: pafs.FileSystem, path: str, what: str, lease_s: float = DEFAULT_LEASE_S,
                 wait_s: float = 0.0, poll_s: float = 1.0):
        self.fs, self.path, self.what = fs, path, what
        self.lease_s, self.wait_s, self.poll_s = lease_s, wait_s, poll_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._store = _LocalLocks(fs) if is_local(fs) else _S3Locks(fs)
        self._tag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: str | None = None

    def _body(self) -> bytes:
        now = time.time()
        return json.dumps({"owner": self.owner, "acquired_at": now, "expires_at": now + self.lease_s}).encode()

    def acquire(self) -> Lease:
        deadline = time.monotonic() + self.wait_s
        while True:
            self._tag = self._store.create(self.path, self._body())
            if self._tag is not None:
                break
            held = self._store.read(self.path)
            if held is not None:
                body, tag = held
                info = _parse(body)
                if info.get("expires_at", 0) < time.time() or _holder_is_gone(info):
                    self._tag = self._store.swap(self.path, tag, body, self._body())
                    if self._tag is not None:
                        break
            if time.monotonic() >= deadline:
                info = _parse(held[0]) if held else {}
                left = info.get("expires_at", time.time()) - time.time()
                raise VersionLockedError(
                    f"{self.what} is being written by another job ({info.get('owner', 'unknown owner')}); "
                    f"its lease runs {max(0.0, left):.0f} s more unless renewed. Wait for it to finish, "
                    "or run again once its lease expires if that job is gone")
            time.sleep(self.poll_s)
        self._thread = threading.Thread(target=self._renew, name="pam-lease", daemon=True)
        self._thread.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            tag = self._store.renew(self.path, self._tag, self._body())
            if tag is None:
                self.lost = f"the lock of {self.what} was taken by another job"
                return
            self._tag = tag

    def check(self) -> None:
        """Raise if the lease was lost (renewal failed: another job took the expired lock)."""
        if self.lost:
            raise VersionLockedError(self.lost)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._tag is not None and not self.lost:
            self._store.delete(self.path, self._tag)
        self._tag = None

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _holder_is_gone(info: dict) -> bool:
    """The lock was taken on this host by a process that no longer runs (killed, crashed)."""
    host, _, rest = str(info.get("owner", "")).partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _parse(body: bytes) -> dict:
    try:
        return json.loads(body)
    except ValueError:
        return {}  # a torn or foreign file: treated as expired


class _LocalLocks:
    """Tags are the file's bytes: a swap succeeds only if the file still holds what was read."""

    def __init__(self, fs: pafs.FileSystem):
        self.fs = fs

    def create(self, path: str, body: bytes) -> str | None:
        """The lock file with its body, or None if one exists. Written aside and linked into place,
        so it never exists empty: another job reading an empty, just-created file would take it
        for a torn one, treat it as expired and take the lock too."""
        real = local_path(self.fs, path)
        os.makedirs(os.path.dirname(real), exist_ok=True)
        tmp = temporary_name(real)
        with open(tmp, "wb") as f:
            f.write(body)
        try:
            os.link(tmp, real)  # fails if the lock exists: of several creators, one wins
        except FileExistsError:
            return None
        finally:
            os.unlink(tmp)
        return body.decode()

    def read(self, path: str) -> tuple[bytes, str] | None:
        try:
            with open(local_path(self.fs, path), "rb") as f:
                body = f.read()
        except FileNotFoundError:
            return None
        return body, body.decode(errors="replace")

    def swap(self, path: str, tag: str, _body: bytes | None, new: bytes) -> str | None:
        real = local_path(self.fs, path)
        aside = f"{real}.{uuid.uuid4().hex}"
        try:
            os.rename(real, aside)  # of several takers, one moves the file; the others find none
        except FileNotFoundError:
            return None
        with open(aside, "rb") as f:
            moved = f.read()
        if moved.decode(errors="replace") != tag:  # changed since read: put it back, untouched
            try:
                os.link(aside, real)
            except FileExistsError:
                pass
            os.unlink(aside)
            return None
        os.unlink(aside)
        return self.create(path, new)

    def renew(self, path: str, tag: str, new: bytes) -> str | None:
        held = self.read(path)
        if held is None or held[1] != tag:
            return None
        real = local_path(self.fs, path)
        tmp = temporary_name(real)
        with open(tmp, "wb") as f:
            f.write(new)
        os.replace(tmp, real)  # never absent, so no other job can create it meanwhile
        return new.decode()

    def delete(self, path: str, tag: str) -> None:
        held = self.read(path)
        if held is not None and held[1] == tag:
            os.unlink(local_path(self.fs, path))


class _S3Locks:
    """Conditional PUT/DELETE through boto3, on the bucket and credentials of the pyarrow S3FileSystem."""

    def __init__(self, fs: pafs.FileSystem):
        import boto3

        options = fs.__reduce__()[1][0] if isinstance(fs, pafs.S3FileSystem) else {}
        endpoint = options.get("endpoint_override") or None
        if endpoint and "://" not in endpoint:
            endpoint = f"{options.get('scheme') or 'https'}://{endpoint}"
        self.client = boto3.client(
            "s3", endpoint_url=endpoint, region_name=options.get("region") or None,
            aws_access_key_id=options.get("access_key") or None,
            aws_secret_access_key=options.get("secret_key") or None,
            aws_session_token=options.get("session_token") or None)

    @staticmethod
    def _split(path: str) -> tuple[str, str]:
        parts = urlsplit(f"s3://{path}")
        return parts.netloc, parts.path.lstrip("/")

    def _put(self, path: str, body: bytes, **condition) -> str | None:
        from botocore.exceptions import ClientError

        bucket, key = self._split(path)
        try:
            return self.client.put_object(Bucket=bucket, Key=key, Body=body, **condition)["ETag"]
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "412", "409", "404"):
                return None
            raise

    def create(self, path: str, body: bytes) -> str | None:
        return self._put(path, body, IfNoneMatch="*")

    def read(self, path: str) -> tuple[bytes, str] | None:
        from botocore.exceptions import ClientError

        bucket, key = self._split(path)
        try:
            answer = self.client.get_object(Bucket=bucket, Key=key)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        return answer["Body"].read(), answer["ETag"]

    def swap(self, path: str, tag: str, _body: bytes | None, new: bytes) -> str | None:
        return self._put(path, new, IfMatch=tag)

    def renew(self, path: str, tag: str, new: bytes) -> str | None:
        return self._put(path, new, IfMatch=tag)

    def delete(self, path: str, tag: str) -> None:
        from botocore.exceptions import ClientError

        bucket, key = self._split(path)
        try:
            self.client.delete_object(Bucket=bucket, Key=key, IfMatch=tag)
        except ClientError:
            pass  # taken over meanwhile: the new holder's lock stays


def read_lock(fs: pafs.FileSystem, path: str) -> dict | None:
    try:
        return _parse(read_bytes(fs, path))
    except FileNotFoundError:
        return None
