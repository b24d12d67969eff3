"""Closed-loop replay on the embedded broker with a real worker: within a session, a user's next
event is produced only after the list their previous burst triggered was published."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgspec
import numpy as np

from streamrec.storage.movielens import load_ratings
from streamrec.streams.closed_loop import closed_loop_replay, user_bursts
from streamrec.streams.list_encoder import Recommendation
from streamrec.streams.lists import ListFollower
from tests.conftest import read_topic, start_worker, wait_stored

DATA = Path(__file__).parent / "data" / "ratings.csv"


def test_next_event_of_a_session_waits_for_the_list(settings, tmp_path):
    r = load_ratings(DATA)
    r = r.filter(np.isin(r.user, [1, 2, 3]))  # three users, their sessions interleaved in time
    worker = start_worker(settings, tmp_path / "worker.log")
    follower = ListFollower(settings.bootstrap_servers, settings.recommendations_topic)
    follower.start()
    try:
        stats = closed_loop_replay(r, settings.bootstrap_servers, settings.interactions_topic, follower,
                                   list_timeout=30, progress=False)
        wait_stored(worker, len(r))
    finally:
        follower.stopped.set()
        follower.join(5)  # its consumer closed before the test ends
        worker.stop()
    rows, starts, burst_user = user_bursts(r)
    times = r.timestamp[rows[starts[:-1]]]
    follows = [b for b in range(1, len(starts) - 1)  # bursts within an hour of their user's previous one
               if burst_user[b] == burst_user[b - 1] and times[b] - times[b - 1] <= 3600]
    assert stats.events == len(r) and stats.timeouts == 0
    assert stats.waits == len(follows) > 20

    # Each event produced after the publication of the list its user's previous burst triggered.
    produced = {}
    for m in read_topic(settings.bootstrap_servers, settings.interactions_topic, min_count=len(r)):
        e = msgspec.json.decode(m.value())
        produced.setdefault((e["user_id"], e["event_time"]), m.timestamp()[1])
    published = {}
    dec = msgspec.json.Decoder(Recommendation)
    for m in read_topic(settings.bootstrap_servers, settings.recommendations_topic, min_count=1):
        rec = dec.decode(m.value())
        published.setdefault((rec.user_id, rec.event_time), rec.published_at)
    for b in follows:
        u = int(burst_user[b])
        list_at = published[(u, int(times[b - 1]) * 1000)]  # the list this burst's events were shown
        assert produced[(u, int(times[b]) * 1000)] >= list_at


def test_closed_loop_without_a_worker_says_so(settings, tmp_path):
    """Nobody publishes lists: the first wait that times out ends the replay with one line, exit 1."""
    csv = tmp_path / "ratings.csv"
    csv.write_text("userId,movieId,rating,timestamp\n1,10,4.0,100\n1,20,4.0,160\n1,30,4.0,200\n")
    r = subprocess.run([sys.executable, "-m", "streamrec", "replay", str(csv), "--closed-loop", "--list-timeout", "2",
                        "--quiet", "--bootstrap-servers", settings.bootstrap_servers,
                        "--interactions-topic", settings.interactions_topic,
                        "--recommendations-topic", settings.recommendations_topic],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    last = r.stderr.strip().splitlines()[-1]  # after the topics' INFO lines
    assert last.startswith("streamrec replay --closed-loop: no list arrived within 2 s"), r.stderr
    assert "is a worker running" in last
    assert "Traceback" not in r.stderr
