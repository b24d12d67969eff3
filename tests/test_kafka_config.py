"""Kafka client settings (``--kafka-config FILE`` / ``STREAMREC_KAFKA_CONFIG``) reach every client the
project creates, and topic creation takes partitions and replication and never changes a topic.

Each confluent-kafka class is wrapped by a recorder that notes the configuration and then builds
the real client, which talks to the real embedded broker: the call sites run for real.
"""

from __future__ import annotations

import dataclasses
import uuid

import confluent_kafka
import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from streamrec.storage.movielens import load_ratings
from streamrec.streams import (
    demo,
    health,
    latest_lists,
    lists,
    model_updates,
    ownership,
    replay,
    shadow_topic,
    topics,
    worker,
)
from streamrec.streams.config import Settings, SettingsError, kafka_config
from tests.test_cli_errors import DATA

CLIENT_ID = "streamrec-props-test"


@pytest.fixture
def props_file(tmp_path, monkeypatch):
    path = tmp_path / "client.properties"
    path.write_text(f"# as a cloud console writes it\nclient.id={CLIENT_ID}\nsocket.keepalive.enable = true\n"
                    "session.timeout.ms=12000\n")
    monkeypatch.setenv("STREAMREC_KAFKA_CONFIG", str(path))
    return path


@pytest.fixture
def recorded(monkeypatch) -> list[tuple[str, str, dict]]:
    """(module, client class, configuration) of every confluent-kafka client built meanwhile."""
    seen = []

    def recorder(cls, module):
        class Recorded(cls):
            def __init__(self, conf, **kw):
                seen.append((module.__name__.rsplit(".", 1)[1], cls.__name__, dict(conf)))
                super().__init__(conf, **kw)
        return Recorded

    for module in (replay, ownership, model_updates, shadow_topic, demo, lists, topics, worker, latest_lists, health):
        for cls in (confluent_kafka.Producer, confluent_kafka.Consumer, AdminClient):
            if getattr(module, cls.__name__, None) is cls:
                monkeypatch.setattr(module, cls.__name__, recorder(cls, module))
    return seen


def test_properties_reach_every_confluent_client(broker, settings, props_file, recorded, tmp_path):
    s = dataclasses.replace(settings, kafka_config=str(props_file))
    topics.ensure_topics(s)  # admin
    ratings = load_ratings(DATA / "ratings.csv").slice(0, 50)
    replay.replay(ratings, s, s.interactions_topic, progress=False)  # producer
    log = ownership.OwnershipLog(s.bootstrap_servers, ownership.owners_topic(s.interactions_topic), s.group_id)
    log.claim(0, 0, "db-test")  # producer, then a consumer reads the log back
    assert ownership.read_partition(s.bootstrap_servers, s.interactions_topic, 0, 0, 50, timeout=20)[1].size == 50
    updates = f"updates-{uuid.uuid4().hex[:6]}"
    model_updates.announce(s.bootstrap_servers, updates, "v1", "/nowhere")  # admin + producer
    model_updates.UpdateFollower(s.bootstrap_servers, updates, since_ms=0).close()  # consumer
    follower = lists.ListFollower(s.bootstrap_servers, s.recommendations_topic)  # consumer
    follower.consumer.close()
    decision = shadow_topic.wait_for_shadow(s.bootstrap_servers, f"evals-{uuid.uuid4().hex[:6]}", "v1", "v2",
                                            since_ms=0,
                                      timeout=0.5, min_events=10, margin=0.0, alpha=0.05)  # consumer
    assert decision.verdict != "promote"

    w = worker.Worker(s)  # the faust app; its pipeline's producer, ownership log and recovery reader
    w.open_pipeline().store.con.close()
    health.BrokerMonitor(kafka_config("admin", s), 10.0, metrics=None)  # the worker's broker watch: admin
    latest_lists.LatestLists().warm(s.bootstrap_servers, s.recommendations_topic, idle=0.5, timeout=10)  # consumer
    peers = f"workers-{uuid.uuid4().hex[:6]}"
    topics.create_topics(s, {peers: (1, {})})
    latest_lists.Peers(s.bootstrap_servers, peers, "http://127.0.0.1:1")  # producer + consumer

    kinds = {(module, cls) for module, cls, _ in recorded}
    assert {("worker", "Producer"), ("topics", "AdminClient"), ("replay", "Producer"), ("ownership", "Producer"),
            ("ownership", "Consumer"),
            ("model_updates", "Producer"), ("model_updates", "Consumer"), ("lists", "Consumer"),
            ("shadow_topic", "Consumer"), ("health", "AdminClient"), ("latest_lists", "Consumer"),
            ("latest_lists", "Producer")} <= kinds, kinds
    for module, cls, conf in recorded:
        assert conf.get("client.id") == CLIENT_ID, (module, cls, conf)
        assert conf.get("socket.keepalive.enable") == "true", (module, cls)
    # What the call site needs for correctness wins over the file: each reader keeps its own group.
    groups = {conf["group.id"] for _, cls, conf in recorded if cls == "Consumer"}
    assert len(groups) >= 6


def test_faust_gets_the_mapped_names(props_file, tmp_path):
    conf = kafka_config("faust", "127.0.0.1:9092")
    assert conf == {"broker": "kafka://127.0.0.1:9092", "broker_client_id": CLIENT_ID, "broker_session_timeout": 12.0}
    # The worker's app: faust builds its aiokafka consumer and producer from these settings.
    s = Settings(bootstrap_servers="127.0.0.1:9092", kafka_config=str(props_file), db=str(tmp_path / "w.duckdb"))
    app = worker.Worker(s).app
    assert (app.conf.broker_client_id, app.conf.broker_session_timeout) == (CLIENT_ID, 12.0)
    assert [str(u) for u in app.conf.broker] == ["kafka://127.0.0.1:9092"]
    assert app.conf.datadir == tmp_path / "w.duckdb.faust"  # beside the DuckDB file, not in the working directory


def test_faust_credentials_from_sasl_properties(tmp_path):
    import faust

    path = tmp_path / "cloud.properties"
    path.write_text("bootstrap.servers=pkc-1.example:9092\nsecurity.protocol=SASL_SSL\nsasl.mechanisms=PLAIN\n"
                    "sasl.username=KEY\nsasl.password=SECRET\n")
    s = Settings(kafka_config=str(path))
    assert s.with_bootstrap().bootstrap_servers == "pkc-1.example:9092"
    conf = kafka_config("faust", s)
    creds = conf["broker_credentials"]
    assert isinstance(creds, faust.SASLCredentials)
    assert (creds.username, creds.password, creds.mechanism.value, creds.protocol.value) == \
        ("KEY", "SECRET", "PLAIN", "SASL_SSL")
    assert kafka_config("consumer", s)["sasl.username"] == "KEY"
    path.write_text("security.protocol=SASL_SSL\nsasl.mechanism=OAUTHBEARER\n")
    with pytest.raises(SettingsError, match="OAUTHBEARER"):
        kafka_config("faust", s)


def test_topic_creation_never_changes_existing_topics(broker, settings):
    s = dataclasses.replace(settings, partitions=2)
    created = topics.ensure_topics(s)
    assert s.interactions_topic in created and s.recommendations_topic in created
    assert topics.ensure_topics(dataclasses.replace(s, partitions=4)) == []
    admin = AdminClient({"bootstrap.servers": s.bootstrap_servers})
    md = admin.list_topics(timeout=10).topics
    assert len(md[s.interactions_topic].partitions) == 2
    # Replication: the default is the smaller of 3 and the brokers (one here).
    assert {len(p.replicas) for p in md[s.interactions_topic].partitions.values()} == {1}
    (fut,) = admin.describe_configs([ConfigResource("topic", s.recommendations_topic)]).values()
    assert fut.result(10)["cleanup.policy"].value == "compact"  # latest list per user
    (fut,) = admin.describe_configs([ConfigResource("topic", s.interactions_topic)]).values()
    policy = fut.result(10).get("cleanup.policy")  # Tansu lists only what was set
    assert policy is None or policy.value == "delete"  # the event log is not compacted


def test_faust_builds_its_aiokafka_clients_from_the_file(tmp_path):
    """The worker's faust app hands the file's client id and SASL settings to the aiokafka consumer
    and producer it creates (built here as faust builds them, not started)."""
    import asyncio

    path = tmp_path / "client.properties"
    path.write_text(f"client.id={CLIENT_ID}\nsecurity.protocol=SASL_PLAINTEXT\nsasl.mechanism=SCRAM-SHA-256\n"
                    "sasl.username=alice\nsasl.password=secret\n")
    s = Settings(bootstrap_servers="127.0.0.1:9", kafka_config=str(path), db=str(tmp_path / "w.duckdb"))

    async def build():
        app = worker.Worker(s).app
        consumer = app.consumer._thread._create_worker_consumer(app.consumer.transport)
        producer = app.producer._new_producer()
        try:
            return [(c._client_id, c._security_protocol, c._sasl_mechanism, c._sasl_plain_username)
                    for c in (consumer._client, producer.client)]
        finally:
            await consumer.stop()
            await producer.stop()

    assert asyncio.run(build()) == [(CLIENT_ID, "SASL_PLAINTEXT", "SCRAM-SHA-256", "alice")] * 2
