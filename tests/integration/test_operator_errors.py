"""Bad operator input: every flag and `.env` value that can be wrong, wrong -> one clear sentence on
stderr, exit code 2, nothing produced and nothing committed. Plus secrets that must never be echoed,
an unreachable broker (exit 1, one sentence, no hang) and the --help of every script."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient
from conftest import Pipeline, Scripts

pytestmark = pytest.mark.integration

USAGE_TIMEOUT = 30
SCRIPTS = ("producer.py", "consumer_aggregation.py", "setup_dlq.py", "dlq_consumer.py", "dlq_producer.py",
           "dlq_replay.py")
NOT_A_DIR = "not-a-dir"  # a plain file in the script's working directory: no spool can live under it
BROKEN_SCHEMA = '{"type": "record", "name": "Order", "fields": [{"name": "no_type"}]}'
UNREACHABLE = "127.0.0.1:1"
SECRET = "hunter2"
SASL = ["-X", f"sasl.password={SECRET}", "-X", "security.protocol=SASL_PLAINTEXT",
        "-X", "sasl.mechanism=PLAIN", "-X", "sasl.username=u"]





def case(script, args=(), env=None, names=(), id=None):
    """One wrong input: script, its flags, .env lines ({topic} is the pipeline's topic), what stderr must name."""
    names = (names,) if isinstance(names, str) else names
    id = id or f"{script} {' '.join(args or env)}"
    return pytest.param(script, list(args), list(env or []), names, id=id)


USAGE_CASES = [
    # producer.py: flags
    case("producer.py", ["--count", "-1"], names="--count"),
    case("producer.py", ["--count", "abc"], names="--count"),
    case("producer.py", ["--rate", "-5"], names="--rate"),
    case("producer.py", ["--bad-ratio", "1.5"], names="--bad-ratio"),
    case("producer.py", ["--bad-ratio", "0.6", "--poison-ratio", "0.6"], names="--bad-ratio"),
    case("producer.py", ["--poison-ratio", "-0.1"], names="--poison-ratio"),
    case("producer.py", ["--retry-backoff-ms", "-1"], names="--retry-backoff-ms"),
    case("producer.py", ["--delivery-timeout", "0"], names="--delivery-timeout"),
    case("producer.py", ["--seed", "x"], names="--seed"),
    case("producer.py", ["-X", "novalue"], names="-X"),
    case("producer.py", ["--nope"], names="--nope"),
    case("producer.py", ["--spool", f"{NOT_A_DIR}/spool.sqlite3"], names="spool"),
    case("producer.py", ["-b", "a b"], names="--bootstrap-servers"),
    case("producer.py", ["-t", ""], names="--topic", id="producer.py -t ''"),
    case("producer.py", ["--delivery-timeout", "nan"], names="--delivery-timeout"),
    case("producer.py", ["--delivery-timeout", "inf"], names="--delivery-timeout"),
    case("producer.py", ["-X", "no.such.property=1"], names="no.such.property"),
    case("producer.py", ["-X", "security.protocol=bogus"], names="security.protocol"),
    # producer.py: environment
    case("producer.py", env=["ORDER_COUNT=many"], names="ORDER_COUNT"),
    case("producer.py", env=["ORDER_RATE=-1"], names="ORDER_RATE"),
    case("producer.py", env=["BAD_RATIO=2"], names="BAD_RATIO"),
    case("producer.py", env=["POISON_RATIO=x"], names="POISON_RATIO"),
    case("consumer_aggregation.py", env=["RETRY_BACKOFF_MAX_MS=-5"], names="RETRY_BACKOFF_MAX_MS"),
    case("producer.py", env=["DELIVERY_TIMEOUT=0"], names="DELIVERY_TIMEOUT"),
    case("producer.py", env=[f"DLQ_SPOOL={NOT_A_DIR}/spool.sqlite3"], names="spool"),
    case("producer.py", env=["BAD_RATIO=0.6", "POISON_RATIO=0.6"], names="BAD_RATIO"),
    case("producer.py", env=["DELIVERY_TIMEOUT=inf"], names="DELIVERY_TIMEOUT"),
    case("producer.py", ["--count", "0"], env=['ORDER_COUNT="5'], names=".env",
         id="producer.py .env line with an unclosed quote"),
    # consumer_aggregation.py (each run gets -g <the case's own group> first)
    case("consumer_aggregation.py", ["--guarantee", "maybe"], names="--guarantee"),
    case("consumer_aggregation.py", ["--commit-interval-ms", "0"], names="--commit-interval-ms"),
    case("consumer_aggregation.py", ["--max-messages", "0"], names="--max-messages"),
    case("consumer_aggregation.py", ["--idle-timeout", "-1"], names="--idle-timeout"),
    case("consumer_aggregation.py", ["--batch-size", "0"], names="--batch-size"),
    case("consumer_aggregation.py", ["--print-interval", "-1"], names="--print-interval"),
    case("consumer_aggregation.py", ["--max-attempts", "0"], names="--max-attempts"),
    case("consumer_aggregation.py", ["-X", "novalue"], names="-X"),
    case("consumer_aggregation.py", ["--nope"], names="--nope"),
    case("consumer_aggregation.py", ["-g", ""], names="--group", id="consumer_aggregation.py -g ''"),
    case("consumer_aggregation.py", ["--state-topic", "", "--idle-timeout", "1"], names="--state-topic",
         id="consumer_aggregation.py --state-topic ''"),
    case("consumer_aggregation.py", ["--products", ",", "--idle-timeout", "1"], names="--products"),
    case("consumer_aggregation.py", ["-X", "no.such.property=1"], names="no.such.property"),
    case("consumer_aggregation.py", env=["GUARANTEE=sometimes"], names="GUARANTEE"),
    case("consumer_aggregation.py", env=["COMMIT_INTERVAL_MS=-3"], names="COMMIT_INTERVAL_MS"),
    case("consumer_aggregation.py", env=["MAX_ATTEMPTS=0"], names="MAX_ATTEMPTS"),
    # setup_dlq.py
    case("setup_dlq.py", ["--partitions", "0"], names="--partitions"),
    case("setup_dlq.py", ["--dlq-partitions", "0"], names="--dlq-partitions"),
    case("setup_dlq.py", ["--retention-days", "0"], names="--retention-days"),
    case("setup_dlq.py", ["--replication-factor", "5"], names="--replication-factor"),
    case("setup_dlq.py", ["-X", "novalue"], names="-X"),
    case("setup_dlq.py", ["--nope"], names="--nope"),
    case("setup_dlq.py", ["--retention-days", "inf"], names="--retention-days"),
    case("setup_dlq.py", ["--retention-days", "nan"], names="--retention-days"),
    case("setup_dlq.py", ["-X", "no.such.property=1"], names="no.such.property"),
    case("setup_dlq.py", env=["ORDERS_PARTITIONS=x"], names="ORDERS_PARTITIONS"),
    case("setup_dlq.py", env=["DLQ_RETENTION_DAYS=-1"], names="DLQ_RETENTION_DAYS"),
    case("setup_dlq.py", env=["REPLICATION_FACTOR=0"], names="REPLICATION_FACTOR"),
    case("setup_dlq.py", env=["DLQ_RETENTION_DAYS=inf"], names="DLQ_RETENTION_DAYS"),
    # dlq_consumer.py
    case("dlq_consumer.py", ["--stage", "nope"], names="--stage"),
    case("dlq_consumer.py", ["--since", "yesterday"], names="--since"),
    case("dlq_consumer.py", ["--limit", "0"], names="--limit"),
    case("dlq_consumer.py", ["--refresh", "0"], names="--refresh"),
    case("dlq_consumer.py", ["--json", "--jsonl"], names="--json"),
    case("dlq_consumer.py", ["-X", "novalue"], names="-X"),
    case("dlq_consumer.py", ["-X", "no.such.property=1"], names="no.such.property"),
    # dlq_producer.py
    case("dlq_producer.py", ["--nope"], names="--nope"),
    case("dlq_producer.py", ["-X", "novalue"], names="-X"),
    case("dlq_producer.py", ["--spool-status", "--spool", f"{NOT_A_DIR}/spool.sqlite3"], names="spool"),
    case("dlq_producer.py", ["--send-example", "-X", "no.such.property=1"], names="no.such.property"),
    case("dlq_consumer.py", ["--header", "novalue"], names="--header"),
    case("dlq_consumer.py", ["--status", "done"], names="--status"),
    case("dlq_consumer.py", ["--tail", "0"], names="--tail"),
    case("dlq_consumer.py", ["--from-time", "yesterday"], names="--from-time"),
    case("dlq_consumer.py", ["--follow", "--tail", "5"], names="--tail"),
    case("dlq_consumer.py", ["--grep", ""], names="--grep", id="dlq_consumer.py --grep ''"),
    case("dlq_consumer.py", ["--export", f"{NOT_A_DIR}/fix.jsonl"], names="--export"),
    # dlq_replay.py
    case("dlq_replay.py", ["--nope"], names="--nope"),
    case("dlq_replay.py", ["--note", "why"], names="--note"),
    case("dlq_replay.py", ["--resolve", "--discard"], names="--discard"),
    case("dlq_replay.py", ["--from-file", "absent.jsonl"], names="absent.jsonl"),
    case("dlq_replay.py", ["--from-file", "absent.jsonl", "--reason", "x"], names="--from-file"),
    case("dlq_replay.py", ["--stage", "nope"], names="--stage"),
    case("dlq_replay.py", ["--since", "yesterday"], names="--since"),
    case("dlq_replay.py", ["--since", "2026-11-28T10:00", "--until", "2026-11-28T09:00"], names="--since"),
    case("dlq_replay.py", ["--from-offset", "x"], names="--from-offset"),
    case("dlq_replay.py", ["--from-offset", "-3"], names="--from-offset"),
    case("dlq_replay.py", ["--to-offset", "0:x"], names="--to-offset"),
    case("dlq_replay.py", ["--from-offset", "0:50", "--to-offset", "0:10"], names="--from-offset"),
    case("dlq_replay.py", ["--rate", "0"], names="--rate"),
    case("dlq_replay.py", ["--count", "0"], names="--count"),
    case("dlq_replay.py", ["--max-replays", "-1"], names="--max-replays"),
    case("dlq_replay.py", ["--delivery-timeout", "0"], names="--delivery-timeout"),
    case("dlq_replay.py", ["--to", "{topic}.DLQ"], names="--to"),
    case("dlq_replay.py", ["-X", "no.such.property=1", "--dry-run"], names="no.such.property"),
    # every script: the environment shared by all of them
    *[case(script, env=["KAFKA_CLIENT_CONFIG=novalue"], names="KAFKA_CLIENT_CONFIG") for script in SCRIPTS],
    *[case(script, env=["DLQ_TOPIC={topic}"], names=("DLQ_TOPIC", "--dlq-topic"),
           id=f"{script} DLQ_TOPIC=ORDERS_TOPIC") for script in SCRIPTS],
    # a missing or broken schema (setup_dlq.py reads none; dlq_* read only dead_letter.avsc)
    *[case(script, env=["SCHEMA_DIR={empty_schema_dir}"], names=("SCHEMA_DIR", "{empty_schema_dir}"),
           id=f"{script} SCHEMA_DIR=<empty dir>") for script in SCRIPTS if script != "setup_dlq.py"],
    *[case(script, env=["SCHEMA_DIR={broken_schema_dir}"], names=("SCHEMA_DIR", "{broken_schema_dir}"),
           id=f"{script} SCHEMA_DIR=<broken schemas>") for script in SCRIPTS if script != "setup_dlq.py"],
]


class Ends:
    """High watermarks of the pipeline's topics: a cheap "was anything written?" check per case."""

    def __init__(self, bootstrap: str, pipeline: Pipeline):
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused-watermark-reader"})
        self.partitions = []
        for topic in (pipeline.topic, pipeline.dlq_topic, pipeline.state_topic):
            metadata = self.consumer.list_topics(topic, timeout=10).topics[topic]
            self.partitions += [TopicPartition(topic, p) for p in metadata.partitions]

    def __call__(self) -> dict:
        return {f"{tp.topic}[{tp.partition}]": self.consumer.get_watermark_offsets(tp, timeout=10)[1]
                for tp in self.partitions}


@pytest.fixture(scope="module")
def shared(kafka_bootstrap, tmp_path_factory):
    """One pipeline for all the cases that must not touch it: its topics stay empty throughout."""
    pipeline = Pipeline(kafka_bootstrap, Scripts(kafka_bootstrap, tmp_path_factory.mktemp("shared")))
    pipeline.setup()
    ends = Ends(kafka_bootstrap, pipeline)
    yield pipeline, ends
    ends.consumer.close()


def committed_offsets(admin: AdminClient, group: str) -> list:
    result = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(timeout=30)
    return [(tp.topic, tp.partition, tp.offset) for tp in result.topic_partitions or [] if tp.offset >= 0]


def assert_one_sentence(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), f"expected one line on stderr, got:\n{result.stderr}"
    return lines[0]


@pytest.mark.parametrize("script, args, env_lines, names", USAGE_CASES)
def test_wrong_flag_or_env_value_is_one_sentence_exit_2_and_touches_nothing(
        script, args, env_lines, names, shared, kafka_bootstrap, admin, tmp_path):
    pipeline, ends = shared
    scripts = Scripts(kafka_bootstrap, tmp_path, topic=pipeline.topic)
    (tmp_path / NOT_A_DIR).write_text("a file, not a directory\n")
    empty, broken = tmp_path / "empty-schemas", tmp_path / "broken-schemas"
    empty.mkdir()
    broken.mkdir()
    (broken / "order.avsc").write_text(BROKEN_SCHEMA)
    (broken / "dead_letter.avsc").write_text('{"type": "record", "name": "DeadLetter", "fields": [')
    values = {"topic": pipeline.topic, "empty_schema_dir": empty, "broken_schema_dir": broken}
    if env_lines:
        (tmp_path / ".env").write_text("".join(line.format(**values) + "\n" for line in env_lines))
    names = [name.format(**values) for name in names]
    args = [arg.format(**values) for arg in args]
    group = f"{pipeline.group}-{uuid.uuid4().hex[:8]}"
    if script == "consumer_aggregation.py":
        args = ["-g", group, *args]
    before = ends()

    result = scripts.run(script, *args, timeout=USAGE_TIMEOUT, expect=None)

    line = assert_one_sentence(result)
    assert result.returncode == 2, f"exit {result.returncode}: {result.stderr}"
    assert any(name in line for name in names), f"{line!r} names none of {names}"
    assert result.stdout == ""
    assert ends() == before, "something was written to the pipeline's topics"
    assert committed_offsets(admin, group) == []


def test_the_shared_pipeline_is_still_empty_after_all_the_wrong_inputs(shared):
    pipeline, _ = shared
    for topic in (pipeline.topic, pipeline.dlq_topic, pipeline.state_topic):
        assert pipeline.read(topic) == [], topic


@pytest.mark.parametrize("script", ["setup_dlq.py", "consumer_aggregation.py"])
@pytest.mark.parametrize("which", ["topic", "dlq_topic"])
def test_state_topic_equal_to_another_pipeline_topic_is_refused(pipeline: Pipeline, admin, script, which):
    from confluent_kafka.admin import ConfigResource, ResourceType

    def configs():
        resources = [ConfigResource(ResourceType.TOPIC, t) for t in (pipeline.topic, pipeline.dlq_topic)]
        return {r.name: {k: v.value for k, v in f.result(timeout=30).items()}
                for r, f in admin.describe_configs(resources).items()}

    before = configs()
    extra = ["-g", pipeline.group, "--idle-timeout", "1"] if script == "consumer_aggregation.py" else []

    result = pipeline.scripts.run(script, "--state-topic", getattr(pipeline, which), *extra,
                                  timeout=USAGE_TIMEOUT, expect=None)

    assert configs() == before, "a pipeline topic was reconfigured"
    line = assert_one_sentence(result)
    assert result.returncode == 2 and "--state-topic" in line, result.stderr


# -- slow cases (each waits for a timeout): all started at once, each checked by its own test ------

class Background:
    """Scripts run concurrently from the start of this module; a test waits only for its own."""

    def __init__(self):
        self.pool = ThreadPoolExecutor(max_workers=12)
        self.runs = {}
        self.cwds = {}

    def start(self, name: str, scripts: Scripts, script: str, *args, timeout: float):
        def run():
            started = time.monotonic()
            try:
                result = scripts.run(script, *args, timeout=timeout, expect=None)
            except subprocess.TimeoutExpired:
                return None, time.monotonic() - started
            return result, time.monotonic() - started
        self.runs[name] = self.pool.submit(run)
        self.cwds[name] = scripts.cwd

    def result(self, name: str) -> tuple[subprocess.CompletedProcess | None, float]:
        return self.runs[name].result()


@pytest.fixture(scope="module", autouse=True)
def background(shared, kafka_bootstrap, tmp_path_factory):
    pipeline, _ = shared
    jobs = Background()
    for script in SCRIPTS:
        unreachable = Scripts(UNREACHABLE, tmp_path_factory.mktemp("unreachable"), topic=pipeline.topic)
        args = ["--delivery-timeout", 1, "--count", 2, "--json"] if script == "producer.py" else []
        if script == "dlq_producer.py":
            args = ["--send-example"]
        jobs.start(f"unreachable {script}", unreachable, script, "-b", UNREACHABLE, *args, timeout=60)
        secret = Scripts(kafka_bootstrap, tmp_path_factory.mktemp("secret"), topic=pipeline.topic)
        args = ["--count", 2, "--delivery-timeout", 2] if script == "producer.py" else []
        if script == "consumer_aggregation.py":
            args = ["-g", f"{pipeline.group}-sasl", "--idle-timeout", 1]
        if script == "dlq_producer.py":
            args = ["--send-example"]
        jobs.start(f"secret {script}", secret, script, *SASL, *args, timeout=60)
    yield jobs
    jobs.pool.shutdown(wait=True)  # every run is bounded by its subprocess timeout


@pytest.mark.parametrize("script", [s for s in SCRIPTS if s != "producer.py"])
def test_unreachable_broker_is_one_sentence_and_exit_1_within_20s(background, script):
    result, seconds = background.result(f"unreachable {script}")

    assert result is not None, f"{script} still running after {seconds:.0f}s"
    line = assert_one_sentence(result)
    assert result.returncode == 1, result.stderr
    assert UNREACHABLE in line
    assert seconds < 20


def test_producer_with_unreachable_broker_retries_then_spools_every_order(background):
    result, seconds = background.result("unreachable producer.py")

    assert result is not None, f"producer.py still running after {seconds:.0f}s"
    assert "Traceback" not in result.stderr
    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["sent"], summary["spooled"], summary["dead_lettered"]) == (0, 2, 0)
    assert seconds < 30


@pytest.mark.parametrize("script", SCRIPTS)
def test_secret_client_settings_never_reach_the_output(background, admin, shared, script):
    result, seconds = background.result(f"secret {script}")

    assert result is not None, f"{script} still running after {seconds:.0f}s"
    assert SECRET not in result.stdout + result.stderr
    # A broker that refuses the handshake is a setting to fix, said at once by every script (the
    # producer used to take it for an outage and spool its orders for the delivery timeout).
    line = assert_one_sentence(result)
    assert result.returncode == 1 and "refused the connection" in line, result.stderr
    assert seconds < 20
    # Nor anywhere the script wrote (the producer spools the orders it could not send).
    cwd: Path = background.cwds[f"secret {script}"]
    for path in cwd.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path.name
    if script == "consumer_aggregation.py":
        assert committed_offsets(admin, f"{shared[0].group}-sasl") == []


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_exits_0_with_an_example_and_the_shared_options(scripts: Scripts, script):
    result = scripts.run(script, "--help", timeout=USAGE_TIMEOUT)

    assert "example" in result.stdout.lower()
    for option in ("-b", "--bootstrap-servers", "-t", "--topic", "--dlq-topic", "-X"):
        assert f"{option} " in result.stdout or f"{option}," in result.stdout, option


@pytest.mark.parametrize("script, args", [
    ("producer.py", ["--count", 1]),
    ("consumer_aggregation.py", ["-g", "never-set-up", "--idle-timeout", 1]),
    ("dlq_consumer.py", []),
    ("dlq_producer.py", ["--send-example"]),
    ("dlq_replay.py", ["--dry-run"]),
])
def test_topics_never_set_up_are_one_sentence_naming_setup_dlq_and_exit_1(kafka_bootstrap, tmp_path, script, args):
    """Forgetting `setup_dlq.py` (or a typo in ORDERS_TOPIC) is said once, with the cure, and nothing
    is created: auto-creation would make a topic with the broker's defaults, not ours."""
    topic = f"never-{uuid.uuid4().hex[:8]}"
    result = Scripts(kafka_bootstrap, tmp_path, topic=topic).run(script, *args, expect=None, timeout=60)
    line = assert_one_sentence(result)
    assert result.returncode == 1, result.stderr
    assert "does not exist" in line and "setup_dlq.py" in line and topic in line, line
    known = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=30).topics
    assert not [name for name in known if name.startswith(topic)]
