"""The console's web application: the page, its JSON endpoints, the access token and the actions.

Every request needs the access token printed at start: given once as `?token=...`, it becomes a
cookie (SameSite=Strict, so another site cannot make the browser send it). Requests that change
something (replay, resolve, export) are POSTs or need the token too, and POSTs must also carry the
`X-Requested-By: dlq-console` header, which a page of another origin cannot add without the
browser asking first. A wrong or outdated token (the console prints a new one each start) gets a
403 with one sentence. `read_only` removes the actions altogether.
"""

from __future__ import annotations

import hmac
import json
import secrets
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from orders_dlq.console.actions import Actions
from orders_dlq.console.reader import (
    PAGE_SIZE,
    DlqIndex,
    DlqReader,
    Filters,
    MarksFollower,
    rss_bytes,
)
from orders_dlq.dead_letter import STAGES
from orders_dlq.errors import ToolFailure, UsageError
from orders_dlq.fixes import export_record
from orders_dlq.kafka import reader_config
from orders_dlq.logs import log
from orders_dlq.marks import DISCARDED, OPEN, RESOLVED, STATUSES, mark_key
from orders_dlq.reading import offsets_at, partitions_of, read_range, watermarks
from orders_dlq.registry import (
    OriginalOrders,
    Registry,
    RegistryOrderCodec,
    RegistrySettings,
    ShowingOriginalOrders,
)
from orders_dlq.selection import Selection, UnreadableRecord, parse_header, parse_time, read_dead_letter
from orders_dlq.settings import KafkaSettings

STATIC = Path(__file__).resolve().parent / "static"
COOKIE = "dlq_console_token"
ACTION_HEADER = "x-requested-by"
FORBIDDEN = ("This console needs the access token it printed when it started (open the URL with ?token=...); "
             "the token given is wrong or belongs to an earlier run.")


@dataclass
class ConsoleConfig:
    settings: KafkaSettings
    read_only: bool = False
    token: str = ""
    consumer_group: str = "order-aggregation-consumers"
    spool_path: str = "dlq-spool.sqlite3"
    max_replays: int = 3
    registry: RegistrySettings | None = None  # to show orders inside registry-framed dead letters


class Console:
    """The state one console process keeps: readers, the index, the actions, and its token."""

    def __init__(self, config: ConsoleConfig):
        self.config = config
        self.token = config.token or secrets.token_urlsafe(24)
        self.settings = config.settings
        self.marks = MarksFollower(self.settings)
        self.index = DlqIndex(self.settings, self.marks)
        self.reader = DlqReader(self.settings, self.marks)
        self.actions = Actions(self.settings, config.max_replays)
        # Dead letters in either framing, and the order inside their original bytes, as dlq_consumer.py
        # shows them; a registry that is down is not waited for (wait_seconds=0).
        framed = None if config.registry is None else RegistryOrderCodec(Registry(config.registry),
                                                                         self.settings.topic, wait_seconds=0)
        self.reader.originals = OriginalOrders(framed)
        self.reader.codec = ShowingOriginalOrders(self.reader.codec, self.reader.originals)
        self.index.codec = ShowingOriginalOrders(self.index.codec, self.reader.originals)
        self._lag_cache: tuple[float, dict] | None = None
        self._spool_cache: tuple[float, dict] | None = None

    def start(self) -> None:
        self.marks.start()
        self.index.start()

    def stop(self) -> None:
        self.index.stop()
        self.marks.stop()
        self.index.join(timeout=5)
        self.marks.join(timeout=5)
        self.reader.close()

    # -- figures beside the DLQ's own ------------------------------------------------------------

    def lag(self) -> dict:
        """How far the aggregation consumer group is behind on the orders topic (cached for 3 s)."""
        now = time.monotonic()
        if self._lag_cache and now - self._lag_cache[0] < 3:
            return self._lag_cache[1]
        topic, group = self.settings.topic, self.config.consumer_group
        consumer = Consumer(reader_config(self.settings, group))
        try:
            metadata = consumer.list_topics(topic, timeout=5).topics.get(topic)
            if metadata is None or metadata.error is not None:
                figures = {"group": group, "topic": topic, "lag": None, "note": "the orders topic does not exist"}
            else:
                wanted = [TopicPartition(topic, p) for p in sorted(metadata.partitions)]
                committed = consumer.committed(wanted, timeout=5)
                lag, any_commit = 0, False
                for tp in committed:
                    low, high = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=5)
                    if tp.offset >= 0:
                        any_commit = True
                    lag += max(0, high - max(tp.offset, low))
                figures = {"group": group, "topic": topic, "lag": lag if any_commit else None,
                           "note": "" if any_commit else "the group has committed nothing yet"}
        except KafkaException as exc:
            figures = {"group": group, "topic": topic, "lag": None, "note": exc.args[0].str()}
        finally:
            consumer.close()
        self._lag_cache = (now, figures)
        return figures

    def spool(self) -> dict:
        """What waits in the local spool (dead letters not yet delivered), if there is one (cached for 5 s)."""
        now = time.monotonic()
        if self._spool_cache and now - self._spool_cache[0] < 5:
            return self._spool_cache[1]
        figures = self._read_spool()
        self._spool_cache = (now, figures)
        return figures

    def _read_spool(self) -> dict:
        path = Path(self.config.spool_path)
        if not path.exists():
            return {"path": str(path), "waiting": 0, "exists": False}
        from orders_dlq.spool import Spool  # only when a spool file is there: opening one creates it
        spool = Spool(path)
        try:
            return {"path": str(path), "waiting": spool.count(), "exists": True, "by_topic": spool.summary()}
        finally:
            spool.close()

    def overview(self) -> dict:
        data = self.index.overview()
        data.update(dlq_topic=self.settings.dlq_topic, read_only=self.config.read_only, lag=self.lag(),
                    spool=self.spool(), rss_bytes=rss_bytes(), marks_error=self.marks.error)
        return data


# -- requests --------------------------------------------------------------------------------------

def token_matches(given: str | None, token: str) -> bool:
    return bool(given) and hmac.compare_digest(given.encode(), token.encode())


def forbidden(api: bool):
    if api:
        return JSONResponse({"error": FORBIDDEN}, status_code=403)
    return PlainTextResponse(FORBIDDEN + "\n", status_code=403)


def bad_request(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def filters_from(params) -> Filters:
    """The list's query parameters as the CLI's Selection plus a status; UsageError for a bad one."""
    status = params.get("status") or OPEN
    if status not in (*STATUSES, "all"):
        raise UsageError(f"status must be one of {', '.join((*STATUSES, 'all'))}, got {status!r}")
    stage = params.get("stage") or None
    if stage is not None and stage not in STAGES:
        raise UsageError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
    values = {"reason": params.get("reason") or None, "stage": stage, "product": params.get("product") or None,
              "original_topic": params.get("original_topic") or None}
    for name in ("since", "until"):
        raw = params.get(name)
        if raw:
            try:
                values[name] = parse_time(raw)
            except ValueError as exc:
                raise UsageError(f"{name}: {exc}") from None
    for name in ("key", "order_id", "grep"):
        if params.get(name):
            values[name] = params.get(name)
    if params.get("from_time"):
        try:
            values["from_time"] = parse_time(params.get("from_time"))
        except ValueError as exc:
            raise UsageError(f"from_time: {exc}") from None
    try:
        values["headers"] = [parse_header(raw) for raw in params.getlist("header") if raw]
    except ValueError as exc:
        raise UsageError(f"header: {exc}") from None
    selection = Selection(**values)
    selection.validate()
    return Filters(selection, status)


def int_param(params, name: str, default: int | None = None, low: int = 0) -> int | None:
    raw = params.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise UsageError(f"{name} must be a whole number, got {raw!r}") from None
    if value < low:
        raise UsageError(f"{name} must be at least {low}, got {value}")
    return value


def build_app(console: Console) -> Starlette:
    def allowed(request: Request) -> bool:
        return token_matches(request.cookies.get(COOKIE), console.token)

    def guarded(handler, api: bool = True, action: bool = False):
        async def endpoint(request: Request):
            if not allowed(request):
                return forbidden(api)
            if action:
                if console.config.read_only:
                    return bad_request("This console runs with --read-only: it changes nothing.", 403)
                if request.method == "POST" and request.headers.get(ACTION_HEADER) != "dlq-console":
                    return bad_request("Actions are taken from the console's own page (the X-Requested-By: "
                                       "dlq-console header is missing).", 403)
            try:
                return await handler(request)
            except UsageError as exc:
                return bad_request(str(exc))
            except ToolFailure as exc:
                return bad_request(str(exc), 502)
            except KafkaException as exc:
                error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else exc
                return bad_request(f"Kafka: {error.str() if isinstance(error, KafkaError) else error}", 502)
        return endpoint

    async def page(request: Request):
        given = request.query_params.get("token")
        if given is not None:
            if not token_matches(given, console.token):
                return forbidden(api=False)
            # The token once in the URL, then a cookie: the address bar and history stop showing it.
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(COOKIE, console.token, httponly=True, samesite="strict")
            return response
        if not allowed(request):
            return forbidden(api=False)
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def overview(request: Request):
        return JSONResponse(await run_in_threadpool(console.overview))

    async def listing(request: Request):
        params = request.query_params
        filters = filters_from(params)
        size = min(int_param(params, "size", PAGE_SIZE, 1), 500)
        partition = int_param(params, "partition")
        offset = int_param(params, "offset")
        started = time.monotonic()
        result = await run_in_threadpool(console.reader.page, filters, partition, offset, size)
        result["elapsed_seconds"] = round(time.monotonic() - started, 3)
        return JSONResponse(result)

    def letter_at(partition: int, offset: int):
        message = console.reader.message(partition, offset)
        if message is None:
            raise UsageError(f"there is no message at {console.settings.dlq_topic}[{partition}]@{offset}")
        return message

    async def letter(request: Request):
        partition = int_param(request.path_params, "partition")
        offset = int_param(request.path_params, "offset")

        def work():
            return console.reader.detail(letter_at(partition, offset))
        return JSONResponse(await run_in_threadpool(work))

    async def body(request: Request) -> dict:
        try:
            data = await request.json()
        except ValueError:
            raise UsageError("the request body must be JSON") from None
        if not isinstance(data, dict):
            raise UsageError("the request body must be a JSON object")
        return data

    async def replay(request: Request):
        data = await body(request)
        partition = int_param(data, "partition")
        offset = int_param(data, "offset")
        if partition is None or offset is None:
            raise UsageError("partition and offset are required")
        dry_run = data.get("dry_run") is not False  # a preview unless explicitly asked to send
        force = data.get("force") is True

        def work():
            message = letter_at(partition, offset)
            try:
                read_dead_letter(message, console.reader.codec, console.settings.dlq_topic)
            except UnreadableRecord as exc:
                raise UsageError(f"this message is not a dead letter, there is nothing to replay: {exc}") from None
            return console.actions.replay(partition, offset, console.reader.partitions(), dry_run, force)
        return JSONResponse(await run_in_threadpool(work))

    async def resolve(request: Request):
        data = await body(request)
        partition = int_param(data, "partition")
        offset = int_param(data, "offset")
        status = data.get("status") or RESOLVED
        note = str(data.get("note") or "")
        if partition is None or offset is None:
            raise UsageError("partition and offset are required")
        if status not in (RESOLVED, DISCARDED):
            raise UsageError(f"status must be {RESOLVED} or {DISCARDED}")

        def work():
            message = letter_at(partition, offset)
            try:
                record = read_dead_letter(message, console.reader.codec, console.settings.dlq_topic)
            except UnreadableRecord as exc:
                raise UsageError(f"this message is not a dead letter and cannot be marked: {exc}") from None
            key, mark = console.actions.mark(record.dead_letter, partition, offset, status, note)
            console.marks.remember(key, mark)
            return {"status": mark.status, "at": mark.at, "by": mark.by, "note": mark.note}
        return JSONResponse(await run_in_threadpool(work))

    async def export(request: Request):
        filters = filters_from(request.query_params)
        name = f"{console.settings.dlq_topic}-{datetime.now().strftime('%Y%m%dT%H%M%S')}.jsonl"
        return StreamingResponse(export_lines(console, filters), media_type="application/x-ndjson",
                                 headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @asynccontextmanager
    async def lifespan(app):
        console.start()
        try:
            yield
        finally:
            await run_in_threadpool(console.stop)

    routes = [
        Route("/", page),
        Route("/api/overview", guarded(overview)),
        Route("/api/list", guarded(listing)),
        Route("/api/letter/{partition:int}/{offset:int}", guarded(letter)),
        Route("/api/replay", guarded(replay, action=True), methods=["POST"]),
        Route("/api/resolve", guarded(resolve, action=True), methods=["POST"]),
        Route("/api/export", guarded(export, action=True)),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def export_lines(console: Console, filters: Filters):
    """The selected dead letters as JSON lines in the format of `dlq_consumer.py --export` (so an edited
    file goes back with `dlq_replay.py --from-file`), read with a consumer of its own from the start
    (or since / from_time) of each partition to its end as it is now."""
    settings, topic = console.settings, console.settings.dlq_topic
    consumer = Consumer(reader_config(settings, f"dlq-console-export-{uuid.uuid4()}"))
    codec = console.reader.codec
    try:
        partitions = partitions_of(consumer, topic)
        bounds = watermarks(consumer, topic, partitions)
        starts = {p: low for p, (low, _high) in bounds.items()}
        if filters.seek_time:
            found = offsets_at(consumer, topic, partitions, filters.seek_time)
            starts = {p: offset for p, offset in found.items() if offset is not None}
        ends = {p: high for p, (_low, high) in bounds.items()}
        try:
            for message in read_range(consumer, topic, starts, ends):
                try:
                    record = read_dead_letter(message, codec, topic)
                except UnreadableRecord:
                    continue
                key = mark_key(record.dead_letter, topic, record.partition, record.offset)
                status = console.marks.status(key)
                if not filters.keeps(status) or not filters.selection.selects(record):
                    continue
                yield json.dumps(export_record(record, status, key, console.reader.orders)) + "\n"
        except ToolFailure as exc:
            log.warning("export from %s ended early: %s", topic, exc)  # the file ends rather than hang
    finally:
        consumer.close()
