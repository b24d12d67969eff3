"""The end of ``streamrec demo`` with a transformer: the served lists beside popularity's on the
same live events (paired), the retraining's outcome, and the online report PNG."""

from __future__ import annotations

from pathlib import Path

from streamrec.model.paired_eval import PairedResult, compare_with_baseline
from streamrec.model.recommender import PopularityRecommender, Recommender

HORIZON_DAYS = 30


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
    baseline = make_baseline(settings)  # the worker's own fallback, built the same way
    # Recall's horizon: 30 days of event time. MovieLens users rate in sessions; at the replay's
    # speed a session fits in one micro-batch, so the list after it rarely has a future within
    # the worker's default day.
    r = compare_with_baseline(ratings.user, ratings.item, ratings.timestamp * 1000, follower.history(), baseline,
                              since=since, k=10, horizon_seconds=HORIZON_DAYS * 86_400)
    kind = args.model
    served = {m: n for m, n in r.lists_by_model.items() if m.startswith(kind + " ")}
    print(f"\nonline evaluation of the live part ({len(ratings) - n_live:,} events; each graded against the list "
          "its user was shown before it)")
    print("  lists served        " + ", ".join(f"{m} {n:,}" for m, n in sorted(r.lists_by_model.items()))
          + f"  ({baseline.name} = fallback for users {kind} cannot score)")
    print(f"  baseline            {baseline.name} (the fallback; its window: the last {settings.popularity_window:,} "
          "events), asked for a list for the same users at the same moments; paired on the same events")
    for name, t, unit in (("NDCG@10", r.ndcg, "events"),
                          ("Recall@10", r.recall, f"lists (their next 10 items within {HORIZON_DAYS} days)")):
        lo, hi = PairedResult.interval(t)
        print(f"  {name:<19} {kind} {t.candidate_mean:.4f} vs {baseline.name} {t.champion_mean:.4f} over {t.n:,} "
              f"{unit}: difference {t.mean_diff:+.4f} (95% interval {lo:+.4f} .. {hi:+.4f})")
    for m, t in sorted(r.ndcg_by_model.items()):
        lo, hi = PairedResult.interval(t)
        print(f"    lists of {m:<12} NDCG@10 {t.candidate_mean:.4f} vs {baseline.name} {t.champion_mean:.4f} on the "
              f"{t.n:,} events they were shown for: difference {t.mean_diff:+.4f} ({lo:+.4f} .. {hi:+.4f})")
    print(f"  not graded          {r.cold:,} live events with no list of theirs before them (a user's first "
          "live micro-batch, e.g. a burst of ratings, has only lists computed after it)")
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
