"""The generated CRDs: in sync with the models, structural, status fully declared."""

from __future__ import annotations

from typing import Any

import yaml

from ferry.operator import api, crdgen


def _walk(node: Any, path: str = ""):
    if isinstance(node, dict):
        yield path, node
        for k, v in node.items():
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")


def test_checked_in_crds_match_models():
    stale = crdgen.stale_files()
    assert stale == [], f"run `python -m ferry.operator.crdgen`; stale: {stale}"


def test_check_mode_detects_drift(tmp_path):
    assert crdgen.main(["--root", str(tmp_path)]) == 0
    target = tmp_path / "crds" / crdgen.filename(api.TransferJobKind)
    target.write_text(target.read_text() + "# edited\n")
    assert crdgen.main(["--check", "--root", str(tmp_path)]) == 1


def test_schemas_are_structural():
    for kind in api.KINDS:
        schema = crdgen.crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for path, node in _walk(schema):
            for banned in ("$ref", "anyOf", "oneOf", "allOf", "title", "$defs", "const"):
                assert banned not in node, f"{kind.kind}{path} has {banned}"
            if "properties" in node:
                assert node.get("type") == "object", f"{kind.kind}{path}"


def test_status_fully_declared_with_subresource():
    doc = yaml.safe_load(crdgen.render(api.TransferJobKind))
    version = doc["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    for field in (
        "phase",
        "conditions",
        "progress",
        "result",
        "startTime",
        "completionTime",
        "observedGeneration",
        "traceID",
    ):
        assert field in status
    shard = status["progress"]["properties"]["shards"]["additionalProperties"]["properties"]
    assert {"bytesDone", "bytesTotal", "lastProgressTime", "finished"} <= set(shard)
    assert "x-kubernetes-preserve-unknown-fields" not in str(status)


def test_printer_columns_short_names_and_category():
    tj = crdgen.crd(api.TransferJobKind)
    cols = [c["name"] for c in tj["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert cols[:4] == ["Phase", "Ready", "Progress", "Rate"] and cols[-1] == "Age"
    assert tj["spec"]["names"]["shortNames"] == ["tj"]
    assert tj["spec"]["names"]["categories"] == ["ferry"]
    ts = crdgen.crd(api.TransferScheduleKind)
    assert [c["name"] for c in ts["spec"]["versions"][0]["additionalPrinterColumns"]][:6] == [
        "Schedule",
        "Suspend",
        "Ready",
        "Last Result",
        "Last",
        "Next",
    ]
    assert crdgen.crd(api.MoverPoolKind)["spec"]["scope"] == "Cluster"


def test_cel_rules_enums_and_defaults_present():
    spec = crdgen.crd(api.TransferJobKind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
        "properties"
    ]["spec"]
    rules = spec["properties"]["source"]["x-kubernetes-validations"]
    assert "exactly one" in rules[0]["message"]
    assert spec["properties"]["mode"]["enum"] == ["Copy", "Sync"]
    assert spec["properties"]["mode"]["default"] == "Copy"
    assert "pattern" in spec["properties"]["bandwidth"]
    res = spec["properties"]["placement"]["properties"]["resources"]
    assert "isQuantity" in res["properties"]["limits"]["x-kubernetes-validations"][0]["rule"]
    assert res["properties"]["requests"]["additionalProperties"] == {
        "x-kubernetes-int-or-string": True
    }


def _root_rules(kind: type[api.Kind]) -> list[dict[str, str]]:
    doc = yaml.safe_load(crdgen.render(kind))
    rules: list[dict[str, str]] = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"].get(
        "x-kubernetes-validations", []
    )
    return rules


def test_transfer_defining_fields_have_a_transition_rule_naming_them():
    rules = {r["fieldPath"]: r for r in _root_rules(api.TransferJobKind)}
    spec = crdgen.crd(api.TransferJobKind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    fields = set(spec["properties"]["spec"]["properties"])
    # Every spec field is either mutable or guarded: a new field is fixed unless listed.
    assert {f".spec.{f}" for f in fields - set(api.MUTABLE_SPEC_FIELDS)} == set(rules)
    assert {"source", "destination", "mode", "filters", "parallelism", "dryRun"} <= fields
    for path, rule in rules.items():
        field = path.removeprefix(".")
        assert rule["message"].startswith(f"{field} cannot change")
        assert rule["reason"] == "FieldValueForbidden"
        # Editable only while the operator refused the spec and built no Job.
        assert rule["rule"].startswith(
            "(has(oldSelf.status) && !has(oldSelf.status.jobName) && has(oldSelf.status.reason)"
            " && oldSelf.status.reason in ['InvalidSpec', 'PrivilegeNotGranted', 'NameConflict',"
            " 'PoolNotFound', 'PoolInvalid'])"
            " || "
        )
    assert rules[".spec.source"]["rule"].endswith("|| self.spec.source == oldSelf.spec.source")
    assert rules[".spec.mode"]["rule"].endswith("|| self.spec.mode == oldSelf.spec.mode")
    # Optional fields: adding or removing one is a change too.
    assert rules[".spec.filters"]["rule"].endswith(
        "|| (has(self.spec.filters) ? has(oldSelf.spec.filters)"
        " && self.spec.filters == oldSelf.spec.filters : !has(oldSelf.spec.filters))"
    )
    assert all(f"spec.{m}" not in str(rules) for m in api.MUTABLE_SPEC_FIELDS)


def test_editable_matches_the_cel_condition():
    assert api.editable({"phase": "Failed", "reason": "InvalidSpec"})
    assert not api.editable({"phase": "Failed", "reason": "InvalidSpec", "jobName": "ferry-x"})
    assert not api.editable({"phase": "Failed", "reason": "AuthFailed"})
    assert api.editable({"phase": "Pending", "reason": "PoolNotFound"})
    assert not api.editable({"phase": "Pending", "reason": "Waiting", "jobName": "ferry-x"})
    assert not api.editable({})


def test_schedule_templates_and_pools_stay_editable():
    assert _root_rules(api.TransferScheduleKind) == [] and _root_rules(api.MoverPoolKind) == []
    assert "oldSelf" not in crdgen.render(api.TransferScheduleKind)
