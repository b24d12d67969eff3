"""The retraining job's outcomes as Prometheus metrics, for runs that never reach training
(promotions and shadow decisions are counted in tests/test_shadow_e2e.py)."""

import pytest

from streamrec.streams.cli import build_parser
from streamrec.streams.processes import parse_metrics
from streamrec.streams.prometheus import RETRAIN_OUTCOMES, RetrainMetrics
from streamrec.streams.retrain_job import run_retrain


def runs(metrics: RetrainMetrics) -> dict[str, float]:
    m = parse_metrics(metrics.expose().decode())
    return {o: m[f'streamrec_retrain_runs_total{{outcome="{o}"}}'] for o in RETRAIN_OUTCOMES}


def test_a_run_with_nothing_to_train_on_is_skipped(tmp_path):
    metrics = RetrainMetrics()
    args = build_parser().parse_args(["retrain", "--registry", str(tmp_path / "reg"),
                                      "--export-dir", str(tmp_path / "none")])
    with pytest.raises(SystemExit, match="no events"):
        run_retrain(args, metrics)
    assert runs(metrics) == {**dict.fromkeys(RETRAIN_OUTCOMES, 0.0), "skipped": 1.0}
    assert parse_metrics(metrics.expose().decode())["streamrec_retrain_last_success_timestamp_seconds"] == 0


def test_a_run_that_breaks_counts_as_failed(tmp_path):
    bad = tmp_path / "export"
    bad.mkdir()
    (bad / "events-1.parquet").write_bytes(b"not parquet")
    metrics = RetrainMetrics()
    args = build_parser().parse_args(["retrain", "--registry", str(tmp_path / "reg"), "--export-dir", str(bad)])
    with pytest.raises(Exception, match="(?i)parquet"):
        run_retrain(args, metrics)
    assert runs(metrics)["failed"] == 1.0 and sum(runs(metrics).values()) == 1.0


def test_shadow_needs_a_broker(tmp_path):
    args = build_parser().parse_args(["retrain", "--registry", str(tmp_path), "--ratings", "x.csv", "--shadow",
                                      "--bootstrap-servers", ""])
    with pytest.raises(SystemExit, match="--shadow: give --bootstrap-servers"):
        run_retrain(args)


def test_job_settings_from_environment_and_command_line(monkeypatch, tmp_path):
    """RetrainSettings like Settings: the environment sets defaults, the command line wins."""
    from streamrec.streams.retrain_job import _settings

    monkeypatch.setenv("STREAMREC_RETRAIN_REGISTRY", str(tmp_path / "reg"))
    monkeypatch.setenv("STREAMREC_RETRAIN_EXPORT_DIR", f"{tmp_path / 'a'}:{tmp_path / 'b'}")
    monkeypatch.setenv("STREAMREC_RETRAIN_EVERY", "5000ev")
    monkeypatch.setenv("STREAMREC_RETRAIN_SHADOW_EVENTS", "300")
    monkeypatch.setenv("STREAMREC_BOOTSTRAP_SERVERS", "127.0.0.1:9")
    job, kafka = _settings(build_parser().parse_args(["retrain", "--shadow-events", "700", "--cold"]))
    assert job.registry == str(tmp_path / "reg") and job.export_dir == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert job.every == ("events", 5000.0) and job.shadow_events == 700 and job.cold is True
    assert kafka.bootstrap_servers == "127.0.0.1:9" and kafka.export_dir == ""  # the worker's field, untouched

    monkeypatch.setenv("STREAMREC_RETRAIN_EVERY", "soon")  # named when the command runs (--help still works)
    with pytest.raises(ValueError, match="STREAMREC_RETRAIN_EVERY='soon'"):
        _settings(build_parser().parse_args(["retrain"]))


def test_retrain_needs_a_source(tmp_path):
    args = build_parser().parse_args(["retrain", "--registry", str(tmp_path / "reg")])
    with pytest.raises(SystemExit, match="give --export-dir"):
        run_retrain(args)
