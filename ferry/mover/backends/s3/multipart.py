"""S3 multipart uploads written by concurrent chunk workers: part numbering within S3's
limits (5 MiB-5 GiB parts, 10,000 of them), writes merged into parts in pooled buffers,
resume from a sidecar state object, completion (and its lost answer)."""

from __future__ import annotations

import hashlib
import threading
from typing import Any

from ferry.mover.backends.base import INTERNAL_PREFIX, Entry, Writer, copy_into
from ferry.mover.backends.resume.remote import RemoteState
from ferry.mover.backends.s3.errors import MISSING_KEY, Boto, error_code
from ferry.mover.backends.s3.meta import object_meta
from ferry.mover.backends.s3.session import MAX_PARTS, MIN_PART, S3Session
from ferry.mover.backends.s3.wire.api import PUT_HEADERS, put_headers
from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.integrity import is_digest
from ferry.mover.options import MiB, Preserve

PART_TARGET = 16 * MiB  # size of parts cut from a long sequential run
PART_PIECE = 4 * MiB  # parts are buffered in pooled pieces of this size


def part_unit(size: int) -> int:
    """Smallest part granularity that keeps part numbers of a `size` file within 10,000."""
    need = -(-size // (MAX_PARTS - 1))
    return max(MiB, -(-need // MiB) * MiB)


class BufferPool:
    """Reused fixed-size buffers: fresh memory for every part costs a page fault per 4 KiB
    (more in a VM), which was a large part of a big upload's system time."""

    def __init__(self, size: int, keep: int) -> None:
        self.size, self.keep = size, keep
        self._free: list[bytearray] = []
        self._lock = threading.Lock()

    def take(self) -> bytearray:
        with self._lock:
            if self._free:
                return self._free.pop()
        return bytearray(self.size)

    def give(self, bufs: list[bytearray]) -> None:
        with self._lock:
            self._free += bufs[: self.keep - len(self._free)]


class _Run:
    """Contiguous bytes written but not yet uploaded, starting at `start`, packed into
    pooled buffers (every one full but the last)."""

    __slots__ = ("bufs", "n", "start")

    def __init__(self, start: int) -> None:
        self.start = start
        self.bufs: list[tuple[bytearray, int]] = []  # (buffer, bytes used)
        self.n = 0

    @property
    def end(self) -> int:
        return self.start + self.n

    def add(self, data: bytes | memoryview, pool: BufferPool) -> None:
        mv = memoryview(data).cast("B")
        self.n += len(mv)
        while len(mv):
            if not self.bufs or self.bufs[-1][1] == len(self.bufs[-1][0]):
                self.bufs.append((pool.take(), 0))
            buf, used = self.bufs[-1]
            k = min(len(buf) - used, len(mv))
            copy_into(buf, used, mv[:k])
            self.bufs[-1] = (buf, used + k)
            mv = mv[k:]

    def cut(self, at_least: int, keep: int) -> list[tuple[bytearray, int]] | None:
        """The leading whole buffers holding at least `at_least` bytes, if `keep` bytes
        would remain; the run then starts after them."""
        taken, k = 0, 0
        while taken < at_least and k < len(self.bufs):
            taken += self.bufs[k][1]
            k += 1
        if taken < at_least or self.n - taken < keep:
            return None
        head, self.bufs = self.bufs[:k], self.bufs[k:]
        self.start += taken
        self.n -= taken
        return head


class MultipartWriter(Writer):
    """A multipart upload fed by concurrent write_at calls of any size.

    Writes merge into contiguous runs; a run is cut into parts once it is long,
    and uploaded whole once it is complete (it reaches the end of the file, the
    start of other written data, or its chunk is recorded). Part numbers come
    from offsets (offset // unit + 1), so they rise with the data and stay
    within 10,000 whatever the chunking, and a resumed run numbers alike.
    """

    def __init__(
        self,
        s: S3Session,
        buffers: BufferPool,
        rel: str,
        entry: Entry,
        resume_key: str | None,
    ) -> None:
        self.s, self.buffers, self.rel, self.entry = s, buffers, rel, entry
        self.size = entry.size
        self.key = s.key(rel)
        self.unit = part_unit(self.size)
        self.min_part = max(MIN_PART, self.unit)
        self.target = max(PART_TARGET, self.min_part)
        self._lock = threading.Lock()
        self._runs: dict[int, _Run] = {}  # start -> run
        self.parts: dict[int, dict[str, Any]] = {}  # part number -> {off, len, etag, ck}
        self._local = threading.local()
        head, _, name = self.key.rpartition("/")
        self.state_key = (
            f"{head}/{INTERNAL_PREFIX}{name}.mpu" if head else f"{INTERNAL_PREFIX}{name}.mpu"
        )
        self.meta_digest = entry.digest if is_digest(entry.digest) else None
        self.state: RemoteState | None = None
        self.upload_id = ""
        self.created_meta: dict[str, str] | None = None  # as set when the upload was created
        try:
            if resume_key:
                self.state = RemoteState(
                    f"{resume_key}|{self.size}", self._load_state, self._save_state
                )
                self._resume()
            if not self.upload_id:
                self._create()
        except FerryError:
            raise
        except Exception as exc:
            raise s.err(exc, rel, ErrorKind.DESTINATION_NOT_FOUND) from None

    # -- state ------------------------------------------------------------------------
    def _load_state(self) -> bytes | None:
        r = self.s.wire.request("GET", self.state_key)
        if r is not None and r.status in (200, 404):
            return r.body if r.status == 200 else None
        try:
            return bytes(
                self.s.client.get_object(Bucket=self.s.bucket, Key=self.state_key)["Body"].read()
            )
        except Boto.ClientError as exc:
            if error_code(exc) in MISSING_KEY:
                return None
            raise

    def _save_state(self, blob: bytes) -> None:
        r = self.s.wire.request("PUT", self.state_key, {}, blob)
        if r is None or r.status != 200:
            self.s.client.put_object(Bucket=self.s.bucket, Key=self.state_key, Body=blob)

    def _resume(self) -> None:
        assert self.state is not None
        data = self.state.data
        upload_id = data.get("upload_id")
        if not upload_id:
            self._abort_stale()
            return
        server: dict[int, tuple[str, int]] = {}
        try:
            pages = self.s.client.get_paginator("list_parts").paginate(
                Bucket=self.s.bucket, Key=self.key, UploadId=upload_id
            )
            for page in pages:
                for p in page.get("Parts", []) or []:
                    server[int(p["PartNumber"])] = (str(p["ETag"]), int(p["Size"]))
        except Boto.ClientError as exc:
            if error_code(exc) in ("NoSuchUpload", "404"):
                self.state.data.clear()
                self.state.data["key"] = self.state.key
                return
            raise
        for pn_s, p in dict(data.get("parts", {})).items():
            pn = int(pn_s)
            if server.get(pn) == (p["etag"], p["len"]):
                self.parts[pn] = p
        self.upload_id = str(upload_id)
        self.created_meta = data.get("meta")
        data["parts"] = {str(k): v for k, v in self.parts.items()}

    def _abort_stale(self) -> None:
        """A sidecar for another source version: abort its upload so no parts linger."""
        old = (self.state.previous or {}).get("upload_id") if self.state else None
        if old:
            try:
                self.s.client.abort_multipart_upload(
                    Bucket=self.s.bucket, Key=self.key, UploadId=old
                )
            except Boto.ClientError:
                pass

    def _create(self) -> None:
        args = self.s.put_args()
        meta = object_meta(self.entry, self.meta_digest, None)
        self.created_meta = meta
        headers = put_headers(args, meta)
        alg = self.s.checksum_alg
        if headers is not None and alg:
            headers["x-amz-checksum-algorithm"] = alg
        upload_id = self.s.wire.create_upload(self.key, headers) if headers is not None else None
        if upload_id is None:
            if alg:
                args["ChecksumAlgorithm"] = alg
            resp = self.s.client.create_multipart_upload(
                Bucket=self.s.bucket, Key=self.key, Metadata=meta, **args
            )
            upload_id = str(resp["UploadId"])
        self.upload_id = upload_id
        if self.state is not None:
            old = self.state.data.get("upload_id")
            if old and old != self.upload_id:
                try:
                    self.s.client.abort_multipart_upload(
                        Bucket=self.s.bucket, Key=self.key, UploadId=old
                    )
                except Boto.ClientError:
                    pass

            def init(d: dict[str, Any]) -> None:
                d.update(upload_id=self.upload_id, parts={}, chunks={}, meta=meta)

            self.state.update(init, force=True)

    # -- writing ----------------------------------------------------------------------
    def write_at(self, offset: int, data: bytes | memoryview) -> None:
        if not len(data):
            return
        touched = getattr(self._local, "touched", None)
        if touched is None:
            touched = self._local.touched = [offset, offset + len(data)]
        else:
            touched[0] = min(touched[0], offset)
            touched[1] = max(touched[1], offset + len(data))
        uploads: list[tuple[int, list[tuple[bytearray, int]]]] = []
        with self._lock:
            run = next((r for r in self._runs.values() if r.end == offset), None)
            if run is None:
                run = _Run(offset)
                self._runs[offset] = run
            run.add(data, self.buffers)
            # Cut long runs, keeping a tail of at least min_part that may still grow.
            while True:
                start = run.start
                head = run.cut(self.target, self.min_part)
                if head is None:
                    break
                uploads.append((start, head))
                del self._runs[start]
                self._runs[run.start] = run
            uploads += self._take_complete_locked()
        for off, blob in uploads:
            self._upload(off, blob)

    def _starts_locked(self) -> set[int]:
        return set(self._runs) | {p["off"] for p in self.parts.values()} | {self.size}

    def _take_complete_locked(self) -> list[tuple[int, list[tuple[bytearray, int]]]]:
        starts = self._starts_locked()
        done = [r for r in self._runs.values() if r.end in starts]
        for r in done:
            del self._runs[r.start]
        return [(r.start, r.bufs) for r in done]

    def _upload(self, off: int, bufs: list[tuple[bytearray, int]]) -> None:
        try:
            self._upload_part(off, [memoryview(b)[:n] for b, n in bufs])
        finally:
            self.buffers.give([b for b, _ in bufs])

    def _upload_part(self, off: int, body: list[memoryview]) -> None:
        size = sum(len(p) for p in body)
        if size < MIN_PART and off + size != self.size:
            raise FerryError(
                ErrorKind.USAGE,
                f"S3 part of {size} bytes at {off} is below 5 MiB (chunks must be at least 5 MiB)",
                self.rel,
            )
        pn = off // self.unit + 1
        if pn > MAX_PARTS:
            raise FerryError(
                ErrorKind.USAGE,
                f"file needs parts of at least {self.unit} bytes "
                "for S3's 10,000-part limit: raise the chunk size",
                self.rel,
            )
        args = self.s.checksum_args(body)
        alg = self.s.checksum_alg
        query = {"partNumber": str(pn), "uploadId": self.upload_id}
        r = (
            self.s.wire.request(
                "PUT", self.key, {PUT_HEADERS[a]: v for a, v in args.items()}, body, query
            )
            if all(a in PUT_HEADERS for a in args)
            else None
        )
        if r is not None and r.status == 200 and "etag" in r.headers:
            etag, ck = (
                r.headers["etag"],
                r.headers.get(f"x-amz-checksum-{alg.lower()}") if alg else None,
            )
        else:
            try:
                resp = self.s.client.upload_part(
                    Bucket=self.s.bucket,
                    Key=self.key,
                    UploadId=self.upload_id,
                    PartNumber=pn,
                    Body=b"".join(body),
                    **args,
                )
            except Exception as exc:
                raise self.s.err(exc, self.rel, ErrorKind.DESTINATION_NOT_FOUND) from None
            etag, ck = str(resp["ETag"]), resp.get(f"Checksum{alg}") if alg else None
        part = {"off": off, "len": size, "etag": etag, "ck": ck}
        with self._lock:
            self.parts[pn] = part
        if self.state is not None:
            self.state.update(lambda d: d.setdefault("parts", {}).__setitem__(str(pn), part))

    def _flush_range(self, lo: int, hi: int) -> None:
        """Upload every buffered run inside [lo, hi): its chunk is finished."""
        with self._lock:
            runs = [r for r in self._runs.values() if lo <= r.start and r.end <= hi]
            for r in runs:
                del self._runs[r.start]
        for r in runs:
            self._upload(r.start, r.bufs)

    def record_chunk(self, index: int, block_digests: bytes) -> None:
        touched = getattr(self._local, "touched", None)
        self._local.touched = None
        if touched is None:
            return
        lo, hi = touched
        self._flush_range(lo, hi)
        if self.state is not None:
            rec = [lo, hi, block_digests.hex()]
            self.state.update(lambda d: d.setdefault("chunks", {}).__setitem__(str(index), rec))

    def done_chunks(self, chunk_size: int = 0) -> dict[int, bytes]:
        if self.state is None or not chunk_size:
            return {}
        covered = sorted((p["off"], p["off"] + p["len"]) for p in self.parts.values())
        out: dict[int, bytes] = {}
        for idx_s, (lo, hi, hexd) in dict(self.state.data.get("chunks", {})).items():
            idx = int(idx_s)
            if lo != idx * chunk_size or hi != min(lo + chunk_size, self.size):
                continue
            if _covers(covered, lo, hi):
                out[idx] = bytes.fromhex(hexd)
        return out

    # -- finishing --------------------------------------------------------------------
    def commit(self, entry: Entry, digest: str | None, preserve: Preserve) -> None:
        if self.state is not None:
            self.state.close()  # no timer may resave the state after commit deletes it
        with self._lock:
            rest = list(self._runs.values())
            self._runs.clear()
        for r in rest:
            self._upload(r.start, r.bufs)
        parts = sorted(self.parts.items())
        pos = 0
        for _, p in parts:
            if p["off"] != pos:
                raise FerryError(
                    ErrorKind.IO_ERROR, f"multipart upload has a gap at byte {pos}", self.rel
                )
            pos += p["len"]
        if pos != self.size:
            raise FerryError(
                ErrorKind.IO_ERROR, f"multipart upload holds {pos} of {self.size} bytes", self.rel
            )
        try:
            self._complete(parts)
            meta = object_meta(entry, digest, preserve)
            if meta != self.created_meta:
                self.s.copy_object(self.s.bucket, self.key, self.key, self.size, meta)
            if self.state is not None:
                self.s.delete(self.state_key)
        except FerryError:
            raise
        except Exception as exc:
            raise self.s.err(exc, self.rel, ErrorKind.DESTINATION_NOT_FOUND) from None

    def _complete(self, parts: list[tuple[int, dict[str, Any]]]) -> None:
        alg = self.s.checksum_alg
        if self.s.wire.complete_upload(
            self.key, self.upload_id, [(pn, p["etag"], p.get("ck")) for pn, p in parts], alg
        ):
            return
        listed = []
        for pn, p in parts:
            item: dict[str, Any] = {"PartNumber": pn, "ETag": p["etag"]}
            if p.get("ck"):
                item[f"Checksum{alg}"] = p["ck"]
            listed.append(item)
        try:
            self.s.client.complete_multipart_upload(
                Bucket=self.s.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": listed},
            )
        except Boto.ClientError as exc:
            # An earlier completion whose answer was lost (a reset after the server acted)
            # leaves the upload gone: the object made of exactly our parts is the success.
            if error_code(exc) != "NoSuchUpload" or not self._completed_as(parts):
                raise

    def _completed_as(self, parts: list[tuple[int, dict[str, Any]]]) -> bool:
        """Whether the object now at our key is the one these parts make: S3's multipart
        ETag is the MD5 of the parts' binary MD5 ETags, then "-" and the part count."""
        head = self.s.head(self.key)
        if head is None or int(head.get("ContentLength", -1)) != self.size:
            return False
        try:
            joined = b"".join(bytes.fromhex(p["etag"].strip('"')) for _, p in parts)
        except ValueError:
            return False  # a server whose part ETags are not MD5s: no way to tell
        expected = f"{hashlib.md5(joined, usedforsecurity=False).hexdigest()}-{len(parts)}"
        return str(head.get("ETag") or "").strip('"') == expected

    def abort(self, keep_partial: bool = False) -> None:
        if self.state is not None:
            self.state.close()  # stops timed saves; a kept partial is flushed below
        with self._lock:
            for r in self._runs.values():
                self.buffers.give([b for b, _ in r.bufs])
            self._runs.clear()
        try:
            if keep_partial and self.state is not None:
                self.state.flush()
                return
            self.s.client.abort_multipart_upload(
                Bucket=self.s.bucket, Key=self.key, UploadId=self.upload_id
            )
            if self.state is not None:
                self.s.delete(self.state_key)
        except Exception:
            pass


def _covers(intervals: list[tuple[int, int]], lo: int, hi: int) -> bool:
    pos = lo
    for a, b in intervals:
        if a <= pos < b:
            pos = b
        if pos >= hi:
            return True
    return pos >= hi
