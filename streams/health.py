"""What keeps a worker honest when something fails: retries, readiness, broker watch, fatal exit.

* A micro-batch stage that raises is seen at once (:func:`guarded` marks the worker halted in the
  stage thread itself, so later batches skip their stages instead of overtaking it), counted in
  ``streamrec_stage_failures_total{stage}``, and the batch is retried in order with backoff
  (:func:`backoff`). Meanwhile ``/ready`` answers 503 with the reason (:attr:`Health.problem`).
* Past ``stage_retries`` attempts the worker exits non-zero, the *original* error first
  (:func:`describe`: a failed rollback does not hide the full disk that caused it).
* A broker outage is not a stage bug: :class:`BrokerMonitor` asks for metadata every second,
  exports ``streamrec_broker_reachable``, logs "broker unreachable for N s" every 10 s (not per
  failed request), and past ``broker_outage_limit`` ends the worker with that message. While the
  broker is unreachable, failed attempts do not count towards ``stage_retries``.

Exiting is ``os._exit`` after the message is written: every batch stored is durable and no offset
is committed after a failure, so nothing is lost; a graceful faust shutdown could hang on the
very broker that is gone.

>>> try:
...     try:
...         raise OSError("IO Error: No space left on device")
...     except OSError:
...         raise RuntimeError("cannot rollback - no transaction is active")
... except RuntimeError as e:
...     describe(e)
'OSError: IO Error: No space left on device (then: RuntimeError: cannot rollback - no transaction is active)'
>>> [backoff(1.0, a) for a in (1, 2, 3, 6, 7)]
[1.0, 2.0, 4.0, 30.0, 30.0]
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time

from confluent_kafka.admin import AdminClient

log = logging.getLogger(__name__)

MAX_BACKOFF = 30.0
EXIT_CODE = 3


class Skipped(Exception):
    """A batch's stage did not run because an earlier batch failed: it is retried after that one."""


class StageFailed(Exception):
    def __init__(self, stage: str, cause: BaseException):
        super().__init__(f"{stage}: {describe(cause)}")
        self.stage, self.cause = stage, cause


def describe(exc: BaseException) -> str:
    """The error chain, oldest (the cause) first: ``Type: message (then: Type: message)``."""
    chain, seen = [], set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if not isinstance(e, StageFailed):
            text = str(e).strip().splitlines()[0] if str(e).strip() else ""
            notes = " ".join(getattr(e, "__notes__", ()))  # e.g. the store's "(rollback failed too: ...)"
            chain.append(f"{type(e).__name__}: {text}" + (f" {notes}" if notes else ""))
        e = e.__cause__ or e.__context__
    chain.reverse()
    return chain[0] + "".join(f" (then: {c})" for c in chain[1:]) if chain else repr(exc)


def backoff(first: float, attempt: int) -> float:
    """Seconds before retry number ``attempt`` (1, 2, ...): doubling from ``first``, at most 30 s."""
    return min(first * 2 ** (attempt - 1), MAX_BACKOFF)


def fatal(message: str) -> None:
    """Write the reason where the operator looks first (stderr, the log), then exit non-zero."""
    print(f"streamrec worker: fatal: {message}", file=sys.stderr, flush=True)
    log.critical("fatal: %s", message)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(EXIT_CODE)


class Health:
    """The worker's state of failure, shared by the event loop and the stage threads."""

    def __init__(self, settings, metrics) -> None:
        self.settings, self.metrics = settings, metrics
        self.halted = False  # set in a stage thread when a batch fails; cleared when it is retried
        self.stage_problem: str | None = None
        self.broker: BrokerMonitor | None = None

    async def with_retries(self, stage: str, attempt_once, first_error: BaseException | None = None):
        """``await attempt_once()``, retried with backoff; past ``stage_retries`` failed attempts (not
        counting those while the broker is unreachable) the worker exits with the original error first.

        ``first_error``: the failure of the first attempt, made elsewhere (``Skipped``: none to count)."""
        s = self.settings
        error, started = first_error, time.monotonic()
        attempt = 0 if first_error is None or isinstance(first_error, Skipped) else 1
        while True:
            if error is not None and not isinstance(error, Skipped):
                failed = getattr(error, "stage", stage)
                broker_down = self.broker is not None and self.broker.down_for() is not None
                if attempt >= s.stage_retries and not broker_down:
                    fatal(f"{describe(error)} (stage {failed} failed {attempt} times over "
                          f"{time.monotonic() - started:.0f} s; limit stage_retries={s.stage_retries})")
                wait = backoff(s.stage_backoff, attempt)
                log.error("%s failed (attempt %d%s), retrying in %.1f s: %s", failed, attempt,
                          ", broker unreachable" if broker_down else "", wait, describe(error))
                await asyncio.sleep(wait)
            try:
                result = await attempt_once()
            except Exception as e:
                error = e if isinstance(e, StageFailed) else StageFailed(stage, e)
                if error is not e:
                    error.__cause__ = e
                if self.broker is None or self.broker.down_for() is None:
                    attempt += 1  # an attempt made while the broker is away is not the stage's fault
                self.count_failure(error)
                continue
            if attempt:
                log.warning("%s succeeded after %d failed attempts", stage, attempt)
                if not self.halted:  # no batch is being retried: nothing stands in the way now
                    self.stage_problem = None
            return result

    def count_failure(self, error: BaseException) -> None:
        stage = getattr(error, "stage", "store")
        self.metrics.stage_failures.labels(stage).inc()
        self.stage_problem = f"{stage} failing: {describe(error)}"

    @property
    def problem(self) -> str | None:
        """Why the worker cannot make progress now (None: it can); ``/ready`` answers 503 with it."""
        if self.broker is not None and (down := self.broker.down_for()) is not None:
            return f"broker unreachable for {down:.0f} s"
        return self.stage_problem

    def guarded(self, stage: str, fn, *args):
        """Run a stage of a batch in its thread; a failure halts the batches behind it."""
        if self.halted:
            raise Skipped(stage)
        try:
            return fn(*args)
        except Skipped:
            raise
        except Exception as e:
            self.halted = True  # before anything else runs in this thread: no later batch overtakes
            raise StageFailed(stage, e) from e


class BrokerMonitor(threading.Thread):
    """Asks the cluster for metadata every ``interval`` s; knows since when it has not answered."""

    def __init__(self, admin_config: dict, limit: float, metrics, interval: float = 1.0, log_every: float = 10.0):
        super().__init__(name="broker-monitor", daemon=True)
        self.limit, self.metrics, self.interval, self.log_every = limit, metrics, interval, log_every
        # log_level 0: librdkafka's own connection errors would print several lines a second.
        self.admin = AdminClient({**admin_config, "log_level": 0, "socket.timeout.ms": 3000})
        self.down_since: float | None = None
        self._stop = threading.Event()

    def down_for(self) -> float | None:
        since = self.down_since
        return None if since is None else time.monotonic() - since

    def reachable(self) -> bool:
        try:
            return bool(self.admin.list_topics(timeout=3).brokers)
        except Exception:  # KafkaException: timed out, transport failure
            return False

    def run(self) -> None:
        next_log = 0.0
        while not self._stop.wait(self.interval):
            now = time.monotonic()
            if self.reachable():
                if self.down_since is not None:
                    log.warning("broker reachable again after %.0f s", now - self.down_since)
                self.down_since = None
                self.metrics.broker_reachable.set(1)
                continue
            if self.down_since is None:
                self.down_since, next_log = now, now + self.log_every
                self.metrics.broker_reachable.set(0)
                continue
            down = now - self.down_since
            if down > self.limit:
                fatal(f"broker unreachable for {down:.0f} s (limit broker_outage_limit={self.limit:.0f} s)")
            if now >= next_log:
                log.error("broker unreachable for %.0f s (the worker exits after %.0f s)", down, self.limit)
                next_log += self.log_every

    def stop(self) -> None:
        self._stop.set()


class QuietRepeats(logging.Filter):
    """Lets one record per logger and message template through every ``every`` seconds.

    aiokafka logs every failed reconnect (~50 lines a second while the broker is gone); one line
    per template per 10 s says the same, with the count of what was held back.

    >>> f, rec = QuietRepeats(every=10), lambda: logging.LogRecord("aiokafka", 40, "", 0, "down %s", ("x",), None)
    >>> [f.filter(rec()) for _ in range(3)]
    [True, False, False]
    """

    def __init__(self, every: float = 10.0):
        super().__init__()
        self.every = every
        self._last: dict[tuple[str, str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        # librdkafka's lines share one template ("%s [%s] %s"): its first argument, the facility
        # (FAIL, ERROR...), tells them apart.
        first = str(record.args[0]) if isinstance(record.args, tuple) and record.args else ""
        key, now = (record.name, str(record.msg), first), time.monotonic()
        last, held = self._last.get(key, (-1e18, 0))
        if now - last < self.every:
            self._last[key] = (last, held + 1)
            return False
        self._last[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} ({held} more like it in the last {now - last:.0f} s)"
        return True


def quiet_kafka_client_logs(every: float = 10.0) -> None:
    """Install :class:`QuietRepeats` on every aiokafka logger (a logger's filters see only its own
    records), and send librdkafka's lines (confluent-kafka clients made by ``kafka_config`` from now
    on) through a logger that has it too."""
    from streamrec.streams import config

    quiet = QuietRepeats(every)
    for name in list(logging.Logger.manager.loggerDict):
        if name.startswith("aiokafka"):
            logging.getLogger(name).addFilter(quiet)
    rdkafka = logging.getLogger("streamrec.librdkafka")
    rdkafka.addFilter(quiet)
    config.CLIENT_LOGGER = rdkafka
