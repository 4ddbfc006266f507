"""TransferJob (+ its MoverPool) -> the typed mover spec of each shard, and what to mount.

The one translation between the operator's resource and the engine's boundary
(`ferry.mover.spec.TransferSpec`, what `ferry run --spec` reads). Paths in the
spec point where `workload.py` mounts volumes and Secrets; what must be mounted
is returned as typed records, so this module knows no Kubernetes object shapes
and `workload.py` knows no mover fields. Credentials reach the mover only as
files of Secrets the kubelet mounts: the operator never reads a Secret.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from ferry.mover import roots
from ferry.mover import spec as ms
from ferry.mover.bwtable import BwTable
from ferry.operator import api

DATA_DIR = "/data"
# URI options (`ferry.mover.endpoints.uri_options`) a TransferJob gives another way: a file
# from a Secret it references, or a field under another name. Every other option is the
# endpoint's field of the same name (tests/operator/test_uri_options.py holds this).
CHECKSUMS: dict[str, Literal["crc32", "crc32c", "sha1", "sha256", "none"]] = {
    "CRC32": "crc32",
    "CRC32C": "crc32c",
    "SHA1": "sha1",
    "SHA256": "sha256",
    "None": "none",
}
URI_OPTIONS_ELSEWHERE = {
    "s3": {"credentials_file": "secretRef", "endpoint_url": "endpoint"},
    "sftp": {
        "key_file": "secretRef",
        "password_file": "secretRef.passwordKey",
        "known_hosts_file": "knownHostsRef",
    },
    "smb": {"password_file": "secretRef"},
    "ferry": {"tls_cert": "tlsSecretRef", "tls_key": "tlsSecretRef", "tls_ca": "tlsSecretRef"},
}
SECRETS_DIR = "/var/run/ferry/secrets"
FERRY_TLS_KEYS = ("tls.crt", "tls.key", "ca.crt")  # of a ferry endpoint's tlsSecretRef


class InvalidSpec(ValueError):
    """A spec the operator refuses; `field` names the offending field."""

    def __init__(self, field_path: str, message: str, reason: str = "InvalidSpec") -> None:
        super().__init__(f"{field_path}: {message}")
        self.field = field_path
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ClaimMount:
    """A PersistentVolumeClaim mounted at `path`; a source's read-only."""

    volume: str
    claim_name: str
    path: str
    read_only: bool


@dataclass(frozen=True, slots=True)
class SecretMount:
    """Only `keys` of a Secret, mounted read-only at `path`, one file per key."""

    volume: str
    secret_name: str
    keys: tuple[str, ...]
    path: str


@dataclass(frozen=True, slots=True)
class ConfigMapMount:
    """One key of a user's ConfigMap, mounted read-only as the file `path`/`file`."""

    volume: str
    config_map_name: str
    key: str
    path: str
    file: str


Mount = ClaimMount | SecretMount | ConfigMapMount
FILES_FROM_DIR = "/etc/ferry/files-from"
FILES_FROM_FILE = f"{FILES_FROM_DIR}/list"


@dataclass(slots=True)
class MoverSpecs:
    """One validated mover spec per shard, and the mounts their paths point into."""

    shards: list[ms.TransferSpec]
    mounts: list[Mount] = field(default_factory=list)


def _secret(mounts: list[Mount], side: str, secret: str, key: str) -> str:
    """Mount `key` of `secret` for `side`; the file's path."""
    path = f"{SECRETS_DIR}/{side}"
    mounts.append(SecretMount(f"{side}-secret", secret, (key,), path))
    return f"{path}/{key}"


def endpoint(ep: api.Endpoint, side: str, mounts: list[Mount]) -> ms.EndpointSpec:
    """The mover's endpoint for one side, adding what it needs mounted to `mounts`."""
    if ep.pvc is not None:
        mount = f"{DATA_DIR}/{side}"
        mounts.append(ClaimMount(f"{side}-data", ep.pvc.claim_name, mount, side == "source"))
        sub = ep.pvc.path.strip("/")
        # A trailing '/' stays: it names a directory (a single file source goes into it).
        slash = "/" if sub and ep.pvc.path.endswith("/") else ""
        return ms.LocalSpec(path=mount + ("/" + sub + slash if sub else ""))
    if ep.s3 is not None:
        s3 = ep.s3
        ref = s3.secret_ref
        return ms.S3Spec(
            bucket=s3.bucket,
            prefix=s3.prefix,
            endpoint_url=s3.endpoint,
            region=s3.region,
            path_style=s3.path_style,
            sse=s3.sse,
            sse_kms_key_id=s3.sse_kms_key_id,
            storage_class=s3.storage_class,
            profile=s3.profile,
            checksum=CHECKSUMS[s3.checksum] if s3.checksum else None,
            list_metadata=s3.list_metadata,
            credentials_file=_secret(mounts, side, ref.name, ref.key) if ref else None,
        )
    if ep.sftp is not None:
        sftp = ep.sftp
        key_file = password_file = None
        if sftp.secret_ref is not None:
            sref = sftp.secret_ref
            file = _secret(mounts, side, sref.name, sref.password_key or sref.private_key_key)
            if sref.password_key:
                password_file = file
            else:
                key_file = file
        kh = sftp.known_hosts_ref
        return ms.SFTPSpec(
            host=sftp.host,
            port=sftp.port,
            path=sftp.path,
            user=sftp.user,
            key_file=key_file,
            password_file=password_file,
            known_hosts_file=_secret(mounts, f"{side}-known-hosts", kh.name, kh.key)
            if kh
            else None,
            insecure_ignore_host_key=sftp.insecure_ignore_host_key,
            sessions=sftp.sessions,
        )
    if ep.ferry is not None:
        fe = ep.ferry
        path = f"{SECRETS_DIR}/{side}"
        mounts.append(SecretMount(f"{side}-secret", fe.tls_secret_ref.name, FERRY_TLS_KEYS, path))
        return ms.FerrySpec(
            host=fe.host,
            port=fe.port,
            path=fe.path,
            tls_cert=f"{path}/tls.crt",
            tls_key=f"{path}/tls.key",
            tls_ca=f"{path}/ca.crt",
            streams=fe.streams,
        )
    assert ep.smb is not None
    smb = ep.smb
    pref = smb.secret_ref
    return ms.SMBSpec(
        host=smb.host,
        port=smb.port,
        share=smb.share,
        path=smb.path,
        user=smb.user,
        domain=smb.domain,
        encrypt=smb.encrypt,
        require_signing=smb.require_signing,
        password_file=_secret(mounts, side, pref.name, pref.password_key) if pref else None,
    )


def bandwidth_share(bandwidth: str | None, shards: int) -> str | None:
    """Each shard's pod's part of the job's limit: every timetable entry's rate over the
    number of pods, so together they keep to the job's limit (never n times it)."""
    if not bandwidth or shards <= 1:
        return bandwidth or None
    return str(BwTable.parse(bandwidth, "bandwidth").split(shards))


def options(
    spec: api.TransferJobSpec,
    pool: api.MoverPoolSpec | None,
    max_delete: int | None,
    shards: int = 1,
) -> ms.OptionsSpec:
    """The mover's options: the TransferJob's, with the pool's tuning under its own."""
    tuning = pool.tuning if pool and pool.tuning else api.Tuning()
    par = spec.parallelism or api.Parallelism()
    retry = spec.retry or api.Retry()
    # Left out when unset, so the mover's own default applies.
    given: dict[str, Any] = {}
    if spec.preserve is not None:
        given["preserve"] = list(spec.preserve)
    # Given numbers win, the TransferJob's over the pool's; then a profile, the
    # TransferJob's over the pool's; the rest the mover sizes to its node (mover/tuning.py).
    streams = par.streams or tuning.streams
    if streams:
        given["transfers"] = streams
    profile = par.profile or tuning.profile
    if profile:
        given["profile"] = profile
    if tuning.buffer_size:
        given["buffer_size"] = tuning.buffer_size
    return ms.OptionsSpec(
        mode=spec.mode,
        compare=spec.compare,
        verify=spec.verify,
        fsync=spec.fsync,
        compression=spec.compression,
        symlinks=spec.symlinks,
        delta=spec.delta,
        filters=spec.filters or [],
        rename=spec.rename or [],
        retries=retry.per_file,
        error_policy=spec.error_policy,
        dry_run=spec.dry_run,
        allow_empty_source=spec.allow_empty_source,
        preflight=spec.preflight,
        min_free=spec.min_free,
        chunk_size=par.chunk_size or tuning.chunk_size or None,
        bandwidth=bandwidth_share(spec.bandwidth, shards),
        bandwidth_time_zone=spec.bandwidth_time_zone,
        max_delete=max_delete,
        min_size=spec.min_size,
        max_size=spec.max_size,
        min_age=spec.min_age,
        max_age=spec.max_age,
        update=spec.update,
        delete_excluded=spec.delete_excluded,
        audit_log=spec.audit_log,
        chmod=spec.chmod,
        chown=spec.chown,
        files_from=spec.files_from,
        files_from_file=FILES_FROM_FILE if spec.files_from_config_map is not None else None,
        **given,
    )


def audit_log_where(spec: api.TransferJobSpec, job_name: str) -> str | None:
    """Where a user reads the audit log `spec.auditLog` asks for (status.auditLog)."""
    if spec.audit_log is None:
        return None
    n = spec.shard_count()
    if spec.audit_log == "-":
        return f"the mover pods' stdout: kubectl logs -l job-name={job_name} --tail=-1"
    shards = f".0 to .{n - 1} (one file per shard)" if n > 1 else ""
    dst = spec.destination
    if dst.pvc is not None:
        return f"pvc {dst.pvc.claim_name}: {_under(dst.pvc.path, spec.audit_log)}{shards}"
    rel = spec.audit_log
    if dst.s3 is not None:
        at = f"s3 {dst.s3.bucket}: {_under(dst.s3.prefix, rel)}"
    elif dst.sftp is not None:
        at = f"sftp {dst.sftp.host}: {_under(dst.sftp.path, rel)}"
    elif dst.smb is not None:
        at = f"smb {dst.smb.host}/{dst.smb.share}: {_under(dst.smb.path, rel)}"
    else:
        assert dst.ferry is not None
        at = f"ferry {dst.ferry.host}:{dst.ferry.port}: {_under(dst.ferry.path, rel)}"
    return f"{at}{shards}, uploaded when each run ends (replacing the last run's)"


def _under(root: str, rel: str) -> str:
    """`rel` below the endpoint's root directory, as a user finds it there."""
    sub = root.strip("/")
    return f"{sub}/{rel}" if sub and sub != "." else rel


def delete_share(max_delete: int | None, index: int, shards: int) -> int | None:
    """Each shard deletes its own part: their shares add up to the limit, never past it."""
    if max_delete is None:
        return None
    return max_delete // shards + (index < max_delete % shards)


def mover_specs(spec: api.TransferJobSpec, pool: api.MoverPoolSpec | None) -> MoverSpecs:
    """One mover TransferSpec per shard, validated by the mover's own models."""
    mounts: list[Mount] = []
    n = spec.shard_count()
    try:
        source = endpoint(spec.source, "source", mounts)
        destination = endpoint(spec.destination, "destination", mounts)
        if (ref := spec.files_from_config_map) is not None:
            mounts.append(ConfigMapMount("files-from", ref.name, ref.key, FILES_FROM_DIR, "list"))
        shards = [
            ms.TransferSpec(
                source=source,
                destination=destination,
                options=options(spec, pool, delete_share(spec.max_delete, i, n), n),
                shard=ms.ShardSpec(index=i, count=n) if n > 1 else None,
            )
            for i in range(n)
        ]
    except ValidationError as exc:
        raise InvalidSpec("spec", ms.spec_errors(exc)) from exc
    return MoverSpecs(shards, mounts)


# ---------------------------------------------------------------- overlap

_PATH_FIELD = {"pvc": "path", "s3": "prefix", "sftp": "path", "smb": "path", "ferry": "path"}
_OVERLAP = {
    roots.Overlap.SAME: "is the same location as the source",
    roots.Overlap.DST_IN_SRC: "is inside the source",
    roots.Overlap.SRC_IN_DST: "contains the source",
}
_SHARED = {
    "pvc": "claim",
    "s3": "server and bucket",
    "sftp": "server",
    "smb": "server and share",
    "ferry": "server",
}


def root_id(ep: api.Endpoint) -> roots.RootId:
    """What an endpoint names, in the engine's terms (ferry.mover.roots); a claim is its
    own namespace."""
    if ep.pvc is not None:
        return roots.RootId(("pvc", ep.pvc.claim_name), roots.path_parts(ep.pvc.path))
    if ep.s3 is not None:
        return roots.s3_root(ep.s3.endpoint, ep.s3.region, ep.s3.bucket, ep.s3.prefix)
    if ep.sftp is not None:
        return roots.sftp_root(ep.sftp.host, ep.sftp.port, ep.sftp.user, ep.sftp.path)
    if ep.ferry is not None:
        return roots.ferry_root(ep.ferry.host, ep.ferry.port, ep.ferry.path)
    assert ep.smb is not None
    return roots.smb_root(ep.smb.host, ep.smb.port, ep.smb.share, ep.smb.path)


def check_overlap(spec: api.TransferJobSpec) -> None:
    """Refuse endpoints that visibly overlap, whatever the mode, before any pod starts.

    What only the mover can see (symlinks, an SFTP `~` path against an absolute one,
    two names of one host) it refuses itself, with exit code 4, which fails the Job."""
    how = roots.overlap(root_id(spec.source), root_id(spec.destination))
    if how is not None:
        kind = spec.destination.kind
        raise InvalidSpec(
            f"spec.destination.{kind}.{_PATH_FIELD[kind]}",
            f"{_OVERLAP[how]} (the same {_SHARED[kind]})",
        )
