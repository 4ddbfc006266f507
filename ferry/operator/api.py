"""Pydantic models of Ferry's custom resources (group `ferry.dev`, `v1alpha1`).

One definition serves three purposes: `crdgen` turns these models into the
CRDs' structural OpenAPI schemas (so the API server rejects bad specs before
the operator sees them), the operator re-validates every spec with them (so a
bad field is named in a condition even where a schema cannot say it), and the
status models declare every status field the operator or the mover writes —
undeclared status fields would be silently pruned by the API server.

Field names are camelCase on the wire, snake_case in Python.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel, to_snake

from ferry.mover.endpoints import HEADER_SAFE
from ferry.mover.profiles import PROFILE_NAMES
from ferry.mover.profiles import help_text as profiles_help
from ferry.mover.progress import SHARD_PROGRESS_FIELDS, SNAPSHOT_FIELDS
from ferry.mover.result import NUMBERS

GROUP = "ferry.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Sizes the engine parses (`ferry.mover.options.parse_size`): 16M, 1.5GiB, 4096.
SIZE_PATTERN = r"^[0-9]+(\.[0-9]+)?([KMGTP]i?)?B?$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

ENDPOINT_KINDS = ("pvc", "s3", "sftp", "smb", "ferry")
EXACTLY_ONE_ENDPOINT = {
    "rule": "[has(self.pvc), has(self.s3), has(self.sftp), has(self.smb), has(self.ferry)]"
    ".filter(x, x).size() == 1",
    "message": "exactly one of pvc, s3, sftp, smb, ferry must be set",
}


def _cel(*rules: dict[str, str]) -> dict[str, Any]:
    """json_schema_extra for CEL rules (`x-kubernetes-validations`)."""
    return {"x-kubernetes-validations": list(rules)}


class Model(BaseModel):
    """Spec side: camelCase, unknown fields refused (the schema prunes them anyway)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class StatusModel(BaseModel):
    """Status side: tolerant of fields a newer operator or mover may add."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


Name = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)]
SecretKey = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")]
SizeStr = Annotated[str, Field(max_length=32, pattern=SIZE_PATTERN)]
# A rate, or rclone's timetable of `[Day-]HH:MM,RATE` entries (ferry.mover.bwtable reads it).
_RATE = r"([0-9]+(\.[0-9]+)?([KMGTP]i?)?B?|off|Off|OFF)"
_BW_ENTRY = rf"([A-Za-z]{{3,9}}-)?[0-2][0-9]:[0-5][0-9],{_RATE}"
BANDWIDTH_PATTERN = rf"^({_RATE}|{_BW_ENTRY}([ ;]+{_BW_ENTRY})*)$"
BandwidthStr = Annotated[str, Field(max_length=4096, pattern=BANDWIDTH_PATTERN)]
# A size, or a percentage from 0 to below 100 (`ferry.mover.options.MinFree`).
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h|d|w|M|y))+$"
DurationStr = Annotated[str, Field(max_length=32, pattern=DURATION_PATTERN)]
MIN_FREE_PATTERN = r"^(" + SIZE_PATTERN[1:-1] + r"|[0-9]{1,2}(\.[0-9]+)?%)$"
RelPath = Annotated[str, Field(max_length=4096)]


# ---------------------------------------------------------------- endpoints


class PVCEndpoint(Model):
    """A PersistentVolumeClaim, mounted into the mover: in the TransferJob's namespace,
    or (a destination only) in `namespace`, reached through a sender/receiver pair."""

    claim_name: Name
    path: RelPath = Field(
        default="",
        description="Directory or file inside the volume. A file as the source goes into a "
        "destination directory (existing, or whose path ends with '/') or to the name given.",
    )
    namespace: str | None = Field(
        default=None,
        max_length=63,
        pattern=DNS_LABEL,
        description="The claim's namespace when it is not the TransferJob's: destination only, "
        "with a pvc source (the operator runs a receiver there and the sender here). The "
        "source's namespace must list it in the annotation ferry.dev/allow-transfers-to and it "
        "must list the TransferJob's in ferry.dev/allow-transfers-from.",
    )

    @field_validator("path")
    @classmethod
    def _inside(cls, value: str) -> str:
        if ".." in value.split("/"):
            raise ValueError("must not contain '..'")
        return value


class S3SecretRef(Model):
    """Secret holding an AWS shared-credentials file under `key`."""

    name: Name
    key: SecretKey = "credentials"


class S3Endpoint(Model):
    # No control characters in what becomes a request header or URL (HEADER_SAFE).
    bucket: str = Field(min_length=3, max_length=63, pattern=HEADER_SAFE)
    prefix: RelPath = ""
    endpoint: str | None = (
        Field(  # no user:password@ (credentials come from secretRef), no controls
            default=None, max_length=2048, pattern=r"^https?://[^@\x00-\x20\x7f]*$"
        )
    )
    region: str | None = Field(default=None, max_length=64, pattern=HEADER_SAFE)
    path_style: bool = False
    storage_class: str | None = Field(default=None, max_length=64, pattern=HEADER_SAFE)
    sse: Literal["AES256", "aws:kms"] | None = None
    sse_kms_key_id: str | None = Field(default=None, max_length=2048, pattern=HEADER_SAFE)
    secret_ref: S3SecretRef | None = None
    profile: str | None = Field(
        default=None,
        max_length=256,
        pattern=HEADER_SAFE,
        description="Profile to read from the credentials file in secretRef.",
    )
    checksum: Literal["CRC32", "CRC32C", "SHA1", "SHA256", "None"] | None = Field(
        default=None,
        description="Additional checksum the server checks on every upload (default CRC32); "
        "None sends none (for stores that refuse them).",
    )
    list_metadata: bool = Field(
        default=True,
        description="Read each listed object's Ferry metadata (mtime, mode, digest); false "
        "trusts LastModified and saves a request per object.",
    )


class SFTPSecretRef(Model):
    """Secret with a private key (kubernetes.io/ssh-auth layout) or, if `passwordKey` is set, a password."""

    name: Name
    private_key_key: SecretKey = "ssh-privatekey"
    password_key: SecretKey | None = None


class KeyRef(Model):
    name: Name
    key: SecretKey


class SFTPEndpoint(Model):
    host: str = Field(min_length=1, max_length=253)
    port: int = Field(default=22, ge=1, le=65535)
    path: RelPath = "."
    user: str | None = Field(default=None, max_length=256)
    secret_ref: SFTPSecretRef | None = None
    known_hosts_ref: KeyRef | None = Field(
        default=None, description="Secret key holding an OpenSSH known_hosts file."
    )
    insecure_ignore_host_key: bool = False
    sessions: int = Field(
        default=4, ge=1, le=64, description="SSH connections opened in parallel per mover."
    )


class SMBSecretRef(Model):
    name: Name
    password_key: SecretKey = "password"


class SMBEndpoint(Model):
    host: str = Field(min_length=1, max_length=253)
    port: int = Field(default=445, ge=1, le=65535)
    share: str = Field(min_length=1, max_length=256)
    path: RelPath = ""
    user: str | None = Field(default=None, max_length=256)
    domain: str | None = Field(default=None, max_length=256)
    encrypt: bool = False
    require_signing: bool = Field(
        default=True, description="Refuse a server that does not sign its messages."
    )
    secret_ref: SMBSecretRef | None = None


class FerryTLSSecretRef(Model):
    """Secret with this side's certificate and key (`tls.crt`, `tls.key`: the
    kubernetes.io/tls layout) and the CA the server's certificate is signed by (`ca.crt`)."""

    name: Name


class FerryEndpoint(Model):
    """Another Ferry's `ferry serve` (in another cluster, say), over mutual TLS 1.3."""

    host: str = Field(min_length=1, max_length=253, pattern=r"^[^@/\s]+$")
    port: int = Field(ge=1, le=65535)
    path: RelPath = Field(default="", description="Directory below the server's root.")
    tls_secret_ref: FerryTLSSecretRef
    streams: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="TLS connections opened in parallel per mover (default: the profile's, "
        "else as many as the mover's workers, at most 64).",
    )

    @field_validator("path")
    @classmethod
    def _inside(cls, value: str) -> str:
        if ".." in value.split("/"):
            raise ValueError("must not contain '..'")
        return value


class Endpoint(Model):
    """Exactly one storage kind."""

    model_config = ConfigDict(json_schema_extra=_cel(EXACTLY_ONE_ENDPOINT))

    pvc: PVCEndpoint | None = None
    s3: S3Endpoint | None = None
    sftp: SFTPEndpoint | None = None
    smb: SMBEndpoint | None = None
    ferry: FerryEndpoint | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Endpoint:
        if sum(getattr(self, k) is not None for k in ENDPOINT_KINDS) != 1:
            raise ValueError(EXACTLY_ONE_ENDPOINT["message"])
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ENDPOINT_KINDS if getattr(self, k) is not None)


# ---------------------------------------------------------------- placement

Quantity = Annotated[
    str | int,
    Field(json_schema_extra={"x-kubernetes-int-or-string": True}),
]


QUANTITY_MAP_RULE = {
    "rule": "self.all(k, isQuantity(string(self[k])))",
    "message": "resource values must be valid quantities",
}


class Resources(Model):
    """Container resources; values are Kubernetes quantities (checked per map: the CEL cost budget)."""

    requests: dict[str, Quantity] | None = Field(
        default=None, max_length=8, json_schema_extra=_cel(QUANTITY_MAP_RULE)
    )
    limits: dict[str, Quantity] | None = Field(
        default=None, max_length=8, json_schema_extra=_cel(QUANTITY_MAP_RULE)
    )


class Toleration(Model):
    key: str | None = Field(default=None, max_length=316)
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = Field(default=None, max_length=63)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class Placement(Model):
    pool: Name | None = Field(
        default=None, description="A MoverPool to take placement and tuning from."
    )
    node_selector: dict[str, str] | None = Field(default=None, max_length=32)
    tolerations: list[Toleration] | None = Field(default=None, max_length=32)
    resources: Resources | None = None
    priority_class_name: Name | None = None


# ---------------------------------------------------------------- mover pods

# Label and annotation keys under this prefix are the operator's (selectors, the trace, the spec
# digests, the privilege gate): a user's pod labels and annotations may not set them.
OPERATOR_KEY_PREFIX = "ferry.dev/"
# Labels the operator's own selectors and watches read on mover pods.
OPERATOR_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/managed-by")
# A qualified name (`prefix/name`), as the API server checks label and annotation keys.
QUALIFIED_KEY = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
NOT_OPERATOR_KEYS = {
    "rule": f"self.all(k, !k.startsWith('{OPERATOR_KEY_PREFIX}') && !(k in "
    + str(list(OPERATOR_LABELS)).replace('"', "'")
    + "))",
    "message": f"keys under {OPERATOR_KEY_PREFIX} and {', '.join(OPERATOR_LABELS)} are set by "
    "the operator",
}
PodId = Annotated[int, Field(ge=0, le=2**31 - 1)]
# A proxy URL: scheme, host, port; no user:password@ (an env value is no place for a secret).
PROXY_URL = r"^https?://[^@\s/]+/?$"


class PodSecurity(Model):
    """The mover's identity on its volumes: run as the uid that owns the data (a 0600 file
    is read by its owner only), with the groups that may read it. uid and gid 0 need the
    namespace an admin annotated for privileged movers."""

    run_as_user: PodId | None = None
    run_as_group: PodId | None = None
    fs_group: PodId | None = Field(
        default=None, description="Group the kubelet gives the volumes (see fsGroupChangePolicy)."
    )
    supplemental_groups: list[PodId] | None = Field(default=None, max_length=32)
    fs_group_change_policy: Literal["OnRootMismatch", "Always"] | None = Field(
        default=None,
        description="Default OnRootMismatch: the kubelet changes the volume's group only when "
        "its root directory does not already have it (Always walks every file at each start).",
    )

    def ids(self) -> list[tuple[str, int]]:
        """(field, id) of every uid and gid given."""
        named = [
            ("runAsUser", self.run_as_user),
            ("runAsGroup", self.run_as_group),
            ("fsGroup", self.fs_group),
        ]
        out = [(f, v) for f, v in named if v is not None]
        return out + [("supplementalGroups", g) for g in self.supplemental_groups or []]


class LocalObjectRef(Model):
    name: Name


class ConfigMapKeyRef(Model):
    name: Name
    key: SecretKey = "ca.crt"


class Proxy(Model):
    """The mover's HTTP(S)_PROXY and NO_PROXY (S3 and OpenTelemetry traffic; SFTP, SMB and the
    ferry:// wire are not HTTP and do not use them)."""

    http_proxy: str | None = Field(default=None, max_length=2048, pattern=PROXY_URL)
    https_proxy: str | None = Field(default=None, max_length=2048, pattern=PROXY_URL)
    no_proxy: str | None = Field(default=None, max_length=4096, pattern=r"^[^\s@]*$")


def _keys_not_operators(value: dict[str, str] | None) -> dict[str, str] | None:
    for key in value or {}:
        if key.startswith(OPERATOR_KEY_PREFIX) or key in OPERATOR_LABELS:
            raise ValueError(f"{key!r}: {NOT_OPERATOR_KEYS['message']}")
        if len(key) > 317 or not re.fullmatch(QUALIFIED_KEY, key) or len(key.rsplit("/")[-1]) > 63:
            raise ValueError(f"{key!r} is not a valid key (prefix/name, name up to 63 characters)")
    return value


class MoverPod(Model):
    """What a user adapts in every pod the operator makes for a TransferJob (movers, shards,
    a wire pair's sender and receiver). The chart's `moverPod` value has this shape and
    gives the defaults; a TransferJob's fields replace them (labels and annotations merge,
    the TransferJob's value winning per key; securityContext and proxy per field)."""

    security_context: PodSecurity | None = None
    service_account_name: Name | None = Field(
        default=None,
        description="Run the movers as this existing ServiceAccount (IRSA, Workload Identity) "
        "instead of one the operator makes per TransferJob; the operator binds it the Role "
        "that lets the mover patch this TransferJob's status.",
    )
    labels: dict[str, Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]] | None = Field(
        default=None, max_length=64, json_schema_extra=_cel(NOT_OPERATOR_KEYS)
    )
    annotations: dict[str, Annotated[str, Field(max_length=4096)]] | None = Field(
        default=None, max_length=64, json_schema_extra=_cel(NOT_OPERATOR_KEYS)
    )
    image_pull_secrets: list[LocalObjectRef] | None = Field(default=None, max_length=16)
    ca_bundle: ConfigMapKeyRef | None = Field(
        default=None,
        description="A ConfigMap key holding PEM CA certificates the mover trusts for HTTPS "
        "(SSL_CERT_FILE, AWS_CA_BUNDLE, REQUESTS_CA_BUNDLE point at it). It replaces the "
        "image's public CAs: include them if the mover also needs those.",
    )
    proxy: Proxy | None = None

    _labels = field_validator("labels", "annotations")(_keys_not_operators)


# ---------------------------------------------------------------- transfer job


class Parallelism(Model):
    shards: int = Field(
        default=1, ge=1, le=64, description="Pods of an Indexed Job, balanced by bytes."
    )
    streams: int | None = Field(
        default=None, ge=1, le=256, description="Concurrent transfers per pod."
    )
    chunk_size: SizeStr | None = None
    profile: ProfileName | None = Field(
        default=None,
        description="Named tuning (wins over the pool's profile; streams and chunkSize "
        "given win over it).",
    )


class Retry(Model):
    limit: int = Field(default=3, ge=0, le=20, description="Mover pod retries (Job backoffLimit).")
    per_file: int = Field(default=3, ge=0, le=100, description="Engine retries of one file.")


PreserveFlag = Literal["times", "perms", "owners", "xattrs", "links", "hardlinks", "sparse", "acls"]


MAX_DELETE_RULE = {
    "rule": "!has(self.maxDelete) || (has(self.mode) && self.mode == 'Sync')",
    "message": "maxDelete applies only to mode Sync",
}
DELETE_EXCLUDED_RULE = {
    "rule": "!has(self.deleteExcluded) || !self.deleteExcluded || ((has(self.mode) && "
    "self.mode == 'Sync') && (has(self.filters) || has(self.minSize) || has(self.maxSize) || "
    "has(self.minAge) || has(self.maxAge) || has(self.filesFrom) || "
    "has(self.filesFromConfigMap)))",
    "message": "deleteExcluded applies only to mode Sync with filters, minSize, maxSize, "
    "minAge, maxAge, filesFrom or filesFromConfigMap",
}
MIN_FREE_RULE = {
    "rule": "!has(self.minFree) || !has(self.preflight) || self.preflight",
    "message": "minFree has no effect with preflight: false",
}

# Object stores and file servers cannot rebuild a file where it is stored (the mover refuses
# `--delta on` there too; transfer.check_delta); said at admission instead of in a pod.
DELTA_ON_RULE = {
    "rule": "!has(self.delta) || self.delta != 'On' || !(has(self.destination.s3) || "
    "has(self.destination.sftp) || has(self.destination.smb))",
    "message": "delta On needs a destination that rebuilds files where they are stored (a "
    "pvc); use Auto or Off for s3, sftp and smb",
}

# POSIX ACLs live on volumes (and cross the ferry:// wire to and from one); the mover refuses
# `--preserve acls` with an object store or file server (acl.refuse_kinds).
ACLS_RULE = {
    "rule": "!has(self.preserve) || !self.preserve.exists(p, p == 'acls') || !("
    + " || ".join(
        f"has(self.{side}.{kind})"
        for side in ("source", "destination")
        for kind in ("s3", "sftp", "smb")
    )
    + ")",
    "message": "preserve acls needs pvc (or ferry) endpoints: s3, sftp and smb cannot hold POSIX "
    "ACLs",
}

# zstd crosses only a ferry:// wire: On is refused by the mover without one, so it is
# refused at admission unless an endpoint is a `ferry` one (a sender/receiver pair the
# operator builds for two claims is its own choice, unknown at admission: Auto applies there).
COMPRESSION_ON_RULE = {
    "rule": "!has(self.compression) || self.compression != 'On' || has(self.source.ferry) || "
    "has(self.destination.ferry)",
    "message": "compression On needs a ferry endpoint (the wire) as source or destination; "
    "use Auto or Off",
}


# Another namespace's claim is reached by a receiver there and a sender (the mover, which
# reports progress to this TransferJob) here: only a destination can be elsewhere, and only
# from a claim the sender mounts.
SOURCE_NAMESPACE_RULE = {
    "rule": "!has(self.source.pvc) || !has(self.source.pvc.namespace)",
    "message": "source.pvc.namespace is not supported: the sender runs in the TransferJob's "
    "namespace; create the TransferJob in the source's namespace and name the destination's",
}
DESTINATION_NAMESPACE_RULE = {
    "rule": "!has(self.destination.pvc) || !has(self.destination.pvc.namespace) || "
    "has(self.source.pvc)",
    "message": "destination.pvc.namespace needs a pvc source (a sender/receiver pair over the "
    "wire)",
}


# ---- auditLog, chmod, chown, filesFrom (their rules and bounds in one place)
# A path segment other than '.' and '..' (RE2: no look-ahead), and the audit log's value:
# '-' (the mover's stdout) or a relative path of such segments.
_SEGMENT = r"([^/.\x00][^/\x00]*|\.[^/.\x00][^/\x00]*|\.\.[^/\x00]+)"
AUDIT_LOG_PATTERN = rf"^(-|{_SEGMENT}(/{_SEGMENT})*)$"
# What the mover would refuse at the destination (its `holds`), said at admission instead.
CHOWN_RULE = {
    "rule": "!has(self.chown) || has(self.destination.pvc) || has(self.destination.ferry)",
    "message": "chown needs a destination that holds owners (a pvc or a ferry endpoint)",
}
CHMOD_RULE = {
    "rule": "!has(self.chmod) || !has(self.destination.smb)",
    "message": "chmod needs a destination that holds modes (not smb)",
}
FILES_FROM_MAX = 1000  # entries; each up to 1024 characters
FILES_FROM_ONE_RULE = {
    "rule": "!has(self.filesFrom) || !has(self.filesFromConfigMap)",
    "message": "filesFrom and filesFromConfigMap are exclusive: give the list inline or in a "
    "ConfigMap",
}
FILES_FROM_ROOM = 768 * 1024  # bytes of filesFrom x shards the job's ConfigMap may hold


class FilesFromConfigMap(Model):
    """The ConfigMap key holding a file list (one --files-from line per line)."""

    name: Name
    key: SecretKey


class _RecordAndTransformFields(Model):
    """The TransferJob's audit log, metadata transforms and file list (issue 24)."""

    audit_log: str | None = Field(
        default=None,
        max_length=1024,
        pattern=AUDIT_LOG_PATTERN,
        description="One JSON line per decision and action (--audit-log): '-' for the mover's "
        "stdout (kubectl logs; the summary then goes to stderr), or a path relative to the "
        "destination's root (NAME.INDEX per shard), never copied, compared or deleted by the "
        "transfer: written there directly in a pvc, uploaded when the run ends elsewhere (s3, "
        "sftp, smb, ferry; each run replaces it). A dry run's plan is read there.",
    )
    chmod: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="rsync's --chmod: modes set on what is written, e.g. 'D755,F644' or 'u+w'.",
    )
    chown: str | None = Field(
        default=None,
        min_length=1,
        max_length=512,
        description="rsync's --chown USER:GROUP (names or ids): needs a root mover, i.e. the "
        "namespace's ferry.dev/privileged-movers=true annotation.",
    )
    files_from: list[Annotated[str, Field(min_length=1, max_length=1024)]] | None = Field(
        default=None,
        max_length=FILES_FROM_MAX,
        description="Only these source-relative paths (and all below a listed directory), as "
        "--files-from's lines: '#' comments and blank lines skipped, no '..'.",
    )

    files_from_config_map: FilesFromConfigMap | None = Field(
        default=None,
        description="filesFrom's lines in a key of a ConfigMap in the TransferJob's namespace "
        "(up to its 1 MiB), mounted into the mover pod and read as --files-from reads a file. "
        "Exclusive with filesFrom. A missing ConfigMap or key keeps the job Pending, naming it.",
    )

    @field_validator("files_from_config_map")
    @classmethod
    def _one_files_list(
        cls, value: FilesFromConfigMap | None, info: ValidationInfo
    ) -> FilesFromConfigMap | None:
        if value is not None and info.data.get("files_from") is not None:
            raise ValueError(FILES_FROM_ONE_RULE["message"])
        return value

    @field_validator("chmod", "chown")
    @classmethod
    def _meta_parses(cls, value: str | None, info: ValidationInfo) -> str | None:
        from ferry.mover.spec import check_meta

        return check_meta(value, str(info.field_name))

    @field_validator("files_from")
    @classmethod
    def _files_from_parses(cls, value: list[str] | None) -> list[str] | None:
        from ferry.mover.spec import check_files_from

        return check_files_from(value)


class TransferJobSpec(_RecordAndTransformFields):
    model_config = ConfigDict(
        json_schema_extra=_cel(
            MAX_DELETE_RULE,
            DELETE_EXCLUDED_RULE,
            MIN_FREE_RULE,
            DELTA_ON_RULE,
            ACLS_RULE,
            COMPRESSION_ON_RULE,
            SOURCE_NAMESPACE_RULE,
            DESTINATION_NAMESPACE_RULE,
            CHOWN_RULE,
            CHMOD_RULE,
            FILES_FROM_ONE_RULE,
        )
    )

    source: Endpoint
    destination: Endpoint
    mode: Literal["Copy", "Sync"] = "Copy"
    compare: Literal["SizeMtime", "Checksum", "Size"] = "SizeMtime"
    verify: Literal["None", "Inline", "Full"] = "Inline"
    fsync: Literal["End", "File", "None"] = Field(
        default="End",
        description="End: one flush before deletes and success (big files then skip the page "
        "cache); File: each file before it is published; None: write-back left to the kernel.",
    )
    preserve: list[PreserveFlag] | None = Field(default=None, max_length=8)
    compression: Literal["Auto", "On", "Off"] = Field(
        default="Auto",
        description="zstd per chunk on a ferry:// wire (--compress). Auto: stop trying for a "
        "file whose first chunks do not shrink; On: try every chunk (needs a ferry endpoint); "
        "Off: never. A chunk crosses compressed only when that makes it smaller.",
    )
    symlinks: Literal["Preserve", "Follow", "Skip"] = "Preserve"
    delta: Literal["Auto", "On", "Off"] = Field(
        default="Auto",
        description="Send updated files of 64 KiB or more as block deltas (only changed blocks "
        "cross): Auto where the destination says it pays (a ferry endpoint), On wherever the "
        "destination can rebuild files (a volume, a ferry endpoint; refused for S3, SFTP and "
        "SMB), Off never.",
    )
    filters: list[Annotated[str, Field(min_length=1, max_length=1024)]] | None = Field(
        default=None, max_length=256
    )
    bandwidth: BandwidthStr | None = Field(
        default=None,
        description="The whole job's bytes per second (split evenly among its shards' pods), "
        "e.g. 50M, or rclone's --bwlimit timetable: '08:00,512K 12:00,10M 18:00,off' (every "
        "day) or 'Mon-08:00,512K Sat-10:00,off' (every week); the entry in force is the last "
        "one at or before now, off is no limit. Read in bandwidthTimeZone.",
    )
    bandwidth_time_zone: str | None = Field(
        default=None,
        max_length=64,
        description="IANA zone the bandwidth timetable is read in, e.g. Europe/Berlin. Default "
        "UTC; a TransferSchedule's jobs get the schedule's timeZone unless they set one.",
    )
    rename: list[Annotated[str, Field(min_length=4, max_length=1024)]] | None = Field(
        default=None,
        max_length=100,
        description="Rules 's/REGEX/REPLACEMENT/' (Python re; flags g, i) applied in order to "
        "each destination name (--rename); two names made one fail the job before anything "
        "is written.",
    )
    min_size: SizeStr | None = Field(
        default=None, description="Only files of at least this size (--min-size)."
    )
    max_size: SizeStr | None = Field(
        default=None, description="Only files of at most this size (--max-size)."
    )
    min_age: DurationStr | None = Field(
        default=None, description="Only files modified at least this long ago, e.g. 7d (--min-age)."
    )
    max_age: DurationStr | None = Field(
        default=None, description="Only files modified at most this long ago, e.g. 2h (--max-age)."
    )
    update: bool = Field(
        default=False, description="Leave files that are newer at the destination (--update)."
    )
    delete_excluded: bool = Field(
        default=False,
        description="Sync: also delete at the destination what the filters and the size and "
        "age bounds leave out (--delete-excluded).",
    )
    parallelism: Parallelism | None = None
    retry: Retry | None = None
    error_policy: Literal["Abort", "Skip"] = "Abort"
    allow_empty_source: bool = False
    preflight: bool = Field(
        default=True,
        description="Before writing, compare what the plan needs with the destination's free "
        "space (PVC, SFTP, SMB) and fail DestinationFull if it would leave less than minFree.",
    )
    min_free: str | None = Field(
        default=None,
        max_length=32,
        pattern=MIN_FREE_PATTERN,
        description="Free space to leave at the destination: a size (2G) or a percentage of "
        "its size (5%). Default 1%.",
    )
    max_delete: int | None = Field(
        default=None,
        ge=0,
        description="Sync: if more than this many entries would be deleted, delete none and "
        "fail DeleteLimitExceeded (after the copies). Shards share it.",
    )
    dry_run: bool = False
    suspend: bool = False
    cancel: bool = Field(
        default=False, description="Stop the transfer for good; the job ends Failed/Cancelled."
    )
    placement: Placement | None = None
    pod: MoverPod | None = Field(
        default=None,
        description="Security context, service account, labels, annotations, pull secrets, "
        "CA bundle and proxy of the mover pods (over the chart's moverPod defaults).",
    )
    active_deadline_seconds: int | None = Field(default=None, ge=1)
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0)
    stall_timeout_seconds: int = Field(
        default=300, ge=10, description="No progress for this long sets the Stalled condition."
    )

    def shard_count(self) -> int:
        return self.parallelism.shards if self.parallelism else 1

    @field_validator("max_delete")
    @classmethod
    def _max_delete_for_sync(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and info.data.get("mode") != "Sync":
            raise ValueError(MAX_DELETE_RULE["message"])
        return value

    @field_validator("delete_excluded")
    @classmethod
    def _delete_excluded_for_filtered_sync(cls, value: bool, info: ValidationInfo) -> bool:
        d = info.data
        filtered = (
            d.get("filters")
            or d.get("files_from") is not None
            or d.get("files_from_config_map") is not None
            or any(d.get(k) is not None for k in ("min_size", "max_size", "min_age", "max_age"))
        )
        if value and (d.get("mode") != "Sync" or not filtered):
            raise ValueError(DELETE_EXCLUDED_RULE["message"])
        return value

    @field_validator("bandwidth")
    @classmethod
    def _bandwidth_parses(cls, value: str | None) -> str | None:
        from ferry.mover.spec import check_bandwidth

        return check_bandwidth(value)

    @field_validator("bandwidth_time_zone")
    @classmethod
    def _bandwidth_zone(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            from ferry.operator.cron import zone

            zone(value)
            if "bandwidth" in info.data and info.data["bandwidth"] is None:
                raise ValueError("bandwidthTimeZone applies only to a bandwidth timetable")
        return value

    @field_validator("rename")
    @classmethod
    def _rename_parses(cls, value: list[str] | None) -> list[str] | None:
        from ferry.mover.errors import FerryError
        from ferry.mover.rename import Renamer

        try:
            Renamer(value or ())
        except FerryError as exc:
            raise ValueError(str(exc).replace("--rename", "rule", 1)) from None
        return value

    @field_validator("min_free")
    @classmethod
    def _min_free_with_preflight(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("preflight") is False:
            raise ValueError(MIN_FREE_RULE["message"])
        return value

    @field_validator("compression")
    @classmethod
    def _compression_on_needs_a_wire(cls, value: str, info: ValidationInfo) -> str:
        ends = (info.data.get("source"), info.data.get("destination"))
        if value == "On" and not any(e is not None and e.ferry is not None for e in ends):
            raise ValueError(COMPRESSION_ON_RULE["message"])
        return value

    @field_validator("preserve")
    @classmethod
    def _acls_where_held(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        ends = (info.data.get("source"), info.data.get("destination"))
        if (
            value
            and "acls" in value
            and any(e is not None and e.kind in ("s3", "sftp", "smb") for e in ends)
        ):
            raise ValueError(ACLS_RULE["message"])
        return value

    @field_validator("delta")
    @classmethod
    def _delta_on_rebuilds_there(cls, value: str, info: ValidationInfo) -> str:
        dst = info.data.get("destination")
        if value == "On" and dst is not None and dst.kind in ("s3", "sftp", "smb"):
            raise ValueError(DELTA_ON_RULE["message"])
        return value

    @model_validator(mode="after")
    def _record_and_transform_checks(self) -> TransferJobSpec:
        """chown/chmod where the destination holds them; filesFrom fits the ConfigMap that
        carries it once per shard."""
        dst = self.destination
        if self.chown is not None and dst.pvc is None and dst.ferry is None:
            raise ValueError(CHOWN_RULE["message"])
        if self.chmod is not None and dst.smb is not None:
            raise ValueError(CHMOD_RULE["message"])
        # As the ConfigMap holds it: JSON (non-ASCII escaped), indented, one entry a line.
        size = len(json.dumps(self.files_from)) + 8 * len(self.files_from) if self.files_from else 0
        if size * self.shard_count() > FILES_FROM_ROOM:
            raise ValueError(
                f"filesFrom: {size} bytes for each of {self.shard_count()} shards is more than "
                f"the job's ConfigMap holds ({FILES_FROM_ROOM} bytes in all)"
            )
        return self

    @field_validator("destination")
    @classmethod
    def _namespaces(cls, value: Endpoint, info: ValidationInfo) -> Endpoint:
        src = info.data.get("source")
        if src is not None and src.pvc is not None and src.pvc.namespace is not None:
            raise ValueError(SOURCE_NAMESPACE_RULE["message"])
        elsewhere = value.pvc is not None and value.pvc.namespace is not None
        if elsewhere and src is not None and src.pvc is None:
            raise ValueError(DESTINATION_NAMESPACE_RULE["message"])
        return value

    def destination_namespace(self, own: str) -> str | None:
        """The destination claim's namespace when it is not `own` (the TransferJob's)."""
        pvc = self.destination.pvc
        if pvc is None or pvc.namespace is None or pvc.namespace == own:
            return None
        return pvc.namespace


# ---------------------------------------------------------------- edits

# Spec fields that may change after creation: the operator acts on each of
# them on every reconcile (suspend and the deadline are patched onto the Job,
# cancel deletes it, the TTL and stall timeout are read live). Every other
# field defines the transfer: the mover specs are built from it once.
MUTABLE_SPEC_FIELDS = (
    "suspend",
    "cancel",
    "activeDeadlineSeconds",
    "ttlSecondsAfterFinished",
    "stallTimeoutSeconds",
)
# Reasons the operator gives for having built nothing from the spec (so it
# recorded no `status.jobName`): only then may transfer-defining fields change.
NOT_BUILT_REASONS = (
    "InvalidSpec",
    "PrivilegeNotGranted",
    "NameConflict",
    "PoolNotFound",
    "PoolInvalid",
)


def _fixed_fields() -> list[tuple[str, Any]]:
    """(wire name, FieldInfo) of the transfer-defining TransferJob spec fields, in model order."""
    named = ((f.alias or n, f) for n, f in TransferJobSpec.model_fields.items())
    return [(wire, f) for wire, f in named if wire not in MUTABLE_SPEC_FIELDS]


def fixed_spec_fields() -> tuple[str, ...]:
    """Wire names of the transfer-defining TransferJob spec fields."""
    return tuple(wire for wire, _ in _fixed_fields())


def editable(status: dict[str, Any]) -> bool:
    """The operator built nothing from this spec yet, so it may change (as the CEL rules test)."""
    return not status.get("jobName") and status.get("reason") in NOT_BUILT_REASONS


def immutability_rules() -> tuple[dict[str, str], ...]:
    """Root-level CEL transition rules, one per transfer-defining field so the message names it.

    At the root because a rule under `spec` cannot see `status`. A field with a
    default is always present after defaulting; an optional one may be added or
    removed, which `has()` on both sides catches.
    """
    reasons = ", ".join(f"'{r}'" for r in NOT_BUILT_REASONS)
    not_built = (
        "(has(oldSelf.status) && !has(oldSelf.status.jobName) && has(oldSelf.status.reason)"
        f" && oldSelf.status.reason in [{reasons}])"
    )
    rules = []
    for wire, info in _fixed_fields():
        new, old = f"self.spec.{wire}", f"oldSelf.spec.{wire}"
        if info.is_required() or info.default is not None:
            same = f"{new} == {old}"
        else:
            same = f"(has({new}) ? has({old}) && {new} == {old} : !has({old}))"
        rules.append(
            {
                "rule": f"{not_built} || {same}",
                "message": f"spec.{wire} cannot change once the TransferJob exists (only while "
                "the operator has built nothing from it); create a new TransferJob instead",
                "fieldPath": f".spec.{wire}",
                "reason": "FieldValueForbidden",
            }
        )
    return tuple(rules)


class Condition(StatusModel):
    """Kubernetes API conventions (metav1.Condition)."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


def _snapshot_fields() -> dict[str, Any]:
    """A mover's progress snapshot as the status declares it (`ferry.mover.progress` defines
    it once): counts start at 0, flags at false, the rest may be missing."""
    out: dict[str, Any] = {}
    for wire in SHARD_PROGRESS_FIELDS:
        kind = SNAPSHOT_FIELDS[wire]
        default = 0 if kind is int else False if kind is bool else None
        out[to_snake(wire)] = (kind if default is not None else kind | None, default)
    return out


_SnapshotStatus: type[StatusModel] = create_model(
    "_SnapshotStatus", __base__=StatusModel, **_snapshot_fields()
)


class ShardProgress(_SnapshotStatus):  # type: ignore[misc,valid-type]  # the snapshot's fields
    """What one mover pod reports about itself (merge-patched by the mover)."""

    update_time: str | None = None
    last_progress_time: str | None = None
    pod: str | None = None
    finished: bool = False


class Progress(StatusModel):
    """Totals across shards (written by the operator) plus the per-shard map (written by movers).

    `shards` is a map keyed by shard index so that each mover can merge-patch
    its own entry without touching the others'.
    """

    bytes_done: int = 0
    bytes_total: int = 0
    files_done: int = 0
    files_total: int = 0
    bytes_per_second: int = 0
    eta_seconds: float | None = None
    percent: str | None = None
    rate: str | None = None
    last_progress_time: str | None = None
    shards: dict[str, ShardProgress] | None = None


class ErrorEntry(StatusModel):
    path: str | None = None
    reason: str = ""
    message: str = ""


def _summary_numbers() -> dict[str, Any]:
    """The engine summary's numbers as the status declares them (`Summary` defines them once):
    each counter an int, the time a float followed by the rate the operator derives from it."""
    out: dict[str, Any] = {}
    for name in NUMBERS:
        if name == "elapsed_seconds":
            out[name] = (float, 0.0)
            out["bytes_per_second"] = (int, 0)
        else:
            out[name] = (int, 0)
    return out


_ResultBase: type[StatusModel] = create_model(
    "_ResultBase",
    __base__=StatusModel,
    reason=(str | None, None),
    exit_code=(int | None, None),
    message=(str | None, None),
    dry_run=(bool, False),
    **_summary_numbers(),
)


class Result(_ResultBase):  # type: ignore[misc,valid-type]  # fields from the engine's Summary
    """The movers' termination messages, summed (`ferry.mover.result.Summary.to_json`)."""

    errors: list[ErrorEntry] | None = None
    preserve_dropped: list[PreserveFlag] | None = Field(
        default=None, description="Preserved properties the destination did not keep."
    )
    shards_reported: int = 0
    audit_log_errors: list[Annotated[str, Field(max_length=512)]] | None = Field(
        default=None,
        max_length=20,
        description="Why a shard's file audit log could not be uploaded to a remote "
        "destination (the transfer's own outcome stands).",
    )


Phase = Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"]


class TransferJobStatus(StatusModel):
    phase: Phase | None = None
    reason: str | None = None
    message: str | None = None
    conditions: list[Condition] | None = None
    progress: Progress | None = None
    result: Result | None = None
    start_time: str | None = None
    completion_time: str | None = None
    observed_generation: int | None = None
    trace_id: str | None = Field(default=None, alias="traceID")
    trace_parent: str | None = Field(
        default=None, description="W3C traceparent of the first reconcile."
    )
    job_name: str | None = None
    attempts: int | None = None
    privileged: bool | None = None
    audit_log: str | None = Field(
        default=None, description="Where to read the audit log spec.auditLog asked for."
    )


# ---------------------------------------------------------------- schedule


class TransferJobTemplate(Model):
    metadata: dict[str, dict[str, str]] | None = Field(
        default=None, description="Only `labels` and `annotations` are used."
    )
    spec: TransferJobSpec


CRON_RULE = {
    "rule": "self.split(' ').filter(f, f != '').size() in [5, 6] || self.startsWith('@')",
    "message": "schedule must be a 5-field cron expression (6 with seconds) or a @macro",
}


class TransferScheduleSpec(Model):
    schedule: str = Field(min_length=1, max_length=128, json_schema_extra=_cel(CRON_RULE))
    time_zone: str | None = Field(
        default=None, max_length=64, description="IANA zone, e.g. Europe/Berlin."
    )
    jitter_seconds: int = Field(
        default=0, ge=0, le=86400, description="Stable per-object offset in [0, jitterSeconds)."
    )
    concurrency_policy: Literal["Allow", "Forbid", "Replace"] = "Forbid"
    starting_deadline_seconds: int | None = Field(default=None, ge=1)
    missed_run_policy: Literal["Skip", "RunOnce"] = Field(
        default="Skip",
        description="Skip: a run later than the starting deadline (default 60s) is counted missed. "
        "RunOnce: after downtime, run the latest missed time once.",
    )
    suspend: bool = False
    trigger: str | None = Field(
        default=None, max_length=63, description="Change this token to request one manual run now."
    )
    successful_jobs_history_limit: int = Field(default=3, ge=0, le=100)
    failed_jobs_history_limit: int = Field(default=1, ge=0, le=100)
    job_template: TransferJobTemplate

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        from ferry.operator.cron import validate_cron

        validate_cron(value)
        return value

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        if value is not None:
            from ferry.operator.cron import zone

            zone(value)
        return value


class ObjectRef(StatusModel):
    name: str
    uid: str | None = None


class LastRun(StatusModel):
    """The latest finished run of a schedule, copied from that TransferJob's status."""

    name: str
    phase: Phase
    reason: str | None = None
    message: str | None = None
    bytes_transferred: int = 0
    completion_time: str | None = None


class TransferScheduleStatus(StatusModel):
    last_run: LastRun | None = None
    last_schedule_time: str | None = None
    last_handled_time: str | None = Field(
        default=None, description="Latest scheduled time acted on (run or counted missed)."
    )
    last_successful_time: str | None = None
    next_schedule_time: str | None = None
    effective_schedule: str | None = None
    missed_runs: int = 0
    active: list[ObjectRef] | None = None
    last_trigger: str | None = None
    observed_generation: int | None = None
    conditions: list[Condition] | None = None


# ---------------------------------------------------------------- pool


# A named profile (ferry/mover/profiles.py, the one table) and the knobs it sets.
# Explicit values win: a TransferJob's parallelism, then these, then a profile (the
# TransferJob's, else the pool's), then the mover's own sizing to the node it lands on (its
# container's CPU and memory limits, passed through the downward API).
ProfileName = Literal[PROFILE_NAMES]  # type: ignore[valid-type]


class Tuning(Model):
    profile: ProfileName | None = Field(
        default=None, description="Named tuning: " + profiles_help()
    )
    streams: int | None = Field(default=None, ge=1, le=256)
    chunk_size: SizeStr | None = None
    buffer_size: SizeStr | None = Field(
        default=None,
        description="The piece each mover worker streams a file through (64K to 16M; "
        "default 2M, or the profile's).",
    )

    @field_validator("buffer_size")
    @classmethod
    def _buffer_in_range(cls, value: str | None) -> str | None:
        if value is not None:
            from ferry.mover.options import MAX_BUFFER, MIN_BUFFER, parse_size

            n = parse_size(value, "bufferSize")
            if not MIN_BUFFER <= n <= MAX_BUFFER or n % (64 * 1024):
                raise ValueError("bufferSize must be a multiple of 64K from 64K to 16M")
        return value


class MoverPoolSpec(Model):
    node_selector: dict[str, str] | None = Field(default=None, max_length=32)
    tolerations: list[Toleration] | None = Field(default=None, max_length=32)
    resources: Resources | None = None
    priority_class_name: Name | None = None
    tuning: Tuning | None = None


class MoverPoolStatus(StatusModel):
    observed_generation: int | None = None
    conditions: list[Condition] | None = None


# ---------------------------------------------------------------- kinds


class Kind:
    """Names of one custom resource kind, shared by crdgen, handlers and RBAC."""

    kind: ClassVar[str]
    plural: ClassVar[str]
    singular: ClassVar[str]
    short_names: ClassVar[tuple[str, ...]]
    namespaced: ClassVar[bool]
    spec: ClassVar[type[BaseModel]]
    status: ClassVar[type[BaseModel]]
    printer_columns: ClassVar[tuple[dict[str, str], ...]]
    # CEL rules on the whole object (they may compare spec with status and oldSelf).
    validations: ClassVar[tuple[dict[str, str], ...]] = ()


# The Ready condition's status and reason as printer columns read them.
READY_STATUS = '.status.conditions[?(@.type=="Ready")].status'
READY_REASON = '.status.conditions[?(@.type=="Ready")].reason'


class TransferJobKind(Kind):
    kind = "TransferJob"
    plural = "transferjobs"
    singular = "transferjob"
    short_names = ("tj",)
    namespaced = True
    spec = TransferJobSpec
    status = TransferJobStatus
    validations = immutability_rules()
    printer_columns = (
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Ready", "type": "string", "jsonPath": READY_STATUS},
        {"name": "Progress", "type": "string", "jsonPath": ".status.progress.percent"},
        {"name": "Rate", "type": "string", "jsonPath": ".status.progress.rate"},
        {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": "1"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    )


class TransferScheduleKind(Kind):
    kind = "TransferSchedule"
    plural = "transferschedules"
    singular = "transferschedule"
    short_names = ("ts",)
    namespaced = True
    spec = TransferScheduleSpec
    status = TransferScheduleStatus
    printer_columns = (
        {"name": "Schedule", "type": "string", "jsonPath": ".spec.schedule"},
        {"name": "Suspend", "type": "boolean", "jsonPath": ".spec.suspend"},
        {"name": "Ready", "type": "string", "jsonPath": READY_STATUS},
        {"name": "Last Result", "type": "string", "jsonPath": ".status.lastRun.phase"},
        {"name": "Last", "type": "date", "jsonPath": ".status.lastScheduleTime"},
        {"name": "Next", "type": "string", "jsonPath": ".status.nextScheduleTime"},
        {"name": "Reason", "type": "string", "jsonPath": READY_REASON, "priority": "1"},
        {"name": "Last Run", "type": "string", "jsonPath": ".status.lastRun.name", "priority": "1"},
        {
            "name": "Last Bytes",
            "type": "integer",
            "jsonPath": ".status.lastRun.bytesTransferred",
            "priority": "1",
        },
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    )


class MoverPoolKind(Kind):
    kind = "MoverPool"
    plural = "moverpools"
    singular = "moverpool"
    short_names = ("mp",)
    namespaced = False
    spec = MoverPoolSpec
    status = MoverPoolStatus
    printer_columns = ({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},)


KINDS: tuple[type[Kind], ...] = (TransferJobKind, TransferScheduleKind, MoverPoolKind)
