"""dlq_console.py in a real browser (Debian's Chromium driven by Playwright) against the real broker:
the overview, a filter, a dead letter in detail, a corrupt record, replay (dry run, then for real),
resolve, a forced replay of a resolved one, and a wrong token; Kafka is checked afterwards."""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path

import pytest
from conftest import ROOT, Pipeline, Scripts

from orders_dlq.marks import REPLAYED, RESOLVED, mark_key, read_marks
from orders_dlq.settings import KafkaSettings
from tests.integration.console_support import Console, encoded, our_dead_letter, start_console, write_dlq

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("no Chromium at /usr/bin/chromium (apt-get install chromium; .ci/run does): browser tests skipped",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements-dev.txt)")
expect = sync_api.expect
WAIT_MS = 30_000  # a replay starts a transactional producer and reads the marks: seconds on a busy machine
expect.set_options(timeout=WAIT_MS)

pytestmark = pytest.mark.integration

# Headless, and nothing of Chromium's own traffic: no updates, sync, QUIC or background requests.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--disable-gpu", "--disable-quic"]
UNKNOWN, NEGATIVE = "unknown product: 'Unobtainium'", "price must be positive: -1.00"


class World:
    """One DLQ for the module: 4 + 3 of our dead letters, a Spring one, random bytes and a tombstone."""

    def __init__(self, bootstrap: str, scripts: Scripts):
        self.pipeline = Pipeline(bootstrap, scripts, partitions=2)
        self.pipeline.setup()
        topic = self.pipeline.topic
        self.unknown = [our_dead_letter(topic, 0, i, UNKNOWN, "Unobtainium") for i in range(4)]
        self.negative = [our_dead_letter(topic, 1, i, NEGATIVE, "Toffee") for i in range(3)]
        spring_headers = [("kafka_dlt-exception-message", b"boom from spring"),
                          ("kafka_dlt-original-topic", topic.encode()),
                          ("kafka_dlt-exception-fqcn", b"java.lang.IllegalStateException")]
        # DLQ partition 0: unknown[0..3] at 0..3, then random bytes at 4 and a tombstone at 5.
        # DLQ partition 1: negative[0..2] at 0..2, then the Spring dead letter at 3.
        write_dlq(bootstrap, self.pipeline.dlq_topic,
                  [encoded(letter, 0) for letter in self.unknown]
                  + [(0, b"junk", b"\x00\xffnot a dead letter\x01", []), (0, b"gone", None, [])]
                  + [encoded(letter, 1) for letter in self.negative]
                  + [(1, None, b'{"id": 1}', spring_headers)])
        self.settings = KafkaSettings(bootstrap, topic, self.pipeline.dlq_topic)

    def key(self, letter, partition: int, offset: int) -> bytes:
        return mark_key(letter, self.pipeline.dlq_topic, partition, offset)


@pytest.fixture(scope="module")
def world(kafka_bootstrap, tmp_path_factory) -> World:
    return World(kafka_bootstrap, Scripts(kafka_bootstrap, tmp_path_factory.mktemp("console")))


@pytest.fixture(scope="module")
def console(world: World):
    running = start_console(world.pipeline.scripts, "-g", world.pipeline.group)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, console: Console, world: World):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(f"{console.base}/?token={console.token}")  # the token once, then the cookie
    assert "token" not in page.url
    expect(page.locator("#topic")).to_have_text(world.pipeline.dlq_topic)  # the overview came
    yield page
    context.close()


def test_overview_filter_detail_and_a_corrupt_record(page, world: World, tmp_path):
    expect(page.locator("#ov-total")).to_have_text("8")
    expect(page.locator("#ov-open")).to_have_text("8")
    expect(page.locator("#ov-unreadable")).to_have_text("2")
    expect(page.locator("#ov-indexing")).to_contain_text("following")
    expect(page.locator("#chart .uplot canvas")).to_be_visible()
    expect(page.locator("#ov-reasons")).to_contain_text("unknown product")
    screenshot = tmp_path / "console-overview.png"
    page.screenshot(path=str(screenshot), full_page=True)
    if os.environ.get("CONSOLE_SCREENSHOT"):  # how docs/console-overview.png is made
        shutil.copy(screenshot, ROOT / "docs" / "console-overview.png")

    page.click("#nav-list")
    rows = page.locator("#rows tbody tr")
    expect(rows).to_have_count(10)  # 8 dead letters, and the 2 records that are not, shown as such
    expect(page.locator("#rows tbody tr.unreadable")).to_have_count(2)
    expect(page.locator("#rows tbody tr[data-position='0@4']")).to_contain_text("not a dead letter")
    expect(page.locator("#rows tbody tr[data-position='0@5']")).to_contain_text("tombstone")
    expect(page.locator("#rows tbody tr[data-position='1@3']")).to_contain_text("spring")

    page.fill("input[name=reason]", "unknown product")
    page.click("#apply")
    expect(rows).to_have_count(4)
    for row in rows.all():
        expect(row).to_contain_text(UNKNOWN)

    page.click("#rows tbody tr[data-position='0@2'] a")
    expect(page.locator("#letter-title")).to_have_text(f"{world.pipeline.dlq_topic}[0]@2")
    expect(page.locator("#letter-order")).to_contain_text(world.unknown[2].order_id)
    expect(page.locator("#letter-order")).to_contain_text("Unobtainium")
    expect(page.locator("#letter-headers")).to_contain_text("spring: kafka_dlt-exception-message")
    expect(page.locator("#letter-headers")).to_contain_text("connect: __connect.errors.exception.message")
    expect(page.locator("#letter-hex")).to_contain_text("00000000  ")
    assert world.unknown[2].order_id.encode().hex()[:8] in page.inner_text("#letter-hex").replace(" ", "")

    page.goto(page.url.split("#")[0] + "#letter/0/4")
    expect(page.locator("#letter-kind")).to_contain_text("not a dead letter")
    expect(page.locator("#letter-actions")).to_be_hidden()
    expect(page.locator("#letter-hex")).to_contain_text("00 ff 6e 6f 74")


def test_replay_dry_run_then_for_real_resolve_and_a_forced_replay(page, world: World):
    orders = world.pipeline.topic
    page.goto(page.url.split("#")[0] + "#letter/0/0")
    expect(page.locator("#letter-kind")).to_contain_text("status: open")
    page.click("#preview")
    expect(page.locator("#replay-result")).to_contain_text(f"dry run: replay -> {orders}")
    assert world.pipeline.read(orders) == []  # a preview sends nothing
    page.click("#replay")
    expect(page.locator("#replay-result")).to_contain_text("replayed 1")
    sent = world.pipeline.read(orders)
    assert [(m.value(), m.partition(), dict(m.headers())["dlq.replay.count"]) for m in sent] == \
        [(world.unknown[0].original_value, 0, b"1")]
    marks = read_marks(world.settings, world.pipeline.dlq_topic)
    assert marks[world.key(world.unknown[0], 0, 0)].status == REPLAYED
    page.click("#preview")  # once only: the mark makes a second replay a refusal
    expect(page.locator("#replay-result")).to_contain_text("already_replayed")

    note = f"fixed upstream {uuid.uuid4().hex[:6]}"
    page.goto(page.url.split("#")[0] + "#letter/1/1")
    expect(page.locator("#letter-kind")).to_contain_text("status: open")
    page.fill("#note", note)
    page.click("#resolve")
    expect(page.locator("#resolve-result")).to_contain_text("resolved by")
    mark = read_marks(world.settings, world.pipeline.dlq_topic)[world.key(world.negative[1], 1, 1)]
    assert (mark.status, mark.note) == (RESOLVED, note)

    page.click("#preview")  # a resolved dead letter needs an explicit confirmation
    expect(page.locator("#replay-result")).to_contain_text("already_handled")
    expect(page.locator("#force-box")).to_be_visible()
    expect(page.locator("#replay")).to_be_disabled()
    page.check("#force")
    page.click("#replay")
    expect(page.locator("#replay-result")).to_contain_text("replayed 1")
    assert sorted(m.value() for m in world.pipeline.read(orders)) == \
        sorted([world.unknown[0].original_value, world.negative[1].original_value])

    page.goto(page.url.split("#")[0] + "#overview")
    expect(page.locator("#ov-replayed")).to_have_text("2")
    expect(page.locator("#ov-open")).to_have_text("6")
    # Live: a dead letter written now shows up without reloading the page.
    write_dlq(world.pipeline.bootstrap, world.pipeline.dlq_topic,
              [encoded(our_dead_letter(orders, 1, 99, "late: arrived while watching", "Fudge"), 1)])
    expect(page.locator("#ov-total")).to_have_text("9")
    expect(page.locator("#ov-open")).to_have_text("7")
    expect(page.locator("#ov-reasons")).to_contain_text("late")


def test_a_wrong_token_gets_403_in_one_sentence(browser, console: Console):
    context = browser.new_context()
    try:
        page = context.new_page()
        response = page.goto(f"{console.base}/?token=not-the-token")
        assert response.status == 403
        assert re.fullmatch(r"This console needs the access token[^\n]*\.", page.inner_text("body").strip())
        api = context.request.get(f"{console.base}/api/overview")
        assert api.status == 403
    finally:
        context.close()


def test_actions_need_the_console_page(page, console: Console, world: World):
    response = page.request.post(f"{console.base}/api/resolve", data={"partition": 0, "offset": 1})
    assert response.status == 403  # the cookie alone is not enough: no X-Requested-By header
    assert world.key(world.unknown[1], 0, 1) not in read_marks(world.settings, world.pipeline.dlq_topic)

