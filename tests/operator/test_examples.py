"""Every shipped example validates against the models the CRDs are generated from."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ferry.operator import api

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))
SPECS = {k.kind: k.spec for k in api.KINDS}


def test_there_are_examples_of_every_kind():
    kinds = {yaml.safe_load(p.read_text())["kind"] for p in EXAMPLES}
    assert kinds == set(SPECS)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_valid(path):
    doc = yaml.safe_load(path.read_text())
    assert doc["apiVersion"] == api.API_VERSION
    SPECS[doc["kind"]].model_validate(doc["spec"])
