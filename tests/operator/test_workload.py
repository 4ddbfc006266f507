"""The TransferJob -> Job builder: secure defaults, secrets by reference, placement, sharding."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from ferry.mover.options import DEFAULT_MIN_FREE, Fsync, MinFree
from ferry.mover.spec import TransferSpec
from ferry.operator import api, moverspec, workload
from tests.operator.fixtures import PVC_TO_PVC, PVC_TO_S3, transferjob

SETTINGS = workload.MoverSettings(
    image="ghcr.io/ferry-dev/ferry:test",
    env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"},
)


def build(spec: dict, ctx: workload.Context | None = None, **kw) -> workload.Workload:
    body = transferjob(spec, **kw)
    return workload.build(
        body, api.TransferJobSpec.model_validate(spec), ctx or workload.Context(), SETTINGS
    )


def pod_spec(w: workload.Workload) -> dict:
    return w.job["spec"]["template"]["spec"]


def test_secure_defaults():
    w = build(PVC_TO_PVC)
    ps = pod_spec(w)
    assert ps["securityContext"]["runAsNonRoot"] is True
    assert ps["securityContext"]["runAsUser"] == workload.MOVER_UID
    assert ps["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    c = ps["containers"][0]["securityContext"]
    assert c == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert ps["restartPolicy"] == "Never"
    assert not w.privileged


def test_pvcs_mounted_source_read_only_and_spec_paths():
    w = build(PVC_TO_PVC)
    vols = {v["name"]: v for v in pod_spec(w)["volumes"]}
    assert vols["source-data"]["persistentVolumeClaim"] == {"claimName": "data", "readOnly": True}
    assert vols["destination-data"]["persistentVolumeClaim"] == {
        "claimName": "backup",
        "readOnly": False,
    }
    spec = TransferSpec.model_validate(json.loads(w.config_map["data"]["spec-0.json"]))
    assert spec.source.kind == "local" and spec.source.path == "/data/source/in"
    assert spec.destination.path == "/data/destination"
    assert spec.shard is None


def test_s3_credentials_only_as_secret_volume_reference():
    w = build(PVC_TO_S3)
    vols = {v["name"]: v for v in pod_spec(w)["volumes"]}
    assert vols["destination-secret"]["secret"]["secretName"] == "s3-creds"
    assert vols["destination-secret"]["secret"]["items"] == [
        {"key": "credentials", "path": "credentials"}
    ]
    spec = json.loads(w.config_map["data"]["spec-0.json"])
    assert (
        spec["destination"]["credentialsFile"] == "/var/run/ferry/secrets/destination/credentials"
    )
    assert spec["destination"]["endpointUrl"] == "http://127.0.0.1:9000"
    env = {e["name"]: e for e in pod_spec(w)["containers"][0]["env"]}
    assert not any("secretKeyRef" in str(e.get("valueFrom")) for e in env.values())
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == "http://127.0.0.1:4318"


def test_role_allows_only_own_status():
    w = build(PVC_TO_PVC)
    assert w.role["rules"] == [
        {
            "apiGroups": ["ferry.dev"],
            "resources": ["transferjobs/status"],
            "resourceNames": ["copy-a"],
            "verbs": ["get", "patch"],
        }
    ]
    assert w.role_binding["subjects"][0]["name"] == pod_spec(w)["serviceAccountName"]
    for obj in w.objects():
        ref = obj["metadata"]["ownerReferences"][0]
        assert ref["uid"] == "uid-copy-a" and ref["controller"] is True
        assert obj["metadata"]["labels"][workload.LABEL_TRANSFERJOB] == "copy-a"


def test_sharding_builds_indexed_job_with_one_spec_per_shard():
    spec = {**PVC_TO_PVC, "parallelism": {"shards": 4, "streams": 3}, "retry": {"limit": 2}}
    w = build(spec)
    js = w.job["spec"]
    assert js["completionMode"] == "Indexed" and js["completions"] == 4 and js["parallelism"] == 4
    assert js["backoffLimit"] == 8
    specs = [json.loads(w.config_map["data"][f"spec-{i}.json"]) for i in range(4)]
    assert [s["shard"] for s in specs] == [{"index": i, "count": 4} for i in range(4)]
    assert all(s["options"]["transfers"] == 3 for s in specs)
    assert all(s["options"]["fsync"] == "End" for s in specs)  # the default, spelled out
    assert pod_spec(w)["containers"][0]["args"][-1].endswith("spec-$(JOB_COMPLETION_INDEX).json")


def test_pod_failure_policy_fails_fast_on_terminal_codes_and_ignores_disruption():
    rules = build(PVC_TO_PVC).job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
    assert rules[1]["action"] == "FailJob"
    assert (
        rules[1]["onExitCodes"]["containerName"]
        == pod_spec(build(PVC_TO_PVC))["containers"][0]["name"]
    )
    assert rules[1]["onExitCodes"]["operator"] == "In"
    # docs/cli.md's exit codes, spelled out: every one that retrying cannot mend fails the
    # Job at once; Transient (11), SourceChanged (7) and Interrupted (130) retry.
    assert rules[1]["onExitCodes"]["values"] == [1, 2, 3, 4, 5, 6, 8, 9, 10, 12, 13, 14, 15]


SFTP_KEY = {
    "host": "files.example",
    "path": "/srv",
    "user": "ferry",
    "secretRef": {"name": "ssh"},
    "knownHostsRef": {"name": "hosts", "key": "known_hosts"},
}


@pytest.mark.parametrize(
    ("endpoint", "files"),
    [
        (
            {"sftp": SFTP_KEY},
            {
                "keyFile": ("ssh", "ssh-privatekey"),
                "knownHostsFile": ("hosts", "known_hosts"),
            },
        ),
        (
            {"sftp": {**SFTP_KEY, "secretRef": {"name": "pw", "passwordKey": "pass"}}},
            {"passwordFile": ("pw", "pass"), "knownHostsFile": ("hosts", "known_hosts")},
        ),
        (
            {"smb": {"host": "nas", "share": "data", "secretRef": {"name": "smb"}}},
            {"passwordFile": ("smb", "password")},
        ),
    ],
    ids=["sftp-key", "sftp-password", "smb"],
)
def test_credentials_are_mounted_read_only_for_the_owner_alone(
    endpoint: dict, files: dict[str, tuple[str, str]]
) -> None:
    """Each credential is its own Secret key, mounted read-only with mode 0400, and the
    mover's spec points at exactly that file."""
    w = build({"source": {"pvc": {"claimName": "data"}}, "destination": endpoint})
    ps = pod_spec(w)
    volumes = {v["name"]: v for v in ps["volumes"] if "secret" in v}
    mounts = {m["name"]: m for m in ps["containers"][0]["volumeMounts"]}
    spec = json.loads(w.config_map["data"]["spec-0.json"])["destination"]
    assert len(volumes) == len(files)
    for field_name, (secret, key) in files.items():
        path = spec[field_name]
        (name,) = [n for n in volumes if path.startswith(mounts[n]["mountPath"] + "/")]
        assert volumes[name]["secret"] == {
            "secretName": secret,
            "defaultMode": 0o400,
            "items": [{"key": key, "path": key}],
        }
        assert mounts[name]["readOnly"] is True
        assert path == f"{mounts[name]['mountPath']}/{key}"


def test_owner_preservation_needs_the_namespace_annotation():
    spec = {**PVC_TO_PVC, "preserve": ["times", "owners"]}
    with pytest.raises(moverspec.InvalidSpec) as exc:
        build(spec)
    assert exc.value.field == "spec.preserve" and exc.value.reason == "PrivilegeNotGranted"
    w = build(spec, workload.Context(namespace_privileged=True))
    assert w.privileged
    assert pod_spec(w)["securityContext"]["runAsUser"] == 0
    assert "CHOWN" in pod_spec(w)["containers"][0]["securityContext"]["capabilities"]["add"]


def test_owners_to_a_store_without_owners_asks_for_no_privilege():
    """Only a volume holds owners: towards S3 the mover runs unprivileged (and reports owners
    as not kept) instead of asking the namespace for root."""
    spec = {**PVC_TO_S3, "preserve": ["times", "owners"]}
    w = build(spec)
    assert not w.privileged
    assert pod_spec(w)["securityContext"]["runAsNonRoot"] is True
    assert "add" not in pod_spec(w)["containers"][0]["securityContext"]["capabilities"]
    opts = json.loads(w.config_map["data"]["spec-0.json"])["options"]
    assert "owners" in opts["preserve"]  # still asked for, so the mover says it was not kept


def test_pool_placement_merged_under_own_placement():
    pool = api.MoverPoolSpec.model_validate(
        {
            "nodeSelector": {"disk": "nvme", "zone": "a"},
            "tolerations": [{"key": "storage", "operator": "Exists", "effect": "NoSchedule"}],
            "resources": {"requests": {"cpu": "2"}},
            "tuning": {"streams": 16, "chunkSize": "64M"},
        }
    )
    spec = {**PVC_TO_PVC, "placement": {"pool": "fast", "nodeSelector": {"zone": "b"}}}
    w = build(spec, workload.Context(pool=pool))
    ps = pod_spec(w)
    assert ps["nodeSelector"] == {"disk": "nvme", "zone": "b"}
    assert ps["tolerations"] == [{"key": "storage", "operator": "Exists", "effect": "NoSchedule"}]
    assert ps["containers"][0]["resources"] == {"requests": {"cpu": "2"}}
    opts = json.loads(w.config_map["data"]["spec-0.json"])["options"]
    assert opts["transfers"] == 16 and opts["chunkSize"] == "64M"


def test_fsync_reaches_the_mover_options():
    """The mover's durability choice (which also decides whether big files skip the page
    cache) is the TransferJob's, validated by the mover's own model."""
    w = build({**PVC_TO_PVC, "fsync": "None"})
    mover_spec = json.loads(w.config_map["data"]["spec-0.json"])
    assert mover_spec["options"]["fsync"] == "None"
    _, _, options = TransferSpec.model_validate(mover_spec).to_engine()
    assert options.fsync == Fsync.NONE


def test_space_check_and_delete_limit_reach_the_mover_options():
    """preflight, minFree and maxDelete arrive in every shard's mover spec and in the
    engine's options; the shards' delete limits add up to the TransferJob's."""
    spec = {
        **PVC_TO_PVC,
        "mode": "Sync",
        "minFree": "5%",
        "maxDelete": 10,
        "parallelism": {"shards": 3},
    }
    w = build(spec)
    specs = [json.loads(w.config_map["data"][f"spec-{i}.json"]) for i in range(3)]
    assert [s["options"]["maxDelete"] for s in specs] == [4, 3, 3]
    for s in specs:
        assert s["options"]["minFree"] == "5%" and s["options"]["preflight"] is True
        _, _, options = TransferSpec.model_validate(s).to_engine()
        assert options.min_free == MinFree(percent=5.0) and options.preflight
        assert options.max_delete == s["options"]["maxDelete"]
    s = json.loads(build({**PVC_TO_PVC, "preflight": False}).config_map["data"]["spec-0.json"])
    assert s["options"]["preflight"] is False and "maxDelete" not in s["options"]
    _, _, options = TransferSpec.model_validate(s).to_engine()
    assert not options.preflight and options.max_delete is None
    _, _, options = TransferSpec.model_validate(
        json.loads(build(PVC_TO_PVC).config_map["data"]["spec-0.json"])
    ).to_engine()
    assert options.preflight and options.min_free == DEFAULT_MIN_FREE


def test_rwo_claim_in_use_pins_the_node():
    pvcs = [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"]}}]
    other = {
        "metadata": {"labels": {}},
        "spec": {
            "nodeName": "node-2",
            "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "data"}}],
        },
        "status": {"phase": "Running"},
    }
    uses = workload.claim_uses(other)
    assert uses == [workload.ClaimUse("data", "node-2", "")]
    assert workload.rwo_pin(["data"], pvcs, uses, "ferry-copy-a") == "node-2"
    rwx = [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteMany"]}}]
    assert workload.rwo_pin(["data"], rwx, uses, "ferry-copy-a") is None
    # our own mover's pod does not pin us; an unscheduled or finished pod holds nothing
    own = {**other, "metadata": {"labels": {"job-name": "ferry-copy-a"}}}
    assert workload.rwo_pin(["data"], pvcs, workload.claim_uses(own), "ferry-copy-a") is None
    assert workload.claim_uses({**other, "spec": {**other["spec"], "nodeName": None}}) == []
    assert workload.claim_uses({**other, "status": {"phase": "Succeeded"}}) == []
    w = build(PVC_TO_PVC, workload.Context(pin_node="node-2"))
    term = pod_spec(w)["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    assert term[0]["matchFields"][0]["values"] == ["node-2"]


def test_overlapping_paths_in_one_claim_rejected():
    spec = {
        "source": {"pvc": {"claimName": "d", "path": "a"}},
        "destination": {"pvc": {"claimName": "d", "path": "a/b"}},
    }
    with pytest.raises(moverspec.InvalidSpec) as exc:
        build(spec)
    assert exc.value.field == "spec.destination.pvc.path"
    ok = {
        "source": {"pvc": {"claimName": "d", "path": "a"}},
        "destination": {"pvc": {"claimName": "d", "path": "b"}},
    }
    assert build(ok).job["kind"] == "Job"


S3 = {"bucket": "bkt", "endpoint": "http://10.0.0.5:9000", "secretRef": {"name": "s3"}}
SFTP = {"host": "files.example", "user": "u", "path": "/srv/data"}
SMB = {"host": "nas", "share": "Backup", "path": "Team"}


@pytest.mark.parametrize(
    ("source", "destination", "field", "text"),
    [
        # sync inner -> outer would delete the source; copy outer -> inner nests on each run
        (
            {"s3": {**S3, "prefix": "x/inner"}},
            {"s3": {**S3, "prefix": "x/", "endpoint": "http://10.0.0.5:9000/"}},
            "spec.destination.s3.prefix",
            "contains the source (the same server and bucket)",
        ),
        ({"s3": {**S3, "prefix": "x"}}, {"s3": {**S3, "prefix": "x/in"}}, "s3.prefix", "inside"),
        ({"s3": S3}, {"s3": {**S3, "pathStyle": True}}, "s3.prefix", "same location"),
        (
            {"sftp": SFTP},
            {"sftp": {**SFTP, "host": "FILES.example", "path": "/srv/data/../data/in"}},
            "spec.destination.sftp.path",
            "inside the source (the same server)",
        ),
        (
            {"smb": SMB},
            {"smb": {**SMB, "share": "backup", "path": "team/sub"}},
            "spec.destination.smb.path",
            "inside the source (the same server and share)",
        ),
        (
            {"pvc": {"claimName": "d", "path": "a/b"}},
            {"pvc": {"claimName": "d"}},
            "pvc.path",
            "contains",
        ),
    ],
)
def test_overlapping_remote_endpoints_rejected(source, destination, field, text):
    with pytest.raises(moverspec.InvalidSpec) as exc:
        build({"source": source, "destination": destination, "mode": "Sync"})
    assert exc.value.field.endswith(field) and text in str(exc.value)


@pytest.mark.parametrize(
    ("source", "destination"),
    [
        ({"s3": {**S3, "prefix": "x"}}, {"s3": {**S3, "prefix": "xy"}}),  # siblings
        ({"s3": S3}, {"s3": {**S3, "endpoint": "http://10.0.0.5:9001"}}),  # another server
        ({"s3": S3}, {"s3": {**S3, "bucket": "other"}}),
        ({"sftp": SFTP}, {"sftp": {**SFTP, "port": 2222}}),
        ({"sftp": SFTP}, {"sftp": {**SFTP, "path": "srv/data"}}),  # home-relative: unknown
        ({"smb": SMB}, {"smb": {**SMB, "share": "Other"}}),
        ({"pvc": {"claimName": "d"}}, {"s3": S3}),
    ],
)
def test_separate_endpoints_accepted(source, destination):
    assert build({"source": source, "destination": destination}).job["kind"] == "Job"


def test_names_fit_dns_labels():
    long = "x" * 200
    name = workload.child_name(long)
    assert len(name) <= 52 and name != workload.child_name("x" * 199)
    assert workload.child_name("short") == "ferry-short"


def test_suspend_deadline_and_traceparent_carried():
    tp = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    w = build(
        {**PVC_TO_PVC, "suspend": True, "activeDeadlineSeconds": 600},
        workload.Context(traceparent=tp),
    )
    assert w.job["spec"]["suspend"] is True
    assert w.job["spec"]["activeDeadlineSeconds"] == 600
    env = {e["name"]: e.get("value") for e in pod_spec(w)["containers"][0]["env"]}
    assert env["TRACEPARENT"] == tp
    assert env["FERRY_TRANSFERJOB"] == "team/copy-a"


@pytest.mark.parametrize(
    "bad, field",
    [
        (
            {
                "source": {"pvc": {"claimName": "a"}, "s3": {"bucket": "bbb"}},
                "destination": {"pvc": {"claimName": "b"}},
            },
            "source",
        ),
        ({**PVC_TO_PVC, "bandwidth": "fast"}, "bandwidth"),
        ({**PVC_TO_PVC, "parallelism": {"shards": 0}}, "parallelism.shards"),
        ({**PVC_TO_PVC, "mode": "Move"}, "mode"),
        ({**PVC_TO_PVC, "maxDelete": 3}, "maxDelete"),  # a copy deletes nothing
        ({**PVC_TO_PVC, "mode": "Sync", "maxDelete": -1}, "maxDelete"),
        ({**PVC_TO_PVC, "minFree": "100%"}, "minFree"),
        ({**PVC_TO_PVC, "minFree": "lots"}, "minFree"),
        ({**PVC_TO_PVC, "preflight": False, "minFree": "1G"}, "minFree"),
        (
            {
                "source": {"pvc": {"claimName": "a", "path": "../etc"}},
                "destination": {"pvc": {"claimName": "b"}},
            },
            "source.pvc.path",
        ),
    ],
)
def test_validation_names_the_field(bad, field):
    from pydantic import ValidationError

    from ferry.operator.status import pydantic_field

    with pytest.raises(ValidationError) as exc:
        api.TransferJobSpec.model_validate(bad)
    where, _ = pydantic_field(exc.value)
    assert where == f"spec.{field}"


def test_size_age_update_and_delete_excluded_reach_the_mover_options():
    """The TransferJob's minSize/maxSize/minAge/maxAge/update/deleteExcluded arrive in the
    engine's options; deleteExcluded without Sync or without a filter is refused."""
    spec = {
        **PVC_TO_PVC,
        "mode": "Sync",
        "minSize": "1K",
        "maxSize": "2M",
        "minAge": "1h30m",
        "maxAge": "7d",
        "update": True,
        "deleteExcluded": True,
    }
    s = json.loads(build(spec).config_map["data"]["spec-0.json"])
    _, _, options = TransferSpec.model_validate(s).to_engine()
    assert (options.min_size, options.max_size) == (1024, 2 * 1024 * 1024)
    assert (options.min_age, options.max_age) == (5400, 7 * 86400)
    assert options.update and options.delete_excluded
    for bad in (
        {**PVC_TO_PVC, "deleteExcluded": True, "filters": ["- *.tmp"]},
        {**PVC_TO_PVC, "mode": "Sync", "deleteExcluded": True},
        {**PVC_TO_PVC, "maxAge": "soon"},
    ):
        with pytest.raises(ValidationError):
            api.TransferJobSpec.model_validate(bad)
