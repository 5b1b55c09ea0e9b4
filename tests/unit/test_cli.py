"""Settings layering, Kafka connection options, -X overrides, secret redaction, number parsers."""

from __future__ import annotations

import argparse
import logging
import math

import pytest

from orders_dlq import cli
from orders_dlq.cli import build_parser
from orders_dlq.errors import EXIT_USAGE, ToolFailure, UsageError
from orders_dlq.settings import (
    KafkaSettings,
    kafka_settings,
    non_negative,
    parse_client_overrides,
    positive,
    ratio,
    redact,
    setting,
)

ENV_NAMES = ("KAFKA_BOOTSTRAP_SERVERS", "ORDERS_TOPIC", "DLQ_TOPIC", "KAFKA_CLIENT_CONFIG", "SOME_NUMBER")


@pytest.fixture
def env(monkeypatch):
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def args_of(*argv):
    return build_parser("test", "test -b host:9092").parse_args(list(argv))


# -- setting() -----------------------------------------------------------------------------------

def test_setting_default(env):
    assert setting(argparse.Namespace(n=None), "n", "SOME_NUMBER", 7, int) == 7
    assert setting(argparse.Namespace(), "n", "SOME_NUMBER", 7, int) == 7  # no such attribute


def test_setting_environment_beats_default(env):
    env.setenv("SOME_NUMBER", " 12 ")
    assert setting(argparse.Namespace(n=None), "n", "SOME_NUMBER", 7, int) == 12


def test_setting_blank_environment_is_default(env):
    env.setenv("SOME_NUMBER", "   ")
    assert setting(argparse.Namespace(n=None), "n", "SOME_NUMBER", 7, int) == 7


def test_setting_flag_beats_environment(env):
    env.setenv("SOME_NUMBER", "12")
    assert setting(argparse.Namespace(n=3), "n", "SOME_NUMBER", 7, int) == 3
    assert setting(argparse.Namespace(n=0), "n", "SOME_NUMBER", 7, int) == 0  # a falsy flag still wins


def test_setting_flag_is_not_reparsed(env):
    assert setting(argparse.Namespace(n="raw"), "n", "SOME_NUMBER", 7, int) == "raw"


def test_invalid_environment_value_is_a_usage_error_naming_the_variable(env):
    env.setenv("SOME_NUMBER", "-4")
    with pytest.raises(UsageError) as info:
        setting(argparse.Namespace(n=None), "n", "SOME_NUMBER", 7, positive(int))
    assert str(info.value) == ("SOME_NUMBER='-4' (from the environment or .env) is not valid: "
                               "must be greater than 0, got -4")
    env.setenv("SOME_NUMBER", "abc")
    with pytest.raises(UsageError, match=r"^SOME_NUMBER='abc' \(from the environment or \.env\) is not valid: "):
        setting(argparse.Namespace(n=None), "n", "SOME_NUMBER", 7, int)


# -- kafka_settings() ----------------------------------------------------------------------------

def test_kafka_settings_defaults(env):
    assert kafka_settings(args_of()) == KafkaSettings("localhost:9092", "orders", "orders.DLQ", {})


def test_dlq_topic_defaults_to_topic_dot_dlq(env):
    assert kafka_settings(args_of("-t", "payments")).dlq_topic == "payments.DLQ"
    env.setenv("ORDERS_TOPIC", "from-env")
    assert kafka_settings(args_of()).dlq_topic == "from-env.DLQ"
    assert kafka_settings(args_of("-t", "flag")).topic == "flag"


def test_kafka_settings_environment_and_flags(env):
    env.setenv("KAFKA_BOOTSTRAP_SERVERS", "a:1,b:2")
    env.setenv("DLQ_TOPIC", "dead")
    settings = kafka_settings(args_of())
    assert (settings.bootstrap_servers, settings.topic, settings.dlq_topic) == ("a:1,b:2", "orders", "dead")
    settings = kafka_settings(args_of("-b", "c:3", "--dlq-topic", "dead2"))
    assert (settings.bootstrap_servers, settings.dlq_topic) == ("c:3", "dead2")


def test_topic_equal_to_dlq_topic_is_a_usage_error(env):
    with pytest.raises(UsageError, match=r"^--dlq-topic \(DLQ_TOPIC\) must differ from -t/--topic "
                                         r"\(ORDERS_TOPIC\): both are 'same'$"):
        kafka_settings(args_of("-t", "same", "--dlq-topic", "same"))
    env.setenv("DLQ_TOPIC", "orders")
    with pytest.raises(UsageError):
        kafka_settings(args_of())


@pytest.mark.parametrize("argv, message", [
    (["-t", ""], "-t/--topic (ORDERS_TOPIC) '' is empty or contains spaces"),
    (["-t", "my topic"], "-t/--topic (ORDERS_TOPIC) 'my topic' is empty or contains spaces"),
    (["-b", "host :9092"], "-b/--bootstrap-servers (KAFKA_BOOTSTRAP_SERVERS) 'host :9092' is empty or contains spaces"),
    (["--dlq-topic", "a\tb"], "--dlq-topic (DLQ_TOPIC) 'a\\tb' is empty or contains spaces"),
])
def test_empty_or_spaced_names_are_usage_errors(env, argv, message):
    with pytest.raises(UsageError) as info:
        kafka_settings(args_of(*argv))
    assert str(info.value) == message


def test_x_overrides(env):
    settings = kafka_settings(args_of("-X", "security.protocol=SASL_SSL", "-X", "sasl.password=a=b,c",
                                      "-X", " linger.ms =5", "-X", "client.id="))
    assert settings.client_overrides == {"security.protocol": "SASL_SSL", "sasl.password": "a=b,c",
                                         "linger.ms": "5", "client.id": ""}


def test_kafka_client_config_environment(env):
    env.setenv("KAFKA_CLIENT_CONFIG", "security.protocol=SSL, linger.ms=5,,acks=all")
    settings = kafka_settings(args_of())
    assert settings.client_overrides == {"security.protocol": "SSL", "linger.ms": "5", "acks": "all"}


def test_x_flag_beats_kafka_client_config(env):
    env.setenv("KAFKA_CLIENT_CONFIG", "acks=1,linger.ms=5")
    settings = kafka_settings(args_of("-X", "acks=all"))
    assert settings.client_overrides == {"acks": "all", "linger.ms": "5"}


def test_client_config_overrides_win(env):
    settings = kafka_settings(args_of("-b", "h:1", "-X", "acks=1", "-X", "bootstrap.servers=other:2"))
    assert settings.client_config(acks="all", **{"enable.idempotence": True}) == {
        "bootstrap.servers": "other:2", "acks": "1", "enable.idempotence": True}


def test_x_without_equals_is_a_usage_error(env):
    with pytest.raises(UsageError) as info:
        kafka_settings(args_of("-X", "foo"))
    assert str(info.value) == "-X number 1 is not of the form KEY=VALUE"


def test_x_with_empty_key_does_not_echo_the_value(env):
    with pytest.raises(UsageError) as info:
        kafka_settings(args_of("-X", "=hunter2"))
    assert "hunter2" not in str(info.value)
    assert str(info.value) == "-X number 1 is not of the form KEY=VALUE"


def test_kafka_client_config_error_names_the_variable(env):
    env.setenv("KAFKA_CLIENT_CONFIG", "acks=all,oops")
    expected = r"^item 2 of KAFKA_CLIENT_CONFIG \(comma-separated; use -X for values with commas\) is not of the form"
    with pytest.raises(UsageError, match=expected):
        kafka_settings(args_of())


def test_secret_with_a_comma_in_kafka_client_config_is_not_echoed(env):
    env.setenv("KAFKA_CLIENT_CONFIG", "sasl.password=abc,s3cr3tTail")
    try:
        settings = kafka_settings(args_of())
    except UsageError as exc:
        assert "s3cr3tTail" not in str(exc)
    else:
        assert settings.client_overrides["sasl.password"] == "abc,s3cr3tTail"


def test_parse_client_overrides_direct():
    assert parse_client_overrides([], "-X") == {}
    assert parse_client_overrides(["a=1", "a=2"], "-X") == {"a": "2"}
    with pytest.raises(UsageError, match="^item 1 of origin .* is not of the form KEY=VALUE$"):
        parse_client_overrides(["  =x"], "origin")


# -- redact() ------------------------------------------------------------------------------------

def test_redact_hides_secrets_and_drops_callables():
    config = {
        "bootstrap.servers": "h:1",
        "sasl.username": "alice",
        "sasl.password": "p1",
        "ssl.key.password": "p2",
        "ssl.keystore.password": "p3",
        "sasl.oauthbearer.client.secret": "p4",
        "sasl.oauthbearer.token.endpoint.url": "https://idp/token",
        "ssl.key.pem": "-----BEGIN",
        "sasl.jaas.config": "x",
        "ssl.key.location": "/k.pem",
        "error_cb": print,
        "logger": logging.getLogger("x"),
        "acks": "all",
    }
    assert redact(config) == {
        "bootstrap.servers": "h:1",
        "sasl.username": "alice",
        "sasl.password": "***",
        "ssl.key.password": "***",
        "ssl.keystore.password": "***",
        "sasl.oauthbearer.client.secret": "***",
        "sasl.oauthbearer.token.endpoint.url": "***",  # contains "token"
        "ssl.key.pem": "***",
        "sasl.jaas.config": "***",
        "ssl.key.location": "/k.pem",
        "acks": "all",
    }
    assert config["sasl.password"] == "p1"  # a copy


# -- number parsers ------------------------------------------------------------------------------

def test_positive():
    assert positive(int)("3") == 3
    assert positive(float)("0.5") == 0.5
    for raw in ("0", "-1"):
        with pytest.raises(ValueError, match=f"^must be greater than 0, got {raw}$"):
            positive(int)(raw)
    with pytest.raises(ValueError):
        positive(int)("1.5")
    assert positive(int).__name__ == "positive int"


def test_non_negative():
    assert non_negative(int)("0") == 0
    assert non_negative(float)("2.5") == 2.5
    with pytest.raises(ValueError, match="^must not be negative, got -0.1$"):
        non_negative(float)("-0.1")
    assert non_negative(float).__name__ == "non-negative float"



@pytest.mark.parametrize("parser", [positive(float), non_negative(float)])
def test_nan_is_rejected(parser):
    with pytest.raises(ValueError):
        parser("nan")


def test_ratio():
    assert ratio("0") == 0.0 and ratio("1") == 1.0 and ratio("0.25") == 0.25
    for raw in ("-0.01", "1.01", "nan", "inf"):
        with pytest.raises(ValueError):
            ratio(raw)
    with pytest.raises(ValueError, match="^must be between 0 and 1, got 2$"):
        ratio("2")
    assert not math.isnan(ratio("0.5"))


def test_argparse_error_is_one_line_with_exit_2(capsys):
    parser = build_parser("test", "example")
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--nope"])
    assert info.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    # The same prefix as every other error of every script.
    assert err.count("\n") == 1 and err.startswith("error: ") and err.endswith(" --help)\n")


@pytest.mark.parametrize("exc, code", [(UsageError("bad flag"), 2), (ToolFailure("no broker"), 1),
                                       (KeyboardInterrupt(), 130)])
def test_run_maps_exceptions_to_exit_codes(capsys, exc, code):
    def main(argv):
        raise exc
    with pytest.raises(SystemExit) as info:
        cli.run(main, [])
    assert info.value.code == code
    if code != 130:
        assert capsys.readouterr().err == f"error: {exc}\n"


def test_run_returns_main_exit_code():
    with pytest.raises(SystemExit) as info:
        cli.run(lambda argv: 0, [])
    assert info.value.code == 0
