"""The retraining job's settings: like :class:`~streamrec.streams.config.Settings` (same machinery),
from the environment (``STREAMREC_RETRAIN_<FIELD>``) and the command line (``--field``).
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from typing import ClassVar

from streamrec.streams.config import EnvSettings

EXAMPLES = "e.g. 90s, 10m, 2h or 50000ev"


def parse_every(text: str) -> tuple[str, float]:
    """``"10m"`` -> ("seconds", 600); ``"5000ev"`` -> ("events", 5000); more than 0 of either.

    >>> parse_every("90s"), parse_every("2h"), parse_every("20000ev")
    (('seconds', 90.0), ('seconds', 7200.0), ('events', 20000.0))
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h|ev|events)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"a number with its unit, {EXAMPLES}")
    value, unit = float(m.group(1)), m.group(2)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"more than 0, {EXAMPLES}")
    if unit in ("ev", "events"):
        return "events", value
    return "seconds", value * {"s": 1, "m": 60, "h": 3600}[unit]


def parse_seconds(text: str) -> float:
    """``"90"`` or ``"90s"`` -> 90.0; ``"10m"`` -> 600.0; ``"1h"`` -> 3600.0; a sign is kept (the
    setting's range, not the parser, refuses a negative duration).

    >>> parse_seconds("45"), parse_seconds("10m"), parse_seconds("-5")
    (45.0, 600.0, -5.0)
    """
    m = re.fullmatch(r"\s*([-+]?\d+(?:\.\d+)?)\s*(s|m|h)?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError("seconds, or a number with its unit: e.g. 300, 90s, 10m or 1h")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2) or "s"]


@dataclass
class RetrainSettings(EnvSettings):
    """The retraining job's own options (``streamrec retrain | shadow | models | promote | rollback``);
    the Kafka side (bootstrap servers, topics) comes from :class:`Settings`.

    >>> RetrainSettings.from_env({"STREAMREC_RETRAIN_EVERY": "10m", "STREAMREC_RETRAIN_SHADOW": "yes"}).every
    ('seconds', 600.0)
    """

    env_prefix: ClassVar[str] = "STREAMREC_RETRAIN_"

    registry: str = field(default="", metadata={"help": "model registry directory", "required": True})
    export_dir: list[str] = field(default_factory=list, metadata={"help": "workers' Parquet export directories"})
    ratings: str = field(default="", metadata={
        "help": "a ratings file instead (ML-20M csv, ML-1M dat, RecBole .inter)"})
    cold: bool = field(default=False, metadata={"help": "train from scratch instead of warm-starting the champion"})
    margin: float = field(default=0.005, metadata={
        "help": "offline gate: pass iff candidate NDCG@10 >= champion NDCG@10 - margin"})
    epochs: int | None = field(default=None, metadata={
        "help": "training epochs, of a fine-tuning or a first (cold) model (None: the job's defaults, 5 and 30)",
        "min": 1})
    threads: int = field(default=1, metadata={
        "help": "torch threads (1: leave the other core to the workers)", "min": 1})
    every: tuple[str, float] | None = field(default=None, metadata={
        "help": "repeat: a period (90s, 10m, 2h) or a number of new events (50000ev); None: once",
        "parse": parse_every, "noun": "a period or a number of events"})
    shadow: bool = field(default=False, metadata={
        "help": "after the offline gate, have the workers score the candidate beside the champion on live traffic "
                "and promote it only if the paired comparison says it is not worse"})
    shadow_events: int = field(default=2000, metadata={
        "help": "paired events (summed over the workers) before deciding", "min": 1})
    shadow_timeout: float = field(default=3600.0, metadata={
        "help": "reject for lack of evidence after this long: 600, 90s, 10m, 2h", "parse": parse_seconds, "min": 1,
        "noun": "a duration"})
    shadow_alpha: float = field(default=0.05, metadata={
        "help": "one-sided error rate of the confidence bounds", "min": 0.0001, "max": 0.5})
    shadow_margin: float = field(default=0.005, metadata={
        "help": "promote iff the lower bound of mean NDCG@10(candidate - champion) >= -margin, reject iff its upper "
                "bound < -margin"})
    metrics_port: int = field(default=0, metadata={
        "help": "serve Prometheus /metrics of the job on this port (0: off)", "min": 0, "max": 65535})
    metrics_host: str = field(default="127.0.0.1", metadata={"help": "address of the job's /metrics"})

    SHADOW: ClassVar[list[str]] = ["shadow_events", "shadow_timeout", "shadow_alpha", "shadow_margin"]
