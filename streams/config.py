"""All settings in one typed place (the pipeline's; the retraining job's ``RetrainSettings`` in
``streams/retrain_settings.py`` on the same machinery), and the Kafka clients' configuration built
from them.

Every field can be set by an environment variable ``STREAMREC_<FIELD>`` (upper case) and by the
command line (``--field-name``); the command line wins. Values are checked here, once: a bad one
raises :class:`SettingsError` with one line that names the setting and what it accepts.

>>> import os
>>> os.environ["STREAMREC_TOP_K"] = "7"
>>> Settings.from_env().top_k
7
>>> del os.environ["STREAMREC_TOP_K"]
>>> Settings(top_k=0)
Traceback (most recent call last):
...
streamrec.streams.config.SettingsError: top_k=0 is out of range: give a number from 1 to 10000
(--top-k or STREAMREC_TOP_K)
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, ClassVar, Mapping, Self, get_type_hints

log = logging.getLogger(__name__)


class SettingsError(ValueError):
    """A setting with a value it cannot take (a usage error: the CLI exits with status 2)."""


def _f(default, help: str, min=None, max=None, **more):
    """A setting: its default, help text and, for numbers, the range it accepts."""
    return field(default=default, metadata={"help": help, "min": min, "max": max, **more})


class EnvSettings:
    """Typed settings: each dataclass field read from the environment (``env_prefix`` + the
    field's name in upper case) and from the command line (``--field-name``); the command line wins.

    A field's ``metadata`` holds its ``help``, and optionally ``parse`` (text to value, for both the
    environment and the command line) and ``required`` (the command needs it, from either).
    ``bool`` fields take ``--flag`` alone or ``--flag false``; ``list[str]`` fields take several
    values (in the environment: separated by ``os.pathsep``).
    """

    env_prefix: ClassVar[str] = "STREAMREC_"

    def __post_init__(self) -> None:
        for f in fields(self):
            check(f, getattr(self, f.name), type(self).env_name(f))

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
            parse = _parser(f, hints[f.name], cls.env_name(f))
            source = f"{cls.env_name(f)}={raw!r}"
            values[f.name] = ([parse(v, source) for v in raw.split(os.pathsep)] if _kind(hints[f.name]) is list
                              else parse(raw, source))
        return cls(**values)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser | argparse._ArgumentGroup,
                      only: list[str] | None = None) -> None:
        """Add ``--field`` options (default: from the environment) for the named fields."""
        try:
            defaults, env_read = cls.from_env(), True
        except SettingsError:  # a bad STREAMREC_* value: --help still answers; running the command names it
            defaults, env_read = cls(), False  # (from_args), so no option is required meanwhile
        hints = get_type_hints(cls)
        for f in fields(cls):
            if only is not None and f.name not in only:
                continue
            default, hint = getattr(defaults, f.name), hints[f.name]

            def parse(raw: str, convert=_parser(f, hint, cls.env_name(f))):
                try:
                    return convert(raw, raw)
                except SettingsError as e:  # argparse prints it after the option's name
                    raise argparse.ArgumentTypeError(str(e)) from None

            shape: dict = {"type": parse, "metavar": f.name.upper()}
            if _kind(hint) is bool:
                shape.update(nargs="?", const=True)  # --flag alone, or --flag false
            elif _kind(hint) is list:
                shape.update(nargs="+")
            required = env_read and bool(f.metadata.get("required")) and default in ("", None, [])
            parser.add_argument(
                option_name(f), default=default, required=required,
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


def _parser(f: dataclasses.Field, hint, env: str) -> Callable[[str, str], object]:
    """Text to the field's value (one item of it, for a list), range-checked: its ``parse``, else by
    its type. The returned function takes the text and where it came from (named in the error)."""
    custom = f.metadata.get("parse")
    kind = _kind(hint)
    noun = f.metadata.get("noun") or {"int": "a whole number", "float": "a number", "bool": "true or false"}.get(
        kind.__name__, kind.__name__)  # "noun": what a field with its own ``parse`` expects, in words

    def convert(raw: str, source: str):
        try:
            value = custom(raw) if custom else _bool(raw) if kind is bool else str(raw) if kind is list else kind(raw)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as e:
            detail = f" ({e})" if custom else ""
            raise SettingsError(f"{source}: expected {noun} for {f.name} ({option_name(f)} or {env}){detail}") from None
        if kind is not list:
            check(f, value, env)
        return value
    return convert


@dataclass
class Settings(EnvSettings):
    """The pipeline's settings: Kafka, topics, the worker, its models and its limits."""

    bootstrap_servers: str = _f("", "Kafka bootstrap servers (host:port,...); `streamrec broker` starts a local one")
    kafka_config: str = _f("", "Kafka client properties file (client.properties format: security.protocol, "
                               "sasl.*, ssl.*, client.id, ...) for every client")
    interactions_topic: str = _f("interactions", "topic of click events")
    dlq_topic: str = _f("interactions.dlq", "dead-letter topic for invalid events")
    recommendations_topic: str = _f("recommendations", "topic of published top-K lists (compacted, keyed by user)")
    partitions: int = _f(1, "partitions when the pipeline creates its topics", min=1)
    replication_factor: int = _f(0, "replication factor of the topics it creates "
                                    "(0: the smaller of 3 and the cluster's brokers)", min=0)
    group_id: str = _f("streamrec-worker", "consumer group (faust app id) of the workers")
    db: str = _f("streamrec.duckdb", "this worker's DuckDB file; faust's data folder goes beside it (DB.faust/)")
    seq_len: int = _f(200, "items kept in each user's rolling sequence", min=1)
    sequence_users: int = _f(1_000_000, "users whose sequences the worker keeps in memory (seq_len x 4 bytes each; "
                                        "the least recently active are evicted and reloaded from DuckDB when they "
                                        "return)", min=1)
    top_k: int = _f(20, "length of published lists", min=1, max=10_000)
    batch_size: int = _f(5000, "largest micro-batch, in events (reached only when events queue up; larger: a "
                               "transformer scores more users per call and lists wait longer; 20000 gave a popularity "
                               "worker no more events/s than 5000 at ML-20M scale, docs/benchmarks.md)", min=1)
    batch_within: float = _f(0.05, "seconds to wait for a micro-batch to fill (longer: larger batches, "
                                   "staler lists)", min=0.0)
    fetch_wait: float = _f(0.01, "seconds the broker may hold the worker's fetch when no data is there "
                                 "(longer: fewer round trips, staler lists; faust's own is 1.5)", min=0.0, max=60.0)
    popularity_window: int = _f(50_000, "events in the popularity model's window", min=1)
    baseline: str = _f("popularity", "simple model served without a transformer and as its fallback: "
                                     "popularity, item2item or itemknn", choices=("popularity", "item2item", "itemknn"))
    checkpoint: str = _f("", "transformer checkpoint directory (empty: the baseline only)")
    torch_threads: int = _f(1, "PyTorch CPU threads of a worker serving a transformer (its decode, store and "
                               "publish stages have threads of their own: more fight them for the cores)", min=1)
    gc_young: int = _f(10_000, "allocations between the garbage collector's youngest collections in a worker "
                               "(Python's default of 700 made full collections of the worker's objects take "
                               "a fifth of its time)", min=1)
    decode_process: bool = _f(True, "decode micro-batches in a child process, off the worker's GIL (false: in a "
                                    "thread of the worker)")
    eval_snapshot_seconds: float = _f(5.0, "seconds between online-evaluation snapshots (gauges, DuckDB)", min=0.1)
    registry: str = _f("", "model registry directory: serve its champion, follow promotions")
    model_updates_topic: str = _f("model-updates", "topic of model promotions, rollbacks and shadow announcements")
    model_evaluations_topic: str = _f("model-evaluations", "topic of shadow-mode tallies (candidate vs champion)")
    export_dir: str = _f("", "write Parquet segments of the event log here (for retraining, and read by "
                             "the next owner of a partition)")
    export_every: float = _f(30.0, "seconds between event-log exports", min=0.1)
    metrics_host: str = _f("127.0.0.1", "address of the /metrics endpoint")
    metrics_port: int = _f(6066, "port of the web server: /metrics, /ready, /recommendations (0: a free one, which the "
                                 "worker logs)", min=0, max=65535)
    session_timeout: float = _f(10.0, "consumer group session timeout, seconds", min=1.0)
    # Reliability (streams/events.py, streams/pipeline.py, the worker): see docs/operations.md.
    max_event_skew: float = _f(86400.0, "seconds an event_time may be ahead of its record's Kafka timestamp", min=0.0)
    allow_null_keys: bool = _f(False, "accept records without a key (else the key must be the user id)")
    stage_retries: int = _f(8, "attempts at a failing micro-batch before the worker exits", min=1)
    stage_backoff: float = _f(1.0, "seconds before the first retry of a failed batch; doubles each time, up to 30",
                              min=0.0)
    broker_outage_limit: float = _f(300.0, "seconds the broker may be unreachable before the worker exits", min=0.0)

    def faust_datadir(self) -> Path:
        """faust's data folder (table state, its pid file): beside the DuckDB file, not in the working directory."""
        db = Path(self.db)
        return db.parent / f"{db.name}.faust"

    def client_properties(self) -> dict[str, str]:
        """The ``--kafka-config`` file's settings ({} without one)."""
        return read_properties(self.kafka_config) if self.kafka_config else {}

    def with_bootstrap(self) -> "Settings":
        """These settings with ``bootstrap_servers`` taken from the properties file when not given."""
        if self.bootstrap_servers:
            return self
        return dataclasses.replace(self, bootstrap_servers=self.client_properties().get("bootstrap.servers", ""))


def env_name(f: dataclasses.Field) -> str:
    """The environment variable of a :class:`Settings` field."""
    return Settings.env_name(f)


def option_name(f: dataclasses.Field) -> str:
    return "--" + f.name.replace("_", "-")


def _bool(raw: str) -> bool:
    """``1/true/yes/on`` or ``0/false/no/off`` (any case)."""
    v = raw.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{raw!r} is not true or false")


def check(f: dataclasses.Field, value, env: str) -> None:
    """Raise :class:`SettingsError` unless ``value`` is in the field's range or among its choices."""
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise SettingsError(f"{f.name}={value!r}: give one of {', '.join(choices)} ({option_name(f)} or {env})")
    lo, hi = f.metadata.get("min"), f.metadata.get("max")
    if value is None or (lo is None and hi is None):
        return
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        want = f">= {lo}" if hi is None else f"from {lo} to {hi}"
        raise SettingsError(f"{f.name}={value!r} is out of range: give a number {want} ({option_name(f)} or {env})")


# --- Kafka clients ---------------------------------------------------------------------------


def read_properties(path: str | Path) -> dict[str, str]:
    """A Java-style ``client.properties`` file: ``key=value`` (or ``key: value``) lines, ``#``/``!`` comments.

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile("w", suffix=".properties", delete=False) as f:
    ...     _ = f.write("# cloud\\nsecurity.protocol=SASL_SSL\\nclient.id = me\\n")
    >>> read_properties(f.name)
    {'security.protocol': 'SASL_SSL', 'client.id': 'me'}
    >>> os.remove(f.name)
    """
    path = Path(path)
    if not path.is_file():
        raise SettingsError(f"Kafka properties file not found: {path} (--kafka-config or STREAMREC_KAFKA_CONFIG)")
    props = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line[0] in "#!":
            continue
        cut = min((i for i in (line.find("="), line.find(":")) if i > 0), default=-1)
        if cut < 0:
            raise SettingsError(f"{path}:{n}: expected key=value, found {line[:60]!r}")
        props[line[:cut].strip()] = line[cut + 1:].strip()
    return props


# librdkafka (confluent-kafka) property -> faust App setting, for what aiokafka can take.
_FAUST_NAMES = {
    "client.id": ("broker_client_id", str),
    "request.timeout.ms": ("broker_request_timeout", lambda v: int(v) / 1000),
    "session.timeout.ms": ("broker_session_timeout", lambda v: int(v) / 1000),
    "heartbeat.interval.ms": ("broker_heartbeat_interval", lambda v: int(v) / 1000),
    "max.poll.interval.ms": ("broker_max_poll_interval", lambda v: int(v) / 1000),
}
_SECURITY = {"security.protocol", "sasl.mechanism", "sasl.mechanisms", "sasl.username", "sasl.password",
             "ssl.ca.location", "ssl.certificate.location", "ssl.key.location", "ssl.key.password",
             "sasl.kerberos.service.name"}


# Set in a worker process (streams/health.py): librdkafka's log lines go through Python logging, where
# repeats are held back (a broker outage made each client print a line or two a second).
CLIENT_LOGGER = None


def kafka_config(kind: str, settings: "Settings | str", required: dict | None = None) -> dict:
    """The configuration of one Kafka client the project creates, with the user's properties file.

    ``kind``: ``producer``, ``consumer`` or ``admin`` (a confluent-kafka config dict), or ``faust``
    (keyword arguments for ``faust.App``: broker URL, client id, credentials, timeouts, mapped to
    faust's names for its aiokafka consumer and producer). ``settings`` may be a bare bootstrap
    string, meaning :meth:`Settings.from_env` with it (the properties file from the environment).
    ``required``: what the call site needs for correctness (``group.id``, idempotence, ...); it
    wins over the file, which wins over nothing else.

    >>> kafka_config("producer", "k:9092", {"enable.idempotence": True})
    {'bootstrap.servers': 'k:9092', 'enable.idempotence': True}
    >>> kafka_config("faust", "k:9092")
    {'broker': 'kafka://k:9092'}
    """
    required = required or {}
    if isinstance(settings, str):
        settings = dataclasses.replace(Settings.from_env(), bootstrap_servers=settings)
    props = settings.client_properties()
    bootstrap = settings.bootstrap_servers or props.get("bootstrap.servers", "")
    if kind in ("producer", "consumer", "admin"):
        conf = {**props, "bootstrap.servers": bootstrap, **required}
        if CLIENT_LOGGER is not None:
            conf.setdefault("logger", CLIENT_LOGGER)
        return conf
    if kind != "faust":
        raise ValueError(f"unknown Kafka client kind {kind!r}")
    conf = {"broker": ",".join(f"kafka://{b.strip()}" for b in bootstrap.split(",") if b.strip())}
    for key, value in props.items():
        if key in _FAUST_NAMES:
            name, parse = _FAUST_NAMES[key]
            conf[name] = parse(value)
    if props.keys() & _SECURITY:
        conf["broker_credentials"] = faust_credentials(props)
    ignored = sorted(props.keys() - _FAUST_NAMES.keys() - _SECURITY - {"bootstrap.servers"})
    if ignored:
        log.warning("Kafka properties not applicable to faust's aiokafka clients (used by the others): %s",
                    ", ".join(ignored))
    return {**conf, **required}


def faust_credentials(props: dict[str, str]):
    """faust's credentials object for the file's security.protocol, sasl.* and ssl.* settings."""
    import ssl

    import faust

    protocol = props.get("security.protocol", "PLAINTEXT").upper()
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=props.get("ssl.ca.location"))
        if "ssl.certificate.location" in props:
            context.load_cert_chain(props["ssl.certificate.location"], props.get("ssl.key.location"),
                                    props.get("ssl.key.password"))
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    if protocol not in ("SASL_SSL", "SASL_PLAINTEXT"):
        raise SettingsError(f"security.protocol={protocol}: faust's clients take PLAINTEXT, SSL, SASL_SSL "
                            "or SASL_PLAINTEXT")
    mechanism = props.get("sasl.mechanism", props.get("sasl.mechanisms", "PLAIN")).upper()
    if mechanism == "GSSAPI":
        return faust.GSSAPICredentials(kerberos_service_name=props.get("sasl.kerberos.service.name", "kafka"),
                                       ssl_context=context)
    if mechanism not in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        raise SettingsError(f"sasl.mechanism={mechanism}: faust's clients take PLAIN, SCRAM-SHA-256/512 or GSSAPI")
    return faust.SASLCredentials(username=props.get("sasl.username"), password=props.get("sasl.password"),
                                 ssl_context=context, mechanism=mechanism)


def settings_markdown() -> str:
    """The README's configuration table, generated from :class:`Settings` (a test keeps them equal)."""
    rows = ["| setting | environment variable | default | what it is |", "|---|---|---|---|"]
    for f in fields(Settings):
        default = "(empty)" if f.default == "" else f"`{f.default}`"
        rows.append(f"| `{option_name(f)}` | `{env_name(f)}` | {default} | {f.metadata['help'].replace('|', '/')} |")
    return "\n".join(rows) + "\n"
