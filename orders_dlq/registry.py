"""Registry mode: orders in the Confluent wire format, their schemas kept by a Schema Registry.

Without --schema-registry every script speaks schemaless Avro (the default). With it, an order's
value is magic byte 0, the 4-byte id the registry gave its schema, then the Avro body: what
Confluent's and Spring's serdes, kafka-avro-console-consumer, ksqlDB or Flink's `avro-confluent`
read. Subjects follow the TopicNameStrategy: `<topic>-value`.

The producer registers the local order.avsc once and writes the header itself in front of the
hand-written encoder's body (the same bytes as confluent_kafka's AvroSerializer, property-tested);
the consumer resolves each id to the writer's schema once (cached) and reads the bytes with it,
resolved to its own order.avsc, so a compatible change on either side dead-letters nothing.
"""

from __future__ import annotations

import json
import os
import time
import urllib.parse
from dataclasses import dataclass

from orders_dlq.codec import DecodeError, OrderCodec, confluent_header, order_codec, split_confluent_frame
from orders_dlq.errors import ToolFailure, UsageError
from orders_dlq.settings import setting


def _registry_client():
    """confluent_kafka.schema_registry, imported on first use: the import takes most of a second,
    which a script started without --schema-registry should not pay."""
    import confluent_kafka.schema_registry as client
    import confluent_kafka.schema_registry.error  # noqa: F401 - makes client.error available

    return client


COMPATIBILITY_LEVELS = ("BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL",
                        "FULL_TRANSITIVE", "NONE")
# The registry's error code for "no schema with this id" (Apicurio answers it too).
SCHEMA_NOT_FOUND = 40403
# How long a consumer waits for an unreachable registry before it dead-letters the order that
# needs a schema it has not cached (with that reason, so it can be replayed). Well below
# max.poll.interval.ms (300 s), so the group does not evict the consumer meanwhile.
REGISTRY_WAIT_SECONDS = 30.0


def add_registry_argument(parser, shows_orders: bool = False) -> None:
    if shows_orders:
        parser.add_argument("--schema-registry", metavar="URL",
                            help="to show the orders inside registry-framed dead letters with their writer's "
                                 "schema, e.g. http://127.0.0.1:8081/apis/ccompat/v7 (env SCHEMA_REGISTRY_URL); "
                                 "without it they are read with the local schemas")
        return
    parser.add_argument("--schema-registry", metavar="URL",
                        help="registry mode: Confluent wire format with schemas in this Schema Registry, e.g. "
                             "http://127.0.0.1:8081/apis/ccompat/v7 (env SCHEMA_REGISTRY_URL; credentials only "
                             "from SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO or SCHEMA_REGISTRY_BEARER_AUTH_TOKEN); "
                             "default: schemaless Avro")


@dataclass
class RegistrySettings:
    url: str
    basic_auth_user_info: str | None = None
    bearer_token: str | None = None
    bearer_logical_cluster: str | None = None
    bearer_identity_pool: str | None = None

    def client_config(self) -> dict:
        # Without a timeout a registry that accepts the connection and never answers would hang
        # a script (httpx waits forever); 10 s per request, as a broker call is bounded too.
        config = {"url": self.url, "timeout": 10}
        if self.basic_auth_user_info:
            config["basic.auth.user.info"] = self.basic_auth_user_info
        if self.bearer_token:
            config["bearer.auth.credentials.source"] = "STATIC_TOKEN"
            config["bearer.auth.token"] = self.bearer_token
            # confluent_kafka sends these as headers; a registry that is not Confluent Cloud ignores them.
            config["bearer.auth.logical.cluster"] = self.bearer_logical_cluster or "-"
            if self.bearer_identity_pool:
                config["bearer.auth.identity.pool.id"] = self.bearer_identity_pool
        return config

    @property
    def shown_url(self) -> str:
        """The URL for messages: any user:password in it removed."""
        parts = urllib.parse.urlsplit(self.url)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def registry_settings(args) -> RegistrySettings | None:
    """--schema-registry / SCHEMA_REGISTRY_URL and its credentials; None means schemaless mode."""
    url = setting(args, "schema_registry", "SCHEMA_REGISTRY_URL", "")
    if not url:
        return None
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        shown = urllib.parse.urlunsplit((parts.scheme, parts.hostname or "", parts.path, "", ""))
        raise UsageError(f"--schema-registry (SCHEMA_REGISTRY_URL) must be an http:// or https:// URL, got {shown!r}")
    user_info = _env("SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO")
    if user_info and ":" not in user_info:
        # Never echo it: it holds a password.
        raise UsageError("SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO must be of the form USER:PASSWORD")
    if parts.username and not user_info:  # http://user:pass@host/ is what confluent_kafka calls URL credentials
        user_info = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        url = urllib.parse.urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[1], parts.path, parts.query, ""))
    return RegistrySettings(
        url=url, basic_auth_user_info=user_info or None,
        bearer_token=_env("SCHEMA_REGISTRY_BEARER_AUTH_TOKEN") or None,
        bearer_logical_cluster=_env("SCHEMA_REGISTRY_BEARER_AUTH_LOGICAL_CLUSTER") or None,
        bearer_identity_pool=_env("SCHEMA_REGISTRY_BEARER_AUTH_IDENTITY_POOL_ID") or None)


def _env(name: str) -> str:
    """A credential: from the environment (or .env) only, never from a flag that `ps` would show."""
    return os.environ.get(name, "").strip()


def value_subject(topic: str) -> str:
    """TopicNameStrategy: the subject of a topic's record values."""
    return f"{topic}-value"


class Registry:
    """A SchemaRegistryClient whose failures end in one sentence."""

    def __init__(self, settings: RegistrySettings):
        self.settings = settings
        try:
            self.client = _registry_client().SchemaRegistryClient(settings.client_config())
        except ValueError as exc:
            raise UsageError(f"the schema registry settings are not valid: {exc}") from None

    def call(self, what: str, method, *args, **kwargs):
        try:
            return method(*args, **kwargs)
        except _registry_client().error.SchemaRegistryError:
            raise
        except Exception as exc:  # noqa: BLE001 - httpx raises many kinds; all mean the same to the operator
            raise ToolFailure(f"the schema registry at {self.settings.shown_url} could not {what}: "
                              f"{type(exc).__name__}: {exc}") from None

    def register_order_schema(self, topic: str, codec: OrderCodec) -> int:
        """Register the local order schema under <topic>-value (a no-op if it is there); its id."""
        subject = value_subject(topic)
        try:
            return self.call("register a schema", self.client.register_schema, subject,
                             _registry_client().Schema(json.dumps(codec.schema), "AVRO"))
        except _registry_client().error.SchemaRegistryError as exc:
            if exc.http_status_code == 409:
                raise UsageError(f"the schema registry refuses this order schema for {subject}: it is not "
                                 f"compatible with the versions registered there ({exc.error_message})") from None
            raise ToolFailure(f"the schema registry at {self.settings.shown_url} refused to register the order "
                              f"schema under {subject}: {exc}") from None

    def schema(self, schema_id: int) -> dict:
        """The schema a registry id names (the client caches it); SchemaRegistryError if there is none."""
        return json.loads(self.call("look up a schema", self.client.get_schema, schema_id).schema_str)

    def compatibility(self, subject: str) -> str | None:
        """The subject's own compatibility level, None if it has none (the global default applies)."""
        try:
            return self.call("read a compatibility level", self.client.get_compatibility, subject)
        except _registry_client().error.SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                return None
            raise ToolFailure(f"the schema registry at {self.settings.shown_url} could not read the compatibility "
                              f"of {subject}: {exc}") from None

    def global_compatibility(self) -> str | None:
        try:
            return self.call("read a compatibility level", self.client.get_compatibility)
        except _registry_client().error.SchemaRegistryError:
            return None

    def set_compatibility(self, subject: str, level: str) -> None:
        try:
            self.call("set a compatibility level", self.client.set_compatibility, subject, level)
        except _registry_client().error.SchemaRegistryError as exc:
            raise ToolFailure(f"the schema registry at {self.settings.shown_url} refused compatibility {level} "
                              f"for {subject}: {exc}") from None


# OrderCodec's ways to write an order (a record, its fields, its fields with the id as bytes).
ORDER_ENCODERS = ("encode", "encode_fields", "encode_keyed")


class RegistryOrderCodec:
    """Orders in the Confluent wire format: the order codec's body behind a 5-byte header."""

    def __init__(self, registry: Registry, topic: str, local: OrderCodec | None = None,
                 wait_seconds: float = REGISTRY_WAIT_SECONDS):
        self.registry = registry
        self.wait_seconds = wait_seconds
        self.topic = topic
        self.local = local or order_codec()
        self.schema = self.local.schema
        self._writers: dict[int, object] = {}  # schema id -> parsed writer schema (None: same as ours)
        self._unknown: set[int] = set()  # ids the registry said it does not have (a poison flood asks once)
        self._canonical = json.dumps(self.schema, sort_keys=True)
        for name in ORDER_ENCODERS:
            setattr(self, name, self._unregistered)

    def register(self) -> int:
        schema_id = self.registry.register_order_schema(self.topic, self.local)
        # The order codec writes the header in the same join as the body (its decoding ignores it):
        # every one of its encoders is then this codec's, header included.
        self.local.header = confluent_header(schema_id)
        for name in ORDER_ENCODERS:
            setattr(self, name, getattr(self.local, name))
        return schema_id

    @staticmethod
    def _unregistered(*_args, **_kwargs) -> bytes:
        raise RuntimeError("register() first: the header needs the registry's schema id")

    def decode(self, data: bytes | None) -> dict:
        frame = split_confluent_frame(data)
        if frame is None:
            if data and self.local.decodes(data):
                raise DecodeError("schemaless Avro order without the Confluent framing, but the consumer runs in "
                                  "registry mode")
            if data:
                raise DecodeError(f"not Confluent-framed (first byte 0x{data[0]:02x}, magic byte 0 expected) and not "
                                  f"a schemaless order either")
            return self.local.decode(data)  # empty or tombstone: the usual reason
        schema_id, body = frame
        writer = self._writer(schema_id)
        try:
            return self.local.decode_with(body, writer)
        except DecodeError as exc:
            raise DecodeError(f"confluent-framed, schema id {schema_id}: {exc}") from None

    def _writer(self, schema_id: int):
        if schema_id in self._writers:
            return self._writers[schema_id]
        if schema_id in self._unknown:
            raise DecodeError(f"confluent-framed, schema id {schema_id}, unknown to the schema registry at "
                              f"{self.registry.settings.shown_url}")
        deadline = time.monotonic() + self.wait_seconds
        while True:
            try:
                raw = self.registry.schema(schema_id)
                break
            except _registry_client().error.SchemaRegistryError as exc:
                if exc.http_status_code == 404:
                    if len(self._unknown) < 1000:  # bounded, like the cache of known ids
                        self._unknown.add(schema_id)
                    raise DecodeError(f"confluent-framed, schema id {schema_id}, unknown to the schema registry at "
                                      f"{self.registry.settings.shown_url}") from None
                failure = str(exc)
            except ToolFailure as exc:
                failure = str(exc)
            if time.monotonic() > deadline:
                raise DecodeError(f"confluent-framed, schema id {schema_id}, but the schema could not be fetched "
                                  f"for {self.wait_seconds:.0f} s: {failure}")
            time.sleep(1.0)
        if not isinstance(raw, dict) or raw.get("type") != "record":
            raise DecodeError(f"confluent-framed, schema id {schema_id}, whose schema is not an Avro record")
        same = json.dumps(raw, sort_keys=True) == self._canonical
        try:
            writer = None if same else self.local.writer_schema(raw)
        except Exception as exc:  # noqa: BLE001 - a schema fastavro cannot parse: not an order schema
            raise DecodeError(f"confluent-framed, schema id {schema_id}, whose schema cannot be read: {exc}") from None
        if len(self._writers) < 1000:  # bounded: a stream of bogus ids must not grow memory
            self._writers[schema_id] = writer
        return writer


def order_codec_for(args, topic: str, *, producing: bool):
    """The order codec a script uses: schemaless by default, registry mode with --schema-registry."""
    settings = registry_settings(args)
    if settings is None:
        return order_codec()
    codec = RegistryOrderCodec(Registry(settings), topic)
    if producing:
        codec.register()
    else:
        # Fail at start, in one sentence, if the registry does not answer (not at the first order).
        codec.registry.call("be reached", codec.registry.client.get_subjects)
    return codec


def add_compatibility_argument(parser) -> None:
    parser.add_argument("--compatibility", choices=COMPATIBILITY_LEVELS, type=str.upper,
                        help="with --schema-registry: the compatibility of the <topic>-value and <dlq>-value "
                             "subjects (env SCHEMA_COMPATIBILITY, default BACKWARD: a new schema must read the "
                             "bytes of the previous one, so consumers can upgrade first)")


def compatibility_setting(args) -> str:
    def level(raw: str) -> str:
        if raw.upper() not in COMPATIBILITY_LEVELS:
            raise ValueError(f"must be one of {', '.join(COMPATIBILITY_LEVELS)}")
        return raw.upper()
    return setting(args, "compatibility", "SCHEMA_COMPATIBILITY", "BACKWARD", level)


def set_up_compatibility(registry: Registry, subjects: list[str], level: str, apply: bool) -> list[dict]:
    """Each subject's compatibility: set where it has none of its own; changed only with `apply`.

    A subject without a level of its own follows the registry's global default, which is NONE on
    Apicurio (BACKWARD on Confluent's): any change, however breaking, would then be accepted.
    """
    global_level = registry.global_compatibility()
    outcome = []
    for subject in subjects:
        current = registry.compatibility(subject)
        if current == level:
            status = "ok"
        elif current is None or apply:
            registry.set_compatibility(subject, level)
            status = "set" if current is None else "changed"
        else:
            status = "pending"
        outcome.append({"subject": subject, "current": current, "global_default": global_level,
                        "wanted": level, "status": status})
    return outcome


def describe_compatibility(entry: dict) -> str:
    current = entry["current"] or f"none of its own (global default {entry['global_default'] or 'unknown'})"
    what = {"ok": "as wanted", "set": "set", "changed": "changed",
            "pending": "differs: re-run with --apply to change it"}[entry["status"]]
    return f"subject {entry['subject']}: compatibility {current} -> {entry['wanted']}: {what}"


class OriginalOrders:
    """The order inside a dead letter's original bytes, in either framing, for the DLQ tools to show.

    A dead letter of the deserialize stage carries no order fields (the consumer could not read
    them), e.g. a registry-framed order that reached a schemaless consumer. The tools still show
    which order it was: schemaless bytes with the local schema set, framed bytes with the writer's
    schema from the registry (with --schema-registry), else their body with the local schema set.
    """

    def __init__(self, registry_codec: RegistryOrderCodec | None = None):
        self.local = order_codec()
        self.registry_codec = registry_codec

    def read(self, value: bytes | None) -> dict | None:
        if not value:
            return None
        frame = split_confluent_frame(value)
        attempts = []
        if frame is not None and self.registry_codec is not None:
            attempts.append(lambda: self.registry_codec.decode(value))
        if frame is not None:
            attempts.append(lambda: self.local.decode(frame[1]))
        attempts.append(lambda: self.local.decode(value))
        for attempt in attempts:
            try:
                return attempt()
            except DecodeError:
                continue
        return None


def frame_dead_letters(order_codec_in_use, dead_letters, dlq_topic: str) -> None:
    """Hook for producer.py / consumer_aggregation.py: in registry mode their dead letters too are in
    the Confluent wire format: the envelope record, registered as <dlq>-value, behind the 5-byte
    header that the DeadLetterCodec then writes before every record (both of its encoders)."""
    if not isinstance(order_codec_in_use, RegistryOrderCodec):
        return
    registry, codec = order_codec_in_use.registry, dead_letters.codec
    subject = value_subject(dlq_topic)
    try:
        schema_id = registry.call("register a schema", registry.client.register_schema, subject,
                                  _registry_client().Schema(json.dumps(codec.codec.schema), "AVRO"))
    except _registry_client().error.SchemaRegistryError as exc:
        raise ToolFailure(f"the schema registry at {registry.settings.shown_url} refused the dead-letter schema "
                          f"under {subject}: {exc}") from None
    codec.header = confluent_header(schema_id)


def decode_dead_letter_either_framing(codec, value, headers, *args, **kwargs):
    """A DLQ message in either framing: our envelope as is, or behind a Confluent header."""
    try:
        return codec.decode_message(value, headers, *args, **kwargs)
    except DecodeError:
        frame = split_confluent_frame(value)
        if frame is None:
            raise
        return codec.decode_message(frame[1], headers, *args, **kwargs)


class ShowingOriginalOrders:
    """A DeadLetterCodec that reads dead letters in either framing, and gives those without order
    fields the order from their original bytes."""

    def __init__(self, codec, originals: OriginalOrders):
        self.codec = codec
        self.originals = originals

    def decode_message(self, value, headers, *args, **kwargs):
        dead_letter = decode_dead_letter_either_framing(self.codec, value, headers, *args, **kwargs)
        if dead_letter.order_id is None and dead_letter.original_value:
            order = self.originals.read(dead_letter.original_value)
            if order is not None:
                dead_letter.order_id, dead_letter.product, dead_letter.price = (
                    order["order_id"], order["product"], order["price"])
        return dead_letter

    def __getattr__(self, name):
        return getattr(self.codec, name)


def show_original_orders(args, tool, topic: str) -> None:
    """Hook for dlq_consumer.py / dlq_replay.py: `tool` reads dead letters through `tool.codec`."""
    settings = registry_settings(args)
    # A tool that shows dead letters must not stall on a registry that is down: no waiting.
    framed = None if settings is None else RegistryOrderCodec(Registry(settings), topic, wait_seconds=0)
    tool.codec = ShowingOriginalOrders(tool.codec, OriginalOrders(framed))
