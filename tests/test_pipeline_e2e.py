"""End to end on the embedded broker, no mocks: MovieLens through a real worker process."""

from __future__ import annotations

import os
import time
from pathlib import Path

import duckdb
import msgspec
import numpy as np
import pytest

from streamrec.storage.movielens import load_ratings
from streamrec.streams.list_encoder import Recommendation
from streamrec.streams.processes import metric_sum
from streamrec.streams.replay import make_producer, replay
from streamrec.streams.topics import ensure_topics
from tests.conftest import read_topic, start_worker, wait_stored

pytestmark = pytest.mark.slow
DATA = Path(__file__).parent / "data"
SEQUENCE_USERS = 50  # the clean run's --sequence-users

BAD = [
    (b'{"user_id": 1, "item_id": ', "malformed JSON"),
    (b'{"user_id": 1, "event_time": 5, "event_type": "click"}', "missing required field `item_id`"),
    (b'{"user_id": "abc", "item_id": 2, "event_time": 5, "event_type": "click"}',
     "Expected `int`, got `str` - at `$.user_id`"),
    (b'{"user_id": 1, "item_id": 2.5, "event_time": 5, "event_type": "click"}',
     "Expected `int`, got `float` - at `$.item_id`"),
    (b'{"user_id": 1, "item_id": 2, "event_time": 5, "event_type": "rating", "rating": NaN}', "ratings must be finite"),
    (b'{"user_id": 1, "item_id": 2, "event_time": 5, "event_type": "rating", "rating": 1e999}',
     "Number out of range - at `$.rating`"),
    (b'{"user_id": 123456789012345678901234567890, "item_id": 2, "event_time": 5, "event_type": "click"}',
     "Expected `int` <= 9223372036854775807 - at `$.user_id`"),
    (b'{"user_id": 1, "item_id": 2, "event_time": 5, "event_type": "teleport"}', "Invalid enum value 'teleport'"),
    (None, "empty message"),
]


def db_contents(path: str) -> tuple[list, dict[int, list[int]], dict]:
    con = duckdb.connect(path, read_only=True)
    ev = con.execute("SELECT key, user_id, item_id, event_time, event_type, rating FROM events ORDER BY key").fetchall()
    seqs = dict(con.execute("SELECT user_id, items FROM sequences").fetchall())
    offsets = con.execute("SELECT user_id, item_id, event_time, kafka_offset FROM events").fetchnumpy()
    con.close()
    return ev, seqs, offsets


@pytest.fixture(scope="module")
def ratings():
    return load_ratings(DATA / "ratings.csv")


@pytest.fixture(scope="module")
def clean_run(broker, ratings, tmp_path_factory):
    """Replay ml-latest-small with bad messages in the middle through one worker."""
    from streamrec.streams.config import Settings

    tmp = tmp_path_factory.mktemp("clean")
    s = Settings(bootstrap_servers=broker.bootstrap, interactions_topic="clean-interactions",
                 dlq_topic="clean-interactions.dlq", recommendations_topic="clean-recommendations",
                 group_id="clean-worker", db=str(tmp / "w.duckdb"))
    # Fewer users' sequences in memory than the 671 users: evictions and reads back from DuckDB happen.
    # NUMBA_DEBUG_CACHE: numba logs every kernel it compiles or loads (test_kernels_are_compiled_before_ready).
    os.environ["NUMBA_DEBUG_CACHE"] = "1"
    try:
        worker = start_worker(s, tmp / "worker.log", eval_snapshot_seconds=1.0, sequence_users=SEQUENCE_USERS)
    finally:
        del os.environ["NUMBA_DEBUG_CACHE"]
    try:
        worker.wait_ready()
        producer = make_producer(s.bootstrap_servers)
        half = len(ratings) // 2
        replay(ratings.slice(0, half), s.bootstrap_servers, s.interactions_topic, progress=False, producer=producer)
        for value, _ in BAD:
            producer.produce(s.interactions_topic, value=value, key=b"1")
        producer.flush(10)
        replay(ratings.slice(half), s.bootstrap_servers, s.interactions_topic, progress=False, producer=producer)
        m = wait_stored(worker, len(ratings))
        deadline = time.time() + 30  # the last batch's lists are flushed before its offsets are acked
        while metric_sum(m, "streamrec_events_consumed_total") < len(ratings) + len(BAD) and time.time() < deadline:
            time.sleep(0.2)
            m = worker.metrics()
        deadline = time.time() + 15  # the next evaluation snapshot covers every event
        while m.get("streamrec_online_events_warm{k=\"0\",model=\"all\",version=\"all\",window=\"all\"}", 0) \
                + m.get("streamrec_online_events_cold{k=\"0\",model=\"all\",version=\"all\",window=\"all\"}", 0) \
                < len(ratings) and time.time() < deadline:
            time.sleep(0.5)
            m = worker.metrics()
        alive_after_bad = worker.alive()
        n_lists = int(metric_sum(m, "streamrec_lists_published_total"))
        lists = read_topic(s.bootstrap_servers, s.recommendations_topic, min_count=n_lists)
        dlq = read_topic(s.bootstrap_servers, s.dlq_topic, min_count=len(BAD))
        maps = Path(f"/proc/{worker.proc.pid}/maps").read_text()  # the libraries the worker loaded
    finally:
        worker.stop()
    return dict(settings=s, metrics=m, lists=lists, dlq=dlq, alive=alive_after_bad, db=db_contents(s.db),
                log=worker.log, maps=maps)


def test_sequence_cache_is_bounded_and_exported(clean_run, ratings):
    """With room for SEQUENCE_USERS users' sequences, the worker evicted the least recently active
    users, read returning ones back from DuckDB, and exported both (the lists tests above and below
    ran with this cap)."""
    m, users = clean_run["metrics"], len(np.unique(ratings.user))
    held = m["streamrec_sequence_cache_users"]
    evicted, read = m["streamrec_sequence_cache_evictions_total"], m["streamrec_sequence_reads_total"]
    # At most the cap, or one micro-batch's users where a batch touched more (the fast replay's do).
    assert 0 < held < users
    # Every user's sequence was in memory once (each got a list): those not held now were evicted.
    assert evicted >= users - held and read > 0


def test_kernels_are_compiled_before_ready(clean_run):
    """Every compiled kernel the worker's batches call was compiled (or loaded from numba's cache)
    by the warm-up before its first batch (streams/warm_up.py): numba logs none after it."""
    log = Path(clean_run["log"]).read_text(errors="replace").splitlines()
    ready = [i for i, line in enumerate(log) if "compiled kernels ready in" in line]
    assert len(ready) == 1, "the worker logs its warm-up once"
    before = [line for line in log[:ready[0]] if "[cache]" in line]
    after = [line for line in log[ready[0]:] if "[cache]" in line]
    assert before, "numba's cache log is on (else this test could not fail)"
    assert after == [], after[:5]


def test_a_worker_serving_popularity_never_loads_torch(clean_run):
    """PyTorch is loaded only to serve a transformer: in a popularity worker it was ~180 MB of RSS
    with the CPU build and ~330 MB with a CUDA build (a 16-core GPU host, 20M events stored)."""
    assert "duckdb" in clean_run["maps"]  # (the worker's own map: it has DuckDB loaded)
    assert "libtorch" not in clean_run["maps"]


def test_every_valid_event_stored_exactly_once(clean_run, ratings):
    events, _, _ = clean_run["db"]
    assert len(events) == len(ratings)
    assert len({e[0] for e in events}) == len(events)
    stored = sorted((u, i, t) for _, u, i, t, _, _ in events)
    source = sorted(zip(ratings.user.tolist(), ratings.item.tolist(), (ratings.timestamp * 1000).tolist()))
    assert stored == source
    rated = {(u, i, t): r for _, u, i, t, _, r in events}
    u, i, t, r = int(ratings.user[0]), int(ratings.item[0]), int(ratings.timestamp[0]) * 1000, float(ratings.rating[0])
    assert rated[(u, i, t)] == pytest.approx(r)


def test_sequences_are_last_n_in_time_order(clean_run, ratings):
    _, seqs, _ = clean_run["db"]
    users = np.unique(ratings.user)
    assert set(seqs) == set(users.tolist())
    for u in users.tolist():
        expected = ratings.item[ratings.user == u][-200:].tolist()  # ratings are stably time-sorted
        assert seqs[u] == expected, f"user {u}"


def test_every_user_gets_lists_without_seen_items(clean_run, ratings):
    dec = msgspec.json.Decoder(Recommendation)
    recs = [dec.decode(m.value()) for m in clean_run["lists"]]
    assert {r.user_id for r in recs} == set(np.unique(ratings.user).tolist())
    assert all(m.key() == str(r.user_id).encode() for m, r in zip(clean_run["lists"], recs))
    log = clean_run["db"][2]  # the event log with Kafka offsets (one partition)
    for r in recs:
        mine = log["user_id"] == r.user_id
        # Seen before the list: every event of the user consumed up to its triggering event,
        # which includes all events earlier in time (the replay is time-ordered).
        seen_before = set(log["item_id"][mine & (log["kafka_offset"] <= r.source_offset)].tolist())
        earlier = set(log["item_id"][mine & (log["event_time"] < r.event_time)].tolist())
        assert earlier <= seen_before and r.event_time in log["event_time"][mine]
        assert not seen_before & set(r.items), f"user {r.user_id} was shown an item already seen"
        assert len(r.items) == 20 and len(set(r.items)) == 20
        assert r.scores == sorted(r.scores, reverse=True)
        assert r.model == "popularity" and r.model_version
        # Where the freshness went, in order (ms, wall time): the batch was received, stored, published
        # (received_at is when the batch's first record arrived: it may precede the event's own timestamp).
        assert r.source_timestamp - 60_000 < r.received_at <= r.stored_at <= r.published_at


def test_bad_messages_go_to_the_dlq_with_reasons(clean_run):
    dlq = clean_run["dlq"]
    assert clean_run["alive"], "the worker must keep running after bad input"
    assert len(dlq) == len(BAD)
    by_value = {m.value(): dict(m.headers()) for m in dlq}
    for value, reason in BAD:
        headers = by_value[value]
        assert reason in headers["reason"].decode(), (value, headers["reason"])
        assert headers["source_topic"].decode() == clean_run["settings"].interactions_topic
        assert int(headers["source_offset"]) >= 0 and headers["source_partition"] == b"0"
    m = clean_run["metrics"]
    assert metric_sum(m, "streamrec_events_rejected_total") == len(BAD)
    assert m['streamrec_events_rejected_total{reason="malformed_json"}'] == 2


def test_online_evaluation_on_metrics_and_in_duckdb(clean_run, ratings):
    m = clean_run["metrics"]
    label = 'model="popularity",version="window-50000",window="all"'
    key = lambda name, k: f'{name}{{k="{k}",{label}}}'  # noqa: E731 - labels sorted as exposed
    ndcg10, hit10 = m[key("streamrec_online_ndcg", 10)], m[key("streamrec_online_hit_rate", 10)]
    assert 0.005 < ndcg10 < hit10 < 1, (ndcg10, hit10)  # non-trivial, and NDCG <= HitRate
    assert m[key("streamrec_online_hit_rate", 5)] <= hit10 <= m[key("streamrec_online_hit_rate", 20)]
    assert 0 < m[key("streamrec_online_recall", 10)] < 1
    all_ = 'k="0",model="all",version="all",window="all"'
    warm, cold = m[f"streamrec_online_events_warm{{{all_}}}"], m[f"streamrec_online_events_cold{{{all_}}}"]
    # Every user's first event is cold; a burst replayed into one batch is cold too (no list yet).
    assert warm + cold == len(ratings) and cold >= 671 and warm > 10_000
    con = duckdb.connect(clean_run["settings"].db, read_only=True)
    n, metrics = con.execute("SELECT count(*), count(DISTINCT metric) FROM evaluation").fetchone()
    con.close()
    assert n > 0 and metrics >= 5
    png = Path(clean_run["settings"].db).with_suffix(".png")
    from streamrec.streams.cli import main as streamrec

    assert streamrec(["report", "--db", clean_run["settings"].db, "--out", str(png)]) == 0
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sigkill_mid_replay_recovers_to_clean_state(broker, settings, ratings, clean_run, tmp_path):
    """Kill the worker twice while it ingests; the restarted worker ends with the clean run's data."""
    ensure_topics(settings)
    replay(ratings, settings.bootstrap_servers, settings.interactions_topic, progress=False)
    for i, fraction in enumerate([0.25, 0.6]):
        worker = start_worker(settings, tmp_path / f"worker{i}.log", batch_size=1000)
        worker.wait_ready()
        wait_stored(worker, int(fraction * len(ratings)))
        worker.kill()
    worker = start_worker(settings, tmp_path / "worker-final.log", batch_size=1000)
    try:
        worker.wait_ready()
        wait_stored(worker, len(ratings))
        time.sleep(1.0)  # nothing more may arrive: a duplicate would be a second row
    finally:
        worker.stop()
    events, seqs, _ = db_contents(settings.db)
    clean_events, clean_seqs, _ = clean_run["db"]
    assert events == clean_events
    assert seqs == clean_seqs


def owned_events(path: str) -> tuple[list, dict[int, list[int]], dict]:
    """The rows a worker's database owns, its sequences view, and all its rows with offsets."""
    con = duckdb.connect(path, read_only=True)
    ev = con.execute("SELECT key, user_id, item_id, event_time, event_type, rating FROM events WHERE owned"
                     " ORDER BY key").fetchall()
    seqs = dict(con.execute("SELECT user_id, items FROM sequences").fetchall())
    log = con.execute("SELECT user_id, item_id, event_time, kafka_partition, kafka_offset FROM events").fetchnumpy()
    con.close()
    return ev, seqs, log


def test_two_workers_one_killed_mid_replay(broker, settings, ratings, clean_run, tmp_path):
    """Scale-out: a second worker joins a 4-partition topic mid-replay and is SIGKILLed while the replay runs.

    The survivor takes its partitions over, copies their earlier events from Kafka, and ends
    with every user's sequence equal to the single-worker run's; every event is owned by
    exactly one of the two databases (the killed one's after it is opened again, which fences
    what it stored past its last commit).
    """
    import dataclasses
    import threading

    from streamrec.streams.demo import handover

    s = dataclasses.replace(settings, partitions=4)
    ensure_topics(s)
    dbs = [str(tmp_path / "w1.duckdb"), str(tmp_path / "w2.duckdb")]
    w1 = start_worker(dataclasses.replace(s, db=dbs[0]), tmp_path / "w1.log", batch_size=1000, partitions=4)
    w1.wait_ready()

    # "Mid-replay" by construction, not by a race with a slow machine: the replay holds before its
    # 11th slice until W2 has joined and before its 16th until W2 is killed (at most 3 minutes each;
    # a hold that times out leaves the replay running, and the assertion below says so).
    joined, killed = threading.Event(), threading.Event()
    holds = {10: joined, 15: killed}

    def produce():  # a timed replay: 20 slices, a second apart
        producer = make_producer(s.bootstrap_servers)
        for n, part in enumerate(np.array_split(np.arange(len(ratings)), 20)):
            if n in holds:
                holds[n].wait(180)
            replay(ratings.slice(int(part[0]), int(part[-1]) + 1), s.bootstrap_servers, s.interactions_topic,
                   progress=False, producer=producer)
            time.sleep(1.0)

    replaying = threading.Thread(target=produce)
    replaying.start()
    # W2 joins while W1 is ingesting: a graceful hand-over of two partitions, then W2 is killed.
    w2 = start_worker(dataclasses.replace(s, db=dbs[1]), tmp_path / "w2.log", batch_size=1000, partitions=4)
    try:
        deadline = time.time() + 60
        while not (len(w2.wait_ready()["partitions"]) == 2 and len(w1.wait_ready()["partitions"]) == 2):
            assert time.time() < deadline, "the two workers did not split the partitions"
            time.sleep(0.5)
        joined_during_replay = replaying.is_alive() and not joined.is_set()
        joined.set()
        wait_stored(w2, 15_000)
        w2.kill()
        killed_during_replay = replaying.is_alive() and not killed.is_set()
        killed.set()
        replaying.join()
        # The survivor claims the killed worker's partitions; then the killed worker's database is
        # opened as a restart would, fencing what it stored past its last commit.
        n_dead = handover(s, w2, [w1])
        m = wait_stored(w1, len(ratings) - n_dead, timeout=120)
        time.sleep(1.5)  # nothing more may arrive: a duplicate would be a second owned row
        lists = read_topic(s.bootstrap_servers, s.recommendations_topic,
                           min_count=int(metric_sum(w1.metrics(), "streamrec_lists_published_total")))
    finally:
        joined.set()
        killed.set()  # (a failure above must not leave the replay waiting)
        w1.stop()
        w2.kill()
    assert joined_during_replay and killed_during_replay, "the join and the kill were to happen mid-replay"
    ev1, seqs1, log1 = owned_events(dbs[0])
    ev2, _, log2 = owned_events(dbs[1])
    clean_events, clean_seqs, _ = clean_run["db"]
    assert ev2 and ev1, "both workers must have stored events"
    assert not {e[0] for e in ev1} & {e[0] for e in ev2}, "an event owned by both databases"
    assert sorted(ev1 + ev2) == clean_events  # exactly once across the two
    assert seqs1 == clean_seqs  # the survivor holds every user's whole sequence
    assert m["streamrec_events_recovered_total"] > 0 and m["streamrec_partition_claims_total"] >= 4
    # W1 let its two partitions go gracefully (finishing and committing its batches first): it held
    # nothing past its commit that W2 consumed again, so nothing of W1's was ever fenced.
    assert m["streamrec_events_disowned_total"] == 0
    print(f"killed worker owned {n_dead} events; "
          f"survivor copied {m['streamrec_events_recovered_total']:.0f} from Kafka")
    # No list, before or after the takeover, shows an item its user had seen up to its trigger.
    log = {k: np.concatenate([log1[k], log2[k]]) for k in log1}
    dec = msgspec.json.Decoder(Recommendation)
    for msg in lists:
        r = dec.decode(msg.value())
        mine = (log["user_id"] == r.user_id) & (log["kafka_partition"] == r.source_partition)
        seen_before = set(log["item_id"][mine & (log["kafka_offset"] <= r.source_offset)].tolist())
        assert seen_before and not seen_before & set(r.items), f"user {r.user_id}: list with a seen item"
