"""The secrets registry and the URL parsers, without Dagster: every secret the process knows is registered once
and masked in whatever text, JSON, log record or alert leaves it; every mistyped connection URL gets an error
that names the variable and the fix and repeats no part of the password. (test_secrets_scan.py runs the same
URL shapes through the real jobs and the CLI and searches everything they wrote.)"""

import json
import logging
import uuid

import pytest

from cidadao_backup_dagster.core.artifacts.manifest import Manifest
from cidadao_backup_dagster.core.artifacts.storage import storage_from_url
from cidadao_backup_dagster.core.errors import ConfigurationError
from cidadao_backup_dagster.core.monitoring.alerts import Channels, deliver, run_failure_alert
from cidadao_backup_dagster.core.postgres.client import PgConnection
from cidadao_backup_dagster.core.redis.backup import RedisEndpoint
from cidadao_backup_dagster.core.secrets import (
    MASK,
    install_log_redaction,
    redact_data,
    redact_text,
    register_environment,
    register_file,
    register_secret,
    registered_secrets,
    url_password_candidates,
)

from .test_alerts_core import Receiver


def fresh(label: str) -> str:
    """A secret no other test registered (the registry is process-wide and only grows)."""
    return f"{label}-{uuid.uuid4().hex[:10]}"


class Secret:
    """A password `<left><char><right>`: each half is distinctive on its own, so a message that repeats only the
    part a mistaken parser took (`left` before an unencoded '/', '@', '#') is caught too."""

    def __init__(self, tag: str, char: str = "x"):
        self.left, self.right = f"L{tag}q7Wz{uuid.uuid4().hex[:4]}", f"R{tag}k4Pv{uuid.uuid4().hex[:4]}"
        self.value = f"{self.left}{char}{self.right}"

    @property
    def fragments(self) -> tuple[str, ...]:
        return (self.value, self.left, self.right)

    def __str__(self) -> str:
        return self.value


# Every mistyped URL shape from issue 12: (name, url template, char in the password). `{pw}` is the password.
PG_SHAPES = [
    ("missing_colon", "postgresql//postgres:{pw}@127.0.0.1:5432/{db}", "x"),
    ("at", "postgresql://postgres:{pw}@127.0.0.1:5432/{db}", "@"),
    ("slash", "postgresql://postgres:{pw}@127.0.0.1:5432/{db}", "/"),
    ("hash", "postgresql://postgres:{pw}@127.0.0.1:5432/{db}", "#"),
    ("percent", "postgresql://postgres:{pw}@127.0.0.1:5432/{db}", "%"),
    ("question", "postgresql://postgres:{pw}@127.0.0.1:5432/{db}", "?"),
    ("no_host", "postgresql://postgres:{pw}", "x"),  # the password reads as a port
]
REDIS_SHAPES = [
    ("missing_colon", "redis//:{pw}@127.0.0.1:{port}/0", "x"),
    ("at", "redis://:{pw}@127.0.0.1:{port}/0", "@"),
    ("slash", "redis://:{pw}@127.0.0.1:{port}/0", "/"),  # was: Port could not be cast ... 'PASSWORD'
    ("hash", "redis://:{pw}@127.0.0.1:{port}/0", "#"),
    ("percent", "redis://:{pw}@127.0.0.1:{port}/0", "%"),
    ("question", "redis://default:{pw}@127.0.0.1:{port}/0", "?"),
    ("no_host", "redis://default:{pw}", "x"),  # was: Port could not be cast ... 'PASSWORD'
]
STORAGE_SHAPES = [  # (variable, url template): credentials in a storage URL or the S3 endpoint
    ("BACKUP_STORAGE_URL", "s3://AKIAEXAMPLE:{pw}@cbd-bucket/backups", "x"),
    ("BACKUP_STORAGE_URL", "s3://AKIAEXAMPLE:{pw}@cbd-bucket/backups", "/"),  # AWS secret keys hold '/'
    ("OFFSITE_STORAGE_URL", "https://AKIAEXAMPLE:{pw}@s3.example.com/cbd-offsite", "x"),
    ("BACKUP_STORAGE_URL", "file://backup:{pw}@/var/backups", "x"),
]


def assert_clean(text: str, secret: Secret) -> None:
    leaked = [f for f in secret.fragments if f in text]
    assert not leaked, f"{leaked} in {text!r}"


# ------------------------------------------------------------------------------------------- registry


def test_a_registered_secret_is_masked_in_every_encoding():
    secret = fresh('pa"ss/w@rd')
    register_secret(secret)
    register_secret(secret)  # once is enough; again changes nothing
    assert registered_secrets().count(secret) == 1
    encoded = secret.replace("/", "%2F").replace("@", "%40").replace('"', "%22")
    text = f"raw {secret} | url {encoded} | json {json.dumps({'x': secret})} | repr {secret!r}"
    redacted = redact_text(text)
    assert secret not in redacted and encoded not in redacted and json.dumps(secret)[1:-1] not in redacted
    assert redacted.count(MASK) == 4


def test_short_values_are_not_registered_but_url_and_keyword_passwords_are_still_masked():
    register_secret("abc12")  # would garble ordinary words and numbers
    assert redact_text("abc12 is a word") == "abc12 is a word"
    assert redact_text("postgresql://u:abc12@h/db and password=abc12") == "postgresql://u:***@h/db and password=***"
    assert redact_text("postgresql//u:ab/c1@h/db") == "postgresql//u:***@h/db"  # a mistyped URL too


def test_redact_data_keeps_keys_numbers_and_digests():
    secret = fresh("json-secret")
    register_secret(secret)
    digest = "ab" * 32
    data = {"source": f"x {secret} y", secret: 5, "sha256": digest, "n": 12, "list": [secret, {"deep": secret}]}
    out = redact_data(data)
    assert out == {"source": "x *** y", secret: 5, "sha256": digest, "n": 12, "list": ["***", {"deep": "***"}]}
    assert data["source"] == f"x {secret} y"  # the caller's value is untouched


@pytest.mark.parametrize(("name", "template", "char"), PG_SHAPES + REDIS_SHAPES)
def test_every_reading_of_a_mistyped_url_is_a_candidate(name, template, char):
    secret = Secret(name, char)
    url = template.format(pw=secret, db="db", port=6379)
    candidates = url_password_candidates(url)
    assert secret.value in candidates or char == "%"  # '%x' is not an escape: kept raw and decoded as is
    assert secret.left in candidates or secret.value in candidates


def test_the_environment_registers_every_secret_it_holds(tmp_path):
    identity = tmp_path / "age.key"
    key = "AGE-SECRET-KEY-1" + uuid.uuid4().hex.upper() * 2
    identity.write_text(f"# created: 2026-01-01\n# public key: age1xyz\n{key}\n")
    secrets = {
        "RESTORE_TARGET_PASSWORD": fresh("restore"),
        "REDIS_TARGET_PASSWORD": fresh("redis-target"),
        "AWS_SECRET_ACCESS_KEY": fresh("aws/secret+key"),
        "AWS_SESSION_TOKEN": fresh("session-token"),
        "SLACK_BOT_TOKEN": fresh("xoxb"),
        "PGPASSWORD": fresh("pgpassword"),
    }
    hook_token = fresh("T0/B0/hook")
    db_password, dagster_pg = Secret("env", "/"), Secret("dagsterpg")
    environ = {
        **secrets,
        "ALERT_WEBHOOK_URL": f"https://hooks.example.com/services/{hook_token}",
        "ANALYTICS_DATABASE_URL": f"postgresql://app:{db_password}@db.internal:5432/analytics",
        "DAGSTER_PG_URL": f"postgresql://dagster:{dagster_pg}@pg/dagster",
        "BACKUP_ZSTD_LEVEL": "3",
        "CIDADAO_ENV": "production",
        "HOME": "/home/backup-user",
    }
    register_environment(environ)
    register_file(str(identity))
    hook_path = f"/services/{hook_token}"  # a webhook URL's path is its secret: quoted alone, it is masked too
    text = redact_text(" ".join([*environ.values(), hook_path, key, identity.read_text()]))
    for value in [*secrets.values(), hook_path, key, *db_password.fragments, *dagster_pg.fragments]:
        assert value not in text
    assert "production" in text and "/home/backup-user" in text and "db.internal" in text  # not secrets
    register_file(str(tmp_path / "missing.key"))  # an absent file is reported by whoever needs it


def test_log_records_are_redacted_where_they_are_made(caplog):
    secret = fresh("log-secret")
    register_secret(secret)
    install_log_redaction()
    install_log_redaction()  # idempotent
    log = logging.getLogger("cidadao_backup_dagster.test")
    with caplog.at_level(logging.INFO):
        log.info("connecting with %s", secret)
        try:
            raise RuntimeError(f"boom {secret}")
        except RuntimeError:
            log.exception("failed")
    assert secret not in caplog.text and "connecting with ***" in caplog.text and "boom ***" in caplog.text


def test_manifests_and_alerts_mask_registered_secrets():
    secret = fresh("manifest-secret")
    register_secret(secret)
    digest = "cd" * 32
    manifest = Manifest({"source": {"note": f"via {secret}"}, "artifact": {"stored_sha256": digest}})
    stored = json.loads(manifest.to_json())
    assert stored == {"source": {"note": "via ***"}, "artifact": {"stored_sha256": digest}}
    receiver = Receiver()
    try:
        alert = run_failure_alert("job", "0123456789", "ok")  # built without redaction (details are clipped only)
        alert = alert.__class__(**{**alert.__dict__, "summary": f"failed with {secret}"})
        logged: list[str] = []
        deliver(alert, Channels(webhook_url=f"{receiver.url}/hook"), logged.append)
    finally:
        receiver.close()
    (post,) = receiver.posts
    assert secret not in post["body"].decode() and secret not in logged[0] and "failed with ***" in logged[0]


# -------------------------------------------------------------------------------------- mistyped URLs


@pytest.mark.parametrize(("name", "template", "char"), PG_SHAPES)
def test_a_mistyped_database_url_is_named_and_never_echoed(name, template, char):
    secret = Secret(name, char)
    with pytest.raises(ConfigurationError) as info:
        PgConnection.from_url(template.format(pw=secret, db="db"), "ANALYTICS_DATABASE_URL")
    text = str(info.value)
    assert info.value.variable == "ANALYTICS_DATABASE_URL" and text.startswith("ANALYTICS_DATABASE_URL: ")
    assert "Fix: " in text
    assert_clean(text, secret)
    if char in "@/#%?":
        assert "percent-encode the password" in text and "@ is %40, / is %2F, # is %23, % is %25" in text


@pytest.mark.parametrize(("name", "template", "char"), REDIS_SHAPES)
def test_a_mistyped_redis_url_is_named_and_never_echoed(name, template, char):
    secret = Secret(name, char)
    with pytest.raises(ConfigurationError) as info:
        RedisEndpoint.from_url(template.format(pw=secret, port=6379), "CACHE_REDIS_URL")
    text = str(info.value)
    assert info.value.variable == "CACHE_REDIS_URL" and "Fix: " in text
    assert "Port could not be cast" not in text
    assert_clean(text, secret)
    if char in "@/#%?":
        assert "percent-encode the password" in text


@pytest.mark.parametrize(("variable", "template", "char"), STORAGE_SHAPES)
def test_a_storage_url_with_credentials_is_refused_without_echoing_them(variable, template, char):
    secret = Secret("storage", char)
    with pytest.raises(ConfigurationError) as info:
        storage_from_url(template.format(pw=secret), variable=variable, s3_client_factory=lambda: None)
    text = str(info.value)
    assert text.startswith(f"{variable}: carries credentials") and "AWS_SECRET_ACCESS_KEY" in text
    assert_clean(text, secret)
    assert "AKIAEXAMPLE" not in text


def test_a_colon_in_a_password_is_unambiguous_and_accepted():
    """RFC 3986 allows ':' in the password (only the first ':' separates the user), and libpq and redis-py read
    it so: such a URL works as it did before, and its password is registered like any other."""
    pg = PgConnection.from_url("postgresql://app:pa:ss-w0rd@db.internal:5433/app")
    assert (pg.user, pg.password, pg.display()) == ("app", "pa:ss-w0rd", "postgresql://app@db.internal:5433/app")
    rd = RedisEndpoint.from_url("redis://:pa:ss-w0rd@cache:6380/1")
    assert (rd.password, rd.display()) == ("pa:ss-w0rd", "redis://cache:6380/1")
    assert redact_text("auth pa:ss-w0rd") == "auth ***"


def test_percent_encoded_passwords_parse_and_both_forms_are_masked():
    raw = "p%40ss%2Fw%23rd%25x"  # p@ss/w#rd%x, written as the error message asks
    pg = PgConnection.from_url(f"postgresql://app:{raw}@db:5432/app")
    rd = RedisEndpoint.from_url(f"redis://app:{raw}@cache:6379/0")
    assert pg.password == rd.password == "p@ss/w#rd%x"
    assert redact_text(f"{raw} p@ss/w#rd%x") == "*** ***"


def test_displayed_urls_come_from_parsed_parts():
    pg = PgConnection.from_url("postgresql+asyncpg://app:pw-123456@[::1]:5433/app?sslmode=require")
    assert pg.display() == "postgresql://app@[::1]:5433/app"
    rd = RedisEndpoint.from_url("rediss://app:pw-123456@[::1]:6380/2")
    assert rd.display() == "rediss://app@[::1]:6380/2"


def test_keyword_settings_that_do_not_parse_are_not_repeated():
    secret = fresh("kw")
    with pytest.raises(ConfigurationError) as info:
        PgConnection.from_url(f"host=db password='{secret} dbname=app")
    assert "cannot be parsed as key=value" in str(info.value) and secret not in str(info.value)
