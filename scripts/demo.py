#!/usr/bin/env python3
"""`make demo`: the quick-start guide's whole story, run for real against a Kafka broker.

Uses KAFKA_BOOTSTRAP_SERVERS or a broker already on localhost:9092; otherwise starts a local
one (and stops it at the end). Each step prints the command a user would type.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from orders_dlq import local_kafka

ROOT = Path(__file__).resolve().parent.parent

DEFAULT_BOOTSTRAP = "localhost:9092"


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def command(*args: str) -> list[str]:
    print(f"$ python {' '.join(args)}", flush=True)
    return [sys.executable, str(ROOT / args[0]), *args[1:]]


def run(*args: str, allowed=(0,)) -> int:
    code = subprocess.run(command(*args), cwd=ROOT, stdin=subprocess.DEVNULL).returncode
    if code not in allowed:
        raise SystemExit(f"error: `{args[0]}` failed with exit code {code}")
    return code


def find_or_start_broker() -> tuple[str, local_kafka.LocalKafka | None]:
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        if not local_kafka.broker_reachable(configured, 10):
            raise SystemExit(f"error: KAFKA_BOOTSTRAP_SERVERS={configured} is set but no broker answers there")
        print(f"using the broker at {configured} (KAFKA_BOOTSTRAP_SERVERS)")
        return configured, None
    if local_kafka.broker_reachable(DEFAULT_BOOTSTRAP, 3):
        print(f"using the broker already running at {DEFAULT_BOOTSTRAP}")
        return DEFAULT_BOOTSTRAP, None
    print("no broker is running: starting a local Apache Kafka (KRaft) on 127.0.0.1:9092")
    broker = local_kafka.LocalKafka(ROOT / ".kafka" / "demo", brokers=1)
    broker.start(timeout=120, fresh=True)
    return broker.bootstrap, broker


def main() -> int:
    step("0. A Kafka broker")
    try:
        bootstrap, broker = find_or_start_broker()
    except local_kafka.KafkaLocalError as exc:
        raise SystemExit(f"error: {exc}") from None
    os.environ["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
    spool = ROOT / ".kafka" / "demo-spool.sqlite3"
    os.environ["DLQ_SPOOL"] = str(spool)
    try:
        step("1. Create the topics: orders, orders.DLQ (7-day retention), orders.aggregates")
        run("setup_dlq.py")

        step("2. Aggregation consumer (terminal 1) and producer (terminal 2): 1,000 orders, a few bad")
        consumer = subprocess.Popen(command("consumer_aggregation.py", "--idle-timeout", "4"),
                                    cwd=ROOT, stdin=subprocess.DEVNULL)
        run("producer.py", "--count", "1000", "--rate", "500", "--bad-ratio", "0.01", "--poison-ratio", "0.002")
        if consumer.wait(timeout=300) != 0:
            raise SystemExit("error: the aggregation consumer failed")

        if broker is None:
            step("3. Stop Kafka: skipped")
            print("This demo did not start the broker it uses, so it will not stop it. To see this step (orders "
                  "retried, kept in the local spool, delivered once Kafka is back), stop that broker or unset "
                  "KAFKA_BOOTSTRAP_SERVERS so that nothing answers on localhost:9092, and run `make demo` again.")
        else:
            step("3. Stop Kafka and run the producer: each order waits out its delivery budget, then is "
                 "kept as a dead letter")
            broker.stop()
            started = time.monotonic()
            run("producer.py", "--count", "5", "--delivery-timeout", "1", allowed=(1,))
            print(f"(the producer gave up after {time.monotonic() - started:.0f}s and exited 1, as it should)")
            step("   Start Kafka again and flush the spool into orders.DLQ (exactly once)")
            broker.start(timeout=120)
            run("dlq_producer.py", "--flush-spool")

        step("4. DLQ consumer (terminal 3): every failure with its reason, then the statistics")
        run("dlq_consumer.py")
    finally:
        if broker is not None:
            step("Stopping the local broker this demo started")
            broker.stop()
        spool.unlink(missing_ok=True)
        for suffix in ("-wal", "-shm", ".lock"):
            Path(str(spool) + suffix).unlink(missing_ok=True)
    print("\nDone. Run the scripts yourself with `make kafka-up`; see README.md.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
