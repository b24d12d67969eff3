"""``streamrec demo``: the whole pipeline on this machine, with lists and metrics on screen.

With ``--model sasrec`` (the default) or ``bert4rec``: starts Tansu (unless given a cluster) and
the worker(s), replays the first part of MovieLens by time as history (served by popularity),
trains the transformer on it within a budget, promotes it, then replays the rest as the live
stream served by the transformer (popularity as fallback), retrains it once mid-stream (warm
start, gate, hot swap), sends the seed's example through the stream, and ends with the
transformer's online NDCG@10 and Recall@10 beside popularity's on the same events (paired), and
the online report PNG. ``--model popularity``: the quick path (popularity only, whole file live).

Nothing starts silently broken: ports are free ones unless given (a busy given port fails at
once), readiness counts only our child's answer (its pid), a child that dies stops the demo
with its last log lines, and a run that stored or published nothing exits non-zero.
"""

from __future__ import annotations

import _thread
import logging
import shutil
import sys
import threading
import time
from importlib import resources
from pathlib import Path

import numpy as np
from tqdm import tqdm

from streamrec.storage.movielens import load_ratings, load_titles
from streamrec.streams.broker import EmbeddedBroker
from streamrec.streams.closed_loop import closed_loop_replay
from streamrec.streams.config import Settings
from streamrec.streams.demo_summary import run_summary
from streamrec.streams.lists import ListFollower, show
from streamrec.streams.processes import ChildFailed, Watchdog, WorkerProcess, metric_sum
from streamrec.streams.replay import ReplayInterrupted, replay
from streamrec.streams.topics import ensure_topics

DATA = Path(str(resources.files("streamrec.data")))  # bundled ml-latest-small (package data)
log = logging.getLogger(__name__)


# What a demo writes in its --workdir: only these are cleared before the next run there.
DEMO_FILES = ("broker.log", "report.png", "registry", "worker-*", "export-*")


def clear_workdir(work: Path) -> None:
    """Remove an earlier demo's files from its folder; a user's other files there stay. A worker
    database another process holds open means a demo runs there now: one line, and nothing touched
    (a damaged one, say from a demo killed mid-write, is an earlier demo's: removed)."""
    import duckdb

    from streamrec.streams.preflight import UserError, locked_by

    work.mkdir(parents=True, exist_ok=True)
    ours = sorted({p for pattern in DEMO_FILES for p in work.glob(pattern)})
    for p in ours:
        if p.suffix == ".duckdb":
            try:
                pid = locked_by(p)
            except duckdb.Error:
                continue  # not a database any more: removed below with the rest
            if pid is not None:
                raise UserError(f"--workdir {work} is in use by a running demo ({p.name} is held by "
                                f"{f'pid {pid}' if pid else 'another process'}): stop it or choose another --workdir")
    for p in ours:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    if ours:
        print(f"demo: removed the previous demo's files from {work} ({len(ours)} entries)", flush=True)


def run_demo(args) -> int:
    settings = Settings.from_args(args)
    work = Path(args.workdir)
    clear_workdir(work)
    failure: list[str] = []
    broker, workers, watchdog, followers = None, [], None, []

    def on_death(why: str) -> None:  # runs in the watchdog thread
        failure.append(why)
        _thread.interrupt_main()  # stops whatever the demo is waiting on

    try:
        if not settings.bootstrap_servers:
            broker = EmbeddedBroker(log_file=work / "broker.log").start()
            settings.bootstrap_servers = broker.bootstrap
            print(f"embedded Kafka (Tansu) at {broker.bootstrap}")
        settings.partitions = max(settings.partitions, 4 if args.workers > 1 else 1)
        ensure_topics(settings)
        transformer = args.model != "popularity"
        extra = {"top_k": settings.top_k, "batch_size": settings.batch_size, "partitions": settings.partitions,
                 "baseline": settings.baseline}
        if settings.checkpoint:
            extra["checkpoint"] = settings.checkpoint
        if transformer:
            extra.update(registry=str(work / "registry"), export_every=2.0)
        for w in range(args.workers):
            port = settings.metrics_port + w if settings.metrics_port else None
            more = {"export_dir": str(work / f"export-{w}")} if transformer else {}
            workers.append(WorkerProcess(settings.bootstrap_servers, work / f"worker-{w}.duckdb",
                                         work / f"worker-{w}.log", port=port, **extra, **more))
        for w in workers:
            w.start()
        print("waiting for the worker(s) to join the consumer group ...")
        for w in workers:
            w.wait_ready()  # raises ChildFailed, with the log lines, if it dies meanwhile
            print(f"worker ready (pid {w.proc.pid}), Prometheus metrics at {w.metrics_url}")
        # From now on a child that dies interrupts whatever the demo waits on.
        watchdog = Watchdog([w.died for w in workers] + ([broker.failure] if broker else []), on_death)
        watchdog.start()
        return _run(args, settings, work, workers, transformer, followers)
    except ChildFailed as e:
        print(f"demo failed: {e}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, ReplayInterrupted) as e:  # the watchdog's interrupt, or Ctrl-C
        if failure or isinstance(e, ReplayInterrupted):
            print(f"demo failed: {failure[0]}" if failure else f"demo interrupted: {e}", file=sys.stderr)
            return 1 if failure else 130
        raise
    finally:
        for f in followers:  # closed before the broker goes: no reconnection noise
            f.stopped.set()
            f.join(3)
        if watchdog:
            watchdog.stop()
        for w in workers:
            w.stop()
        if broker:
            broker.stop()


def _run(args, settings: Settings, work: Path, workers: list[WorkerProcess], transformer: bool, threads: list) -> int:
    """The run once the workers are ready; ``threads``: gets the list follower (stopped by the caller)."""
    ratings_path = Path(args.ratings or DATA / "ratings.csv")
    titles = load_titles(args.movies or DATA / "movies.csv")
    ratings = load_ratings(ratings_path, min_rating=args.min_rating)
    ratings = ratings.slice(args.start, None if args.limit is None else args.start + args.limit)
    users, counts = np.unique(ratings.user, return_counts=True)
    shown = set(users[np.argsort(-counts, kind="stable")][: args.show_users].tolist())

    follower = ListFollower(settings.bootstrap_servers, settings.recommendations_topic, keep=10 if transformer else 0)
    follower.start()
    threads.append(follower)
    printer_stop = _print_changes(follower, shown, titles)
    n_live = 0
    if transformer:
        from streamrec.streams.demo_model import split_by_time

        n_live = split_by_time(ratings, args.train_fraction)
        if n_live <= 0 or n_live >= len(ratings):
            raise SystemExit(f"demo: --train-fraction {args.train_fraction} leaves nothing to train on or to replay")
        _history_and_training(args, settings, work, workers, ratings.slice(0, n_live))
    t0 = time.time()
    stats, retrainer, killed = _replay_live(args, settings, work, workers, ratings, n_live, transformer, ratings_path,
                                            follower)

    # Wait for the workers to store everything and for their lists to arrive.
    dead_owned = 0
    if killed:
        dead_owned = handover(settings, killed[0], [w for w in workers if w.alive()])
    wait_processed(workers, follower, n_live + stats.events, dead_owned)
    elapsed = time.time() - t0
    seed = _seed_example(settings, titles, ratings, follower, workers) if transformer else None
    busy = sum(metric_sum(w.metrics(), "streamrec_stage_duration_seconds_sum") for w in workers if w.alive())
    printer_stop.set()
    time.sleep(1.2)
    follower.stopped.set()
    ok = run_summary(workers, work, follower, shown, titles, transformer, n_live, stats, len(users),
                     dead_owned, seed, elapsed, busy)
    for w in workers:
        w.stop()  # DuckDB files can be read once their workers are gone
    if transformer:
        from streamrec.streams.demo_summary import transformer_summary

        ok = transformer_summary(args, settings, work, workers, ratings, n_live, follower, retrainer) and ok
    if len(workers) > 1:
        ok = check_scale_out(workers, killed, ratings, settings.seq_len, seed[0] if seed else 0) and ok
    return 0 if ok else 1


def _print_changes(follower: ListFollower, shown: set[int], titles: dict[int, str]) -> threading.Event:
    """Print the shown users' lists as they change, every second, until the returned event is set."""
    stop = threading.Event()

    def printer() -> None:
        last: dict[int, tuple] = {}
        while not stop.wait(1.0):
            with follower.lock:
                recs = [follower.latest[u] for u in shown if u in follower.latest]
            for rec in recs:
                if last.get(rec.user_id) != (rec.event_time, rec.model_version):
                    last[rec.user_id] = (rec.event_time, rec.model_version)
                    tqdm.write(show(rec, titles))

    threading.Thread(target=printer, daemon=True).start()
    return stop


def _replay_live(args, settings: Settings, work: Path, workers: list[WorkerProcess], ratings, n_live: int,
                 transformer: bool, ratings_path: Path, follower: ListFollower):
    """Replay everything after the history (retraining once on the way, killing a worker with
    several); returns the replay's stats, the retraining thread (or None) and the killed workers."""
    live = ratings.slice(n_live, None)
    speedup = args.speedup
    duration = args.duration if args.duration is not None else (120.0 if transformer else 20.0)
    if speedup is None:  # default: the live part in about --duration seconds
        span = float(live.timestamp[-1] - live.timestamp[0]) if len(live) else 0.0
        speedup = span / duration if span > 0 and duration > 0 else 0.0
    pace = ("closed loop: a user's next event of a session waits for their list" if args.closed_loop
            else "as fast as possible" if not speedup else f"{speedup:,.0f}x event time")
    print(f"replaying {len(live):,} ratings{' (the live part)' if transformer else ''} from {ratings_path} ({pace})")
    killed: list[WorkerProcess] = []
    if len(workers) > 1 and args.kill_at > 0:
        threading.Thread(target=kill_midway, args=(workers, len(ratings), args.kill_at, killed), daemon=True).start()

    def send(part):
        if args.closed_loop:
            return closed_loop_replay(part, settings.bootstrap_servers, settings.interactions_topic, follower)
        return replay(part, settings.bootstrap_servers, settings.interactions_topic, speedup=speedup)

    retrainer = None
    if transformer and args.retrain_at > 0:
        cut = int(len(live) * args.retrain_at)
        stats = send(live.slice(0, cut))
        retrainer = _start_retrain(args, settings, work, workers, n_live + cut)
        stats = stats + send(live.slice(cut, None))
    else:
        stats = send(live)
    if args.closed_loop:
        print(f"closed loop: {stats.waits:,} bursts waited for their user's list, {stats.timeouts:,} of them "
              "timed out", flush=True)
    if retrainer is not None:  # its hot swap belongs to the run: wait for it to be decided
        retrainer.join(timeout=args.retrain_seconds * 3 + 120)
    return stats, retrainer, killed


def wait_processed(workers: list[WorkerProcess], follower: ListFollower, n_events: int, dead_owned: int = 0,
                   timeout: float = 300.0) -> None:
    """Until the workers own ``n_events`` events and every list they published has arrived."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        scrapes = [w.metrics() for w in workers if w.alive()]
        owned = dead_owned + sum(m.get("streamrec_store_events", 0) for m in scrapes)
        published = sum(metric_sum(m, "streamrec_lists_published_total") for m in scrapes)
        # A batch is stored before its lists are published: wait for the publish stage too.
        behind = any(m.get('streamrec_stage_latency_seconds_count{stage="published"}', 0)
                     < m.get('streamrec_stage_latency_seconds_count{stage="stored"}', 0) for m in scrapes)
        if owned >= n_events and not behind and follower.count >= published:
            return
        time.sleep(0.5)


def _history_and_training(args, settings: Settings, work: Path, workers: list[WorkerProcess], history) -> str:
    """Replay the history (served by popularity), train the first version on it, promote it and
    wait until every worker serves it. Returns the version."""
    from streamrec.model.registry import Registry
    from streamrec.streams.demo_model import train_first_version
    from streamrec.streams.model_updates import announce

    print(f"replaying {len(history):,} ratings as history, as fast as possible (served by popularity: "
          "no model yet)")
    replay(history, settings.bootstrap_servers, settings.interactions_topic, speedup=0.0)
    registry = Registry(work / "registry")
    version, line = train_first_version(history, args.model, registry, args.train_seconds)
    print(line)
    announce(settings.bootstrap_servers, settings.model_updates_topic, version, str(registry.path(version)), "promote")
    label = f'streamrec_model_info{{model="{args.model}",version="{version}"}}'
    deadline = time.time() + 120
    while not all(w.metrics().get(label) == 1 for w in workers):
        if time.time() > deadline:
            raise ChildFailed(f"the worker(s) did not load {version} within 120s; see {work}/worker-*.log")
        time.sleep(0.3)
    print(f"the worker serves {args.model} {version} (popularity for users it cannot score); the live replay begins")
    return version


def _start_retrain(args, settings: Settings, work: Path, workers: list[WorkerProcess], min_events: int):
    from streamrec.model.registry import Registry
    from streamrec.streams.demo_model import MidStreamRetrain

    t = MidStreamRetrain(Registry(work / "registry"), [str(work / f"export-{w}") for w in range(len(workers))],
                         min_events, args.retrain_seconds, settings.bootstrap_servers, settings.model_updates_topic)
    t.start()
    return t


def _seed_example(settings: Settings, titles: dict[int, str], ratings, follower: ListFollower,
                  workers: list[WorkerProcess]):
    """The seed's example through the stream: a new user, Harry Potter 1 then LOTR 1.
    Returns (events sent, their list or None)."""
    from streamrec.streams.demo_model import SEED_TITLES, find_movie, send_seed_example, wait_for_list

    items = [find_movie(titles, t) for t in SEED_TITLES]
    if None in items:
        print("\n(seed's example skipped: its movies are not in the titles file)")
        return (0, None)
    user = int(ratings.user.max()) + 1
    last = send_seed_example(settings.bootstrap_servers, settings.interactions_topic, user, items,
                             int(ratings.timestamp.max()) * 1000)
    rec = wait_for_list(follower, user, last)
    print(f"\nthe seed's example: new user {user} watches {titles[items[0]]}, then {titles[items[1]]}")
    if rec is None:
        print("  no list arrived for them within 60s")
        return (len(items), None)
    print(f"  their list from {rec.model} {rec.model_version}, "
          f"{(rec.published_at - rec.source_timestamp) / 1000:.2f}s after the second event:")
    for k, i in enumerate(rec.items[:10], 1):
        print(f"  {k:3d}. {titles.get(i, f'movie {i}')}")
    from streamrec.streams.lists import fetch_list

    url = f"http://127.0.0.1:{next(w for w in workers if w.alive()).port}"  # any live worker answers for any user
    status, answer = fetch_list(url, user)
    got = (f"{answer['model']} {answer['version']}, {len(answer['items'])} items, "
           f"published {answer['age_seconds']:.1f}s ago"
           if status == 200 else answer.get("error"))
    print(f"  the same list from the worker's web page: GET {url}/recommendations/{user} -> {status}: {got}")
    print(f"  (or: streamrec lists {user} --worker-url {url} --movies movies.csv [--follow])")
    return (len(items), rec)


def kill_midway(workers: list[WorkerProcess], n_events: int, fraction: float, killed: list) -> None:
    """SIGKILL the last worker once ``fraction`` of the events were consumed: a crash mid-replay."""
    done = 0.0
    while done < fraction * n_events:
        time.sleep(0.2)
        try:
            done = sum(metric_sum(w.metrics(), "streamrec_events_consumed_total") for w in workers)
        except OSError:
            continue
    victim = workers[-1]
    victim.kill()
    killed.append(victim)
    tqdm.write(f"*** {Path(victim.db).stem} killed (SIGKILL) after {done:,.0f} events consumed; its partitions "
               "move to the others when the group notices (session timeout)")


def handover(settings: Settings, dead: WorkerProcess, alive: list[WorkerProcess], timeout: float = 120) -> int:
    """Wait until the survivors have claimed the dead worker's partitions, then open its database
    as a restart would (fencing what it stored past its last commit); returns the events it owns."""
    from streamrec.storage.store import EventStore
    from streamrec.streams.ownership import Ownership, segments

    store = EventStore(dead.db)
    try:
        ownership = Ownership(store, settings.bootstrap_servers, settings.interactions_topic, settings.group_id)
        deadline = time.time() + timeout
        while True:
            claims = ownership.log.read()
            if not any(segments(claims, p)[-1][2] == store.db_id for p in {c.partition for c in claims}):
                break
            if time.time() > deadline or not all(w.alive() for w in alive):
                raise TimeoutError(f"no takeover of {dead.db}'s partitions after {timeout}s; see the workers' logs")
            time.sleep(0.5)
        fenced = ownership.refresh()
        owned = store.count()
    finally:
        store.close()
    for w in alive:
        m = w.metrics()
        tqdm.write(f"*** {Path(w.db).stem} took over: "
                   f"{m.get('streamrec_partition_claims_total', 0):.0f} partition claims, "
                   f"{m.get('streamrec_events_recovered_total', 0):,.0f} earlier events copied from Kafka")
    tqdm.write(f"*** {Path(dead.db).stem}'s database reopened: owns {owned:,} events; {fenced:,} it stored past its "
               "last commit now belong to the partitions' next owner")
    return owned


def check_scale_out(workers: list[WorkerProcess], killed: list[WorkerProcess], ratings, seq_len: int,
                    extra: int = 0) -> bool:
    """Every event owned by exactly one database; every user's sequence whole on its owner.
    ``extra``: events sent besides the ratings (the seed's example)."""
    import duckdb

    keys, seqs = [], {}
    for w in workers:
        con = duckdb.connect(w.db, read_only=True)
        keys.append(set(con.execute("SELECT key FROM events WHERE owned").fetchnumpy()["key"].tolist()))
        if w not in killed:  # a user's current owner holds all of the user's events (its copies included)
            for u, items, n in con.execute("SELECT user_id, items, n_events FROM sequences").fetchall():
                if n > seqs.get(u, (None, -1))[1]:
                    seqs[u] = (items, n)
        con.close()
    total = sum(len(k) for k in keys)
    overlap = total - len(set().union(*keys))  # events owned by more than one database
    print("\nscale-out check")
    print(f"  events owned        {' + '.join(f'{len(k):,}' for k in keys)} = {total:,} "
          f"(replayed {len(ratings):,}{f' + {extra} of the seed' if extra else ''}); owned by two databases: {overlap}")
    order = np.argsort(ratings.user, kind="stable")  # ratings are time-sorted: stays so per user
    users, starts = np.unique(ratings.user[order], return_index=True)
    items = np.split(ratings.item[order], starts[1:])
    wrong = sum(seqs.get(u, (None,))[0] != it[-seq_len:].tolist() for u, it in zip(users.tolist(), items))
    print(f"  sequences           {len(users) - wrong:,} of {len(users):,} users' sequences on the survivor equal "
          f"the last {seq_len} events of the source (what a single worker stores)")
    return overlap == 0 and total == len(ratings) + extra and wrong == 0
