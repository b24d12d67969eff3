"""Topic names and their creation with confluent-kafka's admin client."""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from streamrec.streams.config import Settings
from streamrec.streams.ownership import owners_topic

log = logging.getLogger(__name__)


def ensure_topics(settings: Settings, timeout: float = 30.0) -> None:
    """Create the pipeline's topics if they are missing (existing ones are left as they are)."""
    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
    wanted = {
        settings.interactions_topic: settings.partitions,
        settings.recommendations_topic: settings.partitions,
        settings.dlq_topic: 1,
        owners_topic(settings.interactions_topic): 1,  # scale-out's ownership log
    }
    existing = set(admin.list_topics(timeout=timeout).topics)
    new = [NewTopic(t, num_partitions=p, replication_factor=1) for t, p in wanted.items() if t not in existing]
    if not new:
        return
    for topic, fut in admin.create_topics(new, operation_timeout=timeout).items():
        try:
            fut.result(timeout)
            log.info("created topic %s", topic)
        except KafkaException as e:
            if "TOPIC_ALREADY_EXISTS" not in str(e):
                raise
    # Metadata propagation: wait until every topic is visible with its partitions.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        md = admin.list_topics(timeout=timeout).topics
        if all(t in md and len(md[t].partitions) >= 1 for t in wanted):
            return
        time.sleep(0.1)
    raise TimeoutError(f"topics {sorted(wanted)} not visible after {timeout}s")
