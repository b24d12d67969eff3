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
from dataclasses import dataclass, field, fields


@dataclass
class Settings:
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

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        values = {}
        for f in fields(cls):
            raw = env.get(f"STREAMREC_{f.name.upper()}")
            if raw is not None:
                values[f.name] = _convert(f, raw)
        return cls(**values)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, only: list[str] | None = None) -> None:
        """Add ``--field`` options (default: from the environment) for the named fields."""
        defaults = cls.from_env()
        for f in fields(cls):
            if only is not None and f.name not in only:
                continue
            parser.add_argument(
                "--" + f.name.replace("_", "-"),
                type=_bool if isinstance(f.default, bool) else type(getattr(defaults, f.name)),
                default=getattr(defaults, f.name),
                help=f"{f.metadata.get('help', '')} (env STREAMREC_{f.name.upper()}; default: %(default)r)",
            )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Settings":
        base = cls.from_env()
        given = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        return dataclasses.replace(base, **given)


def _convert(f: dataclasses.Field, raw: str):
    kind = type(f.default)
    if kind is bool:  # bool("false") is True
        return _bool(raw, f"STREAMREC_{f.name.upper()}")
    try:
        return kind(raw)
    except ValueError as e:
        raise ValueError(f"STREAMREC_{f.name.upper()}={raw!r}: expected {kind.__name__}") from e


def _bool(raw: str, name: str = "value") -> bool:
    """``1/true/yes/on`` or ``0/false/no/off`` (any case)."""
    v = raw.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{name}={raw!r}: expected true or false")
