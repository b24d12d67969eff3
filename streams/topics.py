"""The pipeline's topics: reaching the cluster, and creating what is missing (never changing what exists)."""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from streamrec.streams.config import Settings, kafka_config
from streamrec.streams.ownership import owners_topic

log = logging.getLogger(__name__)

# The latest list per user is all a reader needs: the broker may drop older ones.
COMPACTED = {"cleanup.policy": "compact"}


class KafkaUnreachable(RuntimeError):
    """No metadata from the bootstrap servers in time (wrong address, broker down, bad credentials)."""


def connect(settings: Settings | str, timeout: float = 6.0) -> tuple[AdminClient, object]:
    """An admin client and the cluster's metadata, or :class:`KafkaUnreachable` within ``timeout`` s.

    librdkafka would log every failed connection attempt (hundreds of lines in 30 s); its log is
    kept to errors it cannot retry and the last one is reported in the exception instead.
    """
    errors: list[str] = []  # the client's own reports name the cause ("Connection refused", "SASL ...")
    admin = AdminClient(kafka_config("admin", settings, {"error_cb": lambda e: errors.append(e.str()), "log_level": 2}))
    bootstrap = settings if isinstance(settings, str) else settings.bootstrap_servers
    deadline = time.monotonic() + timeout
    while True:
        try:
            return admin, admin.list_topics(timeout=min(2.0, max(deadline - time.monotonic(), 0.1)))
        except KafkaException as e:
            failure = e.args[0].str() if e.args else str(e)
            admin.poll(0)  # serves error_cb
        if time.monotonic() >= deadline:
            cause = errors[-1] if errors else failure
            raise KafkaUnreachable(
                f"cannot reach Kafka at {bootstrap or '(no address)'} within {timeout:.0f}s ({cause}); check "
                "--bootstrap-servers / STREAMREC_BOOTSTRAP_SERVERS and --kafka-config, "
                "or start one with `streamrec broker`")


def create_topics(settings: Settings | str, wanted: dict[str, tuple[int, dict]], replication_factor: int = 0,
                  timeout: float = 30.0) -> list[str]:
    """Create the topics of ``wanted`` (name -> (partitions, topic config)) that are missing.

    Existing topics are left exactly as they are (partitions, replication and config).
    ``replication_factor`` 0: the smaller of 3 and the cluster's brokers. Returns the created names.
    """
    admin, md = connect(settings)
    rf = replication_factor or min(3, max(len(md.brokers), 1))
    new = [NewTopic(t, num_partitions=p, replication_factor=rf, config=dict(conf))
           for t, (p, conf) in wanted.items() if t not in md.topics]
    created = []
    for topic, fut in (admin.create_topics(new, operation_timeout=timeout).items() if new else []):
        try:
            fut.result(timeout)
            created.append(topic)
            log.info("created topic %s (replication factor %d)", topic, rf)
        except KafkaException as e:
            if "TOPIC_ALREADY_EXISTS" not in str(e):  # created meanwhile by another process
                raise
    # Metadata propagation: wait until every topic is visible with its partitions.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        md = admin.list_topics(timeout=timeout).topics
        if all(t in md and len(md[t].partitions) >= 1 for t in wanted):
            return created
        time.sleep(0.1)
    raise TimeoutError(f"topics {sorted(wanted)} not visible after {timeout}s")


def ensure_topics(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Create the pipeline's topics if they are missing (existing ones are left as they are)."""
    wanted = {
        settings.interactions_topic: (settings.partitions, {}),
        settings.recommendations_topic: (settings.partitions, COMPACTED),
        settings.dlq_topic: (1, {}),
        owners_topic(settings.interactions_topic): (1, {}),  # scale-out's ownership log
    }
    return create_topics(settings, wanted, settings.replication_factor, timeout)
