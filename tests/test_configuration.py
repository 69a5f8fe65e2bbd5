"""Configuration: keywords > environment > defaults, validation that names the variable."""

from __future__ import annotations

import logging
import os

import pytest

from langfuse_dq import Langfuse
from langfuse_dq.config import DEFAULT_HOST, resolve_config

KEYS = {"LANGFUSE_PUBLIC_KEY": "pk-env", "LANGFUSE_SECRET_KEY": "sk-env-secret"}


def test_defaults_apply_without_keywords_or_environment() -> None:
    cfg = resolve_config(environ={})
    assert cfg.host == DEFAULT_HOST
    assert cfg.transport == "otlp"
    assert cfg.autospawn is True and cfg.enabled is True
    assert cfg.sample_rate == 1.0
    assert cfg.batch_size == 2048 and cfg.flush_interval == 1.0
    assert cfg.max_queue_bytes == 1 << 30
    assert cfg.queue_dir.endswith("langfuse-dq")
    assert not cfg.has_keys


def test_environment_overrides_defaults_and_keywords_override_environment() -> None:
    env = {
        **KEYS,
        "LANGFUSE_HOST": "http://host-from-langfuse-host:3000",
        "LANGFUSE_BATCH_SIZE": "64",
        "LANGFUSE_FLUSH_INTERVAL": "2.5",
        "LANGFUSE_DQ_TRANSPORT": "ingestion",
        "LANGFUSE_SAMPLE_RATE": "0.25",
        "LANGFUSE_RELEASE": "rel-1",
        "LANGFUSE_TRACING_ENVIRONMENT": "staging",
        "LANGFUSE_DQ_MAX_BYTES": "512MB",
        "LANGFUSE_TIMEOUT": "3",
    }
    cfg = resolve_config(environ=env)
    assert cfg.public_key == "pk-env" and cfg.secret_key == "sk-env-secret"
    assert cfg.host == "http://host-from-langfuse-host:3000"
    assert (cfg.batch_size, cfg.flush_interval, cfg.transport) == (64, 2.5, "ingestion")
    assert (cfg.sample_rate, cfg.release, cfg.environment) == (0.25, "rel-1", "staging")
    assert cfg.max_queue_bytes == 512_000_000 and cfg.timeout == 3.0

    cfg = resolve_config(environ=env, batch_size=8, host="https://kw.example", transport="otlp")
    assert (cfg.batch_size, cfg.host, cfg.transport) == (8, "https://kw.example", "otlp")


def test_base_url_wins_over_host_and_flush_at_is_the_fallback_batch_size() -> None:
    env = {
        "LANGFUSE_BASE_URL": "http://base-url:1",
        "LANGFUSE_HOST": "http://host:2",
        "LANGFUSE_FLUSH_AT": "33",
    }
    cfg = resolve_config(environ=env)
    assert cfg.host == "http://base-url:1"
    assert cfg.batch_size == 33
    assert resolve_config(environ={**env, "LANGFUSE_BATCH_SIZE": "7"}).batch_size == 7


@pytest.mark.parametrize("text", ["true", "TRUE", "True", "1", "yes", "YES", "On"])
def test_booleans_accept_true_spellings_in_any_case(text: str) -> None:
    assert resolve_config(environ={"LANGFUSE_DQ_AUTOSPAWN": text}).autospawn is True


@pytest.mark.parametrize("text", ["false", "FALSE", "0", "no", "No", "off"])
def test_booleans_accept_false_spellings_in_any_case(text: str) -> None:
    assert resolve_config(environ={"LANGFUSE_TRACING_ENABLED": text}).enabled is False


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LANGFUSE_DQ_AUTOSPAWN", "maybe"),
        ("LANGFUSE_TRACING_ENABLED", "2"),
        ("LANGFUSE_BATCH_SIZE", "many"),
        ("LANGFUSE_BATCH_SIZE", "0"),
        ("LANGFUSE_FLUSH_AT", "-3"),
        ("LANGFUSE_FLUSH_INTERVAL", "0"),
        ("LANGFUSE_FLUSH_INTERVAL", "soon"),
        ("LANGFUSE_SAMPLE_RATE", "1.5"),
        ("LANGFUSE_SAMPLE_RATE", "half"),
        ("LANGFUSE_DQ_TRANSPORT", "grpc"),
        ("LANGFUSE_DQ_MAX_BYTES", "lots"),
        ("LANGFUSE_TIMEOUT", "-1"),
        ("LANGFUSE_TRACING_ENVIRONMENT", "Production"),
        ("LANGFUSE_TRACING_ENVIRONMENT", "langfuse-prod"),
        ("LANGFUSE_BASE_URL", "cloud.langfuse.com"),
        ("LANGFUSE_DQ_FULL_POLICY", "whatever"),
    ],
)
def test_invalid_environment_value_raises_value_error_naming_the_variable(
    variable: str, value: str
) -> None:
    with pytest.raises(ValueError, match=variable):
        resolve_config(environ={variable: value})


@pytest.mark.parametrize(
    ("keyword", "value", "error"),
    [
        ("batch_size", 0, ValueError),
        ("batch_size", "10", TypeError),
        ("flush_interval", -1.0, ValueError),
        ("sample_rate", 2, ValueError),
        ("autospawn", "sometimes", TypeError),
        ("enabled", 3, TypeError),
        ("transport", "http", ValueError),
        ("mask", "not callable", TypeError),
        ("host", "ftp://example", ValueError),
    ],
)
def test_invalid_keyword_raises_naming_the_keyword(
    keyword: str, value: object, error: type
) -> None:
    with pytest.raises(error, match=keyword):
        Langfuse(**{keyword: value})  # type: ignore[arg-type]


def test_unknown_constructor_keyword_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="flush_at"):
        Langfuse(flush_at=10)  # type: ignore[call-arg]


def test_missing_keys_disable_the_client_with_one_warning_and_cheap_no_ops(
    tmp_path: os.PathLike[str], caplog: pytest.LogCaptureFixture
) -> None:
    import langfuse_dq.client as client_module

    client_module._warned.discard("keys")
    queue_dir = os.path.join(tmp_path, "never-created")
    with caplog.at_level(logging.WARNING, logger="langfuse_dq"):
        first = Langfuse(queue_dir=queue_dir)
        second = Langfuse(queue_dir=queue_dir, public_key="pk-only")
    warnings = [r for r in caplog.records if "disabled" in r.getMessage()]
    assert len(warnings) == 1
    for lf in (first, second):
        assert not lf.enabled
        trace = lf.trace(name="t", input={"a": 1})
        span = trace.span(name="s")
        span.end(output="x")
        trace.generation(name="g").end()
        trace.score(name="s", value=1)
        assert len(trace.id) == 32 and len(span.id) == 16
        assert lf.flush(timeout=0.1) is True
    assert not os.path.exists(queue_dir), "a disabled client must not touch the disk"


def test_repr_of_client_and_config_never_shows_the_secret() -> None:
    secret = "sk-lf-never-print-me"
    lf = Langfuse(public_key="pk", secret_key=secret, enabled=False)
    assert secret not in repr(lf)
    assert secret not in repr(lf.config)
    assert secret not in str(lf.config)
    assert "secret_key='***'" in repr(lf.config)


def test_flusher_environment_carries_the_secret_for_the_child_only() -> None:
    cfg = resolve_config(environ={}, public_key="pk", secret_key="sk-child", host="http://h:1")
    env = cfg.flusher_environment()
    assert env["LANGFUSE_SECRET_KEY"] == "sk-child"
    assert env["LANGFUSE_BASE_URL"] == "http://h:1"
    again = resolve_config(environ=env)
    assert (again.public_key, again.secret_key, again.host) == ("pk", "sk-child", "http://h:1")
