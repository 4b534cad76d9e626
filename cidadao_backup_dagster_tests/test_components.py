"""The Dagster ecosystem fit: `dg list defs` / `dg check` in the checkout, and sources declared in a defs.yaml
(the BackupSources component) through the sources file's own parser: the same checks, the same asset keys, and
a backup that lands."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import psycopg
import pytest
import yaml

from cidadao_backup_dagster.components import BackupSources
from cidadao_backup_dagster.core.errors import ConfigurationError
from cidadao_backup_dagster.definitions import build_defs

from .conftest import newest_manifest_path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "deploy" / "components-example"
DG = str(Path(sys.executable).with_name("dg"))
DAY = "2026-11-24"


def dg_run(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([DG, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def asset_keys(definitions: dg.Definitions) -> set[str]:
    return {k.to_user_string() for k in definitions.get_repository_def().asset_graph.get_all_asset_keys()}


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    """No sources file, storage in a temp folder, a Dagster home of its own (not the production dagster.yaml)."""
    for var in ("BACKUP_SOURCES_FILE", "OFFSITE_STORAGE_URL", "BACKUP_AGE_RECIPIENTS", "CIDADAO_ENV"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("BACKUP_STORAGE_URL", f"file://{tmp_path}/backups")
    monkeypatch.setenv("BACKUP_EXPECTED_SIZE_MB", "off")
    # the checkout first, so a worktree's copy of the package wins over the installed one in dg's subprocesses
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return tmp_path


@pytest.fixture
def example(clean_env, monkeypatch):
    """A copy of deploy/components-example, importable."""
    project = clean_env / "components-example"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(project), os.environ["PYTHONPATH"]]))
    monkeypatch.syspath_prepend(str(project))
    yield project
    for name in [m for m in sys.modules if m == "backups_example" or m.startswith("backups_example.")]:
        del sys.modules[name]


def test_dg_lists_and_checks_the_code_location(clean_env):
    env = dict(os.environ)
    listed = dg_run("list", "defs", "--json", cwd=REPO, env=env)
    assert listed.returncode == 0, listed.stderr[-3000:]
    found = json.loads(listed.stdout)
    assets = {a["asset_key"] for a in found["assets"]}
    assert {"postgres_daily_backup", "postgres_weekly_offsite_backup", "redis_snapshot"} <= assets
    assert {"investigations_json_export", "agent_instances_csv_export", "backup_health_report"} <= assets
    assert assets == asset_keys(build_defs())  # what the code location serves, no more (no defs.yaml loaded)
    assert {"restore_postgres", "postgres_daily_backup_job"} <= {j["name"] for j in found["jobs"]}
    for check in (("check", "yaml"), ("check", "defs")):
        out = dg_run(*check, cwd=REPO, env=env)
        assert out.returncode == 0, f"dg {' '.join(check)}: {out.stdout[-2000:]}{out.stderr[-2000:]}"


def test_the_example_defs_yaml_gives_the_keys_the_sources_file_gives(example, monkeypatch, tmp_path):
    env = dict(os.environ)
    checked = dg_run("check", "yaml", cwd=example, env=env)
    assert checked.returncode == 0, checked.stdout[-2000:] + checked.stderr[-2000:]
    listed = dg_run("list", "defs", "--json", cwd=example, env=env)
    assert listed.returncode == 0, listed.stderr[-3000:]
    from_component = {a["asset_key"] for a in json.loads(listed.stdout)["assets"]}
    expected = {"cidadao/postgres_daily_backup", "analytics/postgres_daily_backup", "cache/redis_snapshot"}
    assert expected <= from_component

    # The same sources as a BACKUP_SOURCES_FILE: the same loader, the same keys.
    attributes = yaml.safe_load((example / "backups_example" / "defs" / "backups" / "defs.yaml").read_text())
    sources_file = tmp_path / "sources.yaml"
    sources_file.write_text(yaml.safe_dump(attributes["attributes"]))
    monkeypatch.setenv("BACKUP_SOURCES_FILE", str(sources_file))
    assert from_component == asset_keys(build_defs())


def test_dg_check_yaml_refuses_a_mistyped_source(example):
    defs_yaml = example / "backups_example" / "defs" / "backups" / "defs.yaml"
    defs_yaml.write_text(defs_yaml.read_text().replace("url_env: ANALYTICS_DATABASE_URL", "url_envv: X"))
    out = dg_run("check", "yaml", cwd=example, env=dict(os.environ))
    assert out.returncode != 0
    assert "url_envv" in out.stdout + out.stderr


def test_a_source_declared_in_a_defs_yaml_is_backed_up(example, make_database, monkeypatch, clean_env):
    main, analytics = make_database("cbd_comp_main"), make_database("cbd_comp_analytics")
    with psycopg.connect(analytics, autocommit=True) as conn:
        conn.execute("CREATE TABLE events (id int PRIMARY KEY)")
        conn.execute("INSERT INTO events SELECT generate_series(1, 25)")
    monkeypatch.setenv("DATABASE_URL", main)
    monkeypatch.setenv("ANALYTICS_DATABASE_URL", analytics)
    definitions = dg.load_from_defs_folder(path_within_project=example / "backups_example")
    assert "analytics/postgres_daily_backup" in asset_keys(definitions)
    result = definitions.resolve_job_def("analytics__postgres_daily_backup_job").execute_in_process(
        partition_key=DAY, instance=dg.DagsterInstance.ephemeral(), raise_on_error=False
    )
    assert result.success
    folder = clean_env / "backups" / "analytics" / "postgres" / "analytics" / "daily" / DAY  # its own prefix
    manifest = json.loads(newest_manifest_path(folder).read_text())
    assert manifest["contents"]["rows_total"] == 25 and manifest["contents"]["table_count"] == 1


def test_no_attributes_means_the_environment_default(clean_env):
    component_defs = BackupSources().build_defs(dg.ComponentTree.for_test().load_context)
    assert asset_keys(component_defs) == asset_keys(build_defs())
    assert "postgres_daily_backup" in asset_keys(component_defs)


def test_a_component_gets_the_sources_file_checks():
    component = BackupSources.model_validate({"postgres": [{"name": "Bad Name"}]})
    with pytest.raises(ConfigurationError, match="needs a `name` of lowercase letters"):
        component.sources("defs.yaml")
