"""One row per data set x protocol x transformer across seeds, from ``bench_accuracy.py --json-out`` files.

    python benchmarks/accuracy_seeds.py benchmarks/results/accuracy-seeds-2026-11-27/*.json \\
        benchmarks/results/last-mask-2026-11-27/*.json benchmarks/results/accuracy-sparse-2026-11-27/sasrec-*.json

A file's seed is its ``seed`` field, else ``seedN`` in its name, else 0 (``bench_accuracy.py`` runs
before 2026-11-27 did not record it). Each cell shows, per seed, the difference in NDCG@10 to the
best baseline of that seed's run (each seed re-draws the same-second order, so its own baselines)
with its paired 95% interval over users, and how many seeds' intervals lie above zero. Two files
with the same seed and cell are an error: which one counts would be a choice made after the fact.
The data seed does not reach training: the transformers' own randomness (initial weights, batch
order, dropout, cloze masks) is ``--train-seed``, 0 in every run before that option (2026-11-27); a
file's ``train_seed`` makes its own column.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path


def seed_of(path: Path, res: dict) -> tuple[int, int]:
    """(data seed, training seed): ``--seed`` re-draws the same-second order, ``--train-seed`` (0 in every
    run before it existed) the transformers' initial weights, batch order and masks."""
    if "seed" in res:
        seed = int(res["seed"])
    else:
        m = re.search(r"seed(\d+)", path.name)
        seed = int(m.group(1)) if m else 0
    return seed, int(res.get("train_seed", 0))


def label(seed: tuple[int, int]) -> str:
    return f"seed {seed[0]}" + (f", train seed {seed[1]}" if seed[1] else "")


def cells(paths: list[Path], protocols: list[str] | None = None) -> dict[tuple[str, str, str], dict[tuple, dict]]:
    """(data set, protocol, model) -> seed -> {vs, diff, lo, hi, file}; only ``protocols`` if given."""
    out: dict[tuple[str, str, str], dict[tuple, dict]] = {}
    for path in paths:
        res = json.loads(path.read_text())
        seed = seed_of(path, res)
        for ds, run in res["runs"].items():
            for key, iv in run.get("intervals", {}).items():
                protocol, model = key.split("/")
                if protocols and protocol not in protocols:
                    continue
                got = out.setdefault((ds, protocol, model), {})
                if seed in got:
                    raise ValueError(f"{ds} {key} {label(seed)} is in both {got[seed]['file']} and {path.name}")
                got[seed] = {**iv, "file": path.name}
    return out


def table(found: dict[tuple[str, str, str], dict[tuple, dict]]) -> str:
    seeds = sorted({s for per in found.values() for s in per})
    head = "| data set | protocol | model | " + " | ".join(label(s) for s in seeds) + " | intervals above 0 | mean |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for (ds, protocol, model), per in sorted(found.items()):
        shown = []
        for s in seeds:
            iv = per.get(s)
            if iv is None:
                shown.append("–")
                continue
            text = f"{iv['diff']:+.4f} [{iv['lo']:+.4f}, {iv['hi']:+.4f}]".replace("-", "−")
            shown.append(f"**{text}**" if iv["lo"] > 0 else text)
        wins = sum(iv["lo"] > 0 for iv in per.values())
        mean = sum(iv["diff"] for iv in per.values()) / len(per)
        lines.append(f"| {ds} | {protocol} | {model} | " + " | ".join(shown)
                     + f" | {wins} of {len(per)} | {mean:+.4f} |".replace("-", "−"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", type=Path, metavar="JSON", help="bench_accuracy.py --json-out files")
    ap.add_argument("--protocols", nargs="+", choices=["a-masked", "a-unmasked", "b"],
                    help="only these protocols' cells (e.g. files whose (b) a later setting replaced)")
    args = ap.parse_args(argv)
    try:
        found = cells(args.files, args.protocols)
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"accuracy_seeds: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    if not found:
        print("accuracy_seeds: no transformer intervals in these files", file=sys.stderr)
        return 1
    print(table(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
