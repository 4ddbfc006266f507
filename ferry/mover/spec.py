"""Pydantic models of one transfer: what `ferry run --spec FILE` reads.

This is the boundary the operator writes (into a ConfigMap the mover pod
mounts) and the one place the transfer's shape is validated with field
names in the errors. It converts to the engine's plain dataclasses.
"""

from __future__ import annotations

from typing import Annotated, Literal, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic.alias_generators import to_camel

from ferry.mover import bwtable, profiles, tuning
from ferry.mover import endpoints as ep
from ferry.mover import options as op
from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.filters import parse_files_from


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class LocalSpec(_Model):
    kind: Literal["local"] = "local"
    path: str = Field(min_length=1)

    def to_endpoint(self) -> ep.Endpoint:
        return ep.LocalEndpoint(self.path)


# What goes into request heads and URLs holds no control character (see ep.HEADER_SAFE).
_Safe = Annotated[str, Field(pattern=ep.HEADER_SAFE)]


class S3Spec(_Model):
    kind: Literal["s3"] = "s3"
    bucket: _Safe = Field(min_length=3, max_length=63)
    prefix: str = ""
    endpoint_url: _Safe | None = None
    region: _Safe | None = None
    path_style: bool = False
    profile: _Safe | None = None
    credentials_file: str | None = None
    sse: Literal["AES256", "aws:kms"] | None = None
    sse_kms_key_id: _Safe | None = None
    storage_class: _Safe | None = None
    checksum: Literal["crc32", "crc32c", "sha1", "sha256", "none"] | None = None
    list_metadata: bool = True

    @field_validator("endpoint_url")
    @classmethod
    def _no_userinfo(cls, value: str | None) -> str | None:
        return None if value is None else ep.check_endpoint_url(value)

    def to_endpoint(self) -> ep.Endpoint:
        return ep.S3Endpoint(**self.model_dump(exclude={"kind"}))


# A host name or address: no user or password in front of it, no path after it.
Host = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[^@/\s]+$")]


class SFTPSpec(_Model):
    kind: Literal["sftp"] = "sftp"
    host: Host
    port: int = Field(default=22, ge=1, le=65535)
    path: str = "."
    user: str | None = None
    key_file: str | None = None
    password_file: str | None = None
    known_hosts_file: str | None = None
    insecure_ignore_host_key: bool = False
    sessions: int = Field(default=4, ge=1, le=64)

    def to_endpoint(self) -> ep.Endpoint:
        return ep.SFTPEndpoint(**self.model_dump(exclude={"kind"}))


class SMBSpec(_Model):
    kind: Literal["smb"] = "smb"
    host: Host
    port: int = Field(default=445, ge=1, le=65535)
    share: str = Field(min_length=1)
    path: str = ""
    user: str | None = None
    password_file: str | None = None
    domain: str | None = None
    encrypt: bool = False
    require_signing: bool = True

    def to_endpoint(self) -> ep.Endpoint:
        return ep.SMBEndpoint(**self.model_dump(exclude={"kind"}))


class FerrySpec(_Model):
    """Another Ferry's `ferry serve` (what a sender pod connects to): mutual TLS with the
    certificate, key and CA files mounted from the job's Secret."""

    kind: Literal["ferry"] = "ferry"
    host: Host
    port: int = Field(ge=1, le=65535)
    path: str = ""
    tls_cert: str = Field(min_length=1)
    tls_key: str = Field(min_length=1)
    tls_ca: str = Field(min_length=1)
    streams: int | None = Field(default=None, ge=1, le=64)  # None: the run's tuning

    @field_validator("path")
    @classmethod
    def _inside_the_root(cls, value: str) -> str:
        names = [n for n in value.split("/") if n]
        if any(n in (".", "..") for n in names) or "\x00" in value:
            raise ValueError("path must stay inside the server's root (no . or .. parts)")
        return "/".join(names)

    def to_endpoint(self) -> ep.Endpoint:
        fields = self.model_dump(exclude={"kind"})
        if fields["streams"] is None:
            del fields["streams"]
        return ep.FerryEndpoint(**fields)


PreserveFlag = Literal["times", "perms", "owners", "xattrs", "links", "hardlinks", "sparse", "acls"]
EndpointSpec = Annotated[
    LocalSpec | S3Spec | SFTPSpec | SMBSpec | FerrySpec, Field(discriminator="kind")
]


MAX_FILES_FROM = 10_000  # a TransferJob's inline filesFrom: bounded like its object
MAX_FILES_FROM_FILE = 1 << 20  # filesFromFile: a ConfigMap holds at most 1 MiB


def read_files_from(path: str, what: str = "filesFromConfigMap") -> tuple[str, ...]:
    """The lines of a mounted file list (a ConfigMap key), read as --files-from reads its
    file, bounded by what a ConfigMap can hold."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILES_FROM_FILE + 1)
    except OSError as exc:
        raise FerryError(ErrorKind.USAGE, f"{what}: cannot read: {exc.strerror}", path) from None
    if len(data) > MAX_FILES_FROM_FILE:
        raise FerryError(ErrorKind.USAGE, f"{what}: more than {MAX_FILES_FROM_FILE} bytes", path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FerryError(ErrorKind.USAGE, f"{what}: not UTF-8 (byte {exc.start})", path) from None
    return parse_files_from(text.splitlines(), what)


def check_relative(value: str, what: str) -> str:
    """`value` names a path inside a root: relative, no `.`/`..`/empty parts, no NUL."""
    parts = value.split("/")
    if value.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\x00" in value:
        raise ValueError(
            f"{what} must be a relative path inside the root (no '/' first, no '.', '..' or empty parts)"
        )
    return value


def check_bandwidth(value: str | None) -> str | None:
    """A rate or timetable by the CLI's --bwlimit parser; the message names `bandwidth`."""
    if value is not None:
        try:
            bwtable.BwTable.parse(value, "bandwidth")
        except FerryError as exc:
            raise ValueError(str(exc)) from None
    return value


def check_meta(value: str | None, field: str) -> str | None:
    """chmod/chown by the CLI's parsers; the message names the field, not the flag."""
    from ferry.mover.metaxform import Chmod, Chown

    if value is not None:
        try:
            Chmod(value) if field == "chmod" else Chown.parse(value)
        except FerryError as exc:
            raise ValueError(str(exc).replace(f"--{field}", field)) from None
    return value


def check_files_from(value: list[str] | None) -> list[str] | None:
    """filesFrom's lines as the CLI reads --files-from's (its line numbers in the message)."""
    if value is not None:
        try:
            parse_files_from(value, "filesFrom")
        except FerryError as exc:
            raise ValueError(str(exc)) from None
    return value


_COMPARE = {
    "SizeMtime": op.Compare.SIZE_MTIME,
    "Checksum": op.Compare.CHECKSUM,
    "Size": op.Compare.SIZE,
}


class OptionsSpec(_Model):
    mode: Literal["Copy", "Sync"] = "Copy"
    compare: Literal["SizeMtime", "Checksum", "Size"] = "SizeMtime"
    verify: Literal["None", "Inline", "Full"] = "Inline"
    fsync: Literal["End", "File", "None"] = "End"
    preserve: list[PreserveFlag] = Field(
        default_factory=lambda: cast(list[PreserveFlag], list(op.DEFAULT_PRESERVE))
    )
    symlinks: Literal["Preserve", "Follow", "Skip"] = "Preserve"
    delta: Literal["Auto", "On", "Off"] = "Auto"
    filters: list[str] = Field(default_factory=list, max_length=1000)
    # None: the profile's, else sized to the host (ferry/mover/tuning.py, as the CLI's).
    transfers: int | None = Field(default=None, ge=1, le=256)
    chunk_size: str | None = None  # the destination's default (16M; 8M to S3)
    profile: str | None = None  # ferry/mover/profiles.py; an unknown name is refused
    buffer_size: str | None = None  # the piece a worker streams through (default 2M)
    bandwidth: str | None = Field(default=None, max_length=bwtable.MAX_TEXT)  # a timetable too
    bandwidth_time_zone: str | None = Field(default=None, max_length=64)  # None: UTC
    retries: int = Field(default=3, ge=0, le=100)
    error_policy: Literal["Abort", "Skip"] = "Abort"
    dry_run: bool = False
    allow_empty_source: bool = False
    preflight: bool = True  # compare the plan with the destination's free space first
    min_free: str | None = None  # a size or a percentage; None: options.DEFAULT_MIN_FREE
    max_delete: int | None = Field(default=None, ge=0)
    compression: Literal["Auto", "On", "Off"] = "Auto"  # zstd on a ferry:// wire
    # 's/REGEX/REPLACEMENT/' rules for destination names, in order (ferry.mover.rename)
    rename: list[str] = Field(default_factory=list, max_length=100)
    min_size: str | None = None  # --min-size/--max-size, sizes as chunkSize
    max_size: str | None = None
    min_age: str | None = None  # --min-age/--max-age, rclone's durations
    max_age: str | None = None
    update: bool = False
    delete_excluded: bool = False
    # '-' (stdout) or a path relative to the destination's root (written there in a local
    # one, uploaded when the run ends to a remote one: ferry.pod.audit_upload); rsync's --chmod and
    # --chown; --files-from's lines (the TransferJob's filesFrom), read by the CLI's parser.
    audit_log: str | None = Field(default=None, min_length=1, max_length=1024)
    chmod: str | None = Field(default=None, min_length=1, max_length=1024)
    chown: str | None = Field(default=None, min_length=1, max_length=512)
    files_from: list[Annotated[str, Field(max_length=4096)]] | None = Field(
        default=None, max_length=MAX_FILES_FROM
    )
    # The same lines in a mounted file (the TransferJob's filesFromConfigMap); not with filesFrom.
    files_from_file: str | None = Field(default=None, min_length=1, max_length=4096)

    @field_validator("files_from_file")
    @classmethod
    def _one_file_list(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("files_from") is not None:
            raise ValueError("filesFrom and filesFromFile are exclusive")
        return value

    @field_validator("audit_log")
    @classmethod
    def _audit_log_inside(cls, value: str | None) -> str | None:
        if value is not None and value != "-":
            check_relative(value, "auditLog")
        return value

    @field_validator("chmod", "chown")
    @classmethod
    def _meta_parses(cls, value: str | None, info: ValidationInfo) -> str | None:
        return check_meta(value, str(info.field_name))

    _files = field_validator("files_from")(check_files_from)

    @field_validator("min_age", "max_age")
    @classmethod
    def _ages_parse(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                op.parse_duration(value)
            except FerryError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("max_delete")
    @classmethod
    def _max_delete_for_sync(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and info.data.get("mode") != "Sync":
            raise ValueError("maxDelete applies only to mode Sync")
        return value

    @field_validator("min_free")
    @classmethod
    def _min_free_parses(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            if info.data.get("preflight") is False:
                raise ValueError("minFree has no effect with preflight: false")
            try:
                op.MinFree.parse(value, "minFree")
            except FerryError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("filters")
    @classmethod
    def _filters_parse(cls, value: list[str]) -> list[str]:
        from ferry.mover.filters import FilterSet

        try:
            FilterSet.parse(value)
        except FerryError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("rename")
    @classmethod
    def _rename_parses(cls, value: list[str]) -> list[str]:
        from ferry.mover.rename import Renamer

        try:
            Renamer(value)
        except FerryError as exc:
            raise ValueError(str(exc).replace("--rename", "rule", 1)) from None
        return value

    @field_validator("bandwidth_time_zone")
    @classmethod
    def _zone_known(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            try:
                bwtable.zone(value, "bandwidthTimeZone")
            except FerryError as exc:
                raise ValueError(str(exc)) from None
            if "bandwidth" in info.data and info.data["bandwidth"] is None:
                raise ValueError("bandwidthTimeZone applies only to a bandwidth timetable")
        return value

    @field_validator("bandwidth")
    @classmethod
    def _bandwidth_parses(cls, value: str | None) -> str | None:
        return check_bandwidth(value)

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, value: str | None) -> str | None:
        if value is not None and value not in profiles.PROFILES:
            raise ValueError(f"unknown profile (choose from {', '.join(profiles.PROFILE_NAMES)})")
        return value

    @field_validator("chunk_size", "buffer_size", "min_size", "max_size")
    @classmethod
    def _sizes_parse(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                op.parse_size(value)
            except FerryError as exc:
                raise ValueError(str(exc)) from None
        return value


class ShardSpec(_Model):
    index: int = Field(ge=0)
    count: int = Field(ge=1, le=1000)


class TransferSpec(_Model):
    source: EndpointSpec
    destination: EndpointSpec
    options: OptionsSpec = Field(default_factory=OptionsSpec)
    shard: ShardSpec | None = None

    def to_engine(self) -> tuple[ep.Endpoint, ep.Endpoint, op.Options]:
        o = self.options
        shard = self.shard or ShardSpec(index=0, count=1)
        options = op.Options(
            mode=op.Mode(o.mode.lower()),
            compare=_COMPARE[o.compare],
            verify=op.Verify(o.verify.lower()),
            fsync=op.Fsync(o.fsync.lower()),
            preserve=op.Preserve(**{f: f in o.preserve for f in op.PRESERVE_FLAGS}),
            symlinks=op.SymlinkPolicy(o.symlinks.lower()),
            delta=op.Delta(o.delta.lower()),
            filters=tuple(o.filters),
            chunk_size=op.parse_size(o.chunk_size, "chunkSize") if o.chunk_size else 0,
            bwlimit=bwtable.BwTable.parse(
                o.bandwidth, "bandwidth", bwtable.zone(o.bandwidth_time_zone or "UTC")
            )
            if o.bandwidth
            else 0,
            retries=o.retries,
            error_policy=op.ErrorPolicy(o.error_policy.lower()),
            dry_run=o.dry_run,
            allow_empty_source=o.allow_empty_source,
            preflight=o.preflight,
            min_free=op.MinFree.parse(o.min_free, "minFree") if o.min_free else op.DEFAULT_MIN_FREE,
            max_delete=o.max_delete,
            compress=op.Compress(o.compression.lower()),
            rename=tuple(o.rename),
            min_size=op.parse_size(o.min_size, "minSize") if o.min_size else None,
            max_size=op.parse_size(o.max_size, "maxSize") if o.max_size else None,
            min_age=op.parse_duration(o.min_age, "minAge") if o.min_age else None,
            max_age=op.parse_duration(o.max_age, "maxAge") if o.max_age else None,
            update=o.update,
            delete_excluded=o.delete_excluded,
            chmod=o.chmod,
            chown=o.chown,
            files_from=self._files_from(),
            audit_log=self._audit_file(),
            protect=self._audit_names(),
            shard_index=shard.index,
            shard_count=shard.count,
        )
        return self._tuned(options)

    def _tuned(self, options: op.Options) -> tuple[ep.Endpoint, ep.Endpoint, op.Options]:
        """The run's tuning (fields given, then the profile, then the host: in a pod
        the container's limits from the downward API) and the ferry:// streams not given."""
        o = self.options
        ferries = [s for s in (self.source, self.destination) if isinstance(s, FerrySpec)]
        t = tuning.resolve(
            dest_kind=self.destination.kind,
            profile=o.profile,
            transfers=o.transfers,
            streams=next((f.streams for f in ferries if f.streams is not None), None),
            chunk_size=options.chunk_size or None,
            buffer_size=op.parse_size(o.buffer_size, "bufferSize") if o.buffer_size else None,
            what="profile",
        )
        return tuning.apply(
            t,
            options,
            (
                (self.source.to_endpoint(), getattr(self.source, "streams", None) is not None),
                (
                    self.destination.to_endpoint(),
                    getattr(self.destination, "streams", None) is not None,
                ),
            ),
        )

    def _files_from(self) -> tuple[str, ...] | None:
        """filesFrom's lines, inline or read from the mounted file."""
        o = self.options
        if o.files_from_file is not None:
            return read_files_from(o.files_from_file)
        return None if o.files_from is None else parse_files_from(o.files_from, "filesFrom")

    def audit_name(self, index: int | None = None) -> str | None:
        """The audit log's destination-relative name for shard `index` (this one's by
        default): one file per shard, `NAME.INDEX`, so no two pods write one file."""
        rel = self.options.audit_log
        if rel is None or rel == "-":
            return None
        if self.shard is None or self.shard.count == 1:
            return rel
        return f"{rel}.{self.shard.index if index is None else index}"

    def _audit_names(self) -> tuple[str, ...]:
        """Every shard's audit file: no shard copies onto, compares or deletes any of them."""
        count = self.shard.count if self.shard else 1
        names = (self.audit_name(i) for i in range(count))
        return tuple(n for n in names if n is not None)

    def _audit_file(self) -> str | None:
        """Where the engine appends the audit log: stdout, its name under a local
        destination's root (written there directly), or None when the destination is remote
        (the pod writes a temp file and uploads it, `audit_upload`)."""
        if self.options.audit_log == "-":
            return "-"
        name = self.audit_name()
        if name is None or not isinstance(self.destination, LocalSpec):
            return None
        return self.destination.path.rstrip("/") + "/" + name

    def audit_upload(self) -> str | None:
        """The destination-relative name this shard's audit log is uploaded to when the run
        ends: a file audit log at a remote (s3, sftp, smb, ferry) destination."""
        if isinstance(self.destination, LocalSpec):
            return None
        return self.audit_name()


def spec_errors(exc: ValidationError) -> str:
    """The fields a spec got wrong and why, without the values it held: a value in the
    wrong place may be a secret (a password typed into a URL)."""
    parts = []
    for e in exc.errors(include_url=False, include_input=False, include_context=False):
        loc = ".".join(str(p) for p in e.get("loc", ()))
        parts.append(f"{loc}: {e.get('msg', '')}" if loc else str(e.get("msg", "")))
    return "; ".join(parts)
