"""The end of ``streamrec demo``: the run's summary (stored, lists, freshness) and, with a
transformer, the served lists beside popularity's on the same live events (paired), the
retraining's outcome, and the online report PNG."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from streamrec.model.paired_eval import PairedResult, compare_with_baseline
from streamrec.model.recommender import PopularityRecommender, Recommender
from streamrec.streams.lists import show
from streamrec.streams.processes import metric_sum

HORIZON_DAYS = 30


def _print_pair(kind: str, name: str, r: PairedResult) -> None:
    for metric, t, unit in (("NDCG@10", r.ndcg, "events"),
                            ("Recall@10", r.recall, f"lists (their next 10 items within {HORIZON_DAYS} days)")):
        lo, hi = PairedResult.interval(t)
        by_user = "; {:+.4f} .. {:+.4f} resampling users".format(*r.ndcg_user_interval()) if t is r.ndcg else ""
        print(f"    {metric:<17} {kind} {t.candidate_mean:.4f} vs {name} {t.champion_mean:.4f} over {t.n:,} "
              f"{unit}: difference {t.mean_diff:+.4f} (95% interval {lo:+.4f} .. {hi:+.4f} over {unit.split()[0]}"
              f"{by_user})")
    for m, t in sorted(r.ndcg_by_model.items()):
        lo, hi = PairedResult.interval(t)
        print(f"      lists of {m:<10} NDCG@10 {t.candidate_mean:.4f} vs {name} {t.champion_mean:.4f} on the "
              f"{t.n:,} events they were shown for: difference {t.mean_diff:+.4f} ({lo:+.4f} .. {hi:+.4f})")


def make_baseline(settings) -> Recommender:
    """``settings.baseline`` as the worker builds it (``streams/model_switch.build_baseline``), empty."""
    from streamrec.model.baselines import BASELINES

    if settings.baseline == "popularity":
        return PopularityRecommender(window=settings.popularity_window)
    return BASELINES[settings.baseline](popularity_window=settings.popularity_window)


def transformer_summary(args, settings, work: Path, workers, ratings, n_live: int, follower,
                        retrainer) -> bool:
    """Print the comparison and write the report; False if the transformer served no list."""
    since = int(ratings.timestamp[n_live]) * 1000
    kind = args.model
    fallback = make_baseline(settings)  # the worker's own fallback, built the same way
    print(f"\nonline evaluation of the live part ({len(ratings) - n_live:,} events; each graded against the list "
          "its user was shown before it)")
    lists = follower.history()
    others = [b for b in ("popularity", "item2item") if b != fallback.name]
    for baseline in [fallback] + [make_baseline(replace(settings, baseline=b)) for b in others]:
        # Recall's horizon: 30 days of event time. MovieLens users rate in sessions; at the replay's
        # speed a session fits in one micro-batch, so the list after it rarely has a future within
        # the worker's default day.
        r = compare_with_baseline(ratings.user, ratings.item, ratings.timestamp * 1000, lists, baseline,
                                  since=since, k=10, horizon_seconds=HORIZON_DAYS * 86_400)
        if baseline is fallback:
            served = {m: n for m, n in r.lists_by_model.items() if m.startswith(kind + " ")}
            print("  lists served        " + ", ".join(f"{m} {n:,}" for m, n in sorted(r.lists_by_model.items()))
                  + f"  ({fallback.name} = fallback for users {kind} cannot score)")
            print(f"  not graded          {r.cold:,} live events with no list of theirs before them (a user's first "
                  "live micro-batch, e.g. a burst of ratings, has only lists computed after it)")
        role = "the fallback; " if baseline is fallback else ""
        print(f"  vs {baseline.name} ({role}its popularity window: the last {settings.popularity_window:,} events), "
              "asked for a list for the same users at the same moments; paired on the same events")
        _print_pair(kind, baseline.name, r)
    if retrainer is not None:
        res = retrainer.result
        if res is not None:
            print(f"  retraining          {res.version} ({res.mode} from {res.parent}): "
                  + ("promoted and hot-swapped" if res.promoted else f"rejected ({res.reason})"))
        else:
            print(f"  retraining          did not finish: {retrainer.error or 'still running at the end'}")
    try:
        from streamrec.model.report import plot_report

        png = plot_report(workers[0].db, work / "report.png")
        print(f"  online report (PNG) {png.resolve()}  (NDCG@10, Recall@10 over event time, per model version)")
    except Exception as e:  # the numbers above stand without the picture
        print(f"  online report (PNG) not written: {e}")
    if not served:
        print(f"  FAILED: no list came from {kind}", flush=True)
    return bool(served)


def run_summary(workers: list, work: Path, follower, shown: set[int], titles,
             transformer: bool, n_live: int, stats, n_users: int, dead_owned: int, seed, elapsed: float,
             busy: float) -> bool:
    """Print the final lists and the run's summary; False if events were lost or no list came."""
    m = [w.metrics() for w in workers if w.alive()]
    stored = dead_owned + sum(x.get("streamrec_store_events", 0) for x in m) - (seed[0] if seed else 0)
    stored_alive = sum(metric_sum(x, "streamrec_events_stored_total") for x in m)  # by the running workers
    rejected = sum(metric_sum(x, "streamrec_events_rejected_total") for x in m)
    fresh = np.array(follower.freshness) if follower.freshness else np.zeros(1)
    print("\nfinal lists:")
    for u in sorted(shown):
        if u in follower.latest:
            print(show(follower.latest[u], titles, n=10))
    print("\nsummary")
    print(f"  events replayed     {n_live + stats.events:,}" + (f" ({n_live:,} history, then {stats.events:,} live"
          if transformer else f" ({stats.rate:,.0f} events/s into Kafka") + ")")
    print(f"  events stored       {int(stored):,} in DuckDB, rejected {int(rejected)}; "
          f"{elapsed:.1f}s from first live event to last list, {busy:.2f}s of pipeline work "
          f"({stored_alive / max(busy, 1e-9):,.0f} events/s while busy)")
    print(f"  users               {n_users:,}; users with a list {len(follower.latest):,}")
    print(f"  lists published     {follower.count:,}")
    print(f"  freshness           p50 {np.percentile(fresh, 50):.3f}s  p99 {np.percentile(fresh, 99):.3f}s "
          "(Kafka timestamp of the triggering event -> list published)")
    for w in workers:
        print(f"  metrics             {w.metrics_url}")
    print(f"  worker logs, DuckDB {work}/")
    if stored < n_live + stats.events:
        print(f"  FAILED: {int(stored):,} of {n_live + stats.events:,} events stored", file=sys.stderr)
    if follower.count == 0:
        print("  FAILED: no list was published", file=sys.stderr)
    return stored >= n_live + stats.events and follower.count > 0
