"""The deployment (deploy/) against the real worker and retraining job: compose file, Prometheus
configuration and rules, Grafana provisioning and dashboard, and the metrics tables of docs/metrics.md.

Nothing here can pull images or reach a Kafka cluster, so this checks what can be checked on
this machine: the files parse and agree with each other, ``promtool`` accepts the Prometheus
files (when installed: ``scripts/install-prometheus.sh``), ``docker compose config`` accepts the
compose file (when a compose plugin is installed), and every PromQL expression of the dashboard
and the rules names a metric that a real worker (fed a slice of MovieLens on the embedded
broker, with a candidate in shadow) or a real ``streamrec retrain --every`` job exports at
``/metrics``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import start_worker, wait_metrics

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
RULES = DEPLOY / "prometheus" / "rules.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "streamrec.json"
PROVISIONING = DEPLOY / "grafana" / "provisioning"
METRICS_DOC = ROOT / "docs" / "metrics.md"
DATA = Path(__file__).parent / "data"

WORKER_JOB = "streamrec-worker"
RETRAIN_JOB = "streamrec-retrain"
# Series that Prometheus itself attaches to every scrape target (not exported by the worker).
PROMETHEUS_SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped",
                        "scrape_samples_post_metric_relabeling", "scrape_series_added"}
# Labels that Prometheus adds to every scraped series, and the histogram bucket label.
TARGET_LABELS = {"job", "instance", "le", "__name__"}


def load_yaml(path: Path):
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
    rounds are graded against lists of the earlier ones, so online metrics exist). It serves a
    tiny SASRec champion from a registry and, from the second round on, scores a candidate in
    shadow (so the shadow-mode series exist too)."""
    from streamrec.model.config import ModelConfig, TrainConfig
    from streamrec.model.registry import Registry
    from streamrec.model.retrain import RetrainConfig, retrain
    from streamrec.storage.movielens import load_ratings
    from streamrec.streams.config import Settings
    from streamrec.streams.model_updates import announce
    from streamrec.streams.replay import make_producer, replay

    tmp = tmp_path_factory.mktemp("deploy")
    s = Settings(bootstrap_servers=broker.bootstrap, interactions_topic="deploy-interactions",
                 dlq_topic="deploy-interactions.dlq", recommendations_topic="deploy-recommendations",
                 group_id="deploy-worker", db=str(tmp / "w.duckdb"))
    ratings = load_ratings(DATA / "ratings.csv").slice(0, 5000)
    registry = Registry(tmp / "registry")
    tiny = ModelConfig(kind="sasrec", d_model=16, n_heads=1, max_len=20)
    retrain(registry, ratings.slice(0, 1000), RetrainConfig(cold=True, model=tiny, cold_train=TrainConfig(epochs=1)))
    candidate = registry.register(checkpoint_dir=registry.path("v1"), parent="v1", cutoff=0)
    updates = "deploy-model-updates"
    worker = start_worker(s, tmp / "worker.log", eval_snapshot_seconds=1.0, batch_size=500, registry=str(registry.root),
                          model_updates_topic=updates, model_evaluations_topic="deploy-model-evaluations")
    try:
        worker.wait_ready()
        producer = make_producer(s.bootstrap_servers)
        for start in range(0, 5000, 1000):
            replay(ratings.slice(start, start + 1000), s.bootstrap_servers, s.interactions_topic,
                   progress=False, producer=producer)
            wait_metrics(worker, lambda m: m.get("streamrec_store_events", 0) >= start + 1000, "stored events")
            if start == 0:
                announce(s.bootstrap_servers, updates, candidate, str(registry.path(candidate)), "shadow")
                wait_metrics(worker, lambda m: m['streamrec_model_loads_total{outcome="ok"}'] == 1, "shadow loaded")
        producer.produce(s.interactions_topic, value=b'{"user_id": 1, "item_id": ', key=b"1")  # one DLQ entry
        producer.flush(10)
        wait_metrics(worker, lambda m: m.get("streamrec_events_consumed_total", 0) >= 5001, "the bad message")
        wait_metrics(worker, lambda m: any(k.startswith("streamrec_online_ndcg{") for k in m), "online NDCG")
        wait_metrics(worker, lambda m: any(k.startswith("streamrec_shadow_events{") and v > 0 for k, v in m.items()),
                     "paired shadow events")
        with urllib.request.urlopen(worker.metrics_url, timeout=5) as r:
            return r.read().decode()
    finally:
        worker.stop()


@pytest.fixture(scope="module")
def retrain_exposition(tmp_path_factory) -> str:
    """/metrics of a running ``streamrec retrain --every 1s --metrics-port P`` job, after a run.

    Its ratings have no user with 3 events, so every run is skipped at once (no training): the
    job's metrics all exist from its start (labelled ones with every label value), which is what
    this module checks; tests/test_shadow_e2e.py checks their values after real runs."""
    import sys

    from streamrec.streams.broker import free_port
    from streamrec.streams.processes import parse_metrics

    tmp = tmp_path_factory.mktemp("retrain")
    (tmp / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,10,4.0,1000\n2,20,3.5,1001\n")
    port = free_port()
    cmd = [sys.executable, "-m", "streamrec", "retrain", "--registry", str(tmp / "registry"), "--ratings",
           str(tmp / "ratings.csv"), "--every", "1s", "--metrics-port", str(port)]
    with open(tmp / "retrain.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            assert proc.poll() is None, (tmp / "retrain.log").read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    text = r.read().decode()
            except OSError:
                text = ""
            if parse_metrics(text).get('streamrec_retrain_runs_total{outcome="skipped"}', 0) >= 1:
                return text
            time.sleep(0.3)
        raise TimeoutError(f"no skipped run on the job's /metrics; see {tmp / 'retrain.log'}")
    finally:
        proc.terminate()
        proc.wait(20)



STANDARD_PREFIXES = ("process_", "python_")  # documented once, as prometheus_client's standard collectors


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
        if f.name.startswith(STANDARD_PREFIXES):  # prometheus_client's process/platform/GC collectors
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


def _option(command: list[str], flag: str) -> list[str]:
    """The values after ``flag`` in an argument list (up to the next option)."""
    i = command.index(flag) + 1
    out = []
    while i < len(command) and not str(command[i]).startswith("--"):
        out.append(str(command[i]))
        i += 1
    return out


def test_compose_runs_the_retraining_job_and_prometheus_scrapes_it():
    compose = load_yaml(COMPOSE)
    services = compose["services"]
    workers = {n: s for n, s in services.items() if s.get("command", [None])[0] == "worker"}
    jobs = {n: s for n, s in services.items() if s.get("command", [None])[0] == "retrain"}
    assert len(jobs) == 1
    name, job = next(iter(jobs.items()))
    cmd = job["command"]
    assert _option(cmd, "--metrics-host") == ["0.0.0.0"] and "--every" in cmd and "--shadow" in cmd
    port = _option(cmd, "--metrics-port")[0]
    assert any(str(p).endswith(f":{port}") for p in job["ports"])
    prom = {j["job_name"]: j for j in load_yaml(PROMETHEUS)["scrape_configs"]}
    targets = {t for sc in prom[RETRAIN_JOB]["static_configs"] for t in sc["targets"]}
    assert targets == {f"{job.get('hostname', name)}:{port}"}, "prometheus.yml must scrape the compose job"
    assert prom[RETRAIN_JOB].get("metrics_path", "/metrics") == "/metrics"
    kafka_env = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert f"//{job['environment']['STREAMREC_BOOTSTRAP_SERVERS']}" in kafka_env

    # The job reads what the workers export and writes the registry they serve, on shared volumes.
    def volume_of(svc: dict, path: str) -> str:
        mounts = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}
        return next(src for target,
                    src in mounts.items() if path == target or path.startswith(target.rstrip("/") + "/"))

    registry = _option(cmd, "--registry")[0]
    exports = _option(cmd, "--export-dir")
    env = {n: {**w.get("environment", {})} for n, w in workers.items()}
    assert sorted(e["STREAMREC_EXPORT_DIR"] for e in env.values()) == sorted(exports), "one export dir per worker"
    for n, w in workers.items():
        assert env[n]["STREAMREC_REGISTRY"] == registry
        assert volume_of(w, registry) == volume_of(job, registry) in compose["volumes"]
        assert volume_of(w, env[n]["STREAMREC_EXPORT_DIR"]) == volume_of(job, env[n]["STREAMREC_EXPORT_DIR"])


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


# --- against a real worker and a real retraining job ---------------------------------------------


def merged_series(*texts: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for text in texts:
        for name, labels in sample_names(text).items():
            out.setdefault(name, set()).update(labels)
    return out


@pytest.mark.slow
def test_dashboard_and_rules_use_only_exported_metrics(exposition, retrain_exposition):
    series = merged_series(exposition, retrain_exposition)
    _, recorded = rules_exprs()
    labels_of = {**{n: set(ls) | TARGET_LABELS for n, ls in series.items()},
                 **{n: TARGET_LABELS | {"reason", "stage", "model"} for n in recorded},
                 **{n: TARGET_LABELS for n in PROMETHEUS_SYNTHETIC}}
    problems = []
    for where, expr in dashboard_exprs() + rules_exprs()[0]:
        names = promql_metric_names(expr)
        for name in names:
            if name not in series and name not in recorded and name not in PROMETHEUS_SYNTHETIC:
                problems.append(f"{where}: {name} is exported by neither the worker nor the retraining job")
        known = set().union(*(labels_of.get(n, set()) for n in names))
        for label in promql_label_names(expr) - known:
            problems.append(f"{where}: label {label} is on none of {sorted(names)}")
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_dashboard_covers_the_operational_metrics(exposition, retrain_exposition):
    used = set().union(*(promql_metric_names(e) for _, e in dashboard_exprs()))
    wanted = {
        "streamrec_events_consumed_total", "streamrec_events_stored_total", "streamrec_events_rejected_total",
        "streamrec_lists_published_total", "streamrec_batch_size_events_bucket",
        "streamrec_stage_latency_seconds_bucket", "streamrec_freshness_seconds_bucket",
        "streamrec_inference_seconds_bucket", "streamrec_online_ndcg", "streamrec_online_hit_rate",
        "streamrec_online_recall", "streamrec_model_info", "streamrec_shadow_ndcg",
    }
    wanted_retrain = {"streamrec_retrain_runs_total", "streamrec_retrain_duration_seconds_bucket",
                      "streamrec_retrain_last_success_timestamp_seconds", "streamrec_retrain_shadow_ndcg_diff"}
    assert wanted | wanted_retrain <= used, sorted((wanted | wanted_retrain) - used)
    assert set(sample_names(exposition)) >= wanted
    assert set(sample_names(retrain_exposition)) >= wanted_retrain
    by_reason = [e for _, e in dashboard_exprs() if "streamrec_events_rejected_total" in e and "by (reason)" in e]
    assert by_reason, "a panel with the DLQ rate by reason"
    by_outcome = [e for _, e in dashboard_exprs() if "streamrec_retrain_runs_total" in e and "by (outcome)" in e]
    assert by_outcome, "a panel with retraining runs by outcome"
    # Every metric family the worker and the job export shows on the dashboard in some form.
    for text in (exposition, retrain_exposition):
        families = exported(text)
        shown = {n for n in families if families[n]["samples"] & used}
        assert shown == set(families), sorted(set(families) - shown)


_ROW = re.compile(r"^\|\s*`(streamrec_[a-z0-9_:]+)`\s*\|\s*(\w+)\s*\|([^|]*)\|([^|]*)\|([^|]*)\|\s*$")
WORKER_TABLE = "## Metrics of a worker"
RETRAIN_TABLE = "## Metrics of the retraining job"


def documented_metrics(heading: str) -> dict[str, dict]:
    """The metrics table under ``heading`` in docs/metrics.md (up to the next heading): name, type,
    labels, unit, meaning."""
    out, current, fenced = {}, None, False
    for line in METRICS_DOC.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif line.startswith("#") and not fenced:
            current = line.strip()
        elif current == heading and (m := _ROW.match(line.strip())):
            name, kind, labels, unit, meaning = m.groups()
            out[name] = {"type": kind, "labels": sorted(re.findall(r"`(\w+)`", labels)),
                         "unit": unit.strip(), "meaning": meaning.strip()}
    return out


def check_documented(docs: dict[str, dict], actual: dict[str, dict]) -> None:
    assert sorted(set(actual) - set(docs)) == [], "exported but not in docs/metrics.md"
    assert sorted(set(docs) - set(actual)) == [], "documented but not exported"
    for name, info in actual.items():
        assert docs[name]["type"] == info["type"], name
        if info["samples"]:  # a labelled metric with no children yet shows no labels
            assert docs[name]["labels"] == info["labels"], name
        assert docs[name]["unit"] and docs[name]["meaning"], name
        if name.endswith("_seconds") or name.endswith("_seconds_total"):
            assert "second" in docs[name]["unit"], name


@pytest.mark.slow
def test_readme_documents_every_exported_metric(exposition):
    check_documented(documented_metrics(WORKER_TABLE), exported(exposition))
    assert "_created" in METRICS_DOC.read_text(), "the note on prometheus_client's _created series"


@pytest.mark.slow
def test_readme_documents_every_retrain_metric(retrain_exposition):
    docs, actual = documented_metrics(RETRAIN_TABLE), exported(retrain_exposition)
    assert all(f["samples"] for f in actual.values()), "every job metric exists from the start"
    check_documented(docs, actual)
    assert not set(docs) & set(documented_metrics(WORKER_TABLE)), "a metric is in both tables"


def test_compose_publishes_host_ports_on_loopback_only():
    """Kafka, the workers' metrics, Prometheus and Grafana have no authentication: never on 0.0.0.0."""
    compose = load_yaml(COMPOSE)
    published = [(name, str(p)) for name, svc in compose["services"].items() for p in svc.get("ports", [])]
    assert len(published) >= 6
    for name, port in published:
        assert port.startswith("127.0.0.1:") and port.count(":") == 2, f"{name}: {port} is not bound to 127.0.0.1"
