"""The deployment (deploy/) against the real worker: compose file, Prometheus configuration and
rules, Grafana provisioning and dashboard, and the README's metrics table.

Nothing here can pull images or reach a Kafka cluster, so this checks what can be checked on
this machine: the files parse and agree with each other, ``promtool`` accepts the Prometheus
files (when installed: ``scripts/install-prometheus.sh``), ``docker compose config`` accepts the
compose file (when a compose plugin is installed), and every PromQL expression of the dashboard
and the rules names a metric that a real worker, fed a slice of MovieLens on the embedded
broker, exports at ``/metrics``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import start_worker, wait_metrics

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
RULES = DEPLOY / "prometheus" / "rules.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "streamrec.json"
PROVISIONING = DEPLOY / "grafana" / "provisioning"
METRICS_DOC = ROOT / "README.md"
DATA = Path(__file__).parent / "data"

WORKER_JOB = "streamrec-worker"
# Series that Prometheus itself attaches to every scrape target (not exported by the worker).
PROMETHEUS_SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped",
                        "scrape_samples_post_metric_relabeling", "scrape_series_added"}
# Labels that Prometheus adds to every scraped series, and the histogram bucket label.
TARGET_LABELS = {"job", "instance", "le", "__name__"}


def load_yaml(path: Path):
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (pip install pyyaml)")
    return yaml.safe_load(path.read_text())


# --- PromQL: the metric and label names an expression uses -----------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'|`[^`]*`")
_RANGE = re.compile(r"\[[^\]]*\]")  # [5m], [$__rate_interval], [1h:1m]
_MATCHERS = re.compile(r"\{([^}]*)\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", re.I)
_NAME = re.compile(r"(?<![\w.:$])[a-zA-Z_:][a-zA-Z0-9_:]*")
_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
             "offset", "bool", "atan2", "inf", "nan", "start", "end"}
_GRAFANA_VAR = re.compile(r"\$(?:\{[^}]*\}|\w+)")


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (functions, keywords, labels and numbers left out).

    >>> sorted(promql_metric_names('histogram_quantile(0.99, sum by (le, stage) '
    ...        '(rate(streamrec_stage_latency_seconds_bucket{instance=~"$instance"}[$__rate_interval])))'))
    ['streamrec_stage_latency_seconds_bucket']
    >>> sorted(promql_metric_names('sum(rate(a_total[5m] offset 1h)) / clamp_min(sum(b), 1e-9) > 0 and on(job) up'))
    ['a_total', 'b', 'up']
    >>> sorted(promql_metric_names('{__name__="x"} or streamrec:rate1m * 1000'))
    ['streamrec:rate1m', 'x']
    """
    names = {m.group(1) for m in re.finditer(r'__name__\s*=\s*"([^"]+)"', expr)}
    e = _STRING.sub('""', expr)
    e = _RANGE.sub("", e)
    e = _MATCHERS.sub("", e)
    e = _GROUPING.sub("", e)
    e = _GRAFANA_VAR.sub("", e)
    for m in _NAME.finditer(e):
        token = m.group(0)
        if token.lower() in _KEYWORDS or re.match(r"\s*\(", e[m.end():]):
            continue  # an operator keyword, or a function / aggregation applied to (...)
        names.add(token)
    return names


def promql_label_names(expr: str) -> set[str]:
    """Label names used in matchers and grouping clauses.

    >>> sorted(promql_label_names('sum by (reason) (rate(x{instance=~"$i", stage!="a"}[5m]))'))
    ['instance', 'reason', 'stage']
    """
    e = _STRING.sub('""', expr)
    out = set()
    for m in _MATCHERS.finditer(e):
        out |= {x.strip() for x in re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", m.group(1))}
    for m in _GROUPING.finditer(e):
        out |= {x.strip() for x in m.group(1).split(",") if x.strip()}
    return out


def dashboard_exprs() -> list[tuple[str, str]]:
    """``(where, PromQL)`` for every panel query and every template variable of the dashboard."""
    dash = json.loads(DASHBOARD.read_text())
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append((f"panel {p.get('title')!r} {t.get('refId')}", t["expr"]))
            walk(p.get("panels", []))

    walk(dash["panels"])
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        q = q.get("query", "") if isinstance(q, dict) else (q or "")
        # Grafana's label_values(selector, label) / query_result(expr): PromQL inside.
        if m := re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", q):
            out.append((f"variable {v['name']}", f"count by ({m.group(2)}) ({m.group(1)})"))
        elif m := re.fullmatch(r"\s*query_result\((.*)\)\s*", q):
            out.append((f"variable {v['name']}", m.group(1)))
    return out


def rules_exprs() -> tuple[list[tuple[str, str]], set[str]]:
    """``(where, PromQL)`` of every rule, and the names the recording rules define."""
    rules = load_yaml(RULES)
    exprs, recorded = [], set()
    for g in rules["groups"]:
        for r in g["rules"]:
            exprs.append((f"rule {r.get('record') or r.get('alert')}", r["expr"]))
            if "record" in r:
                recorded.add(r["record"])
    return exprs, recorded


# --- a real worker's /metrics ------------------------------------------------------------------


@pytest.fixture(scope="module")
def exposition(broker, tmp_path_factory) -> str:
    """/metrics of a worker that consumed 5,000 MovieLens ratings in five rounds (the later
    rounds are graded against lists of the earlier ones, so online metrics exist)."""
    from storage.movielens import load_ratings
    from streams.config import Settings
    from streams.replay import make_producer, replay

    tmp = tmp_path_factory.mktemp("deploy")
    s = Settings(bootstrap_servers=broker.bootstrap, interactions_topic="deploy-interactions",
                 dlq_topic="deploy-interactions.dlq", recommendations_topic="deploy-recommendations",
                 group_id="deploy-worker", db=str(tmp / "w.duckdb"))
    worker = start_worker(s, tmp / "worker.log", eval_snapshot_seconds=1.0, batch_size=500)
    try:
        worker.wait_ready()
        ratings = load_ratings(DATA / "ratings.csv").slice(0, 5000)
        producer = make_producer(s.bootstrap_servers)
        for start in range(0, 5000, 1000):
            replay(ratings.slice(start, start + 1000), s.bootstrap_servers, s.interactions_topic,
                   progress=False, producer=producer)
            wait_metrics(worker, lambda m: m.get("streamrec_store_events", 0) >= start + 1000, "stored events")
        producer.produce(s.interactions_topic, value=b'{"user_id": 1, "item_id": ', key=b"1")  # one DLQ entry
        producer.flush(10)
        wait_metrics(worker, lambda m: m.get("streamrec_events_consumed_total", 0) >= 5001, "the bad message")
        wait_metrics(worker, lambda m: any(k.startswith("streamrec_online_ndcg{") for k in m), "online NDCG")
        with urllib.request.urlopen(worker.metrics_url, timeout=5) as r:
            return r.read().decode()
    finally:
        worker.stop()



def exported(text: str) -> dict[str, dict]:
    """``{name as queried: {"type", "help", "labels", "samples"}}`` from an exposition.

    Counters are named with ``_total``, histograms by their base name; the ``_created`` gauges
    that prometheus_client adds to every counter and histogram are left out (documented once).
    """
    families = list(text_string_to_metric_families(text))
    bases = {f.name for f in families if f.type in ("counter", "histogram")}
    out = {}
    for f in families:
        if f.name.endswith("_created") and f.name[: -len("_created")] in bases:
            continue
        name = f.name + "_total" if f.type == "counter" else f.name
        out[name] = {"type": f.type, "help": f.documentation,
                     "labels": sorted({k for s in f.samples for k in s.labels} - {"le"}),
                     "samples": {s.name for s in f.samples}}
    return out


def sample_names(text: str) -> dict[str, set[str]]:
    """Every series name a scrape yields (``_bucket``, ``_sum``, ``_count``, ``_created`` included),
    with the label names seen on it."""
    out: dict[str, set[str]] = {}
    for f in text_string_to_metric_families(text):
        for s in f.samples:
            out.setdefault(s.name, set()).update(s.labels)
    return out


# --- compose, Dockerfile, provisioning ---------------------------------------------------------


def test_compose_has_the_services_and_matches_the_scrape_targets():
    compose = load_yaml(COMPOSE)
    services = compose["services"]
    assert {"kafka", "replay", "prometheus", "grafana"} <= set(services)
    workers = {n: s for n, s in services.items() if s.get("command", [None])[0] == "worker"}
    assert len(workers) >= 1

    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert "controller" in env["KAFKA_PROCESS_ROLES"] and "broker" in env["KAFKA_PROCESS_ROLES"]
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] == "CONTROLLER" and env.get("CLUSTER_ID")
    advertised = dict(reversed(x.split("://", 1)) for x in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    listeners = {x.split("://", 1)[0] for x in env["KAFKA_LISTENERS"].split(",")}
    assert set(advertised.values()) <= listeners
    internal = {addr for addr, name in advertised.items() if addr.startswith("kafka:")}
    assert internal, "a listener the other containers reach as kafka:PORT"

    targets = set()
    prom = load_yaml(PROMETHEUS)
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    assert WORKER_JOB in jobs and jobs[WORKER_JOB].get("metrics_path", "/metrics") == "/metrics"
    for sc in jobs[WORKER_JOB]["static_configs"]:
        targets |= set(sc["targets"])
    expected = set()
    for name, svc in workers.items():
        e = svc["environment"]
        assert e["STREAMREC_BOOTSTRAP_SERVERS"] in internal, name
        assert e["STREAMREC_METRICS_HOST"] == "0.0.0.0", name
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (DEPLOY / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
        host = svc.get("hostname", name)
        expected.add(f"{host}:{e['STREAMREC_METRICS_PORT']}")
        assert any(str(p).endswith(f":{e['STREAMREC_METRICS_PORT']}") for p in svc.get("ports", [])), name
        assert "/data" in {v.split(":")[1] for v in svc["volumes"]} and e["STREAMREC_DB"].startswith("/data/")
    assert targets == expected, "prometheus.yml must scrape exactly the compose workers"
    dbs = {tuple(svc["volumes"]) for svc in workers.values()}
    assert len(dbs) == len(workers), "every worker needs its own DuckDB volume"

    replay = services["replay"]
    assert replay["command"][0] == "replay"
    assert replay["environment"]["STREAMREC_BOOTSTRAP_SERVERS"] in internal
    assert set(workers) <= set(replay["depends_on"])

    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["prometheus"]["volumes"]}
    config_flag = next(a for a in services["prometheus"]["command"] if a.startswith("--config.file="))
    config = config_flag.split("=", 1)[1]
    src = next(s for target, s in mounts.items() if config.startswith(target.rstrip("/") + "/"))
    assert (DEPLOY / src / Path(config).name).resolve() == PROMETHEUS
    assert (PROMETHEUS.parent / prom["rule_files"][0]).resolve() == RULES
    assert prom["global"]["scrape_interval"] == "5s"


def test_grafana_provisioning_matches_compose_and_dashboard():
    compose = load_yaml(COMPOSE)
    grafana = compose["services"]["grafana"]
    mounts = {v.split(":")[1]: (DEPLOY / v.split(":")[0]).resolve() for v in grafana["volumes"] if v.startswith(".")}
    assert mounts["/etc/grafana/provisioning"] == PROVISIONING
    sources = [d for f in sorted((PROVISIONING / "datasources").glob("*.yml")) for d in load_yaml(f)["datasources"]]
    prom = next(d for d in sources if d["type"] == "prometheus")
    port = compose["services"]["prometheus"]["ports"][0].split(":")[-1]
    assert prom["url"] == f"http://prometheus:{port}"
    providers = [p for f in sorted((PROVISIONING / "dashboards").glob("*.yml")) for p in load_yaml(f)["providers"]]
    path = providers[0]["options"]["path"]
    assert mounts[path] == DASHBOARD.parent
    dash = json.loads(DASHBOARD.read_text())
    uids = {json.dumps(p.get("datasource")) for p in dash["panels"] if p["type"] != "row"}
    assert uids == {json.dumps({"type": "prometheus", "uid": prom["uid"]})}


def test_dockerfile_and_dockerignore():
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert "-c constraints.txt ." in text and "download.pytorch.org/whl/cpu" in text
    for src in re.findall(r"^COPY\s+(.+)\s+\S+$", text, re.M):
        for s in src.split():
            assert list(ROOT.glob(s)) or "[" in s, f"COPY source {s} missing"
    # The CPU index belongs to the image only: the project's setup must not depend on it.
    assert "download.pytorch.org" not in (ROOT / "scripts" / "setup.sh").read_text()
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert "**" in ignore and "!streams/" in ignore and "**/*.duckdb" in ignore


def _compose_command() -> list[str] | None:
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]) is None:
            continue
        r = subprocess.run(cmd + ["version"], capture_output=True, text=True)
        if r.returncode == 0:
            return cmd
    return None


def test_docker_compose_config_validates():
    cmd = _compose_command()
    if cmd is None:
        pytest.skip("no Docker Compose here (neither the `docker compose` plugin nor `docker-compose`): "
                    "the compose file is only checked by the YAML tests above")
    r = subprocess.run(cmd + ["-f", str(COMPOSE), "config", "--quiet"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def _promtool() -> str:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool is not installed (Debian package `prometheus`: scripts/install-prometheus.sh)")
    return tool


def test_promtool_accepts_the_configuration_and_rules():
    tool = _promtool()
    r = subprocess.run([tool, "check", "config", str(PROMETHEUS)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "rule files found" in r.stdout + r.stderr  # rules.yml was found and checked with it
    r = subprocess.run([tool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_expression_parses():
    """Each query selects at least one metric (a parser that found none would check nothing)."""
    exprs = dashboard_exprs() + rules_exprs()[0]
    assert len(exprs) > 30
    for where, expr in exprs:
        assert promql_metric_names(expr), (where, expr)


# --- against a real worker ---------------------------------------------------------------------


@pytest.mark.slow
def test_dashboard_and_rules_use_only_exported_metrics(exposition):
    series = sample_names(exposition)
    _, recorded = rules_exprs()
    labels_of = {**{n: set(ls) | TARGET_LABELS for n, ls in series.items()},
                 **{n: TARGET_LABELS | {"reason", "stage", "model"} for n in recorded},
                 **{n: TARGET_LABELS for n in PROMETHEUS_SYNTHETIC}}
    problems = []
    for where, expr in dashboard_exprs() + rules_exprs()[0]:
        names = promql_metric_names(expr)
        for name in names:
            if name not in series and name not in recorded and name not in PROMETHEUS_SYNTHETIC:
                problems.append(f"{where}: {name} is not exported by the worker")
        known = set().union(*(labels_of.get(n, set()) for n in names))
        for label in promql_label_names(expr) - known:
            problems.append(f"{where}: label {label} is on none of {sorted(names)}")
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_dashboard_covers_the_operational_metrics(exposition):
    used = set().union(*(promql_metric_names(e) for _, e in dashboard_exprs()))
    wanted = {
        "streamrec_events_consumed_total", "streamrec_events_stored_total", "streamrec_events_rejected_total",
        "streamrec_lists_published_total", "streamrec_batch_size_events_bucket",
        "streamrec_stage_latency_seconds_bucket", "streamrec_freshness_seconds_bucket",
        "streamrec_inference_seconds_bucket", "streamrec_online_ndcg", "streamrec_online_hit_rate",
        "streamrec_online_recall", "streamrec_model_info",
    }
    assert wanted <= used, sorted(wanted - used)
    assert set(sample_names(exposition)) >= wanted
    by_reason = [e for _, e in dashboard_exprs() if "streamrec_events_rejected_total" in e and "by (reason)" in e]
    assert by_reason, "a panel with the DLQ rate by reason"
    # Every metric family the worker exports shows on the dashboard in some form.
    families = exported(exposition)
    shown = {n for n in families if families[n]["samples"] & used}
    assert shown == set(families), sorted(set(families) - shown)


_ROW = re.compile(r"^\|\s*`(streamrec_[a-z0-9_:]+)`\s*\|\s*(\w+)\s*\|([^|]*)\|([^|]*)\|([^|]*)\|\s*$")


def documented_metrics() -> dict[str, dict]:
    """The metrics table of README.md: name, type, labels, unit, meaning."""
    out = {}
    for line in METRICS_DOC.read_text().splitlines():
        if m := _ROW.match(line.strip()):
            name, kind, labels, unit, meaning = m.groups()
            out[name] = {"type": kind, "labels": sorted(re.findall(r"`(\w+)`", labels)),
                         "unit": unit.strip(), "meaning": meaning.strip()}
    return out


@pytest.mark.slow
def test_readme_documents_every_exported_metric(exposition):
    docs, actual = documented_metrics(), exported(exposition)
    assert sorted(set(actual) - set(docs)) == [], "exported but not in README.md"
    assert sorted(set(docs) - set(actual)) == [], "documented but not exported"
    for name, info in actual.items():
        assert docs[name]["type"] == info["type"], name
        if info["samples"]:  # a labelled metric with no children yet shows no labels
            assert docs[name]["labels"] == info["labels"], name
        assert docs[name]["unit"] and docs[name]["meaning"], name
        if name.endswith("_seconds") or name.endswith("_seconds_total"):
            assert "second" in docs[name]["unit"], name
    assert "_created" in METRICS_DOC.read_text(), "the note on prometheus_client's _created series"
