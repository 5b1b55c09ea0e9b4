"""producer.py --rate waits between orders without spinning a core.

poll() takes whole milliseconds: a wait under 1 ms handed to it is poll(0), which returns at once,
so a loop around it burns a core until the time is up (at --rate 5000 the gap is 0.2 ms). The
producer here is a real librdkafka client pointed at a closed port: no broker is needed to wait.
"""

import time

from orders_dlq.codec import order_codec
from orders_dlq.delivery import OrderSender


def idle_sender() -> OrderSender:
    return OrderSender({"bootstrap.servers": "127.0.0.1:1", "log_level": 0}, "orders", order_codec(),
                       "test", on_failures=lambda failures: None)


def test_a_sub_millisecond_wait_sleeps_instead_of_spinning():
    sender = idle_sender()
    waits, gap = 100, 0.0009
    wall, cpu = time.monotonic(), time.process_time()
    for _ in range(waits):
        sender.service(gap)
    wall, cpu = time.monotonic() - wall, time.process_time() - cpu
    assert wall >= waits * gap  # each wait lasted its time
    # A spinning wait costs as much CPU as it lasts; a sleeping one a few microseconds per call.
    assert cpu < 0.3 * wall, f"{cpu:.3f} s of CPU in {wall:.3f} s of waiting"


def test_longer_waits_last_their_time():
    sender = idle_sender()
    began = time.monotonic()
    sender.service(0.05)
    assert time.monotonic() - began >= 0.05
