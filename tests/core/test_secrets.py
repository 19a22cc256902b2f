"""Credentials inside URIs: found, and hidden in anything written or printed."""

from __future__ import annotations

import pytest

from pipelines.core.secrets import has_secret, redact


@pytest.mark.parametrize(
    "uri",
    [
        "http://user:pa55word@mlflow.internal:5000",
        "postgresql://mlflow:pa55word@db:5432/mlflow",
        "https://token:pa55word@host/path?x=1",
    ],
)
def test_a_password_inside_a_uri_is_found_and_hidden(uri):
    assert has_secret(uri)
    assert "pa55word" not in redact(uri) and "***@" in redact(uri)


@pytest.mark.parametrize(
    "uri", ["http://mlflow.internal:5000", "sqlite:////tmp/mlflow.db", "file:///x"]
)
def test_a_uri_without_a_password_is_left_alone(uri):
    assert not has_secret(uri) and redact(uri) == uri
