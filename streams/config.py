"""All settings of the pipeline in one typed place.

Every field can be set by an environment variable ``STREAMREC_<FIELD>`` (upper case) and by the
command line (``--field-name``); the command line wins.

>>> import os
>>> os.environ["STREAMREC_TOP_K"] = "7"
>>> Settings.from_env().top_k
7
>>> del os.environ["STREAMREC_TOP_K"]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import typing
from dataclasses import dataclass, field, fields
from typing import Callable, ClassVar, Mapping, Self, get_type_hints


class EnvSettings:
    """Typed settings: each dataclass field read from the environment (``env_prefix`` + the
    field's name in upper case) and from the command line (``--field-name``); the command line wins.

    A field's ``metadata`` holds its ``help``, and optionally ``parse`` (text to value, for both the
    environment and the command line) and ``required`` (the command needs it, from either).
    ``bool`` fields take ``--flag`` alone or ``--flag false``; ``list[str]`` fields take several
    values (in the environment: separated by ``os.pathsep``).
    """

    env_prefix: ClassVar[str] = "STREAMREC_"

    @classmethod
    def env_name(cls, f: dataclasses.Field) -> str:
        return f"{cls.env_prefix}{f.name.upper()}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Self:
        env = os.environ if env is None else env
        values, hints = {}, get_type_hints(cls)
        for f in fields(cls):
            raw = env.get(cls.env_name(f))
            if raw is None:
                continue
            parse = _parser(f, hints[f.name])
            try:
                values[f.name] = [parse(v) for v in raw.split(os.pathsep)] if _kind(hints[f.name]) is list else parse(raw)
            except (TypeError, ValueError, argparse.ArgumentTypeError) as e:
                raise ValueError(f"{cls.env_name(f)}={raw!r}: expected {_kind(hints[f.name]).__name__} ({e})") from e
        return cls(**values)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser | argparse._ArgumentGroup,
                      only: list[str] | None = None) -> None:
        """Add ``--field`` options (default: from the environment) for the named fields."""
        defaults, hints = cls.from_env(), get_type_hints(cls)
        for f in fields(cls):
            if only is not None and f.name not in only:
                continue
            default, hint = getattr(defaults, f.name), hints[f.name]
            shape: dict = {"type": _parser(f, hint)}
            if _kind(hint) is bool:
                shape.update(nargs="?", const=True)  # --flag alone, or --flag false
            elif _kind(hint) is list:
                shape.update(nargs="+")
            required = bool(f.metadata.get("required")) and default in ("", None, [])
            parser.add_argument(
                "--" + f.name.replace("_", "-"), default=default, required=required,
                help=f"{f.metadata.get('help', '')} (env {cls.env_name(f)}; default: %(default)r)", **shape)

    @classmethod
    def from_args(cls, args: argparse.Namespace, only: list[str] | None = None) -> Self:
        """The environment's settings with those given on the command line (of ``only``, if given)."""
        base = cls.from_env()
        given = {f.name: getattr(args, f.name) for f in fields(cls)
                 if hasattr(args, f.name) and (only is None or f.name in only)}
        return dataclasses.replace(base, **given)


def _kind(hint) -> type:
    """The type a field's text converts to: ``X`` for ``X | None``, ``list`` for ``list[...]``."""
    if typing.get_origin(hint) is list:
        return list
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def _parser(f: dataclasses.Field, hint) -> Callable[[str], object]:
    """Text to the field's value (one item of it, for a list): its ``parse``, else by its type."""
    if "parse" in f.metadata:
        return f.metadata["parse"]
    kind = _kind(hint)
    return _bool if kind is bool else str if kind is list else kind


@dataclass
class Settings(EnvSettings):
    bootstrap_servers: str = field(default="", metadata={"help": "Kafka bootstrap servers; empty = start the embedded broker where the command can"})
    interactions_topic: str = field(default="interactions", metadata={"help": "topic of click events"})
    dlq_topic: str = field(default="interactions.dlq", metadata={"help": "dead-letter topic for invalid events"})
    recommendations_topic: str = field(default="recommendations", metadata={"help": "topic of published top-K lists"})
    partitions: int = field(default=1, metadata={"help": "partitions when the pipeline creates its topics"})
    group_id: str = field(default="streamrec-worker", metadata={"help": "consumer group (faust app id) of the workers"})
    db: str = field(default="streamrec.duckdb", metadata={"help": "this worker's DuckDB file"})
    seq_len: int = field(default=200, metadata={"help": "items kept in each user's rolling sequence"})
    top_k: int = field(default=20, metadata={"help": "length of published lists"})
    batch_size: int = field(default=5000, metadata={"help": "largest micro-batch, in events"})
    batch_within: float = field(default=0.05, metadata={"help": "seconds to wait for a micro-batch to fill"})
    popularity_window: int = field(default=50_000, metadata={"help": "events in the popularity model's window"})
    baseline: str = field(default="popularity", metadata={"help": "simple model served without a transformer and as its fallback: popularity, item2item or itemknn"})
    checkpoint: str = field(default="", metadata={"help": "transformer checkpoint directory (empty: the baseline only)"})
    eval_snapshot_seconds: float = field(default=5.0, metadata={"help": "seconds between online-evaluation snapshots (gauges, DuckDB)"})
    registry: str = field(default="", metadata={"help": "model registry directory: serve its champion, follow promotions"})
    model_updates_topic: str = field(default="model-updates", metadata={"help": "topic of model promotions, rollbacks and shadow announcements"})
    model_evaluations_topic: str = field(default="model-evaluations", metadata={"help": "topic of shadow-mode tallies (candidate vs champion)"})
    export_dir: str = field(default="", metadata={"help": "write Parquet segments of the event log here (for retraining)"})
    export_every: float = field(default=30.0, metadata={"help": "seconds between event-log exports"})
    metrics_host: str = field(default="127.0.0.1", metadata={"help": "address of the /metrics endpoint"})
    metrics_port: int = field(default=6066, metadata={"help": "port of the /metrics endpoint"})
    session_timeout: float = field(default=10.0, metadata={"help": "consumer group session timeout, seconds"})
    # Reliability (streams/events.py, streams/pipeline.py, the worker): see the README's operations section.
    max_event_skew: float = field(default=86400.0, metadata={"help": "seconds an event_time may be ahead of its record's Kafka timestamp"})
    allow_null_keys: bool = field(default=False, metadata={"help": "accept records without a key (else the key must be the user id)"})
    stage_retries: int = field(default=8, metadata={"help": "attempts at a failing micro-batch before the worker exits"})
    stage_backoff: float = field(default=1.0, metadata={"help": "seconds before the first retry of a failed batch; doubles each time, up to 30"})
    broker_outage_limit: float = field(default=300.0, metadata={"help": "seconds the broker may be unreachable before the worker exits"})


def _bool(raw: str, name: str = "value") -> bool:
    """``1/true/yes/on`` or ``0/false/no/off`` (any case)."""
    v = raw.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{name}={raw!r}: expected true or false")


def parse_every(text: str) -> tuple[str, float]:
    """``"10m"`` -> ("seconds", 600); ``"5000ev"`` -> ("events", 5000).

    >>> parse_every("90s"), parse_every("2h"), parse_every("20000ev")
    (('seconds', 90.0), ('seconds', 7200.0), ('events', 20000.0))
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h|ev|events)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"--every {text!r}: use e.g. 90s, 10m, 2h or 50000ev")
    value, unit = float(m.group(1)), m.group(2)
    if unit in ("ev", "events"):
        return "events", value
    return "seconds", value * {"s": 1, "m": 60, "h": 3600}[unit]


def parse_seconds(text: str) -> float:
    """``"90"`` or ``"90s"`` -> 90.0; ``"10m"`` -> 600.0; ``"1h"`` -> 3600.0.

    >>> parse_seconds("45"), parse_seconds("10m")
    (45.0, 600.0)
    """
    unit, value = parse_every(text if text.strip()[-1:].isalpha() else f"{text}s")
    if unit != "seconds":
        raise argparse.ArgumentTypeError(f"{text!r}: a duration, e.g. 300, 90s, 10m or 1h")
    return value


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
    ratings: str = field(default="", metadata={"help": "a ratings file instead (ML-20M csv, ML-1M dat, RecBole .inter)"})
    cold: bool = field(default=False, metadata={"help": "train from scratch instead of warm-starting the champion"})
    margin: float = field(default=0.005, metadata={"help": "offline gate: pass iff candidate NDCG@10 >= champion NDCG@10 - margin"})
    epochs: int | None = field(default=None, metadata={"help": "fine-tuning epochs (None: the job's default)"})
    threads: int = field(default=1, metadata={"help": "torch threads (1: leave the other core to the workers)"})
    every: tuple[str, float] | None = field(default=None, metadata={
        "help": "repeat: a period (90s, 10m, 2h) or a number of new events (50000ev); None: once", "parse": parse_every})
    shadow: bool = field(default=False, metadata={
        "help": "after the offline gate, have the workers score the candidate beside the champion on live traffic "
                "and promote it only if the paired comparison says it is not worse"})
    shadow_events: int = field(default=2000, metadata={"help": "paired events (summed over the workers) before deciding"})
    shadow_timeout: float = field(default=3600.0, metadata={
        "help": "reject for lack of evidence after this long: 600, 90s, 10m, 2h", "parse": parse_seconds})
    shadow_alpha: float = field(default=0.05, metadata={"help": "one-sided error rate of the confidence bounds"})
    shadow_margin: float = field(default=0.005, metadata={
        "help": "promote iff the lower bound of mean NDCG@10(candidate - champion) >= -margin, reject iff its upper "
                "bound < -margin"})
    metrics_port: int = field(default=0, metadata={"help": "serve Prometheus /metrics of the job on this port (0: off)"})
    metrics_host: str = field(default="127.0.0.1", metadata={"help": "address of the job's /metrics"})

    SHADOW: ClassVar[list[str]] = ["shadow_events", "shadow_timeout", "shadow_alpha", "shadow_margin"]
