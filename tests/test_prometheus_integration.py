"""A real Prometheus server scrapes a real worker and answers queries through its HTTP API.

The server (Debian package ``prometheus``, installed by ``scripts/install-prometheus.sh``) runs
on a free loopback port with its own TSDB in a temporary folder, the scrape jobs of
``deploy/prometheus/prometheus.yml`` (same job names and metrics paths, the targets replaced by
the test worker's port and the retraining job's metrics server, 1 s intervals) and the rules of
``deploy/prometheus/rules.yml``. A short MovieLens replay goes through the worker on the embedded
broker; the values Prometheus returns must equal what the worker's /metrics shows. Skipped when
the server is not installed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from streamrec.streams.broker import free_port
from streamrec.streams.processes import metric_sum
from streamrec.streams.prometheus import RETRAIN_OUTCOMES, RetrainMetrics
from streamrec.streams.replay import make_producer, replay
from tests.conftest import start_worker

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
PROJECT_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
DATA = Path(__file__).parent / "data"
N_EVENTS = 3000
NDCG10 = 'streamrec_online_ndcg{k="10",model="popularity",version="window-50000",window="all"}'


def prometheus_binary() -> str:
    found = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)
    if found is None:
        pytest.skip("the Prometheus server is not installed (Debian package `prometheus`; "
                    "run scripts/install-prometheus.sh)")
    return found


WORKER_JOB, RETRAIN_JOB = "streamrec-worker", "streamrec-retrain"


def scrape_config_for(project: dict, ports: dict[str, int], rules: Path) -> dict:
    """The project's scrape configuration with each job pointed at ``ports[job]`` on loopback,
    scraped every second."""
    config = {
        "global": dict(project.get("global", {}), scrape_interval="1s", evaluation_interval="1s",
                       scrape_timeout="1s"),
        "rule_files": [str(rules)],
        "scrape_configs": [],
    }
    for job in project["scrape_configs"]:
        job = {k: v for k, v in job.items() if k not in ("static_configs", "file_sd_configs", "dns_sd_configs")}
        job.update(scrape_interval="1s", scrape_timeout="1s",
                   static_configs=[{"targets": [f"127.0.0.1:{ports[job['job_name']]}"]}])
        config["scrape_configs"].append(job)
    return config


class Prometheus:
    def __init__(self, binary: str, config: dict, workdir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (workdir / "prometheus.yml").write_text(json.dumps(config, indent=2))  # JSON is YAML
        self.log = workdir / "prometheus.log"
        self.proc = subprocess.Popen(
            [binary, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)

    def get(self, path: str, **params) -> dict:
        url = f"{self.url}{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.proc.poll() is None, f"prometheus exited; see {self.log}: {self.log.read_text()[-2000:]}"
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except (OSError, urllib.error.HTTPError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"prometheus not ready after {timeout}s; see {self.log}")

    def query(self, expr: str) -> list[dict]:
        return self.get("/api/v1/query", query=expr)["result"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _until(fn, what: str, timeout: float = 30.0, every: float = 0.3):
    deadline, last = time.time() + timeout, None
    while time.time() < deadline:
        ok, last = fn()
        if ok:
            return last
        time.sleep(every)
    raise AssertionError(f"{what}: still {last!r} after {timeout}s")


@pytest.fixture(scope="module")
def run(broker, tmp_path_factory):
    """Prometheus scraping a worker through a replay of 3,000 ratings (three rounds, so the later
    ones are graded online against lists of the earlier ones)."""
    binary = prometheus_binary()
    from streamrec.storage.movielens import load_ratings
    from streamrec.streams.config import Settings

    tmp = tmp_path_factory.mktemp("prometheus")
    s = Settings(bootstrap_servers=broker.bootstrap, interactions_topic="prom-interactions",
                 dlq_topic="prom-interactions.dlq", recommendations_topic="prom-recommendations",
                 group_id="prom-worker", db=str(tmp / "w.duckdb"))
    worker = start_worker(s, tmp / "worker.log", eval_snapshot_seconds=1.0, batch_size=500)
    # The retraining job's metrics, served as `streamrec retrain --metrics-port` serves them.
    retrain = RetrainMetrics()
    retrain.runs.labels("promoted").inc()
    retrain_port = free_port()
    server, _ = retrain.serve("127.0.0.1", retrain_port)
    project = yaml.safe_load(PROJECT_CONFIG.read_text())
    prom = Prometheus(binary, scrape_config_for(project, {WORKER_JOB: worker.port, RETRAIN_JOB: retrain_port}, RULES),
                      tmp)
    try:
        prom.wait_ready()
        worker.wait_ready()
        # Scraped before any event, so counters start from 0 in Prometheus too.
        _until(lambda: (len(r := prom.query("up")) == 2 and all(x["value"][1] == "1" for x in r), r), "targets up")
        ratings = load_ratings(DATA / "ratings.csv").slice(0, N_EVENTS)
        producer = make_producer(s.bootstrap_servers)
        for start in range(0, N_EVENTS, 1000):
            replay(ratings.slice(start, start + 1000), s.bootstrap_servers, s.interactions_topic,
                   progress=False, producer=producer)
            _until(lambda: ((m := worker.metrics()).get("streamrec_store_events", 0) >= start + 1000, m),
                   "events stored", timeout=60)
        # Idle: the counters stop, and the next evaluation snapshot exports the last batch.
        time.sleep(2.0)
        ours = lambda: {k: v for k, v in worker.metrics().items() if k.startswith("streamrec_")}  # noqa: E731
        _until(lambda: ((m := ours()) == (time.sleep(1.2) or ours()), m), "worker metrics stable")
        metrics = worker.metrics()  # with the process series, which never stand still
        yield dict(prom=prom, worker=worker, metrics=metrics, project=project)
    finally:
        prom.stop()
        worker.stop()
        server.shutdown()


def _prom_value(prom: Prometheus, expr: str, want: float, timeout: float = 15.0) -> float:
    """The value of ``expr`` once Prometheus has scraped it (polling: it scrapes every second)."""
    def check():
        r = prom.query(expr)
        got = float(r[0]["value"][1]) if len(r) == 1 else None
        return got == want, (got, r)
    return _until(check, f"prometheus {expr} != worker {want}", timeout=timeout)[0]


def test_prometheus_stores_the_worker_counters(run):
    prom, m = run["prom"], run["metrics"]
    job = run["project"]["scrape_configs"][0]["job_name"]
    assert m["streamrec_events_stored_total"] == N_EVENTS
    for name in ("streamrec_events_stored_total", "streamrec_events_consumed_total"):
        got = _prom_value(prom, f'{name}{{job="{job}"}}', m[name])
        assert got == N_EVENTS
    lists = metric_sum(m, "streamrec_lists_published_total")
    assert lists > 0
    assert _prom_value(prom, f'sum(streamrec_lists_published_total{{job="{job}"}})', lists) == lists
    # A histogram's count and a label of the job's target survive the round trip.
    count = m["streamrec_freshness_seconds_count"]
    assert count > 0 and _prom_value(prom, "streamrec_freshness_seconds_count", count) == count
    targets = {t["labels"]["job"]: t for t in prom.get("/api/v1/targets")["activeTargets"]}
    assert {j: t["health"] for j, t in targets.items()} == {WORKER_JOB: "up", RETRAIN_JOB: "up"}
    assert job == WORKER_JOB
    for sc in run["project"]["scrape_configs"]:
        assert targets[sc["job_name"]]["scrapeUrl"].endswith(sc.get("metrics_path", "/metrics"))


def test_each_stage_s_cpu_is_counted_and_is_at_most_its_wall_time(run):
    """The stage CPU counter measures the stage's own thread over the span its duration times: it
    is positive for every stage that ran, and no more than that stage's wall time."""
    m = run["metrics"]
    for stage in ("decode", "store", "score", "publish"):
        cpu = m[f'streamrec_stage_cpu_seconds_total{{stage="{stage}"}}']
        wall = m[f'streamrec_stage_duration_seconds_sum{{stage="{stage}"}}']
        batches = m[f'streamrec_stage_duration_seconds_count{{stage="{stage}"}}']
        assert batches > 0 and 0 < cpu <= wall + 0.001 * batches, (stage, cpu, wall, batches)


def test_prometheus_stores_the_retrain_job_metrics(run):
    prom = run["prom"]
    assert _prom_value(prom, f'streamrec_retrain_runs_total{{job="{RETRAIN_JOB}",outcome="promoted"}}', 1.0) == 1.0
    r = prom.query(f'streamrec_retrain_runs_total{{job="{RETRAIN_JOB}"}}')
    assert sorted(x["metric"]["outcome"] for x in r) == sorted(RETRAIN_OUTCOMES)


def test_prometheus_stores_the_online_metrics(run):
    prom, m = run["prom"], run["metrics"]
    ndcg = m[NDCG10]
    assert 0 < ndcg < 1
    assert _prom_value(prom, NDCG10, ndcg) == ndcg
    hits = {k: v for k, v in m.items() if k.startswith("streamrec_online_hit_rate{")}
    r = prom.query('streamrec_online_hit_rate')
    assert len(r) == len(hits) > 0


def test_rules_evaluate_on_real_data(run):
    prom = run["prom"]
    groups = prom.get("/api/v1/rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert rules and all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
    rate = _until(lambda: (bool(r := prom.query("streamrec:events_stored:rate1m")) and float(r[0]["value"][1]) > 0, r),
                  "recording rule streamrec:events_stored:rate1m", timeout=15)
    assert rate[0]["metric"]["job"] == run["project"]["scrape_configs"][0]["job_name"]
    firing = [a for a in prom.get("/api/v1/alerts")["alerts"] if a["labels"]["alertname"] != "StreamrecConsumerStalled"]
    assert not [a for a in firing if a["state"] == "firing"], firing


def test_prometheus_stores_process_and_platform_series(run):
    """The worker and the retraining job export the standard process, platform and GC collectors."""
    prom = run["prom"]
    for job in (WORKER_JOB, RETRAIN_JOB):
        for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "python_info",
                     "python_gc_objects_collected_total"):
            r = _until(lambda: (bool(r := prom.query(f'{name}{{job="{job}"}}')), r), f"{name} of {job}", timeout=15)
            assert float(r[0]["value"][1]) > 0, (job, name, r)
    assert run["metrics"]["process_resident_memory_bytes"] > 10e6  # the worker's own scrape: a real process
