"""age encryption end to end: the backup worker holds only public keys; the stock `age` CLI decrypts;
checks, restores and drills use the identity; wrong keys and damaged files fail clearly."""

import hashlib
import json
import shutil
import subprocess

import dagster as dg
import psycopg
import pytest

from cidadao_backup_dagster.core.postgres.client import PgConnection
from cidadao_backup_dagster.definitions import build_defs
from cidadao_backup_dagster.defs.postgres import daily_checks
from cidadao_backup_dagster.demo import seed

from .conftest import newest_manifest_path, unique_name, url_with_dbname
from .test_recovery import failure_message, run

pytestmark = pytest.mark.skipif(not shutil.which("age-keygen"), reason="the age CLI is not installed (apt install age)")


def keypair(folder, name="key"):
    path = folder / f"{name}.txt"
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    public = subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True, text=True).stdout.strip()
    return path, public


@pytest.fixture
def encrypted_env(monkeypatch, tmp_path, make_database):
    for var in ("OFFSITE_STORAGE_URL", "RESTORE_TMPDIR", "DRILL_DATABASE_URL", "BACKUP_AGE_IDENTITY_FILE"):
        monkeypatch.delenv(var, raising=False)
    key, public = keypair(tmp_path)
    url = make_database("cbd_enc")
    seed(PgConnection.from_url(url), investigations=250)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("BACKUP_STORAGE_URL", f"file://{tmp_path}/backups")
    monkeypatch.setenv("BACKUP_EXPECTED_SIZE_MB", "off")
    monkeypatch.setenv("BACKUP_AGE_RECIPIENTS", public)
    monkeypatch.setenv("CIDADAO_ENV", "production")
    result = run("postgres_daily_backup_job", partition="2026-11-24")
    assert result.success
    (dump,) = tmp_path.glob("backups/postgres/*/daily/2026-11-24/*.dump.zst.age")
    return {"key": key, "public": public, "url": url, "dump": dump, "result": result, "tmp": tmp_path}


def checks(result):
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_backup_is_encrypted_and_the_stock_age_cli_decrypts_it(encrypted_env):
    env = encrypted_env
    assert env["dump"].read_bytes().startswith(b"age-encryption.org/v1")
    manifest = json.loads(newest_manifest_path(env["dump"].parent).read_text())
    assert manifest["artifact"]["encryption"]["recipients"][0].startswith("age:")
    result = checks(env["result"])
    assert result["encrypted"].passed
    assert result["integrity"].passed and "encrypted" in result["integrity"].description  # shallow: no identity
    toc = subprocess.run(
        f"age -d -i {env['key']} {env['dump']} | zstd -d | pg_restore --list",
        shell=True, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "TABLE DATA public investigations" in toc


def test_identity_allows_deep_verify_restore_drill_and_row_recovery(
    encrypted_env, monkeypatch, pg_admin_url, drop_later
):
    monkeypatch.setenv("BACKUP_AGE_IDENTITY_FILE", str(encrypted_env["key"]))
    deep = run("postgres_daily_backup_job", partition="2026-11-23")
    assert checks(deep)["integrity"].description == "Every byte re-read and matched the manifest"
    target = unique_name("cbd_enc_restored")
    drop_later.append(target)
    restored = run("restore_postgres", {"target_database": target})
    assert restored.success, failure_message(restored)
    with psycopg.connect(url_with_dbname(pg_admin_url, target)) as conn:
        assert conn.execute("SELECT count(*) FROM investigations").fetchone()[0] == 250
    drill = run("postgres_restore_drill_job", partition="2026-10-01")
    assert checks(drill)["drill_passed"].passed
    recovered = run("recover_rows", {"where": "TRUE"})
    assert recovered.success, failure_message(recovered)


def test_restore_without_or_with_the_wrong_identity_refuses(encrypted_env, monkeypatch, pg_admin_url, drop_later):
    target = unique_name("cbd_enc_never")
    drop_later.append(target)
    missing = run("restore_postgres", {"target_database": target})
    assert not missing.success and "BACKUP_AGE_IDENTITY_FILE" in failure_message(missing)
    other_key, _ = keypair(encrypted_env["tmp"], "other")
    monkeypatch.setenv("BACKUP_AGE_IDENTITY_FILE", str(other_key))
    wrong = run("restore_postgres", {"target_database": target})
    assert not wrong.success and "not one of this artifact's recipients" in failure_message(wrong)
    with psycopg.connect(pg_admin_url) as conn:
        assert not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (target,)).fetchone()


@pytest.mark.parametrize("damage", ["truncate", "tamper"])
def test_damaged_encrypted_artifact_fails_integrity_and_restore(encrypted_env, monkeypatch, damage):
    monkeypatch.setenv("BACKUP_AGE_IDENTITY_FILE", str(encrypted_env["key"]))
    dump = encrypted_env["dump"]
    data = bytearray(dump.read_bytes())
    if damage == "truncate":
        data = data[: len(data) - 500]
    else:
        data[len(data) // 2] ^= 0x40
    dump.write_bytes(bytes(data))
    # The manifest is rewritten to match the damaged bytes: only decryption can tell now.
    manifest_path = newest_manifest_path(dump.parent)
    manifest = json.loads(manifest_path.read_text())
    manifest["artifact"]["stored_sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    manifest["artifact"]["stored_bytes"] = len(data)
    manifest_path.write_text(json.dumps(manifest))
    integrity = [c for c in daily_checks() if any(k.name == "integrity" for k in c.check_keys)]
    job = dg.define_asset_job("only_integrity", selection=dg.AssetSelection.checks(*integrity))
    result = (
        dg.Definitions.merge(build_defs(), dg.Definitions(jobs=[job]))
        .resolve_job_def("only_integrity")
        .execute_in_process(
            tags={"dagster/partition": "2026-11-24"}, instance=dg.DagsterInstance.ephemeral(), raise_on_error=False
        )
    )
    (evaluation,) = result.get_asset_check_evaluations()
    assert not evaluation.passed and "truncated or was altered" in evaluation.description
    restore = run("restore_postgres", {"backup": "2026-11-24", "target_database": unique_name("cbd_never")})
    assert not restore.success and "truncated or was altered" in failure_message(restore)


def test_production_without_encryption_is_an_error_check(make_database, monkeypatch, tmp_path):
    monkeypatch.delenv("BACKUP_AGE_RECIPIENTS", raising=False)
    monkeypatch.setenv("CIDADAO_ENV", "production")
    monkeypatch.setenv("DATABASE_URL", make_database("cbd_plain"))
    monkeypatch.setenv("BACKUP_STORAGE_URL", f"file://{tmp_path}/b")
    monkeypatch.setenv("BACKUP_EXPECTED_SIZE_MB", "off")
    result = run("postgres_daily_backup_job", partition="2026-11-24")
    evaluation = checks(result)["encrypted"]
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR


def test_a_secret_key_given_as_recipient_is_refused_without_echoing_it(make_database, monkeypatch, tmp_path):
    key, _ = keypair(tmp_path)
    secret = next(line for line in key.read_text().splitlines() if line.startswith("AGE-SECRET-KEY"))
    monkeypatch.setenv("BACKUP_AGE_RECIPIENTS", secret)
    monkeypatch.setenv("DATABASE_URL", make_database("cbd_badkey"))
    monkeypatch.setenv("BACKUP_STORAGE_URL", f"file://{tmp_path}/b")
    result = run("postgres_daily_backup_job", partition="2026-11-24")
    message = failure_message(result)
    assert "BACKUP_AGE_RECIPIENTS" in message and secret not in message
    assert not list(tmp_path.glob("b/**/*.age"))
