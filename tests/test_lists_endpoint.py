"""``GET /recommendations/{user}`` and ``streamrec lists``: two workers in one group, each answers
for the users of both; reading a running worker's data: ``streamrec report`` from its exports,
and one line instead of DuckDB's lock traceback when given its database."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import msgspec
from confluent_kafka import Producer

from streamrec.storage.movielens import load_ratings
from streamrec.streams.latest_lists import LatestLists
from streamrec.streams.list_encoder import Recommendation
from streamrec.streams.lists import fetch_list
from streamrec.streams.processes import metric_sum
from streamrec.streams.replay import replay
from streamrec.streams.topics import ensure_topics
from tests.conftest import read_topic, start_worker, wait_metrics

DATA_DIR = Path(__file__).parent / "data"


def streamrec(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamrec", *args], capture_output=True, text=True, timeout=timeout)


def test_any_worker_answers_for_any_user(settings, tmp_path):
    s = dataclasses.replace(settings, partitions=2)
    ensure_topics(s)
    ratings = load_ratings(DATA_DIR / "ratings.csv").slice(0, 3000)
    workers = [start_worker(dataclasses.replace(s, db=str(tmp_path / f"w{i}.duckdb")), tmp_path / f"w{i}.log",
                            partitions=2, export_dir=str(tmp_path / f"export-{i}"), export_every=1.0,
                            eval_snapshot_seconds=1.0)
               for i in range(2)]
    try:
        deadline = time.time() + 90
        while sorted(p for w in workers for p in w.wait_ready()["partitions"]) != [0, 1]:
            assert time.time() < deadline, "the two workers did not split the two partitions"
            time.sleep(0.5)
        for part in (ratings.slice(0, 2000), ratings.slice(2000, None)):  # the second part is graded against
            replay(part, s.bootstrap_servers, s.interactions_topic, progress=False)  # the first part's lists
            stored, n = 0, 2000 if len(part) == 2000 else len(ratings)
            while stored < n:  # each worker stores its partition's users
                assert time.time() < deadline + 60, f"only {stored} of {n} events stored"
                stored = sum(w.metrics().get("streamrec_store_events", 0) for w in workers)
                time.sleep(0.3)
        published = sum(metric_sum(w.metrics(), "streamrec_lists_published_total") for w in workers)
        msgs = read_topic(s.bootstrap_servers, s.recommendations_topic, min_count=int(published))
        latest, part = {}, {}
        for m in msgs:  # the topic's last list per user is the latest
            r = msgspec.json.decode(m.value(), type=Recommendation)
            latest[r.user_id], part[r.user_id] = r, m.partition()
        by_part = {p: [u for u in latest if part[u] == p] for p in (0, 1)}
        assert all(by_part.values()), f"lists on each partition: { {p: len(u) for p, u in by_part.items()} }, " \
                                      f"{len(msgs)} read of {published:.0f} published"
        users = [by_part[0][0], by_part[1][0]]  # a user of each partition
        for w in workers:
            for u in users:
                status, a = fetch_list(f"http://127.0.0.1:{w.port}", u)
                assert status == 200, a
                assert (a["items"], a["version"], a["event_time"]) == (latest[u].items, latest[u].model_version,
                                                                       latest[u].event_time)
                assert a["model"] == "popularity" and a["freshness_seconds"] >= 0
        # A restarted worker reads each user's last list back from the (compacted) topic.
        fresh = LatestLists()
        assert fresh.warm(s.bootstrap_servers, s.recommendations_topic) == len(latest)
        for u in users:
            assert fresh.answer(u, "x")["items"] == latest[u].items
        status, a = fetch_list(f"http://127.0.0.1:{workers[0].port}", 999_999_999)
        assert status == 404 and "unknown user 999999999" in a["error"]

        r = streamrec("lists", str(users[1]), "--worker-url", f"http://127.0.0.1:{workers[0].port}",
                      "--movies", str(DATA_DIR / "movies.csv"))
        assert r.returncode == 0, r.stderr
        assert f"user {users[1]}: popularity" in r.stdout
        assert r.stdout.count("\n") == 1 + len(latest[users[1]].items)  # head line + one line per item

        follow = subprocess.Popen([sys.executable, "-m", "streamrec", "lists", str(users[0]), "--follow",
                                   "--worker-url", f"http://127.0.0.1:{workers[1].port}"],
                                  stdout=subprocess.PIPE, text=True)
        try:  # --follow prints the current list at once, then waits for changes
            head = follow.stdout.readline()
            assert head.startswith(f"user {users[0]}: popularity"), head
        finally:
            follow.terminate()
            follow.wait(10)

        # While the worker runs: its database is locked, its exports are not.
        r = streamrec("report", "--db", workers[0].db, "--out", str(tmp_path / "a.png"))
        assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "held by a running worker" in r.stderr and "--export-dir" in r.stderr
        wait_metrics(workers[0], lambda m: m.get("streamrec_events_exported_total", 0) > 0, "an export")
        deadline = time.time() + 30
        while True:  # once an evaluation snapshot (every second) has been exported (every second)
            r = streamrec("report", "--export-dir", str(tmp_path / "export-0"), "--out", str(tmp_path / "b.png"))
            if r.returncode == 0 or time.time() > deadline:
                break
            time.sleep(1.0)
        assert r.returncode == 0, r.stderr
        assert (tmp_path / "b.png").stat().st_size > 1000
        r = streamrec("train", "--db", workers[0].db, "--out", str(tmp_path / "ck"), "--epochs", "1")
        assert r.returncode == 1 and "held by another process" in r.stderr.strip().splitlines()[-1]
    finally:
        for w in workers:
            w.stop()


def test_warm_reads_the_lists_from_before_it_began_not_the_stream_after(settings):
    """A worker restarted under load reads back the lists published before it, then stops: it
    does not follow the lists published meanwhile (stamped after it began) until its timeout."""
    ensure_topics(settings)
    topic, now_ms = settings.recommendations_topic, int(time.time() * 1000)
    p = Producer({"bootstrap.servers": settings.bootstrap_servers})
    for user in (1, 2, 3):  # published before the restart
        p.produce(topic, value=b'{"user_id": %d}' % user, key=b"%d" % user, timestamp=now_ms - 60_000)
    for user in (4, 5):  # published after it began (the restarted worker's own lists)
        p.produce(topic, value=b'{"user_id": %d}' % user, key=b"%d" % user, timestamp=now_ms + 60_000)
    assert p.flush(10) == 0
    lists = LatestLists()
    t0 = time.time()
    assert lists.warm(settings.bootstrap_servers, topic, idle=30.0) == 3
    assert time.time() - t0 < 20, "warm waited for the topic to go quiet instead of stopping at the new lists"
    assert lists.answer(4, "x") is None and len(lists) == 3
