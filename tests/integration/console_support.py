"""What the console tests share: a DLQ filled with known dead letters and foreign records, and the
console running as a subprocess on a free port."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from confluent_kafka import Producer
from conftest import Running, Scripts, a_valid_order, encode_order, wait_for

from orders_dlq.codec import dead_letter_codec
from orders_dlq.dead_letter import DeadLetter, DeadLetterCodec

URL = re.compile(r"(http://127\.0\.0\.1:\d+)/\?token=(\S+)")


def our_dead_letter(topic: str, partition: int, offset: int, reason: str, product: str) -> DeadLetter:
    order = a_valid_order(product=product)
    return DeadLetter(error_reason=reason, error_type="ValueError", error_stage="validate", original_topic=topic,
                      failed_by="console-test", order_id=order["order_id"], product=product, price=order["price"],
                      original_partition=partition, original_offset=offset, original_key=b"k",
                      original_value=encode_order(order),
                      # Recent: a replay keeps it, and retention would soon delete a record from years ago.
                      original_timestamp=int(time.time() * 1000) - 60_000)


def write_dlq(bootstrap: str, dlq_topic: str, messages: list[tuple[int, bytes | None, bytes | None, list]]) -> None:
    """Write (partition, key, value, headers) to the DLQ in this order, each confirmed."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    failures = []
    for partition, key, value, headers in messages:
        producer.produce(dlq_topic, key=key, value=value, headers=headers, partition=partition,
                         on_delivery=lambda error, _message: error and failures.append(error.str()))
    assert producer.flush(30) == 0 and not failures, failures


def encoded(dead_letter: DeadLetter, partition: int) -> tuple[int, bytes | None, bytes, list]:
    codec = DeadLetterCodec(dead_letter_codec())
    return partition, dead_letter.original_key, codec.encode(dead_letter), dead_letter.headers()


@dataclass
class Console:
    running: Running
    base: str
    token: str

    def request(self, path: str, data: dict | None = None, token: str | None = None,
                headers: dict | None = None) -> tuple[int, object]:
        """(status, JSON body) of a request with the access token as its cookie."""
        request = urllib.request.Request(self.base + path, data=None if data is None else json.dumps(data).encode(),
                                         headers={"Cookie": f"dlq_console_token={token or self.token}",
                                                  "Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def stop(self) -> str:
        """Stop it as Ctrl+C would; it must end cleanly. Returns its stderr."""
        self.running.process.terminate()
        code = self.running.wait(timeout=30)
        assert code == 0, f"dlq_console.py exited {code}\n{self.running.stderr()[-3000:]}"
        return self.running.stderr()


def start_console(scripts: Scripts, *args) -> Console:
    running = scripts.spawn("dlq_console.py", "--port", 0, "--duration", 300, *args)
    found = wait_for(lambda: URL.search(running.stdout()) or (not running.running() and "ended"), 60,
                     "dlq_console.py to print its address")
    assert found != "ended", f"dlq_console.py ended at start\n{running.stderr()}"
    return Console(running, found.group(1), found.group(2))
