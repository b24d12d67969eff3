"""Published lists, read back: a follower of the ``recommendations`` topic and how lists print.

``ListFollower`` consumes every partition of the topic from the beginning (no group to join),
keeps the latest list per user and, if asked, every list (for grading them afterwards).
"""

from __future__ import annotations

import threading

import msgspec
import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from streamrec.streams.config import kafka_config
from streamrec.streams.list_encoder import Recommendation


class ListFollower(threading.Thread):
    """Consumes the recommendations topic; keeps every list's freshness and the latest per user.

    ``keep``: also keep every list's user, trigger time, first ``keep`` items, model and version
    (``history()``), e.g. to grade them beside a baseline.
    """

    def __init__(self, bootstrap: str, topic: str, keep: int = 0):
        super().__init__(daemon=True)
        # Tansu holds a fetch for its whole wait when no data is there: a short wait keeps the
        # follower's own delay small (a closed-loop replay waits on it).
        self.consumer = Consumer(kafka_config("consumer", bootstrap, {"group.id": "streamrec-lists",
                                                                     "enable.auto.commit": False,
                                                                     "fetch.wait.max.ms": 10}))
        # assign(), not subscribe(): no group join to wait for, every partition from the start.
        parts = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        self.topic = topic
        self.decoder = msgspec.json.Decoder(Recommendation)
        self.latest: dict[int, Recommendation] = {}
        self.freshness: list[float] = []
        self.count = 0
        self.newest_source = 0  # ms: the newest Kafka timestamp of an event that triggered a list
        self.keep = keep
        self._rows: list[tuple] = []
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)  # notified after each consumed batch of lists
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            # consume(n, timeout) returns only when n messages came or the timeout passed, which
            # would delay every list; poll() returns on the first, consume(n, 0) takes the rest.
            first = self.consumer.poll(0.2)
            msgs = ([first] if first is not None else []) + self.consumer.consume(1000, 0)
            recs = [self.decoder.decode(m.value()) for m in msgs if not m.error()]
            if not recs:
                continue
            with self.arrived:  # self.lock: one acquisition per batch, then the waiters are woken
                for rec in recs:
                    self.latest[rec.user_id] = rec
                    self.newest_source = max(self.newest_source, rec.source_timestamp)
                    self.freshness.append((rec.published_at - rec.source_timestamp) / 1000)
                    self.count += 1
                    if self.keep:
                        self._rows.append((rec.user_id, rec.event_time, rec.items[: self.keep],
                                           rec.model, rec.model_version))
                self.arrived.notify_all()
        self.consumer.close()

    def history(self):
        """Every list kept so far as ``model.paired_eval.PublishedLists``."""
        from streamrec.model.paired_eval import PublishedLists

        with self.lock:
            rows = list(self._rows)
        items = np.full((len(rows), max(self.keep, 1)), -1, np.int64)
        for j, r in enumerate(rows):
            items[j, : len(r[2])] = r[2]
        return PublishedLists(np.array([r[0] for r in rows], np.int64), np.array([r[1] for r in rows], np.int64),
                              items, [r[3] for r in rows], [r[4] for r in rows])


def show(rec: Recommendation, titles: dict[int, str], n: int = 5) -> str:
    """One line: user, model/version, freshness and the first ``n`` titles."""
    names = [titles.get(i, f"movie {i}") for i in rec.items[:n]]
    fresh = (rec.published_at - rec.source_timestamp) / 1000
    return (f"  user {rec.user_id:>5} | {rec.model}/{rec.model_version} | fresh {fresh:5.2f}s | "
            + "; ".join(f"{k + 1}. {t}" for k, t in enumerate(names)))


# --- ``streamrec lists USER`` ------------------------------------------------------------------


def fetch_list(base_url: str, user: int, timeout: float = 5.0) -> tuple[int, dict]:
    """(HTTP status, JSON answer) of ``GET {base_url}/recommendations/{user}``."""
    import json
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{base_url.rstrip('/')}/recommendations/{user}", timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read())
        except ValueError:
            return e.code, {"error": f"HTTP {e.code} from {base_url}"}


def format_answer(a: dict, titles: dict[int, str] | None) -> str:
    import datetime as dt

    when = dt.datetime.fromtimestamp(a["event_time"] / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    head = (f"user {a['user_id']}: {a['model']} {a['version']}, after their event of {when} UTC; published "
            f"{a['freshness_seconds']:.2f}s after it, {a['age_seconds']:.1f}s ago (by {a['served_by']})")
    rows = [f"  {k:3d}. {titles.get(i, f'movie {i}') if titles else f'item {i}'}  ({s:.3f})"
            for k, (i, s) in enumerate(zip(a["items"], a["scores"]), 1)]
    return "\n".join([head, *rows])


def configure_lists(p) -> None:
    from streamrec.streams.config import Settings

    p.add_argument("user", type=int, help="user id")
    p.add_argument("--follow", action="store_true", help="keep printing the list each time it changes (Ctrl-C stops)")
    p.add_argument("--movies", default=None, help="movies.csv, to print titles instead of item ids")
    p.add_argument("--worker-url", default=None,
                   help="any worker of the group (default: http://METRICS_HOST:METRICS_PORT from the settings)")
    Settings.add_arguments(p, only=["metrics_host", "metrics_port"])


def run_lists(args) -> int:
    import sys
    import time

    from streamrec.storage.movielens import load_titles

    url = args.worker_url or f"http://{args.metrics_host}:{args.metrics_port}"
    if not url.startswith(("http://", "https://")):
        print(f"streamrec lists: --worker-url {url!r} is not a web address: give e.g. http://127.0.0.1:6066",
              file=sys.stderr)
        return 2
    titles = load_titles(args.movies) if args.movies else None
    last, waiting = None, False
    try:
        while True:
            try:
                status, answer = fetch_list(url, args.user)
            except OSError as e:
                print(f"streamrec lists: no worker answers at {url} ({getattr(e, 'reason', e)}); start one "
                      "(streamrec worker) or give --worker-url", file=sys.stderr)
                return 2
            if status == 200:
                key = (answer["event_time"], answer["version"], answer["items"])
                if key != last:
                    print(format_answer(answer, titles), flush=True)
                    last = key
            elif not args.follow or status != 404:
                print(f"streamrec lists: {answer.get('error', f'HTTP {status}')}", file=sys.stderr)
                return 1
            elif not waiting:  # followed, no list yet: said once, then the first list when it comes
                print(f"streamrec lists: no list for user {args.user} yet ({answer.get('error', 'HTTP 404')}); "
                      "waiting for one (Ctrl-C stops)", file=sys.stderr, flush=True)
                waiting = True
            if not args.follow:
                return 0
            time.sleep(1.0)
    except KeyboardInterrupt:
        return 0


COMMANDS = {
    "lists": (configure_lists, run_lists,
              "print a user's latest list, fetched from any worker of the group (--follow: as it changes)"),
}
