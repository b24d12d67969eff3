"""Published lists, read back: a follower of the ``recommendations`` topic and how lists print.

``ListFollower`` consumes every partition of the topic from the beginning (no group to join),
keeps the latest list per user and, if asked, every list (for grading them afterwards).
"""

from __future__ import annotations

import threading

import msgspec
import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from streamrec.streams.pipeline import Recommendation


class ListFollower(threading.Thread):
    """Consumes the recommendations topic; keeps every list's freshness and the latest per user.

    ``keep``: also keep every list's user, trigger time, first ``keep`` items, model and version
    (``history()``), e.g. to grade them beside a baseline.
    """

    def __init__(self, bootstrap: str, topic: str, keep: int = 0):
        super().__init__(daemon=True)
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "streamrec-lists",
                                  "enable.auto.commit": False})
        # assign(), not subscribe(): no group join to wait for, every partition from the start.
        parts = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        self.decoder = msgspec.json.Decoder(Recommendation)
        self.latest: dict[int, Recommendation] = {}
        self.freshness: list[float] = []
        self.count = 0
        self.keep = keep
        self._rows: list[tuple] = []
        self.lock = threading.Lock()
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            for msg in self.consumer.consume(1000, timeout=0.2):
                if msg.error():
                    continue
                rec = self.decoder.decode(msg.value())
                with self.lock:
                    self.latest[rec.user_id] = rec
                    self.freshness.append((rec.published_at - rec.source_timestamp) / 1000)
                    self.count += 1
                    if self.keep:
                        self._rows.append((rec.user_id, rec.event_time, rec.items[: self.keep],
                                           rec.model, rec.model_version))
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
