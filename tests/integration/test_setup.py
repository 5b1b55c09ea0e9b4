"""setup_dlq.py on a real three-broker cluster: a plan, changes only with --apply, nothing weaker without --force."""

from __future__ import annotations

import json
import uuid

import pytest
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

from orders_dlq import local_kafka
from tests.conftest import Scripts, wait_for

DAY_MS = 24 * 3600 * 1000


@pytest.fixture(scope="module")
def three_brokers(tmp_path_factory):
    """One three-node cluster for the whole module (starting one costs tens of seconds)."""
    cluster = local_kafka.LocalKafka(tmp_path_factory.mktemp("setup") / "cluster", brokers=3, base_port=0)
    cluster.start(timeout=180)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def names(three_brokers, tmp_path):
    topic = f"orders-{uuid.uuid4().hex[:8]}"
    scripts = Scripts(three_brokers.bootstrap, tmp_path, topic)
    admin = AdminClient({"bootstrap.servers": three_brokers.bootstrap})
    return scripts, admin, topic


def configs(admin, topic: str) -> dict:
    resource = ConfigResource(ResourceType.TOPIC, topic)
    return {k: v.value for k, v in admin.describe_configs([resource])[resource].result(timeout=30).items()}


def set_config(admin, topic: str, **values) -> None:
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry(key.replace("_", "."), str(value), incremental_operation=AlterConfigOpType.SET)
        for key, value in values.items()])
    admin.incremental_alter_configs([resource])[resource].result(timeout=30)


def config_becomes(admin, topic: str, key: str, value, timeout: float = 15) -> bool:
    """Whether a describe shows `value` within `timeout` s: each broker applies a config change from
    the metadata log on its own, so a describe may read one that has not yet."""
    try:
        return wait_for(lambda: configs(admin, topic)[key] == str(value), timeout, f"{key} {value}")
    except AssertionError:
        return False


def retention_becomes(admin, topic: str, value: int) -> bool:
    return config_becomes(admin, topic, "retention.ms", value)


def plan(scripts: Scripts, *args) -> dict:
    result = scripts.run("setup_dlq.py", *args, "--json")
    return {entry["topic"]: entry for entry in json.loads(result.stdout)["topics"]}


def test_first_run_creates_all_four_topics_replicated_and_co_partitioned(names):
    scripts, admin, topic = names
    created = plan(scripts, "--partitions", 4)
    assert {name: entry["action"] for name, entry in created.items()} == {
        topic: "created", f"{topic}.DLQ": "created", f"{topic}.aggregates": "created",
        f"{topic}.DLQ.status": "created"}
    metadata = wait_for(lambda: (m := admin.list_topics(timeout=30).topics) and all(n in m for n in created) and m,
                        30, "the new topics in the metadata")
    assert len(metadata[topic].partitions) == len(metadata[f"{topic}.aggregates"].partitions) == 4
    assert len(metadata[f"{topic}.DLQ.status"].partitions) == 1
    for name in created:
        assert len(metadata[name].partitions[0].replicas) == 3, name  # default on 3 brokers
        assert configs(admin, name)["min.insync.replicas"] == "2", name
    assert configs(admin, f"{topic}.aggregates")["cleanup.policy"] == "compact"
    assert configs(admin, f"{topic}.DLQ.status")["cleanup.policy"] == "compact"
    assert retention_becomes(admin, f"{topic}.DLQ", 7 * DAY_MS)


def test_a_rerun_with_default_flags_weakens_nothing(names):
    """The reported incident: min ISR 2 and 30-day DLQ retention must survive a default re-run."""
    scripts, admin, topic = names
    scripts.run("setup_dlq.py")
    set_config(admin, f"{topic}.DLQ", retention_ms=30 * DAY_MS)
    set_config(admin, topic, min_insync_replicas=3)
    assert retention_becomes(admin, f"{topic}.DLQ", 30 * DAY_MS)
    assert config_becomes(admin, topic, "min.insync.replicas", 3)

    dry = scripts.run("setup_dlq.py")
    applied = scripts.run("setup_dlq.py", "--apply", expect=0)

    assert retention_becomes(admin, f"{topic}.DLQ", 30 * DAY_MS)
    assert config_becomes(admin, topic, "min.insync.replicas", 3)
    assert "run with --apply" in dry.stdout
    assert "add --force" in applied.stdout
    assert "add --force to --apply" in applied.stderr and applied.stderr.count("\n") == 1


def test_apply_strengthens_and_force_weakens(names):
    scripts, admin, topic = names
    scripts.run("setup_dlq.py")
    set_config(admin, f"{topic}.DLQ", retention_ms=DAY_MS, max_message_bytes=1000)
    assert retention_becomes(admin, f"{topic}.DLQ", DAY_MS)  # visible before the plan reads it

    before = plan(scripts)[f"{topic}.DLQ"]
    assert {d["setting"]: d["status"] for d in before["differences"]} == {
        "retention.ms": "pending", "max.message.bytes": "pending"}
    assert retention_becomes(admin, f"{topic}.DLQ", DAY_MS), "a plan changed something"

    after = plan(scripts, "--apply")[f"{topic}.DLQ"]
    assert {d["setting"]: d["status"] for d in after["differences"]} == {
        "retention.ms": "applied", "max.message.bytes": "applied"}
    assert retention_becomes(admin, f"{topic}.DLQ", 7 * DAY_MS)

    shorter = plan(scripts, "--retention-days", 2, "--apply")[f"{topic}.DLQ"]
    assert [(d["setting"], d["weakens"], d["status"]) for d in shorter["differences"]] == [
        ("retention.ms", True, "held")]
    forced = plan(scripts, "--retention-days", 2, "--apply", "--force")[f"{topic}.DLQ"]
    assert [d["status"] for d in forced["differences"]] == ["applied"]
    assert retention_becomes(admin, f"{topic}.DLQ", 2 * DAY_MS)


def test_more_partitions_grow_the_changelog_with_the_orders_topic_only_under_apply(names):
    scripts, admin, topic = names
    scripts.run("setup_dlq.py", "--partitions", 2)

    planned = plan(scripts, "--partitions", 5)
    assert planned[topic]["differences"] == [
        {"setting": "partitions", "current": 2, "wanted": 5, "weakens": False, "status": "pending"}]
    assert len(admin.list_topics(timeout=30).topics[topic].partitions) == 2

    applied = plan(scripts, "--partitions", 5, "--apply")
    assert applied[f"{topic}.aggregates"]["differences"] == [
        {"setting": "partitions", "current": 2, "wanted": 5, "weakens": False, "status": "applied"}]

    def counts():  # metadata reaches every broker shortly after the change
        topics = admin.list_topics(timeout=30).topics
        return [len(topics[name].partitions) for name in (topic, f"{topic}.aggregates", f"{topic}.DLQ.status")]
    wait_for(lambda: counts() == [5, 5, 1], 30, "5 partitions in the orders topic and its changelog")


def test_force_without_apply_is_a_usage_error(names):
    scripts, _admin, _topic = names
    result = scripts.run("setup_dlq.py", "--force", expect=2)
    assert "--force" in result.stderr and "Traceback" not in result.stderr




def test_setups_started_together_all_succeed_and_each_topic_is_created_once(names):
    """Deploy jobs or init containers may run setup_dlq.py at the same moment: each run ends well,
    every topic is created by exactly one of them, and the others report it as existing."""
    scripts, admin, topic = names
    runs = [scripts.spawn("setup_dlq.py", "--partitions", 4, "--json") for _ in range(4)]
    outcomes = [(run.wait(), run) for run in runs]
    for code, run in outcomes:
        assert code == 0, run.stderr()
    actions: dict[str, list[str]] = {}
    for _code, run in outcomes:
        for entry in json.loads(run.stdout())["topics"]:
            actions.setdefault(entry["topic"], []).append(entry["action"])
            assert entry["partitions"] == (1 if entry["topic"].endswith(".status") else 4), entry
    assert set(actions) == {topic, f"{topic}.DLQ", f"{topic}.aggregates", f"{topic}.DLQ.status"}
    for name, seen in actions.items():
        assert sorted(seen) == ["created", "exists", "exists", "exists"], (name, seen)
    assert configs(admin, f"{topic}.DLQ")["retention.ms"] == str(7 * DAY_MS)
