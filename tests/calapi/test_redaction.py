"""Secrets in URIs (tracking servers, Redis) never reach /info, logs or the terminal."""

from __future__ import annotations

import pytest

from calapi.redaction import redact_uri
from calapi.serving.environment import describe_environment


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("https://user:pa55@mlflow.example/api", "https://user:***@mlflow.example/api"),
        ("https://ghp_token123@mlflow.example", "https://***@mlflow.example"),
        ("http://mlflow:5000", "http://mlflow:5000"),
        ("http://h/x?auth=a1&pwd=p2&page=3", "http://h/x?auth=***&pwd=***&page=3"),
        ("http://h/?api_key=k&access_token=t&sig=s", "http://h/?api_key=***&access_token=***&sig=***"),
        ("http://h/?X-Amz-Signature=s&X-Amz-Credential=c", "http://h/?X-Amz-Signature=***&X-Amz-Credential=***"),
        ("redis://calops:pw@127.0.0.1:1/2?prefix=x:", "redis://calops:***@127.0.0.1:1/2?prefix=x:"),
        ("redis://h:6379/0?password=pw", "redis://h:6379/0?password=***"),
        ("databricks", "databricks"),
    ],
)  # fmt: skip
def test_secrets_in_a_uri_are_replaced_and_the_rest_is_kept(uri: str, shown: str) -> None:
    """Passwords, bare user parts and auth/pwd/token/key/secret/sig query values become ***."""
    assert redact_uri(uri) == shown


def test_info_shows_the_tracking_uri_without_its_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """/info's MLFLOW_TRACKING_URI hides the query's auth and pwd values and the password."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://u:hunter2@m.example/?auth=s3&pwd=s4&x=1")
    shown = describe_environment()["MLFLOW_TRACKING_URI"]
    assert shown == "https://u:***@m.example/?auth=***&pwd=***&x=1"
    assert not {"hunter2", "s3", "s4"} & set(shown.replace("=", " ").replace("&", " ").split())


@pytest.mark.parametrize(
    "uri",
    [
        "sqlite:////tmp/project/.calops/mlflow.db",
        "sqlite:///relative/mlflow.db",
        "file:///tmp/mlruns",
        "http://127.0.0.1:5000",
        "redis://localhost:6379/0?db=1",
    ],
)
def test_a_uri_without_secrets_is_shown_exactly_as_written(uri: str) -> None:
    assert redact_uri(uri) == uri
