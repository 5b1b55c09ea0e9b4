"""Registry-mode settings: flag and environment, credentials never shown, operator mistakes in one sentence."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
from conftest import ROOT

from orders_dlq.errors import UsageError
from orders_dlq.local_kafka import free_port
from orders_dlq.registry import registry_settings


def args(url=None):
    return argparse.Namespace(schema_registry=url)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in ("SCHEMA_REGISTRY_URL", "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO", "SCHEMA_REGISTRY_BEARER_AUTH_TOKEN",
                 "SCHEMA_REGISTRY_BEARER_AUTH_LOGICAL_CLUSTER", "SCHEMA_REGISTRY_BEARER_AUTH_IDENTITY_POOL_ID"):
        monkeypatch.delenv(name, raising=False)


def test_schemaless_without_flag_or_environment():
    assert registry_settings(args()) is None


def test_the_flag_beats_the_environment(monkeypatch):
    monkeypatch.setenv("SCHEMA_REGISTRY_URL", "http://from-env:8081")
    assert registry_settings(args()).url == "http://from-env:8081"
    assert registry_settings(args("http://from-flag:8081")).url == "http://from-flag:8081"


def test_credentials_in_the_url_become_basic_auth_and_are_never_shown():
    settings = registry_settings(args("https://alice:s3cret@registry.example:8443/apis/ccompat/v7"))
    assert settings.url == "https://registry.example:8443/apis/ccompat/v7"
    assert settings.basic_auth_user_info == "alice:s3cret"
    assert "s3cret" not in settings.shown_url and settings.client_config()["basic.auth.user.info"] == "alice:s3cret"


def test_bearer_token_from_the_environment(monkeypatch):
    monkeypatch.setenv("SCHEMA_REGISTRY_BEARER_AUTH_TOKEN", "tok")
    config = registry_settings(args("http://r:8081")).client_config()
    assert config["bearer.auth.credentials.source"] == "STATIC_TOKEN" and config["bearer.auth.token"] == "tok"


def test_a_bad_user_info_is_refused_without_echoing_it(monkeypatch):
    monkeypatch.setenv("SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO", "no-colon-password")
    with pytest.raises(UsageError) as error:
        registry_settings(args("http://r:8081"))
    assert "no-colon-password" not in str(error.value)


def run(script, *argv, env=None):
    return subprocess.run([sys.executable, str(ROOT / script), *argv], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env={"PATH": "/usr/bin:/bin", **(env or {})})


def test_a_url_that_is_no_http_url_is_a_usage_error():
    result = run("producer.py", "--schema-registry", "ftp://registry", "-c", "1")
    assert result.returncode == 2
    assert result.stderr == ("error: --schema-registry (SCHEMA_REGISTRY_URL) must be an http:// or https:// URL, "
                             "got 'ftp://registry'\n")


def test_an_unreachable_registry_is_one_sentence_without_the_password():
    port = free_port()  # nothing listens there
    result = run("producer.py", "--schema-registry", f"http://bob:hunter2@127.0.0.1:{port}", "-c", "1")
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: the schema registry at http://127.0.0.1:{port} could not register")
    assert result.stderr.count("\n") == 1 and "hunter2" not in result.stderr and "Traceback" not in result.stderr


def test_compatibility_needs_a_registry():
    result = run("setup_dlq.py", "--compatibility", "FULL")
    assert result.returncode == 2
    assert result.stderr == "error: --compatibility only makes sense with --schema-registry (SCHEMA_REGISTRY_URL)\n"
