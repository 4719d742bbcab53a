"""kubectl's ``-l key=value`` as `meshkit get pod -l` reads it (equality terms only, the bad one named)."""

from __future__ import annotations

import pytest

from meshkit.cli.kube_tables import parse_selector


def test_equality_terms() -> None:
    assert parse_selector("app=sleep") == {"app": "sleep"}
    assert parse_selector("run=my-nginx, version=v1") == {"run": "my-nginx", "version": "v1"}
    assert parse_selector(None) == {} and parse_selector("") == {}


@pytest.mark.parametrize("text", ["app", "app!=sleep", "app==sleep", "=x", "app in (a,b)"])
def test_other_selector_forms_are_refused_by_name(text: str) -> None:
    with pytest.raises(ValueError, match="is not key=value"):
        parse_selector(text)
