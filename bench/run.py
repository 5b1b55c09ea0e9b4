#!/usr/bin/env python3
"""Benchmark: the pipeline's scripts beside the raw confluent-kafka client, in one run, on one broker.

    python bench/run.py              # default: 200k orders per throughput case, 3 repeats (a few minutes)
    python bench/run.py --tiny       # 2k orders, 1 repeat, no 1M memory case (the smoke test)
    python bench/run.py --full       # default plus the 1M-order memory case
    python bench/run.py --repeat 5 --count 500000

Broker: KAFKA_BOOTSTRAP_SERVERS if set and reachable; else a fresh local broker on free ports in
.kafka/bench-broker, stopped at the end. Prints a table and writes it as JSON (bench/results.json).
See bench/README.md for what each case measures and how.
"""

from __future__ import annotations

import argparse
import bisect
import io
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import confluent_kafka
import fastavro
import limits  # bench/limits.py, beside this file
from confluent_kafka import Consumer, KafkaError, TopicPartition

from orders_dlq import local_kafka, local_registry
from orders_dlq.changelog import PartitionState, parse_state_key, read_states, state_key
from orders_dlq.settings import KafkaSettings

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"

PY = sys.executable
# The latency consumer's --idle-timeout: it starts before producer.py, whose first order can come
# seconds after the assignment on a loaded machine (CI once saw an idle-out with 0 of 2,000 done).
LATENCY_IDLE_SECONDS = 10.0
RUN_LINE = re.compile(r"this run: (\d+) orders aggregated, (\d+) dead-lettered in ([\d.]+)s")

CASES = (
    "limit_produce", "original_design", "producer",
    "producer_registry",
    "limit_consume", "consumer_at_least_once", "consumer_exactly_once", "consumer_exactly_once_registry",
    "consumer_at_least_once_poison_1pct", "consumer_exactly_once_poison_1pct",
    "limit_dead_letter_forward", "dead_letter_at_least_once", "dead_letter_exactly_once",
    "latency_exactly_once", "latency_at_least_once",
    "memory_1m", "restore", "rebalance_join", "console",
)
# How instances of one group share partitions in the rebalance case: the consumer's default, the
# eager protocol it replaced (every member gives up everything at each join), and KIP-848.
REBALANCE_PROTOCOLS = {
    "cooperative-sticky (default)": [],
    "eager (range)": ["-X", "partition.assignment.strategy=range"],
    "KIP-848 (group.protocol=consumer)": ["-X", "group.protocol=consumer"],
}


class BenchError(Exception):
    """A case could not be measured (a script failed, counts do not add up)."""


# -- processes ----------------------------------------------------------------------------------

class Scripts:
    """Runs scripts as a user would (scratch cwd, clean env) and measures wall time and peak RSS."""

    def __init__(self, bootstrap: str, workdir: Path):
        self.bootstrap = bootstrap
        self.workdir = workdir
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "ORDERS_", "DLQ_"))}
        self.env.update(KAFKA_BOOTSTRAP_SERVERS=bootstrap, PYTHONUNBUFFERED="1")

    def start(self, args: list[str], env: dict | None = None) -> dict:
        out = tempfile.TemporaryFile(dir=self.workdir)
        err = tempfile.NamedTemporaryFile(dir=self.workdir, delete=False)
        began = time.monotonic()
        proc = subprocess.Popen([PY, *args], cwd=self.workdir, env={**self.env, **(env or {})},
                                stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        peak = PeakRss(proc.pid)
        peak.start()
        return {"proc": proc, "out": out, "err": err, "began": began, "args": args, "peak": peak}

    def finish(self, job: dict, timeout: float = 900) -> dict:
        """Wait for the process; wait4 gives the peak RSS of exactly this child."""
        proc = job["proc"]
        killer = threading.Timer(max(1.0, timeout - (time.monotonic() - job["began"])), proc.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        wall = time.monotonic() - job["began"]
        job["peak"].halt.set()
        job["peak"].join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        job["out"].seek(0)
        stdout = job["out"].read().decode(errors="replace")
        job["out"].close()
        stderr = Path(job["err"].name).read_text(errors="replace")
        job["err"].close()
        os.unlink(job["err"].name)
        name = " ".join(Path(a).name if i == 0 else a for i, a in enumerate(job["args"][:3]))
        if proc.returncode != 0:
            raise BenchError(f"{name} exited {proc.returncode}: {stderr.strip()[-600:]}")
        return {"stdout": stdout, "stderr": stderr, "wall": wall,
                "maxrss_mb": job["peak"].peak_kb / 1024, "cpu_s": usage.ru_utime + usage.ru_stime}

    def run(self, args: list[str], timeout: float = 900, env: dict | None = None) -> dict:
        return self.finish(self.start(args, env), timeout)

    def json(self, args: list[str], timeout: float = 900, env: dict | None = None) -> tuple[dict, dict]:
        result = self.run(args, timeout, env)
        lines = [line for line in result["stdout"].splitlines() if line.startswith("{")]
        if not lines:
            raise BenchError(f"{args[0]} printed no JSON: {result['stdout'][-300:]}")
        return json.loads(lines[-1]), result


class PeakRss(threading.Thread):
    """The child's own peak RSS (VmHWM of /proc/PID/status), polled every 50 ms until it exits.

    Not wait4()'s ru_maxrss: Linux seeds a child's maxrss with the RSS of the process that forked
    it (the bench itself), so small scripts would all look as big as the bench.
    """

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.path = Path(f"/proc/{pid}/status")
        self.peak_kb = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while True:
            try:
                for line in self.path.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.peak_kb = max(self.peak_kb, int(line.split()[1]))
            except (OSError, ValueError):
                pass
            if self.halt.wait(0.05):
                return


def script(name: str) -> str:
    return str(ROOT / name)


LIMITS = str(BENCH / "limits.py")


# -- the bench ----------------------------------------------------------------------------------

class Bench:
    def __init__(self, args, bootstrap: str, workdir: Path, registry: str | None = None,
                 registry_missing: str = "no Schema Registry", broker_pid: int | None = None):
        self.args = args
        self.bootstrap = bootstrap
        self.broker_pid = broker_pid  # the broker's JVM when the bench started it: its JIT is watched
        self.latency_warm = False
        self.jit_seen = jit_cpu_seconds(broker_pid)
        self.registry = registry  # the ccompat URL for the registry-mode cases, or None
        self.registry_missing = registry_missing
        self.scripts = Scripts(bootstrap, workdir)
        self.results: dict[str, dict] = {name: {"runs": []} for name in CASES}
        self.has_latency_hook = "--latency" in self.scripts.run([script("consumer_aggregation.py"), "--help"])[
            "stdout"]

    # helpers
    def log(self, text: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    def new_topic(self, label: str) -> str:
        topic = f"bench-{label}-{uuid.uuid4().hex[:8]}"
        self.scripts.run([script("setup_dlq.py"), "-t", topic, "--partitions", str(self.args.partitions)])
        return topic

    def record(self, case: str, run: dict) -> None:
        # CPU the broker's JIT compiler used since the last record: a run it overlapped shared the
        # machine with it (on 2 cores, up to 60% of one), a reason for a slow run.
        jit = jit_cpu_seconds(self.broker_pid)
        if jit is not None and self.jit_seen is not None:
            run["broker_jit_cpu_s"] = round(jit - self.jit_seen, 2)
        self.jit_seen = jit
        self.results[case]["runs"].append(run)
        shown = {k: (round(v, 1) if isinstance(v, float) else v) for k, v in run.items()
                 if k in ("rate", "p50_ms", "p99_ms", "maxrss_mb", "count", "broker_jit_cpu_s")}
        self.log(f"{case}: {shown}")

    def cpu_per_message(self, count: int, script_cpu_s: float, broker_before: float | None) -> dict:
        """CPU microseconds per message of the script (its start-up included) and of the broker
        over the same run: on a machine whose cores the broker shares, their sum bounds the rate."""
        broker_after = process_cpu_seconds(self.broker_pid)
        out = {"cpu_us_per_message": script_cpu_s / count * 1e6}
        if broker_before is not None and broker_after is not None:
            out["broker_cpu_us_per_message"] = (broker_after - broker_before) / count * 1e6
        return out

    def guarded(self, case: str, fn, *args):
        try:
            return fn(*args)
        except BenchError as exc:
            self.log(f"{case}: FAILED: {exc}")
            self.results[case].setdefault("errors", []).append(str(exc))
            return None

    def warm_up(self, count: int, rounds: int = 8, agree: float = 0.1) -> None:
        """Raw produce and consume rounds, not recorded, until two in a row agree within `agree` on
        both rates (the broker's JIT and page cache have settled), or `rounds` were run."""
        previous = None
        for round_number in range(1, rounds + 1):
            warm = self.new_topic("warmup")
            produced, _ = self.scripts.json([LIMITS, "produce", "-b", self.bootstrap, "-t", warm,
                                             "--count", str(count)])
            consumed, _ = self.scripts.json([LIMITS, "consume", "-b", self.bootstrap, "-t", warm, "--count",
                                             str(count), "-g", f"bench-warm-{uuid.uuid4().hex[:8]}"])
            rates = (produced["rate"], consumed["rate"])
            self.log(f"warm-up round {round_number} (not recorded): produce {rates[0]:,.0f}/s, "
                     f"consume {rates[1]:,.0f}/s")
            if previous and all(abs(now / before - 1) <= agree for now, before in zip(rates, previous, strict=True)):
                return
            previous = rates
        self.log(f"warm-up: rates still moving after {rounds} rounds; the runs below may be UNSTEADY")

    def warm_latency(self, rounds: int = 8, quiet: float = 0.05) -> None:
        """Unrecorded latency rounds (both guarantees) until the broker's JIT compiler has settled.

        A fresh broker JVM compiles for minutes the code paths a new workload takes: on this
        2-core machine its C2 thread took 55-60% of a core during the first latency rounds, and
        the orders queued behind it (p99 270-435 ms, 61-160 ms once the compiler was quiet). The
        throughput cases do not warm the paths of paced produce and 10 transactions/s. Settled:
        the compiler threads used under `quiet` of a core during a round. Without the broker's
        pid (a broker the bench did not start), two rounds."""
        if self.latency_warm:
            return
        self.latency_warm = True
        for round_number in range(1, rounds + 1):
            before, began = jit_cpu_seconds(self.broker_pid), time.monotonic()
            for guarantee in ("exactly-once", "at-least-once"):
                self.guarded("latency_" + guarantee.replace("-", "_"), self.latency, None, guarantee)
            after = jit_cpu_seconds(self.broker_pid)
            if before is None or after is None:
                self.log(f"latency warm-up round {round_number} (not recorded): broker JIT not visible")
                if round_number >= 2:
                    return
                continue
            share = max(0.0, after - before) / (time.monotonic() - began)
            self.log(f"latency warm-up round {round_number} (not recorded): the broker's JIT compiler used "
                     f"{share:.0%} of a core")
            if share <= quiet:
                return
        self.log(f"latency warm-up: the broker's JIT still compiling after {rounds} rounds; the latency runs "
                 "below may be UNSTEADY")

    # 1. limits and the original design
    def limit(self, case: str, loop: str, topic: str, count: int, *extra: str) -> dict:
        broker_before = process_cpu_seconds(self.broker_pid)
        data, proc = self.scripts.json([LIMITS, loop, "-b", self.bootstrap, "-t", topic, "--count", str(count),
                                        *extra])
        if data["count"] != count:
            raise BenchError(f"{loop}: {data['count']} of {count} messages")
        run = {**data, "rate_whole": data["rate"], "wall_s": proc["wall"], "maxrss_mb": proc["maxrss_mb"],
               **self.cpu_per_message(count, proc["cpu_s"], broker_before)}
        if data.get("steady_rate"):
            run["rate"] = data["steady_rate"]  # the headline: 10%-90% of the messages, as for the scripts
        self.record(case, run)
        return run

    # 3. producer.py
    def producer(self, case: str | None, topic: str, count: int, *extra: str) -> dict:
        broker_before = process_cpu_seconds(self.broker_pid)
        data, proc = self.scripts.json([script("producer.py"), "-t", topic, "--count", str(count), "--json",
                                        "--seed", "6", *extra])
        if data["sent"] != count:
            raise BenchError(f"producer.py sent {data['sent']} of {count}")
        run = {"count": data["sent"], "rate": data["rate_per_second"], "seconds": data["elapsed_seconds"],
               "wall_s": proc["wall"], "rate_wall": count / proc["wall"], "rate_whole": count / proc["wall"],
               "maxrss_mb": proc["maxrss_mb"],
               "cpu_s": proc["cpu_s"], "kinds": data["kinds"],
               **self.cpu_per_message(count, proc["cpu_s"], broker_before)}
        if case:
            self.record(case, run)
        return run

    # 4 and 6. consumer_aggregation.py draining a pre-filled topic
    def consumer(self, case: str, topic: str, count: int, guarantee: str, *extra: str) -> dict:
        idle = self.args.idle_timeout
        group = f"bench-{uuid.uuid4().hex[:8]}"
        broker_before = process_cpu_seconds(self.broker_pid)
        data, proc = self.scripts.json([script("consumer_aggregation.py"), "-t", topic, "-g", group, "--guarantee",
                                        guarantee, "--idle-timeout", str(idle), "--json", *extra])
        match = RUN_LINE.search(proc["stderr"])
        if not match:
            raise BenchError("consumer_aggregation.py printed no 'this run:' line")
        processed, dead, run_s = int(match[1]), int(match[2]), float(match[3])
        if processed + dead != count:
            raise BenchError(f"consumer handled {processed} + {dead} of {count} messages")
        drain = max(run_s - idle, 1e-3)
        progress = changelog_progress(self.bootstrap, f"{topic}.aggregates", group, topic)
        steady = limits.steady_rate(progress, count)
        run = {"count": processed + dead, "processed": processed, "dead_lettered": dead,
               "rate": steady or (processed + dead) / drain, "rate_steady": steady,
               "rate_whole": (processed + dead) / drain, "drain_s": drain, "run_s": run_s,
               "rate_wall": (processed + dead) / max(proc["wall"] - idle, 1e-3), "wall_s": proc["wall"],
               "maxrss_mb": proc["maxrss_mb"], "cpu_s": proc["cpu_s"], "summary_processed": data["processed"],
               **self.cpu_per_message(count, proc["cpu_s"], broker_before)}
        self.record(case, run)
        return run

    # 5. end-to-end latency at a fixed rate
    def latency(self, case: str, guarantee: str) -> dict:
        rate, seconds = self.args.latency_rate, self.args.latency_seconds
        count = int(rate * seconds)
        topic = self.new_topic("latency")
        state_topic = f"{topic}.aggregates"
        group = f"bench-{uuid.uuid4().hex[:8]}"
        watcher = ChangelogWatcher(self.bootstrap, state_topic)
        watcher.start()
        extra = ["--latency"] if self.has_latency_hook else []
        idle = max(LATENCY_IDLE_SECONDS, self.args.idle_timeout)
        job = self.scripts.start([script("consumer_aggregation.py"), "-t", topic, "-g", group, "--guarantee",
                                  guarantee, "--idle-timeout", str(idle), "--json", *extra])
        try:
            deadline = time.monotonic() + 60
            while "assigned" not in Path(job["err"].name).read_text(errors="replace"):
                if job["proc"].poll() is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            time.sleep(0.3)  # the first fetch is issued
            produced = self.producer(None, topic, count, "--rate", str(rate))
        finally:
            proc = self.scripts.finish(job)
            watcher.stop()
        summary = json.loads([line for line in proc["stdout"].splitlines() if line.startswith("{")][-1])
        if summary["processed"] != count:
            raise BenchError(f"latency consumer aggregated {summary['processed']} of {count}")
        created = orders_created_at(self.bootstrap, topic)
        visible_all, _ = watcher.latencies(group, topic, created)
        # Steady state: leave out the orders of the producer's first second, which wait for its
        # start-up (metadata, idempotent producer id) whatever the consumer does.
        first = min(created.values(), default=0)
        steady = {k: v for k, v in created.items() if v >= first + 1_000_000} or created
        visible, stamped = watcher.latencies(group, topic, steady)
        run = {"count": count, "rate_achieved": produced["rate"], "maxrss_mb": proc["maxrss_mb"],
               "producer_maxrss_mb": produced["maxrss_mb"],
               "visible_p50_ms": percentile(visible, 50), "visible_p99_ms": percentile(visible, 99),
               "changelog_stamp_p50_ms": percentile(stamped, 50), "changelog_stamp_p99_ms": percentile(stamped, 99),
               "visible_all_p50_ms": percentile(visible_all, 50), "visible_all_p99_ms": percentile(visible_all, 99),
               "measured_orders": len(visible)}
        hook = summary.get("latency_ms") if isinstance(summary.get("latency_ms"), dict) else None
        run["hook_p50_ms"] = hook.get("p50") if hook else None
        run["hook_p99_ms"] = hook.get("p99") if hook else None
        run["p999_ms"] = hook.get("p99.9") if hook else None
        commits = summary.get("commit_ms") if isinstance(summary.get("commit_ms"), dict) else {}
        run["commit_p50_ms"], run["commit_p99_ms"] = commits.get("p50"), commits.get("p99")
        # The headline is the definition, creation -> aggregated, measured by the consumer
        # itself (--latency, every order, same machine clock). Without the hook, fall back to the
        # time the aggregate became visible to read_committed readers (an upper bound).
        if hook and hook.get("p99") is not None:
            run["p50_ms"], run["p99_ms"] = run["hook_p50_ms"], run["hook_p99_ms"]
            run["source"] = "creation -> aggregated (consumer --latency), all orders"
        else:
            run["p50_ms"], run["p99_ms"] = run["visible_p50_ms"], run["visible_p99_ms"]
            run["source"] = "changelog-visible, steady state: an upper bound"
        if case is not None:
            self.record(case, run)
        return run

    # 7. the pause a join causes
    def rebalance_join(self, protocol: str, partitions: int = 12, rate: float = 2000.0,
                       seconds: float = 14.0, join_after: float = 5.0) -> dict:
        """One exactly-once instance aggregates orders arriving at `rate`; a second joins after
        `join_after` s. The pause is how late the orders created around the join became visible
        to read_committed readers of the changelog, beside the steady latency before it."""
        topic = f"bench-rebalance-{uuid.uuid4().hex[:8]}"
        self.scripts.run([script("setup_dlq.py"), "-t", topic, "--partitions", str(partitions)])
        group = f"bench-{uuid.uuid4().hex[:8]}"
        watcher = ChangelogWatcher(self.bootstrap, f"{topic}.aggregates")
        watcher.start()
        consumer = [script("consumer_aggregation.py"), "-t", topic, "-g", group, "--guarantee", "exactly-once",
                    "--idle-timeout", "4", "--json", *REBALANCE_PROTOCOLS[protocol]]
        first = self.scripts.start(consumer)
        second = None
        outputs = []
        try:
            wait_for_line(first, "assigned", 60)
            feeder = self.scripts.start([script("producer.py"), "-t", topic, "--count", str(int(rate * seconds)),
                                         "--rate", str(rate), "--json", "--seed", "6"])
            time.sleep(join_after)  # the bench's clock: orders flow for join_after s before the join
            joined_at = time.time()
            second = self.scripts.start(consumer)
            self.scripts.finish(feeder)
        finally:
            for job in (first, second):
                if job is not None:
                    outputs.append(self.scripts.finish(job))
            watcher.stop()
        created = orders_created_at(self.bootstrap, topic)
        if len(created) != int(rate * seconds):
            raise BenchError(f"rebalance: {len(created)} orders in the topic, expected {int(rate * seconds)}")
        before = {k: v for k, v in created.items() if v / 1e6 < joined_at - 0.5 and v / 1e6 > joined_at - 4}
        around = {k: v for k, v in created.items() if joined_at <= v / 1e6 < joined_at + 6}
        # The partitions the newcomer took over, from its log, against those the first one kept.
        moved = {int(p) for line in outputs[1]["stderr"].splitlines() if " assigned " in line
                 for p in re.findall(r"\[(\d+)\]@", line)}
        steady, _ = watcher.latencies(group, topic, before)
        kept, _ = watcher.latencies(group, topic, {k: v for k, v in around.items() if k[0] not in moved})
        taken, _ = watcher.latencies(group, topic, {k: v for k, v in around.items() if k[0] in moved})
        if len(kept) + len(taken) != len(around):
            raise BenchError(f"rebalance: {len(around) - len(kept) - len(taken)} orders around the join never "
                             "became visible")
        run = {"protocol": protocol, "partitions": partitions, "rate": rate, "moved": len(moved),
               "steady_p50_ms": percentile(steady, 50),
               "kept_p99_ms": percentile(kept, 99), "kept_max_ms": max(kept, default=None),
               "moved_p99_ms": percentile(taken, 99), "moved_max_ms": max(taken, default=None)}
        self.results["rebalance_join"]["runs"].append(run)
        self.log(f"rebalance_join: {run}")
        return run

    # -- the whole run --------------------------------------------------------------------------
    def run_only(self, which: str) -> None:
        """A part of run(), for working on one figure: the same cases, repeated, interleaved."""
        a = self.args
        dlq_topic = clean_topic = poison_topic = None
        if which == "dead-letters":
            dlq_topic = self.new_topic("deadletter")
            self.producer(None, dlq_topic, a.dlq_count, "--poison-ratio", "1")
        if which == "poison":
            clean_topic, poison_topic = self.new_topic("orders"), self.new_topic("poison")
            self.producer(None, clean_topic, a.count)
            self.producer(None, poison_topic, a.count, "--poison-ratio", "0.01")
        for r in range(a.repeat):
            if which == "poison":
                self.log(f"poison round {r + 1}/{a.repeat}")
                for guarantee in ("at-least-once", "exactly-once"):
                    case = f"consumer_{guarantee.replace('-', '_')}"
                    self.guarded(case, self.consumer, case, clean_topic, a.count, guarantee)
                    self.guarded(case + "_poison_1pct", self.consumer, case + "_poison_1pct", poison_topic, a.count,
                                 guarantee)
                continue
            if which == "latency":
                self.warm_latency()
                self.log(f"latency round {r + 1}/{a.repeat} ({a.latency_rate:g}/s for {a.latency_seconds:g}s)")
                self.guarded("latency_exactly_once", self.latency, "latency_exactly_once", "exactly-once")
                self.guarded("latency_at_least_once", self.latency, "latency_at_least_once", "at-least-once")
                continue
            self.log(f"dead-letter round {r + 1}/{a.repeat}")
            self.guarded("producer", self.producer, "producer", self.new_topic("orders"), a.count)
            self.guarded("limit_dead_letter_forward", self.limit, "limit_dead_letter_forward", "forward", dlq_topic,
                         a.dlq_count, "-g", f"bench-limit-{uuid.uuid4().hex[:8]}", "--to", f"{dlq_topic}.DLQ")
            for guarantee in ("at-least-once", "exactly-once"):
                case = f"dead_letter_{guarantee.replace('-', '_')}"
                self.guarded(case, self.consumer, case, dlq_topic, a.dlq_count, guarantee)

    def run(self) -> None:
        a = self.args
        n, repeat = a.count, a.repeat
        filled: list[str] = []
        filled_registry: list[str] = []
        registry = ["--schema-registry", self.registry] if self.registry else []
        if not self.registry:
            for case in ("producer_registry", "consumer_exactly_once_registry"):
                self.results[case]["skipped"] = self.registry_missing
        if a.warmup:
            self.warm_up(a.warmup)
        for r in range(repeat):
            self.log(f"produce round {r + 1}/{repeat}")
            self.guarded("limit_produce", self.limit, "limit_produce", "produce", self.new_topic("limit"), n)
            self.guarded("original_design", self.limit, "original_design", "original", self.new_topic("orig"),
                         a.original_count)
            topic = self.new_topic("orders")
            if self.guarded("producer", self.producer, "producer", topic, n):
                filled.append(topic)
            if registry:  # the same, in the Confluent wire format with the schema registered
                topic = self.new_topic("registry")
                if self.guarded("producer_registry", self.producer, "producer_registry", topic, n, *registry):
                    filled_registry.append(topic)
        if not filled:
            raise BenchError("producer.py could not fill a topic: no consumer case can run")
        self.log(f"filling the 1% poison topic and the dead-letter topic ({a.dlq_count} all-poison messages)")
        poison_topic = self.new_topic("poison")
        self.producer(None, poison_topic, n, "--poison-ratio", "0.01")
        dlq_topic = self.new_topic("deadletter")
        self.producer(None, dlq_topic, a.dlq_count, "--poison-ratio", "1")

        for r in range(repeat):  # interleaved, so drift (page cache, JIT, compaction) hits every case alike
            self.log(f"consume round {r + 1}/{repeat}")
            topic = filled[r % len(filled)]
            self.guarded("limit_consume", self.limit, "limit_consume", "consume", topic, n,
                         "-g", f"bench-limit-{uuid.uuid4().hex[:8]}")
            for guarantee, case in (("at-least-once", "consumer_at_least_once"),
                                    ("exactly-once", "consumer_exactly_once")):
                self.guarded(case, self.consumer, case, topic, n, guarantee)
                self.guarded(case + "_poison_1pct", self.consumer, case + "_poison_1pct", poison_topic, n, guarantee)
            if filled_registry:
                self.guarded("consumer_exactly_once_registry", self.consumer, "consumer_exactly_once_registry",
                             filled_registry[r % len(filled_registry)], n, "exactly-once", *registry)
            self.guarded("limit_dead_letter_forward", self.limit, "limit_dead_letter_forward", "forward", dlq_topic,
                         a.dlq_count, "-g", f"bench-limit-{uuid.uuid4().hex[:8]}", "--to", f"{dlq_topic}.DLQ")
            self.guarded("dead_letter_at_least_once", self.consumer, "dead_letter_at_least_once", dlq_topic,
                         a.dlq_count, "at-least-once")
            self.guarded("dead_letter_exactly_once", self.consumer, "dead_letter_exactly_once", dlq_topic,
                         a.dlq_count, "exactly-once")
            if not a.tiny:
                self.warm_latency()
            self.log(f"latency round {r + 1}/{repeat} ({a.latency_rate:g}/s for {a.latency_seconds:g}s)")
            self.guarded("latency_exactly_once", self.latency, "latency_exactly_once", "exactly-once")
            self.guarded("latency_at_least_once", self.latency, "latency_at_least_once", "at-least-once")

        if a.full:
            self.log("memory: 1M orders through producer.py, then each consumer guarantee")
            topic = self.new_topic("million")
            run = self.guarded("memory_1m", self.producer, None, topic, 1_000_000)
            if run:
                self.results["memory_1m"]["producer"] = run
                for guarantee in ("at-least-once", "exactly-once"):
                    consumed = self.guarded("memory_1m", self.consumer, "memory_1m", topic, 1_000_000, guarantee)
                    if consumed:
                        consumed["guarantee"] = guarantee
        else:
            self.results["memory_1m"]["skipped"] = "run with --full"

        self.guarded("console", console_case, self, a.console_count)
        # --tiny: the default protocol once, on a short timeline (the smoke test's budget).
        for protocol in list(REBALANCE_PROTOCOLS)[:1] if a.tiny else REBALANCE_PROTOCOLS:
            for r in range(max(1, min(repeat, 3))):
                self.log(f"rebalance: a second instance joins a running one ({protocol}), round {r + 1}")
                self.guarded("rebalance_join", self.rebalance_join, protocol,
                             *((12, 500.0, 6.0, 2.0) if a.tiny else ()))

        commits = int(a.restore_hours * 3600 * 10)  # 10 commits/s, the default 100 ms interval
        for partitions in (6, 24):
            self.log(f"restore: {partitions} partitions x {commits:,} commits, then one partition restored")
            self.guarded("restore", restore_case, self, partitions, commits)


# -- console: dlq_console.py over a large DLQ ------------------------------------------------------

CONSOLE_URL = re.compile(r"(http://127\.0\.0\.1:\d+)/\?token=(\S+)")


def fill_dead_letters(bootstrap: str, dlq_topic: str, count: int) -> None:
    """`count` of our Avro dead letters (16 reasons in turn), written as fast as the producer goes."""
    from confluent_kafka import Producer

    from orders_dlq.codec import dead_letter_codec
    from orders_dlq.dead_letter import DeadLetter, DeadLetterCodec

    codec = DeadLetterCodec(dead_letter_codec())
    variants = []
    for number in range(16):
        letter = DeadLetter(error_reason=f"bench reason {number}: x", error_type="ValueError",
                            error_stage="validate", original_topic=dlq_topic.removesuffix(".DLQ"), failed_by="bench",
                            original_partition=0, original_offset=number, original_key=b"k",
                            original_value=b"\x00" * 40)
        variants.append((codec.encode(letter), letter.headers()))
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50, "batch.size": 1_000_000,
                         "compression.type": "lz4"})
    messages = ({"value": variants[index % 16][0], "key": b"k%d" % index, "headers": variants[index % 16][1]}
                for index in range(count))
    fill(producer, dlq_topic, messages, 300, "the console case's DLQ could not be filled")


def fill(producer, topic: str, messages, flush_timeout: float, failure: str) -> None:
    """Produce every message (a dict of produce() arguments) as fast as the producer takes them, then
    wait for all of them: a case's input, written before its clock starts."""
    for message in messages:
        while True:
            try:
                producer.produce(topic, **message)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    if producer.flush(flush_timeout):
        raise BenchError(failure)


def console_get(base: str, token: str, path: str) -> tuple[float, dict]:
    import urllib.request
    request = urllib.request.Request(base + path, headers={"Cookie": f"dlq_console_token={token}"})
    began = time.monotonic()
    with urllib.request.urlopen(request, timeout=120) as response:
        data = json.loads(response.read())
    return time.monotonic() - began, data


def console_case(bench: Bench, count: int) -> dict:
    """dlq_console.py over a DLQ of `count` dead letters: the first page, a page from the middle
    (a seek), the time its background index takes to read everything, and its peak RSS meanwhile."""
    topic = bench.new_topic("console")
    bench.log(f"console: filling {topic}.DLQ with {count:,} dead letters")
    fill_dead_letters(bench.bootstrap, f"{topic}.DLQ", count)
    job = bench.scripts.start([script("dlq_console.py"), "-t", topic, "--port", "0", "--duration", "1800"])
    try:
        deadline = time.monotonic() + 60
        while not (found := CONSOLE_URL.search(os.pread(job["out"].fileno(), 4096, 0).decode(errors="replace"))):
            if job["proc"].poll() is not None or time.monotonic() > deadline:
                raise BenchError("dlq_console.py printed no address")
            time.sleep(0.05)
        started = time.monotonic()
        base, token = found.group(1), found.group(2)
        first_page, page = console_get(base, token, "/api/list?status=all")
        if len(page["rows"]) != min(50, count):
            raise BenchError(f"the console's first page has {len(page['rows'])} rows")
        middle_page, page = console_get(base, token, f"/api/list?status=all&partition=0&offset="
                                                     f"{count // bench.args.partitions // 2}")
        while True:
            _, overview = console_get(base, token, "/api/overview")
            if overview["indexing"]["done"] and overview["total"] >= count:
                break
            if time.monotonic() - started > 1500:
                raise BenchError(f"the console indexed {overview['total']} of {count} in 1500 s")
            time.sleep(1)
        indexed = time.monotonic() - started
    finally:
        job["proc"].terminate()
        proc = bench.scripts.finish(job)
    run = {"count": count, "first_page_s": first_page, "middle_page_s": middle_page, "index_s": indexed,
           "maxrss_mb": proc["maxrss_mb"]}
    bench.record("console", run)
    return run


# -- restore: what an assignment costs with hours of uncompacted commits ---------------------------

def restore_case(bench: Bench, partitions: int, commits: int) -> dict:
    """A changelog holding `commits` commits of every partition (as one hour at 10 commits/s would
    before compaction, segment.ms = 1 h), then the restore of one assigned partition, co-partitioned
    (its changelog partition's tail) and as a whole scan of the changelog (the earlier design)."""
    topic = f"bench-restore-{uuid.uuid4().hex[:8]}"
    bench.scripts.run([script("setup_dlq.py"), "-t", topic, "--partitions", str(partitions)])
    state_topic, group = f"{topic}.aggregates", "bench-restore"
    producer = confluent_kafka.Producer({"bootstrap.servers": bench.bootstrap, "linger.ms": 50,
                                         "enable.idempotence": True})
    started = time.monotonic()
    states = ({"partition": partition, "key": state_key(group, topic, partition),
               "value": PartitionState(commit + 1).encode()}
              for commit in range(commits) for partition in range(partitions))
    fill(producer, state_topic, states, 120, "the simulated changelog was not written")
    written_s = time.monotonic() - started
    settings = KafkaSettings(bench.bootstrap, topic, f"{topic}.DLQ")
    timings = {}
    for name, co_partitioned in (("assigned_restore_s", True), ("whole_scan_s", False)):
        began = time.monotonic()
        states = read_states(settings, state_topic, group, topic, {0}, timeout=600, co_partitioned=co_partitioned)
        timings[name] = time.monotonic() - began
        if states.get(0) is None or states[0].next_offset != commits:
            raise BenchError(f"restore ({name}) found {states.get(0)} instead of next_offset {commits}")
    run = {"partitions": partitions, "commits_per_partition": commits, "records": partitions * commits,
           "written_s": round(written_s, 1), **{k: round(v, 3) for k, v in timings.items()}}
    bench.record("restore", run)
    return run


# -- latency measurement from outside ----------------------------------------------------------

class ChangelogWatcher(threading.Thread):
    """A read_committed reader of <topic>.aggregates: when did each partition's next_offset become visible?"""

    def __init__(self, bootstrap: str, state_topic: str):
        super().__init__(daemon=True)
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-watch-{uuid.uuid4()}",
                                  "enable.auto.commit": False, "isolation.level": "read_committed",
                                  # A waiting fetch is answered as soon as the stable offset moves
                                  # (a commit's markers are appends): a short wait only adds fetches,
                                  # which cost the broker CPU the measured consumer needs.
                                  "auto.offset.reset": "earliest", "fetch.wait.max.ms": 100})
        # Every partition: the changelog is co-partitioned with the orders topic.
        partitions = self.consumer.list_topics(state_topic, timeout=10).topics[state_topic].partitions
        self.consumer.assign([TopicPartition(state_topic, p, 0) for p in partitions])
        self.seen: list[tuple[float, float, bytes, bytes]] = []  # (seen at, create time, key, value)
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            for message in self.consumer.consume(100, timeout=0.05):
                if message.error() is None:
                    self.seen.append((time.time(), message.timestamp()[1] / 1000, message.key(), message.value()))

    def stop(self) -> None:
        time.sleep(0.5)
        self.halt.set()
        self.join(5)
        self.consumer.close()

    def latencies(self, group: str, topic: str, created: dict) -> tuple[list[float], list[float]]:
        """Per order: ms from created_at to the first changelog record covering its offset."""
        marks: dict[int, list[tuple[int, float, float]]] = {}
        for seen_at, stamp, key, value in self.seen:
            owner = parse_state_key(key)
            if owner is not None and owner[:2] == (group, topic):
                marks.setdefault(owner[2], []).append((PartitionState.decode(value).next_offset, seen_at, stamp))
        visible, stamped = [], []
        for (partition, offset), created_at in created.items():
            entries = marks.get(partition, [])
            i = bisect.bisect_right([e[0] for e in entries], offset) if entries else 0
            if i < len(entries):
                visible.append(entries[i][1] * 1000 - created_at / 1000)
                stamped.append(entries[i][2] * 1000 - created_at / 1000)
        return visible, stamped


def process_cpu_seconds(pid: int | None) -> float | None:
    """CPU seconds (user + system, every thread) a process has used so far, from /proc; None where
    that cannot be read (no pid: the bench did not start the broker)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def jit_cpu_seconds(pid: int | None) -> float | None:
    """CPU seconds used so far by a HotSpot JVM's JIT compiler threads ("C1/C2 CompilerThread"),
    read from /proc; None where that cannot be read (no pid, not Linux, not HotSpot)."""
    if pid is None:
        return None
    ticks, found = 0, False
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return None
    for task in tasks:
        try:
            if "CompilerThre" not in (task / "comm").read_text():
                continue
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended meanwhile
        ticks += int(fields[11]) + int(fields[12])  # utime + stime (fields 14 and 15 of stat)
        found = True
    return ticks / os.sysconf("SC_CLK_TCK") if found else None


def wait_for_line(job: dict, text: str, timeout: float) -> None:
    """Until a started script's stderr shows `text` (e.g. its first assignment)."""
    deadline = time.monotonic() + timeout
    while text not in Path(job["err"].name).read_text(errors="replace"):
        if job["proc"].poll() is not None or time.monotonic() > deadline:
            raise BenchError(f"no '{text}' from {Path(job['args'][0]).name}")
        time.sleep(0.05)


def read_all(bootstrap: str, topic: str, timeout: float = 120):
    """Every committed message of a topic, from the beginning to the current end."""
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-read-{uuid.uuid4()}",
                       "enable.auto.commit": False, "enable.partition.eof": True,
                       "isolation.level": "read_committed", "auto.offset.reset": "earliest"})
    try:
        partitions = reader.list_topics(topic, timeout=10).topics[topic].partitions
        reader.assign([TopicPartition(topic, p, 0) for p in partitions])
        remaining = set(partitions)
        deadline = time.monotonic() + timeout
        while remaining and time.monotonic() < deadline:
            for message in reader.consume(1000, timeout=0.5):
                error = message.error()
                if error is None:
                    yield message
                elif error.code() == KafkaError._PARTITION_EOF:
                    remaining.discard(message.partition())
    finally:
        reader.close()


def changelog_progress(bootstrap: str, state_topic: str, group: str, topic: str) -> list[tuple[float, int]]:
    """(create time in s, messages done) from the consumer's changelog: each commit writes, per
    partition, the state up to next_offset (the group starts at offset 0 of a fresh topic)."""
    states = []
    for message in read_all(bootstrap, state_topic):
        owner = parse_state_key(message.key())
        if owner is not None and owner[:2] == (group, topic):
            states.append((message.timestamp()[1] / 1000, owner[2], PartitionState.decode(message.value()).next_offset))
    # The changelog is co-partitioned: it is read one partition after the other, so the running
    # total must be summed in time order, not in the order read (that mixed one partition's late
    # states with another's early ones, and made every consumer rate swing by a factor of two).
    states.sort()
    done: dict[int, int] = {}
    points = []
    for stamp, partition, next_offset in states:
        done[partition] = next_offset
        points.append((stamp, sum(done.values())))
    return points


def orders_created_at(bootstrap: str, topic: str) -> dict[tuple[int, int], int]:
    raw = json.loads((ROOT / "schemas" / "order.avsc").read_text())
    for field in raw["fields"]:
        if isinstance(field["type"], dict) and field["type"].get("logicalType") in ("uuid", "timestamp-micros"):
            field["type"] = field["type"]["type"]
    schema = fastavro.parse_schema(raw)
    return {(m.partition(), m.offset()): fastavro.schemaless_reader(io.BytesIO(m.value()), schema)["created_at"]
            for m in read_all(bootstrap, topic)}


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


# -- results ------------------------------------------------------------------------------------

def median(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def summarize(results: dict, args) -> list[dict]:
    """Medians, ratios to the matching limit, and the targets with PASS/MISS."""
    for case in results.values():
        runs = case["runs"]
        case["median"] = {key: median(runs, key) for key in
                          ("rate", "rate_whole", "rate_wall", "seconds", "drain_s", "maxrss_mb", "p50_ms", "p99_ms",
                           "visible_p50_ms", "visible_p99_ms", "visible_all_p50_ms", "visible_all_p99_ms",
                           "hook_p50_ms", "hook_p99_ms", "p999_ms", "commit_p50_ms", "commit_p99_ms",
                           "first_page_s", "middle_page_s", "index_s",
                           "changelog_stamp_p50_ms", "changelog_stamp_p99_ms", "cpu_us_per_message",
                           "broker_cpu_us_per_message")
                          if median(runs, key) is not None}
        rates = [r["rate"] for r in runs if r.get("rate") is not None]
        if rates:
            case["min"], case["max"] = {"rate": min(rates)}, {"rate": max(rates)}
        if len(rates) >= 2:
            # The warm-up reached steady state when the first and the last repeat agree (within the
            # machine's usual +-20%); otherwise the case is flagged and its median is suspect.
            drift = rates[-1] / rates[0] - 1
            case["first_last_drift"] = round(drift, 3)
            case["steady"] = abs(drift) <= 0.2

    def rate(name):
        return results[name]["median"].get("rate")

    def ratio(name, limit):
        a, b = rate(name), rate(limit)
        return a / b if a and b else None

    for name, limit in (("producer", "limit_produce"), ("original_design", "limit_produce"),
                        ("producer_registry", "limit_produce"), ("consumer_exactly_once_registry", "limit_consume"),
                        ("consumer_at_least_once", "limit_consume"), ("consumer_exactly_once", "limit_consume"),
                        ("consumer_at_least_once_poison_1pct", "limit_consume"),
                        ("consumer_exactly_once_poison_1pct", "limit_consume"),
                        ("dead_letter_at_least_once", "limit_dead_letter_forward"),
                        ("dead_letter_exactly_once", "limit_dead_letter_forward")):
        results[name]["limit"] = limit
        results[name]["ratio_to_limit"] = ratio(name, limit)
        whole, whole_limit = results[name]["median"].get("rate_whole"), results[limit]["median"].get("rate_whole")
        results[name]["ratio_to_limit_whole"] = whole / whole_limit if whole and whole_limit else None

    targets = []

    def target(name, value, goal, ok, note=""):
        status = "n/a" if value is None else ("PASS" if ok(value) else "MISS")
        targets.append({"target": name, "value": value, "goal": goal, "status": status, "note": note})

    console = results["console"]["median"]
    console_size = f"{results['console']['runs'][0]['count']:,}" if results["console"]["runs"] else "?"
    target(f"dlq_console.py first page, DLQ of {console_size} dead letters, s", console.get("first_page_s"), "<= 2",
           lambda v: v <= 2)
    target(f"dlq_console.py peak RSS, DLQ of {console_size} dead letters, MB", console.get("maxrss_mb"), "<= 300",
           lambda v: v <= 300)
    target("producer.py / raw produce limit", ratio("producer", "limit_produce"), ">= 0.5", lambda v: v >= 0.5)
    target("producer.py / original design", ratio("producer", "original_design"), ">= 25", lambda v: v >= 25)
    target("consumer at-least-once 0% / raw consume-decode-sum", ratio("consumer_at_least_once", "limit_consume"),
           ">= 0.7", lambda v: v >= 0.7)
    target("consumer exactly-once 0% / raw consume-decode-sum", ratio("consumer_exactly_once", "limit_consume"),
           ">= 0.5", lambda v: v >= 0.5)
    for guarantee in ("at_least_once", "exactly_once"):
        base, poison = rate(f"consumer_{guarantee}"), rate(f"consumer_{guarantee}_poison_1pct")
        cost = base / poison - 1 if base and poison else None  # extra time per message
        target(f"1% poison extra cost ({guarantee.replace('_', '-')})", cost, "<= 0.10", lambda v: v <= 0.10)
    for guarantee in ("at_least_once", "exactly_once"):
        dead, produced = rate(f"dead_letter_{guarantee}"), rate("producer")
        target(f"dead-lettering / producer.py, same run ({guarantee.replace('_', '-')})",
               dead / produced if dead and produced else None, ">= 0.5", lambda v: v >= 0.5)
    for guarantee in ("exactly_once", "at_least_once"):
        runs = results[f"latency_{guarantee}"]["runs"]
        source = runs[0]["source"] if runs else ""
        target(f"e2e latency p99 at {args.latency_rate:g}/s ({guarantee.replace('_', '-')}), ms",
               results[f"latency_{guarantee}"]["median"].get("p99_ms"), "<= 50", lambda v: v <= 50, source)
    scripts_rss = [(name, run["maxrss_mb"]) for name in results if not name.startswith("limit")
                   and name not in ("original_design", "console")  # the console has a target of its own
                   for run in results[name]["runs"] if "maxrss_mb" in run]
    scripts_rss += [("memory_1m producer", results["memory_1m"]["producer"]["maxrss_mb"])] \
        if "producer" in results["memory_1m"] else []
    scripts_rss += [("latency producer", run["producer_maxrss_mb"]) for g in ("exactly_once", "at_least_once")
                    for run in results[f"latency_{g}"]["runs"]]
    if scripts_rss:
        worst = max(scripts_rss, key=lambda item: item[1])
        full = "producer" in results["memory_1m"]
        target("peak RSS per script, MB" + (" (1M orders)" if full else f" ({args.count:,} orders; 1M: --full)"),
               worst[1], "<= 150", lambda v: v <= 150, f"largest: {worst[0]}")
    else:
        target("peak RSS per script, MB", None, "<= 150", lambda v: v <= 150)
    return targets


def fmt(value, digits=0) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def table(report: dict) -> str:
    results = report["cases"]
    lines = [f"machine: {report['machine']['cores']} cores, {report['machine']['python']}, broker Kafka "
             f"{report['machine']['broker_version']} at {report['machine']['bootstrap']} "
             f"({report['machine']['broker']}), confluent-kafka {report['machine']['confluent_kafka']} / "
             f"librdkafka {report['machine']['librdkafka']}, fastavro {report['machine']['fastavro']}",
             f"sizes: {report['settings']['count']:,} orders per throughput case, {report['settings']['dlq_count']:,} "
             f"dead letters, {report['settings']['original_count']:,} for the original design; median of "
             f"{report['settings']['repeat']} run(s); {report['settings']['partitions']} partitions", ""]
    head = (f"{'case':<36} {'orders/s':>10} {'min..max':>17} {'vs limit':>9} {'whole run/s':>12} {'vs limit':>9} "
            f"{'runs':>5} {'peak RSS MB':>12}  note")
    lines += [head, "-" * len(head)]
    notes = {
        "limit_produce": "raw produce+poll(0), flush at end",
        "original_design": "produce + flush per message",
        "producer": "producer.py --json rate (generate+encode+deliver)",
        "producer_registry": "producer.py --schema-registry (Confluent wire format)",
        "limit_consume": "raw consume+decode+sum; whole = from subscribe()",
        "consumer_exactly_once_registry": "exactly-once, --schema-registry",
        "consumer_at_least_once": "steady = 10%-90% via changelog; whole = 'this run' - idle",
        "consumer_exactly_once": "",
        "limit_dead_letter_forward": "raw consume + re-produce every message",
        "dead_letter_at_least_once": "every message dead-lettered",
        "dead_letter_exactly_once": "",
    }
    for name in CASES:
        case = results[name]
        if name.startswith("latency") or name in ("memory_1m", "restore", "rebalance_join", "console"):
            continue
        if case.get("skipped"):
            lines.append(f"{name:<36} skipped: {case['skipped']}")
            continue
        med = case["median"]
        ratio = case.get("ratio_to_limit")
        whole = case.get("ratio_to_limit_whole")
        spread = f"{fmt(case['min']['rate'])}..{fmt(case['max']['rate'])}" if "min" in case else ""
        unsteady = "" if case.get("steady", True) else f"  UNSTEADY: first/last {case['first_last_drift']:+.0%}"
        lines.append(f"{name:<36} {fmt(med.get('rate')):>10} {spread:>17} {fmt(ratio, 2) + 'x' if ratio else '':>9} "
                     f"{fmt(med.get('rate_whole')):>12} {fmt(whole, 2) + 'x' if whole else '':>9} "
                     f"{len(case['runs']):>5} {fmt(med.get('maxrss_mb'), 1):>12}  {notes.get(name, '')}"
                     + unsteady + (f"  ERRORS: {len(case['errors'])}" if case.get("errors") else ""))
    lines += ["", f"CPU per message, median (the script's start-up included; {report['machine']['cores']} cores shared "
                  "with the broker: cores / (script + broker) bounds the rate)"]
    for name in ("limit_produce", "producer", "limit_consume", "consumer_at_least_once", "consumer_exactly_once",
                 "limit_dead_letter_forward", "dead_letter_at_least_once", "dead_letter_exactly_once"):
        med = results[name]["median"]
        script_us, broker_us = med.get("cpu_us_per_message"), med.get("broker_cpu_us_per_message")
        if script_us is None:
            continue
        total = script_us + (broker_us or 0)
        bound = f"{report['machine']['cores'] * 1e6 / total:,.0f}/s" if broker_us is not None else "n/a"
        lines.append(f"  {name:<34} script {script_us:6.1f} us + broker {fmt(broker_us, 1):>6} us = "
                     f"{total:6.1f} us; bound {bound}")
    lines.append("")
    for name in ("latency_exactly_once", "latency_at_least_once"):
        med = results[name]["median"]
        lines.append(f"{name:<22} p50 {fmt(med.get('p50_ms'), 1):>6} ms p99 {fmt(med.get('p99_ms'), 1):>6} ms "
                     f"p99.9 {fmt(med.get('p999_ms'), 1)} ms; each commit held the loop p50/p99 "
                     f"{fmt(med.get('commit_p50_ms'), 1)}/{fmt(med.get('commit_p99_ms'), 1)} ms "
                     f"[visible to readers p50/p99 {fmt(med.get('visible_p50_ms'), 1)}/"
                     f"{fmt(med.get('visible_p99_ms'), 1)}; "
                     f"incl. 1st s {fmt(med.get('visible_all_p50_ms'), 1)}/{fmt(med.get('visible_all_p99_ms'), 1)}; "
                     f"changelog-stamped {fmt(med.get('changelog_stamp_p50_ms'), 1)}/"
                     f"{fmt(med.get('changelog_stamp_p99_ms'), 1)}]  consumer RSS {fmt(med.get('maxrss_mb'), 1)} MB"
                     + (f"  ERRORS: {len(results[name]['errors'])}" if results[name].get("errors") else ""))
    memory = results["memory_1m"]
    if memory.get("skipped"):
        lines.append(f"memory_1m: skipped ({memory['skipped']})")
    elif "producer" in memory:
        parts = [f"producer.py {memory['producer']['maxrss_mb']:.1f} MB"]
        parts += [f"consumer {run.get('guarantee', '?')} {run['maxrss_mb']:.1f} MB" for run in memory["runs"]]
        lines.append("memory_1m (1,000,000 orders): " + ", ".join(parts))
    for run in results["console"]["runs"]:
        lines.append(f"console ({run['count']:,} dead letters): first page {run['first_page_s']:.2f} s, a page from "
                     f"the middle {run['middle_page_s']:.2f} s, whole DLQ indexed in {run['index_s']:.1f} s, "
                     f"peak RSS {run['maxrss_mb']:.1f} MB")
    for run in results["restore"]["runs"]:
        lines.append(f"restore of 1 assigned partition, {run['partitions']} partitions x "
                     f"{run['commits_per_partition']:,} commits ({run['records']:,} records): co-partitioned "
                     f"{run['assigned_restore_s']:.2f} s, whole-changelog scan {run['whole_scan_s']:.2f} s")
    by_protocol: dict[str, list[dict]] = {}
    for run in results["rebalance_join"]["runs"]:
        by_protocol.setdefault(run["protocol"], []).append(run)
    for protocol, runs in by_protocol.items():
        def spread(key, runs=runs):
            values = sorted(r[key] for r in runs if r.get(key) is not None)
            return f"{fmt(statistics.median(values))} [{fmt(values[0])}..{fmt(values[-1])}]" if values else "n/a"
        lines.append(f"join, {protocol:<34} latest order in the 6 s after a 2nd instance joins: on "
                     f"partitions kept {spread('kept_max_ms')} ms, on partitions moved {spread('moved_max_ms')} ms; "
                     f"before the join p50 {spread('steady_p50_ms')} ms ({len(runs)} runs)")
    lines += ["", f"{'target':<62} {'value':>10} {'goal':>9}  status"]
    for t in report["targets"]:
        value = t["value"]
        shown = "n/a" if value is None else (f"{value:.1%}" if "cost" in t["target"] else f"{value:,.2f}")
        lines.append(f"{t['target']:<62} {shown:>10} {t['goal']:>9}  {t['status']}"
                     + (f"  ({t['note']})" if t["note"] else ""))
    return "\n".join(lines)


def check_durability() -> None:
    """The limit loops must use exactly the project's producer durability settings."""
    from orders_dlq.kafka import reliable_producer_config

    # producer.py's default --delivery-timeout (30 s): the raw loop must run with the same budget.
    project = reliable_producer_config(KafkaSettings("x", "t", "t.DLQ"), 30.0)
    different = {k: (v, project.get(k)) for k, v in limits.DURABILITY.items() if project.get(k) != v}
    if different:
        raise SystemExit(f"bench/limits.py DURABILITY differs from reliable_producer_config: {different}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200_000, help="orders per throughput case (default 200000)")
    parser.add_argument("--repeat", type=int, default=5,
                        help="runs of each case; min/median/max are reported, targets judged on the median (default 5)")
    parser.add_argument("--dlq-count", type=int, help="messages of the all-poison case (default count/4)")
    parser.add_argument("--original-count", type=int, default=2000,
                        help="messages of the produce+flush-per-message case (default 2000)")
    parser.add_argument("--latency-rate", type=float, default=5000.0, help="orders/s of the latency case")
    parser.add_argument("--latency-seconds", type=float, default=6.0, help="length of the latency case (default 6)")
    parser.add_argument("--idle-timeout", type=float, default=2.0, help="consumer --idle-timeout (default 2)")
    parser.add_argument("--partitions", type=int, default=3, help="partitions of every topic (default 3)")
    parser.add_argument("--warmup", type=int, default=100_000,
                        help="messages per warm-up round through the raw loops, repeated until two rounds agree "
                             "within 10%% (at most 8); 0 = none (default 100000)")
    parser.add_argument("--tiny", action="store_true", help="2k orders, 1 repeat, no 1M case: a smoke run")
    parser.add_argument("--full", action="store_true", help="also the 1M-order memory case")
    parser.add_argument("--json-out", type=Path, default=BENCH / "results.json", help="default bench/results.json")
    parser.add_argument("--restore-hours", type=float, default=1.0,
                        help="hours of commits (10/s per partition) in the restore case's changelog (default 1)")
    parser.add_argument("--console-count", type=int, default=1_000_000,
                        help="dead letters in the DLQ of the dlq_console.py case (default 1000000)")
    parser.add_argument("--only", choices=["console", "latency", "dead-letters", "poison"],
                        help="run only these cases (no warm-up): console; latency (both guarantees); "
                             "dead-letters (producer.py, the forward limit and both all-poison cases); "
                             "poison (the consumer on a clean and a 1%% poison topic, both guarantees), "
                             "e.g. --only console --console-count 100000")
    parser.add_argument("--no-registry", action="store_true",
                        help="skip the registry-mode cases (else SCHEMA_REGISTRY_URL, or a local registry it starts)")
    parser.add_argument("--list", action="store_true", help="print the names of the cases, one a line, and exit")
    args = parser.parse_args(argv)
    if args.tiny:
        args.count, args.repeat, args.original_count = 2000, 1, 200
        args.latency_seconds, args.idle_timeout, args.full, args.warmup = 0.4, 1.0, False, 0
        args.restore_hours = 0.01
        args.console_count = 2000
    args.dlq_count = args.dlq_count or max(1, args.count // 4)
    return args


def schema_registry(args):
    """For the registry-mode cases: SCHEMA_REGISTRY_URL if it answers, else a local registry of the
    bench's own (built once, see orders_dlq/local_registry.py). Returns (URL or LocalRegistry or
    None, why there is none)."""
    configured = os.environ.get("SCHEMA_REGISTRY_URL", "").strip()
    if configured and local_registry.registry_answers(configured, 10):
        return configured, ""
    if args.no_registry:
        return None, "--no-registry"
    try:
        print("[bench] starting a local Schema Registry for the registry-mode cases", file=sys.stderr, flush=True)
        return local_registry.start_on_free_port(ROOT / ".registry" / "bench-run"), ""
    except local_registry.RegistryLocalError as exc:
        print(f"[bench] no registry-mode cases: {exc}", file=sys.stderr, flush=True)
        return None, str(exc)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list:
        print("\n".join(CASES))
        return 0
    check_durability()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally: stop our broker
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    cluster = registry = None
    try:
        if configured and local_kafka.broker_reachable(configured, 10):
            bootstrap, broker = configured, "KAFKA_BOOTSTRAP_SERVERS"
        else:
            if configured:
                print(f"KAFKA_BOOTSTRAP_SERVERS={configured} does not answer: starting a local broker",
                      file=sys.stderr)
            cluster = local_kafka.LocalKafka(ROOT / ".kafka" / "bench-broker", brokers=1, base_port=0)
            print("[bench] starting a fresh local broker in .kafka/bench-broker", file=sys.stderr, flush=True)
            cluster.start(timeout=120, fresh=True)
            bootstrap, broker = cluster.bootstrap, "started by the bench"
        registry, registry_missing = schema_registry(args)
        url = registry if isinstance(registry, str) else (registry.url if registry else None)
        with tempfile.TemporaryDirectory(prefix="bench-") as workdir:
            bench = Bench(args, bootstrap, Path(workdir), url, registry_missing,
                          broker_pid=cluster.pid(0) if cluster is not None else None)
            began = time.monotonic()
            try:
                if args.only == "console":
                    bench.guarded("console", console_case, bench, args.console_count)
                elif args.only:
                    bench.run_only(args.only)
                else:
                    bench.run()
            except BenchError as exc:
                print(f"[bench] stopped early: {exc}", file=sys.stderr)
            report = {
                "machine": {"cores": os.cpu_count(), "python": f"Python {platform.python_version()}",
                            "platform": platform.platform(), "broker_version": local_kafka.kafka_version(),
                            "bootstrap": bootstrap, "broker": broker,
                            "confluent_kafka": confluent_kafka.__version__,
                            "librdkafka": confluent_kafka.libversion()[0], "fastavro": fastavro.__version__},
                "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                             if k != "json_out"},
                "latency_hook": bench.has_latency_hook,
                "cases": bench.results,
                "seconds": round(time.monotonic() - began, 1),
            }
            report["targets"] = summarize(report["cases"], args)
    finally:
        if cluster is not None:
            cluster.stop()
        if registry is not None and not isinstance(registry, str):
            registry.stop()
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(table(report))
    print(f"\n(JSON: {args.json_out.name}; {report['seconds']:.0f} s)")
    errors = sum(len(case.get("errors", [])) for case in report["cases"].values())
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
