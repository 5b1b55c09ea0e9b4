"""The monitor's pure parts: rate window, share of orders, alert line, view rendering; metric helpers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from prometheus_client import Counter

from orders_dlq import metrics
from orders_dlq.dead_letter import DeadLetter
from orders_dlq.monitor import (
    CLEAR_SCREEN,
    Monitor,
    RateWindow,
    Share,
    TopicCount,
    alert_message,
    compute_share,
    describe,
    format_age,
    format_percent,
)
from orders_dlq.selection import Selection, error_time, parse_time

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC).timestamp()


def letter(stage="validate", reason="unknown product: 'X'", topic="orders", stamp="2026-11-28T11:59:30+00:00",
           **extra) -> DeadLetter:
    return DeadLetter(error_reason=reason, error_type="InvalidOrder", error_stage=stage, original_topic=topic,
                      failed_by="test", error_timestamp=stamp, **extra)


# -- rate window -------------------------------------------------------------------------------------

def test_rate_counts_only_the_window_and_is_per_minute():
    window = RateWindow(60)
    for seconds_ago in (1, 10, 59, 61, 3600):
        window.add(NOW - seconds_ago, NOW)
    assert window.count(NOW) == 3
    assert window.per_minute(NOW) == 3.0
    assert window.count(NOW + 30) == 2  # 31, 40 and 89 s old by then
    assert window.per_minute(NOW + 120) == 0.0


def test_rate_of_a_shorter_window_is_scaled_to_a_minute():
    window = RateWindow(30)
    for seconds_ago in (1, 2, 3):
        window.add(NOW - seconds_ago, NOW)
    assert window.per_minute(NOW) == 6.0


def test_rate_window_accepts_out_of_order_times():
    window = RateWindow(60)
    for seconds_ago in (5, 50, 1, 30, 70, 20):  # several partitions: not in time order
        window.add(NOW - seconds_ago, NOW)
    assert window.times == sorted(window.times)
    assert window.count(NOW) == 5
    assert window.count(NOW + 15) == 4  # then 20, 65 (gone), 16, 45 and 35 s old
    assert window.times == sorted(window.times)


def test_rate_window_prunes_what_aged_out():
    window = RateWindow(60)
    for second in range(1000):
        window.add(NOW + second, NOW + second)
    assert window.count(NOW + 1000) == 60 and len(window.times) == 60


# -- share -------------------------------------------------------------------------------------------

def test_share_is_dead_letters_over_orders_in_the_topic():
    share = compute_share(73, 0, TopicCount(1000))
    assert (share.dead_letters, share.orders, share.ratio, share.approximate) == (73, 1000, 0.073, False)


def test_orders_that_never_reached_the_topic_count_as_orders():
    # 25 orders the producer could not deliver: the topic is empty, all of them are dead letters.
    assert compute_share(25, 25, TopicCount(0)).ratio == 1.0
    assert compute_share(30, 10, TopicCount(90)).orders == 100


def test_share_without_orders_or_topic():
    assert compute_share(0, 0, TopicCount(0)).ratio is None
    assert compute_share(3, 0, None) is None


def test_share_is_an_approximation_once_retention_deleted_data():
    share = compute_share(10, 0, TopicCount(100, deleted=40))
    assert share.approximate and "retention deleted 40 older order(s)" in share.note
    dlq_trimmed = compute_share(10, 0, TopicCount(100), dlq_deleted=5)
    assert dlq_trimmed.approximate and "5 older dead letter(s)" in dlq_trimmed.note


# -- alert ---------------------------------------------------------------------------------------------

def test_alert_line_names_the_rate_threshold_and_counts():
    assert alert_message(Share(73, 1000), 0.05) == \
        "ALERT: dead-letter rate 7.3% exceeds threshold 5.0% (73 of 1000 orders)"


@pytest.mark.parametrize("share, threshold", [
    (Share(50, 1000), 0.05),    # equal: does not exceed
    (Share(49, 1000), 0.05),
    (Share(0, 0), 0.0),          # no orders at all
    (None, 0.0),
])
def test_no_alert_at_or_below_the_threshold(share, threshold):
    assert alert_message(share, threshold) is None


def test_alert_on_any_dead_letter_with_threshold_zero_and_says_when_approximate():
    line = alert_message(Share(1, 10000, approximate=True, note="retention deleted 5 older order(s)"), 0.0)
    assert line.startswith("ALERT: dead-letter rate 0.01% exceeds threshold 0.0% (1 of 10000 orders)")
    assert line.endswith("[approximation: retention deleted 5 older order(s)]")


@pytest.mark.parametrize("ratio, text", [(0.073, "7.3%"), (0.05, "5.0%"), (1.0, "100.0%"), (0.0, "0.0%"),
                                         (0.00012, "0.012%")])
def test_format_percent(ratio, text):
    assert format_percent(ratio) == text


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (59.9, "59s"), (60, "1m 00s"), (3599, "59m 59s"),
                                           (3600, "1h 00m"), (90061, "1d 01h"), (-5, "0s")])
def test_format_age(seconds, text):
    assert format_age(seconds) == text


# -- the monitor and its view --------------------------------------------------------------------------

def filled_monitor() -> Monitor:
    monitor = Monitor("orders")
    times = [datetime(2026, 11, 28, 10, 0, tzinfo=UTC), datetime(2026, 11, 28, 11, 59, 50, tzinfo=UTC),
             datetime(2026, 11, 28, 13, 59, 40, tzinfo=timezone(timedelta(hours=2)))]  # 11:59:40 UTC
    for index, failed_at in enumerate(times):
        dead_letter = letter(reason=f"price must be positive: -{index}.00", stamp=failed_at.isoformat())
        monitor.add(dead_letter, failed_at, NOW, describe(dead_letter, f"[0@{index}]", failed_at))
    produce = letter(stage="produce", reason="Kafka broker unavailable after 3 attempt(s): timed out", stamp="")
    monitor.add(produce, None, NOW, "")
    monitor.orders = TopicCount(36)
    return monitor


def test_monitor_counts_ages_rate_and_share():
    monitor = filled_monitor()
    assert monitor.stats.total == 4
    assert monitor.ages(NOW) == (7200.0, 10.0)  # oldest 10:00, newest 11:59:50: real times, not text
    assert monitor.rate.count(NOW) == 2
    share = monitor.share()
    assert (share.dead_letters, share.orders) == (4, 37)  # the produce-stage one never reached the topic
    assert monitor.summary_extra(NOW) == {"orders_total": 37, "share_of_orders": round(4 / 37, 6),
                                          "share_is_approximate": False, "rate_per_minute": 2.0}


def test_produce_stage_letters_of_another_topic_do_not_add_orders():
    monitor = Monitor("orders")
    monitor.add(letter(stage="produce", topic="elsewhere"), None, NOW)
    assert monitor.never_reached == 0


def test_view_shows_counts_rate_ages_share_and_latest_within_the_width():
    view = filled_monitor().render(NOW, "dead letters in orders.DLQ", width=60, height=40)
    text = "\n".join(view)
    assert "dead letters  4" in text
    assert "2.0/min (last 60s)" in text
    assert "newest 10s ago  oldest 2h 00m ago" in text
    assert "10.8% of 37 orders (4 dead letters)" in text
    assert "       3  validate" in text and "       1  produce" in text
    assert "       3  price must be positive" in text
    assert "latest" in text and "[0@2]" in text
    assert all(len(line) <= 60 for line in view)
    assert "\x1b" not in text  # the escape sequence is the caller's, only for a terminal
    assert CLEAR_SCREEN.startswith("\x1b[")


def test_view_folds_long_rankings_and_fits_the_height():
    monitor = Monitor("orders")
    for number in range(20):
        monitor.add(letter(reason=f"rule {number:02d}: x"), None, NOW)
    view = monitor.render(NOW, "t", top=8, height=100)
    assert "        12  (12 more)" in view
    assert len(monitor.render(NOW, "t", height=10)) == 9


def test_status_line_is_one_plain_line():
    line = filled_monitor().status_line(NOW)
    assert "\n" not in line and "\x1b" not in line
    assert line.startswith("12:00:00Z dead letters 4  rate 2.0/min (last 60s)")
    assert "share 10.8% of 37 orders" in line and "by stage: validate 3, produce 1" in line


def test_unknown_share_is_said_so():
    monitor = Monitor("orders")
    assert "unknown (the orders topic does not exist)" in monitor.status_line(NOW)
    monitor.orders = TopicCount(0)
    assert "no orders in the topic" in monitor.status_line(NOW)


def test_describe_is_utc_and_single_line_unless_detailed():
    failed_at = datetime(2026, 11, 28, 13, 0, tzinfo=timezone(timedelta(hours=1)))
    dead_letter = letter(order_id="o-1", product="Toffee")
    line = describe(dead_letter, "[2@17]", failed_at)
    assert line == "[2@17] 2026-11-28T12:00:00Z validate: unknown product: 'X'  order o-1  product Toffee"
    first, second = describe(dead_letter, "[2@17]", failed_at, detailed=True).split("\n")
    assert first == line and second.startswith("    price ") and f"by {dead_letter.failed_by}" in second


# -- --since / --until: real times, whatever the zone ----------------------------------------------------

@pytest.mark.parametrize("since, selected", [
    ("2026-11-28T09:00Z", True),
    ("2026-11-28T10:00+01:00", True),   # 09:00 UTC: a text comparison would say 09:30+00:00 < 10:00+01:00
    ("2026-11-28T10:31+01:00", False),  # 09:31 UTC
    ("2026-11-28T09:30:00.000001+00:00", False),
])
def test_since_compares_real_times(since, selected):
    dead_letter = letter(stamp="2026-11-28T09:30:00+00:00")
    assert Selection(since=parse_time(since)).matches(dead_letter, 0, 0, None) is selected


def test_a_dead_letter_without_error_time_uses_the_dlq_message_time():
    spring = letter(stamp="")
    message_ms = int(datetime(2026, 11, 28, 9, 45, tzinfo=UTC).timestamp() * 1000)
    assert error_time(spring, message_ms) == datetime(2026, 11, 28, 9, 45, tzinfo=UTC)
    selection = Selection(since=parse_time("2026-11-28T09:40Z"), until=parse_time("2026-11-28T11:50+02:00"))
    assert selection.matches(spring, 0, 0, message_ms)
    assert not selection.matches(spring, 0, 0, None)


# -- metric helpers ----------------------------------------------------------------------------------

def test_reason_labels_are_categories_and_bounded(monkeypatch):
    monkeypatch.setattr(metrics, "_reasons", set())
    assert metrics.reason_label("price must be positive: -3.00") == "price must be positive"
    assert metrics.reason_label("x" * 500) == "x" * metrics.MAX_REASON_LENGTH
    assert metrics.reason_label("") == "unknown"
    for number in range(metrics.MAX_REASONS * 2):
        metrics.reason_label(f"error {number}: detail")
    assert len(metrics._reasons) == metrics.MAX_REASONS
    assert metrics.reason_label("yet another: thing") == metrics.OTHER_REASON
    assert metrics.reason_label("price must be positive: -9.99") == "price must be positive"


def test_running_total_moves_a_counter_by_deltas():
    counter = Counter("test_running_total", "test", registry=None)
    total = metrics.RunningTotal(counter)
    for value in (0, 5, 5, 12, 3):  # a total never moves a counter back
        total.sync(value)
    assert counter._value.get() == 12


def test_throttle_fires_at_most_once_per_interval():
    clock = [100.0]
    due = metrics.Throttle(1.0, clock=lambda: clock[0])
    fired = []
    for step in range(30):
        clock[0] = 100.0 + step * 0.25
        fired.append(due())
    assert sum(fired) == 8 and fired[0]


def test_monitor_gauges_leave_out_what_is_not_known():
    gauges = metrics.MonitorGauges()
    gauges.update(monitor_dead_letter_rate_per_minute=2.0, monitor_dead_letter_share=None,
                  monitor_oldest_dead_letter_age_seconds=5.0)
    families = {family.name: family.samples[0].value for family in gauges.collect()}
    # The per-minute rate is never exported (Prometheus computes rates); the unknown share is left out.
    assert families == {"orders_dlq_monitor_oldest_dead_letter_age_seconds": 5.0}


def test_monitor_publishes_seen_counts_once(monkeypatch):
    seen = Counter("test_seen", "test", ["stage", "reason"], registry=None)
    monkeypatch.setattr(metrics, "MONITOR_SEEN", seen)
    monkeypatch.setattr(metrics, "MONITOR_GAUGES", metrics.MonitorGauges())
    monitor = filled_monitor()
    monitor.publish_metrics(NOW)
    monitor.publish_metrics(NOW)
    assert seen.labels("validate", "price must be positive")._value.get() == 3
    assert metrics.MONITOR_GAUGES.values["monitor_orders_topic_messages"] == 36
    assert metrics.MONITOR_GAUGES.values["monitor_newest_dead_letter_age_seconds"] == 10.0


def test_describe_shows_a_time_without_a_utc_equivalent_as_unknown():
    failed_at = datetime(1, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=5)))
    assert describe(letter(order_id="o-2"), "[0@1]", failed_at).startswith("[0@1] - validate:")
