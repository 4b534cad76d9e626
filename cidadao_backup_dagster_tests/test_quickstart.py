"""Command 1's quick start, for real: one run leaves a valid artifact of every class of the default sources, a
passing restore drill of PostgreSQL and of Redis, and a health report with no finding; and `setup.sh` is the
script CI runs (no apt when every tool is there)."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg

from cidadao_backup_dagster import quickstart

from .redis_fixtures import redis_server  # noqa: F401 - fixture

REPO = Path(__file__).resolve().parents[1]


def test_quickstart_leaves_every_class_green(make_database, redis_server, tmp_path, monkeypatch, capsys):  # noqa: F811
    server = redis_server()  # like a fresh local Redis: save "" and appendonly no
    monkeypatch.setattr(quickstart, "LOCAL_REDIS_URL", server.url())  # stands in for 127.0.0.1:6379
    for name in ("REDIS_URL", "DATABASE_URL"):
        monkeypatch.setenv(name, "")  # the quick start sets them; monkeypatch restores them afterwards
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "dagster.yaml").write_text((REPO / "deploy" / "local" / "dagster.yaml").read_text())
    monkeypatch.setenv("BACKUP_STORAGE_URL", f"file://{tmp_path}/store")
    url = make_database("cbd_quick")
    day = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%d")

    assert quickstart.main(["--database-url", url]) == 0
    out = capsys.readouterr().out
    assert "Everything is green." in out

    store, db = tmp_path / "store", url.rsplit("/", 1)[-1]
    for series in (
        f"postgres/cidadao/daily/{day}",
        "redis/cache/hourly",
        f"exports/{db}/investigations/daily/{day}",
        f"exports/{db}/agent_instances/weekly",
    ):
        assert list((store / series).rglob("manifest-*.json")), series
    for kind in ("postgres", "redis"):
        reports = list((store / "drills" / kind).rglob("report*.json"))
        assert reports and all(json.loads(p.read_text())["passed"] for p in reports), kind

    # The local Redis now persists as the strategy says, and holds the demo keys.
    client = server.client()
    assert client.config_get("appendonly") == {"appendonly": "yes"} and client.exists("cidadao:demo:agents")
    assert quickstart.prepare_local_redis(server.url()) == []  # idempotent: nothing left to change

    # Everything is in the instance the UI reads: the report is there, with no finding.
    with dg.DagsterInstance.get() as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("backup_health_report"))
        meta = event.asset_materialization.metadata
        assert meta["classes_with_findings"].value == 0 and meta["classes_ok"].value >= 5


def test_setup_script_needs_no_apt_when_the_tools_are_there(tmp_path):
    """`setup.sh --check` lists what apt would install; on a machine set up by it, nothing."""
    out = subprocess.run(
        ["bash", str(REPO / "setup.sh"), "--check"], capture_output=True, text=True, cwd=REPO, env=os.environ
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "all system packages present" in out.stdout
