"""TransferJob -> typed mover specs: one per shard, the mounts their paths point into."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from ferry.mover import spec as ms
from ferry.operator import api, crdgen, moverspec, wirepair, workload
from ferry.operator.main import parser
from tests.operator.fixtures import PVC_TO_PVC, PVC_TO_S3, transferjob


def test_specs_are_typed_and_paths_point_into_the_mounts():
    spec = api.TransferJobSpec.model_validate(
        {**PVC_TO_S3, "mode": "Sync", "maxDelete": 5, "parallelism": {"shards": 2}}
    )
    out = moverspec.mover_specs(spec, None)
    assert [type(s) for s in out.shards] == [ms.TransferSpec, ms.TransferSpec]
    assert [s.shard for s in out.shards] == [
        ms.ShardSpec(index=0, count=2),
        ms.ShardSpec(index=1, count=2),
    ]
    assert [s.options.max_delete for s in out.shards] == [3, 2]
    src, dst = out.shards[0].source, out.shards[0].destination
    assert isinstance(src, ms.LocalSpec) and isinstance(dst, ms.S3Spec)
    claim, secret = out.mounts
    assert isinstance(claim, moverspec.ClaimMount) and claim.read_only
    assert src.path.startswith(claim.path)
    assert isinstance(secret, moverspec.SecretMount)
    assert dst.credentials_file == f"{secret.path}/{secret.keys[0]}"
    assert secret.path.startswith(moverspec.SECRETS_DIR + "/")


def test_delete_shares_add_up_to_the_limit():
    for limit in range(0, 20):
        for n in range(1, 7):
            shares = [moverspec.delete_share(limit, i, n) for i in range(n)]
            assert sum(s or 0 for s in shares) == limit and max(shares) - min(shares) <= 1
    assert moverspec.delete_share(None, 0, 3) is None


def test_what_the_mover_model_refuses_is_an_invalid_spec_naming_the_field():
    spec = api.TransferJobSpec.model_validate(PVC_TO_S3)
    bad = spec.model_copy(update={"source": api.Endpoint.model_construct(pvc=None, s3=None)})
    bad.source.smb = api.SMBEndpoint.model_construct(host="", port=445, share="s", path="")
    with pytest.raises(moverspec.InvalidSpec) as exc:
        moverspec.mover_specs(bad, None)
    assert exc.value.field == "spec" and "host" in str(exc.value)


def test_delta_reaches_the_mover_and_on_is_refused_where_nothing_rebuilds():
    spec = api.TransferJobSpec.model_validate({**PVC_TO_PVC, "delta": "On"})
    out = moverspec.mover_specs(spec, None)
    assert out.shards[0].options.delta == "On"
    assert out.shards[0].to_engine()[2].delta == "on"
    assert (
        moverspec.mover_specs(api.TransferJobSpec.model_validate(PVC_TO_S3), None)
        .shards[0]
        .options.delta
        == "Auto"
    )
    with pytest.raises(ValueError, match="delta On needs a destination"):
        api.TransferJobSpec.model_validate({**PVC_TO_S3, "delta": "On"})
    doc = crdgen.crd(api.TransferJobKind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    rules = doc["properties"]["spec"]["x-kubernetes-validations"]
    assert api.DELTA_ON_RULE in rules


def test_preserve_acls_reaches_the_mover_and_is_refused_towards_s3():
    spec = api.TransferJobSpec.model_validate({**PVC_TO_PVC, "preserve": ["acls"]})
    assert moverspec.mover_specs(spec, None).shards[0].to_engine()[2].preserve.acls
    with pytest.raises(ValueError, match="preserve acls needs pvc"):
        api.TransferJobSpec.model_validate({**PVC_TO_S3, "preserve": ["times", "acls"]})
    doc = crdgen.crd(api.TransferJobKind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert api.ACLS_RULE in doc["properties"]["spec"]["x-kubernetes-validations"]


# ---------------------------------------------------------------- mover pods users adapt

OWN_POD = {
    "securityContext": {"runAsUser": 1000, "fsGroup": 2000, "supplementalGroups": [3000]},
    "serviceAccountName": "backup-irsa",
    "labels": {"sidecar.istio.io/inject": "false", "team": "a"},
    "annotations": {"linkerd.io/inject": "disabled"},
    "imagePullSecrets": [{"name": "regcred"}],
    "caBundle": {"name": "corp-ca", "key": "bundle.pem"},
    "proxy": {"httpsProxy": "http://proxy.corp:3128", "noProxy": ".svc,10.0.0.0/8"},
}
WIRE_IP = "10.96.0.9"


def _body(spec: dict[str, Any]) -> dict[str, Any]:
    return transferjob(spec)


def _pods(
    spec: dict[str, Any],
    settings: workload.MoverSettings | None = None,
    ctx: workload.Context | None = None,
) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """(template metadata, pod spec) of every pod the operator makes for `spec`: the plain
    mover (here with 2 shards: one template), and a wire pair's sender and receiver."""
    tj = api.TransferJobSpec.model_validate(spec)
    ctx = ctx or workload.Context()
    settings = settings or workload.MoverSettings()
    w = workload.build(_body(spec), tj, ctx, settings)
    _, sender = wirepair.sender(_body(spec), tj, ctx, settings, WIRE_IP)
    receiver = wirepair.receiver_job(_body(spec), tj, ctx, settings)
    jobs = {"mover": w.job, "sender": sender, "receiver": receiver}
    return {
        k: (j["spec"]["template"]["metadata"], j["spec"]["template"]["spec"])
        for k, j in jobs.items()
    }


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container["env"]}


def test_spec_pod_reaches_every_pod_the_operator_makes():
    spec = {**PVC_TO_PVC, "parallelism": {"shards": 2}, "pod": OWN_POD}
    for which, (meta, pod) in _pods(spec).items():
        sc = pod["securityContext"]
        assert (sc["runAsUser"], sc["fsGroup"], sc["supplementalGroups"]) == (1000, 2000, [3000])
        assert sc["runAsGroup"] == workload.MOVER_UID  # not given: the operator's
        assert sc["fsGroupChangePolicy"] == "OnRootMismatch" and sc["runAsNonRoot"] is True
        assert pod["serviceAccountName"] == "backup-irsa", which
        assert (
            meta["labels"]["sidecar.istio.io/inject"] == "false" and meta["labels"]["team"] == "a"
        )
        assert meta["labels"][workload.LABEL_MANAGED_BY] == workload.MANAGED_BY  # still ours
        assert meta["annotations"] == {"linkerd.io/inject": "disabled"}
        assert pod["imagePullSecrets"] == [{"name": "regcred"}]
        ca = next(v for v in pod["volumes"] if v["name"] == "ca-bundle")
        assert ca["configMap"] == {
            "name": "corp-ca",
            "items": [{"key": "bundle.pem", "path": "ca.crt"}],
        }
        container = pod["containers"][0]
        assert {"name": "ca-bundle", "mountPath": workload.CA_DIR, "readOnly": True} in container[
            "volumeMounts"
        ]
        env = _env(container)
        assert all(env[k] == workload.CA_FILE for k in workload.CA_ENV), which
        assert env["HTTPS_PROXY"] == env["https_proxy"] == "http://proxy.corp:3128"
        assert env["NO_PROXY"] == env["no_proxy"] == ".svc,10.0.0.0/8"
        assert "HTTP_PROXY" not in env  # not given, not set
        # Nothing a user adapts escalates: no host paths, no privileged container.
        assert not any("hostPath" in v for v in pod["volumes"])
        assert all(
            not c["securityContext"].get("privileged")
            and c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
            for c in [*pod["containers"], *pod.get("initContainers", [])]
        )
    w = workload.build(
        _body(spec),
        api.TransferJobSpec.model_validate(spec),
        workload.Context(),
        workload.MoverSettings(),
    )
    assert w.service_account is None and w.service_account not in w.objects()
    assert w.role_binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "backup-irsa", "namespace": "team"}
    ]


def test_without_spec_pod_the_operators_defaults():
    meta, pod = _pods(PVC_TO_PVC)["mover"]
    sc = pod["securityContext"]
    uid = workload.MOVER_UID
    assert (sc["runAsUser"], sc["runAsGroup"], sc["fsGroup"]) == (uid, uid, uid)
    assert sc["fsGroupChangePolicy"] == "OnRootMismatch"
    assert "imagePullSecrets" not in pod and not meta.get("annotations")
    assert pod["serviceAccountName"] == workload.child_name("copy-a")
    assert not {"HTTPS_PROXY", "SSL_CERT_FILE"} & set(_env(pod["containers"][0]))


def test_chart_defaults_under_the_transferjobs_own():
    defaults = api.MoverPod.model_validate(
        {
            "securityContext": {
                "runAsUser": 500,
                "runAsGroup": 500,
                "fsGroupChangePolicy": "Always",
            },
            "labels": {"team": "default", "cost": "x"},
            "imagePullSecrets": [{"name": "chart-cred"}],
            "caBundle": {"name": "chart-ca"},
            "proxy": {"httpProxy": "http://p:1", "httpsProxy": "http://p:2"},
            "serviceAccountName": "chart-sa",
        }
    )
    settings = workload.MoverSettings(pod=defaults)
    own = {
        "securityContext": {"runAsUser": 1000},
        "labels": {"team": "a"},
        "proxy": {"httpsProxy": "http://q:3"},
    }
    for which, (meta, pod) in _pods({**PVC_TO_PVC, "pod": own}, settings).items():
        sc = pod["securityContext"]
        assert (sc["runAsUser"], sc["runAsGroup"], sc["fsGroupChangePolicy"]) == (
            1000,
            500,
            "Always",
        )
        assert (meta["labels"]["team"], meta["labels"]["cost"]) == ("a", "x")
        assert pod["imagePullSecrets"] == [{"name": "chart-cred"}]
        assert pod["serviceAccountName"] == "chart-sa", which
        env = _env(pod["containers"][0])
        assert (env["HTTP_PROXY"], env["HTTPS_PROXY"]) == ("http://p:1", "http://q:3")
        assert env["SSL_CERT_FILE"] == workload.CA_FILE
    # A TransferJob's own list replaces the chart's (an empty one: none).
    _, pod = _pods({**PVC_TO_PVC, "pod": {"imagePullSecrets": []}}, settings)["mover"]
    assert "imagePullSecrets" not in pod


@pytest.mark.parametrize("field", ["runAsUser", "runAsGroup", "fsGroup", "supplementalGroups"])
def test_root_ids_need_the_namespace_annotation(field: str):
    value: Any = [0] if field == "supplementalGroups" else 0
    spec = {**PVC_TO_PVC, "pod": {"securityContext": {field: value}}}
    tj = api.TransferJobSpec.model_validate(spec)
    with pytest.raises(moverspec.InvalidSpec) as exc:
        workload.build(_body(spec), tj, workload.Context(), workload.MoverSettings())
    assert exc.value.field == f"spec.pod.securityContext.{field}"
    assert exc.value.reason == "PrivilegeNotGranted"
    assert workload.NAMESPACE_PRIVILEGED_ANNOTATION in str(exc.value)
    ok = workload.build(
        _body(spec), tj, workload.Context(namespace_privileged=True), workload.MoverSettings()
    )
    sc = ok.job["spec"]["template"]["spec"]["securityContext"]
    assert sc[field] == value
    assert sc["runAsNonRoot"] is (field != "runAsUser")
    # root's id, never root's capabilities
    caps = ok.job["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]
    assert caps == {"drop": ["ALL"]}


def test_owner_preservation_keeps_root_and_refuses_another_uid():
    base = {**PVC_TO_PVC, "preserve": ["owners"]}
    ctx = workload.Context(namespace_privileged=True)
    spec = {**base, "pod": {"securityContext": {"runAsUser": 1000}}}
    with pytest.raises(moverspec.InvalidSpec) as exc:
        workload.build(
            _body(spec), api.TransferJobSpec.model_validate(spec), ctx, workload.MoverSettings()
        )
    assert exc.value.field == "spec.pod.securityContext.runAsUser" and "root" in str(exc.value)
    spec = {**base, "pod": {"securityContext": {"fsGroup": 2000}}}
    w = workload.build(
        _body(spec), api.TransferJobSpec.model_validate(spec), ctx, workload.MoverSettings()
    )
    sc = w.job["spec"]["template"]["spec"]["securityContext"]
    assert (sc["runAsUser"], sc["fsGroup"], sc["runAsNonRoot"]) == (0, 2000, False)


@pytest.mark.parametrize(
    ("pod", "where"),
    [
        ({"labels": {"ferry.dev/transferjob": "other"}}, "labels"),
        ({"annotations": {"ferry.dev/traceparent": "x"}}, "annotations"),
        ({"labels": {"app.kubernetes.io/managed-by": "me"}}, "labels"),
        ({"labels": {"bad key": "x"}}, "labels"),
        ({"labels": {"ok": "bad value!"}}, "labels"),
        ({"securityContext": {"privileged": True}}, "securityContext.privileged"),
        ({"securityContext": {"runAsUser": -1}}, "securityContext.runAsUser"),
        ({"proxy": {"httpsProxy": "http://user:secret@proxy:3128"}}, "proxy.httpsProxy"),
        ({"hostPath": {"path": "/"}}, "hostPath"),
        ({"serviceAccountName": "Not_A_Name"}, "serviceAccountName"),
    ],
)
def test_spec_pod_refusals_name_the_field(pod: dict[str, Any], where: str):
    with pytest.raises(ValidationError) as exc:
        api.TransferJobSpec.model_validate({**PVC_TO_PVC, "pod": pod})
    assert f"pod.{where}" in str(exc.value)
    assert "secret@" not in ms.spec_errors(exc.value)  # a refused value is not repeated


def test_crd_refuses_operator_keys_and_unknown_pod_fields():
    doc = crdgen.crd(api.TransferJobKind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    pod = doc["properties"]["spec"]["properties"]["pod"]
    for name in ("labels", "annotations"):
        assert pod["properties"][name]["x-kubernetes-validations"] == [api.NOT_OPERATOR_KEYS]
    assert set(pod["properties"]["securityContext"]["properties"]) == {
        "runAsUser",
        "runAsGroup",
        "fsGroup",
        "supplementalGroups",
        "fsGroupChangePolicy",
    }
    assert "x-kubernetes-preserve-unknown-fields" not in json.dumps(pod)


def test_chart_values_schema_is_the_models():
    values = json.loads((crdgen.REPO_ROOT / crdgen.VALUES_SCHEMA).read_text())
    node = values["properties"]["moverPod"]
    assert node["additionalProperties"] is False
    assert set(node["properties"]) == {f.alias for f in api.MoverPod.model_fields.values()}
    assert node["properties"]["securityContext"]["additionalProperties"] is False


def test_operator_flag_takes_the_charts_defaults():
    args = parser().parse_args(
        ["--mover-pod-defaults", json.dumps({"labels": {"a": "b"}, "caBundle": {"name": "ca"}})]
    )
    assert args.mover_pod_defaults.labels == {"a": "b"}
    assert args.mover_pod_defaults.ca_bundle.key == "ca.crt"
    assert parser().parse_args([]).mover_pod_defaults == api.MoverPod()
    with pytest.raises(SystemExit):
        parser().parse_args(["--mover-pod-defaults", '{"labels": {"ferry.dev/x": "1"}}'])


def test_a_field_given_its_default_changes_no_spec_digest():
    """So a field added later with a default (an upgrade) never reads as an edit of a run."""
    plain = api.TransferJobSpec.model_validate(PVC_TO_S3)
    explicit = api.TransferJobSpec.model_validate(
        {
            **PVC_TO_S3,
            "destination": {"s3": {**PVC_TO_S3["destination"]["s3"], "listMetadata": True}},
        }
    )
    assert workload.spec_digests(plain) == workload.spec_digests(explicit)
    changed = api.TransferJobSpec.model_validate(
        {
            **PVC_TO_S3,
            "destination": {"s3": {**PVC_TO_S3["destination"]["s3"], "listMetadata": False}},
        }
    )
    job = workload.build(_body(PVC_TO_S3), plain, workload.Context(), workload.MoverSettings()).job
    assert workload.changed_fields(job, explicit) == []
    assert workload.changed_fields(job, changed) == ["destination"]


def test_a_file_path_and_rename_rules_reach_the_mover():
    """A claim path may name a file; a trailing '/' on the destination names a directory;
    rename rules go to the mover as they are, and a malformed one is refused at admission."""
    from pydantic import ValidationError

    from ferry.mover.endpoints import LocalEndpoint, names_directory, split_endpoint

    job = {
        "source": {"pvc": {"claimName": "data", "path": "isos/big.iso"}},
        "destination": {"pvc": {"claimName": "backup", "path": "isos/"}},
        "rename": ["s/\\.iso$/.img/"],
    }
    out = moverspec.mover_specs(api.TransferJobSpec.model_validate(job), None)
    shard = out.shards[0]
    assert shard.source == ms.LocalSpec(path=f"{moverspec.DATA_DIR}/source/isos/big.iso")
    assert shard.destination == ms.LocalSpec(path=f"{moverspec.DATA_DIR}/destination/isos/")
    assert shard.options.rename == ["s/\\.iso$/.img/"]
    src, dst, options = ms.TransferSpec.model_validate_json(shard.model_dump_json()).to_engine()
    assert split_endpoint(src) == (LocalEndpoint(f"{moverspec.DATA_DIR}/source/isos"), "big.iso")
    assert names_directory(dst) and options.rename == ("s/\\.iso$/.img/",)
    named = {**job, "destination": {"pvc": {"claimName": "backup", "path": "isos/new.img"}}}
    spec = moverspec.mover_specs(api.TransferJobSpec.model_validate(named), None).shards[0]
    assert not names_directory(spec.to_engine()[1])
    with pytest.raises(ValidationError) as exc:
        api.TransferJobSpec.model_validate({**job, "rename": ["s/(/x/"]})
    assert "rename" in str(exc.value) and "invalid regular expression" in str(exc.value)
    with pytest.raises(ValidationError) as exc:
        ms.OptionsSpec.model_validate({"rename": ["s/a/b"]})
    assert "unterminated" in str(exc.value)


# ---------------------------------------------------------------- auditLog, chmod, chown, filesFrom


def _spec_rules() -> list[dict[str, str]]:
    doc = crdgen.crd(api.TransferJobKind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    rules: list[dict[str, str]] = doc["properties"]["spec"]["x-kubernetes-validations"]
    return rules


def test_audit_log_chmod_chown_and_files_from_reach_the_mover():
    job = {
        **PVC_TO_PVC,
        "destination": {"pvc": {"claimName": "backup", "path": "sub"}},
        "mode": "Sync",
        "auditLog": "logs/run.jsonl",
        "chmod": "D755,F644",
        "filesFrom": ["# the two we need", "a.txt", "dir/"],
        "deleteExcluded": True,
    }
    spec = api.TransferJobSpec.model_validate(job)
    (shard,) = moverspec.mover_specs(spec, None).shards
    o = shard.options
    assert (o.audit_log, o.chmod, o.files_from) == ("logs/run.jsonl", "D755,F644", job["filesFrom"])
    _, _, options = shard.to_engine()
    assert options.audit_log == f"{moverspec.DATA_DIR}/destination/sub/logs/run.jsonl"
    assert options.protect == ("logs/run.jsonl",)
    assert options.files_from == ("a.txt", "dir") and options.chmod == "D755,F644"
    assert moverspec.audit_log_where(spec, "ferry-x") == "pvc backup: sub/logs/run.jsonl"


def test_sharded_audit_logs_are_one_file_per_shard_each_protected_by_all():
    job = {**PVC_TO_PVC, "auditLog": "a.log", "parallelism": {"shards": 3}}
    spec = api.TransferJobSpec.model_validate(job)
    shards = moverspec.mover_specs(spec, None).shards
    engine = [s.to_engine()[2] for s in shards]
    assert [o.audit_log.rsplit("/", 1)[1] for o in engine if o.audit_log] == [
        "a.log.0",
        "a.log.1",
        "a.log.2",
    ]
    assert all(o.protect == ("a.log.0", "a.log.1", "a.log.2") for o in engine)
    assert "one file per shard" in str(moverspec.audit_log_where(spec, "ferry-x"))


def test_audit_log_on_stdout_names_kubectl_logs_and_works_for_any_destination():
    spec = api.TransferJobSpec.model_validate({**PVC_TO_S3, "auditLog": "-", "dryRun": True})
    (shard,) = moverspec.mover_specs(spec, None).shards
    assert shard.to_engine()[2].audit_log == "-" and shard.to_engine()[2].protect == ()
    assert "kubectl logs -l job-name=ferry-x" in str(moverspec.audit_log_where(spec, "ferry-x"))


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({"auditLog": "../escape"}, "auditLog"),
        ({"auditLog": "/abs/path"}, "auditLog"),
        ({"auditLog": "a/./b"}, "auditLog"),
        ({"auditLog": "a//b"}, "auditLog"),
        ({"auditLog": ""}, "auditLog"),
        ({"chmod": "F999"}, "chmod"),
        ({"chmod": "x=q"}, "chmod"),
        ({"chown": "a:b:c"}, "chown"),
        ({"filesFrom": ["ok", "../up"]}, "filesFrom line 2"),
        ({"filesFrom": ["x" * 1025]}, "filesFrom"),
        ({"filesFrom": ["f"] * 1001}, "filesFrom"),
        ({"deleteExcluded": True, "mode": "Copy", "filesFrom": ["a"]}, "deleteExcluded"),
    ],
)
def test_record_and_transform_refusals_name_the_field(extra: dict[str, Any], says: str):
    with pytest.raises(ValidationError) as exc:
        api.TransferJobSpec.model_validate({**PVC_TO_PVC, **extra})
    assert says in str(exc.value)
    assert "--chmod" not in str(exc.value) and "--chown" not in str(exc.value)


def test_a_file_audit_log_at_any_destination_in_the_model_and_the_crd():
    """Lifted: a remote destination's mover uploads the file when the run ends."""
    spec = api.TransferJobSpec.model_validate({**PVC_TO_S3, "auditLog": "a.log"})
    shard = moverspec.mover_specs(spec, None).shards[0]
    assert shard.audit_upload() == "a.log" and shard.to_engine()[2].protect == ("a.log",)
    where = str(moverspec.audit_log_where(spec, "ferry-x"))
    assert where.startswith("s3 ") and "a.log, uploaded when each run ends" in where
    assert not any("auditLog" in r["rule"] for r in _spec_rules())
    props = crdgen.crd(api.TransferJobKind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    audit = props["properties"]["spec"]["properties"]["auditLog"]
    assert audit["pattern"] == api.AUDIT_LOG_PATTERN and audit["maxLength"] == 1024
    ff = props["properties"]["spec"]["properties"]["filesFrom"]
    assert ff["maxItems"] == api.FILES_FROM_MAX and ff["items"]["maxLength"] == 1024
    rule = next(r for r in _spec_rules() if r["message"].startswith("deleteExcluded"))
    assert "has(self.filesFrom)" in rule["rule"]


def test_chown_and_chmod_need_a_destination_that_holds_them():
    smb = {"smb": {"host": "files", "share": "s"}}
    with pytest.raises(ValidationError, match="chown needs a destination that holds owners"):
        api.TransferJobSpec.model_validate({**PVC_TO_S3, "chown": "1:1"})
    with pytest.raises(ValidationError, match="chmod needs a destination that holds modes"):
        api.TransferJobSpec.model_validate({**PVC_TO_PVC, "destination": smb, "chmod": "F644"})
    api.TransferJobSpec.model_validate({**PVC_TO_S3, "chmod": "F644"})
    assert {api.CHOWN_RULE["rule"], api.CHMOD_RULE["rule"]} <= {r["rule"] for r in _spec_rules()}


def test_the_audit_log_pattern_is_the_relative_path_check():
    """The CRD's pattern (what the API server enforces) agrees with the mover's own check."""
    import re

    for value in ["a", "a/b.jsonl", ".hidden", "..x", "a/..b/c", "-", "x-y"]:
        assert re.fullmatch(api.AUDIT_LOG_PATTERN, value), value
        assert value == "-" or ms.check_relative(value, "auditLog")
    for value in ["", "/a", "a/", "a//b", ".", "..", "a/../b", "./a", "a/.", "a\x00b"]:
        assert not re.fullmatch(api.AUDIT_LOG_PATTERN, value), value


def test_files_from_beyond_the_configmaps_room_is_refused_naming_it():
    big = [f"{i:04d}/" + "x" * 1000 for i in range(400)]  # ~400 KiB
    api.TransferJobSpec.model_validate({**PVC_TO_PVC, "filesFrom": big})
    with pytest.raises(ValidationError, match=r"filesFrom: .* 2 shards"):
        api.TransferJobSpec.model_validate(
            {**PVC_TO_PVC, "filesFrom": big, "parallelism": {"shards": 2}}
        )
    # Measured as the ConfigMap holds it: a non-ASCII name is escaped there (6 bytes a char).
    wide = [f"{i:03d}/" + "é" * 1000 for i in range(150)]  # 300 KB of UTF-8, 900 KB as JSON
    with pytest.raises(ValidationError, match="filesFrom"):
        api.TransferJobSpec.model_validate({**PVC_TO_PVC, "filesFrom": wide})
    tj = api.TransferJobSpec.model_validate({**PVC_TO_PVC, "filesFrom": big})
    cm = workload.config_map(_body(PVC_TO_PVC), moverspec.mover_specs(tj, None).shards)
    assert len(cm["data"]["spec-0.json"]) < api.FILES_FROM_ROOM + 64 * 1024


def test_chown_needs_the_privileged_namespace_and_names_chown():
    spec = {**PVC_TO_PVC, "chown": "1000:1000"}
    tj = api.TransferJobSpec.model_validate(spec)
    with pytest.raises(moverspec.InvalidSpec) as exc:
        workload.build(_body(spec), tj, workload.Context(), workload.MoverSettings())
    assert exc.value.field == "spec.chown" and exc.value.reason == "PrivilegeNotGranted"
    assert str(exc.value).startswith("spec.chown: chown needs root")
    ctx = workload.Context(namespace_privileged=True)
    w = workload.build(_body(spec), tj, ctx, workload.MoverSettings())
    assert w.privileged and w.job["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 0
    other = {**spec, "pod": {"securityContext": {"runAsUser": 1000}}}
    with pytest.raises(moverspec.InvalidSpec) as exc:
        workload.build(
            _body(other), api.TransferJobSpec.model_validate(other), ctx, workload.MoverSettings()
        )
    assert exc.value.field == "spec.pod.securityContext.runAsUser" and "chown" in str(exc.value)


def test_a_wire_pair_sends_a_file_audit_log_to_the_receiver():
    """The sender uploads it over ferry:// to the receiver, which serves the claim's path."""
    spec = {**PVC_TO_PVC, "auditLog": "a.log"}
    tj = api.TransferJobSpec.model_validate(spec)
    cm, _ = wirepair.sender(_body(spec), tj, workload.Context(), workload.MoverSettings(), WIRE_IP)
    shard = ms.TransferSpec.model_validate_json(cm["data"]["spec-0.json"])
    assert shard.destination.kind == "ferry" and shard.audit_upload() == "a.log"
    assert shard.to_engine()[2].protect == ("a.log",)
    stdout = {**PVC_TO_PVC, "auditLog": "-"}
    cm, _ = wirepair.sender(
        _body(stdout),
        api.TransferJobSpec.model_validate(stdout),
        workload.Context(),
        workload.MoverSettings(),
        WIRE_IP,
    )
    assert json.loads(cm["data"]["spec-0.json"])["options"]["auditLog"] == "-"


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from(["a", ".", "/", "-", "\x00", "é"]), max_size=12))
def test_the_crd_pattern_and_the_mover_agree_on_any_audit_path(value: str):
    """What the API server lets through (the pattern), the mover's spec accepts, and the
    reverse: no path that escapes the root passes either."""
    import re

    try:
        ms.check_relative(value, "auditLog")
        mover_ok = True
    except ValueError:
        mover_ok = False
    assert bool(re.fullmatch(api.AUDIT_LOG_PATTERN, value)) == (mover_ok or value == "-")


def test_files_from_a_configmap_is_mounted_and_read_by_the_mover(tmp_path):
    job = {
        **PVC_TO_PVC,
        "mode": "Sync",
        "deleteExcluded": True,
        "filesFromConfigMap": {"name": "lists", "key": "a.txt"},
        "parallelism": {"shards": 2},
    }
    spec = api.TransferJobSpec.model_validate(job)
    specs = moverspec.mover_specs(spec, None)
    mount = next(m for m in specs.mounts if isinstance(m, moverspec.ConfigMapMount))
    assert (mount.config_map_name, mount.key, mount.path) == (
        "lists",
        "a.txt",
        "/etc/ferry/files-from",
    )
    assert {s.options.files_from_file for s in specs.shards} == {moverspec.FILES_FROM_FILE}
    assert all(s.options.files_from is None for s in specs.shards)
    vols, into = workload.volumes(specs.mounts)
    assert {
        "name": "files-from",
        "configMap": {"name": "lists", "items": [{"key": "a.txt", "path": "list"}]},
    } in vols
    assert {"name": "files-from", "mountPath": "/etc/ferry/files-from", "readOnly": True} in into
    # The mover reads the mounted file as --files-from reads one.
    listed = tmp_path / "list"
    listed.write_text("# nightly\n/a\nb/\n")
    doc = json.loads(specs.shards[0].model_dump_json(by_alias=True, exclude_none=True))
    doc["options"]["filesFromFile"] = str(listed)
    assert ms.TransferSpec.model_validate(doc).to_engine()[2].files_from == ("a", "b")
    listed.write_text("ok\nx/../y\n")
    with pytest.raises(ms.FerryError, match="filesFromConfigMap line 2"):
        ms.TransferSpec.model_validate(doc).to_engine()
    listed.write_bytes(b"a\n" * (ms.MAX_FILES_FROM_FILE // 2 + 1))
    with pytest.raises(ms.FerryError, match="filesFromConfigMap: more than 1048576 bytes"):
        ms.TransferSpec.model_validate(doc).to_engine()


def test_files_from_inline_and_from_a_configmap_are_exclusive():
    both = {**PVC_TO_PVC, "filesFrom": ["a"], "filesFromConfigMap": {"name": "l", "key": "k"}}
    with pytest.raises(ValidationError, match="filesFrom and filesFromConfigMap are exclusive"):
        api.TransferJobSpec.model_validate(both)
    assert api.FILES_FROM_ONE_RULE in _spec_rules()
    with pytest.raises(ValidationError, match="key"):
        api.TransferJobSpec.model_validate({**PVC_TO_PVC, "filesFromConfigMap": {"name": "l"}})
    rule = next(r for r in _spec_rules() if r["message"].startswith("deleteExcluded"))
    assert "has(self.filesFromConfigMap)" in rule["rule"]
