"""The Dagster UI in a real browser: `dagster dev` (webserver + daemon) on this code location, driven by
headless Chromium (Debian's `chromium` package) through Playwright.

The test opens the asset graph, sees the backup assets with their checks, opens `postgres_daily_backup`'s
checks, launches one partition from the UI's launch dialog, follows the run to SUCCESS in the UI and saves
screenshots under tmp_path (their paths are printed and named in every assertion message).

Needs: `apt-get install chromium` (CI's .ci/run does it) and the `playwright` Python package from the dev
extra; Playwright's own browser download (`playwright install`) is not used.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cidadao_backup_dagster.core.postgres.client import PgConnection
from cidadao_backup_dagster.demo import seed

from .conftest import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCATION = "cidadao_backup_dagster"
ASSET = "postgres_daily_backup"
# Backup assets that must be on the graph with their checks (their groups and checks are read from GraphQL).
BACKUP_ASSETS = ["postgres_daily_backup", "postgres_weekly_offsite_backup", "redis_snapshot"]
CORE_CHECKS = {"integrity", "size_deviation", "freshness"}  # the README's checks of a daily backup
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Readiness waits (conditions, not timing assertions): generous because the machine is shared.
STARTUP_TIMEOUT_S = 240
RUN_TIMEOUT_S = 300
UI_TIMEOUT_MS = 60_000
# The developer's own settings for the code location (sources, storage, alerts, encryption...) stay out of the
# test; it sets its own. PG_BIN_DIR and the like pass through.
SCRUBBED_PREFIXES = (
    "DAGSTER_",
    "DATABASE_",
    "BACKUP_",
    "OFFSITE_",
    "REDIS_",
    "ALERT_",
    "SLACK_",
    "CIDADAO_",
    "DRILL_",
    "RESTORE_",
    "RETENTION_",
)


@pytest.fixture
def chromium() -> str:
    """Debian's Chromium and the playwright package, checked before anything is started."""
    path = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"Chromium is not installed ({path} not found). The browser test uses Debian's package: "
            "`apt-get update && apt-get install -y chromium` (CI's .ci/run installs it when missing; "
            "CHROMIUM_PATH=/path/to/chromium points the test at another build). "
            "Do not run `playwright install`: it downloads a browser, which this network refuses.",
            pytrace=False,
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.fail(
            "the `playwright` package is missing: `.venv/bin/pip install -e '.[dev]'` installs it", pytrace=False
        )
    return path


# ------------------------------------------------------------------------------------ dagster dev


class DagsterDev:
    """`dagster dev` in its own process group (it spawns the webserver, the daemon, code servers and run
    workers); `stop()` ends the whole group and anything else started with this DAGSTER_HOME."""

    def __init__(self, home: Path, env: dict[str, str], log_path: Path):
        self.home = home
        self.log_path = log_path
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("dagster")),
                "dev",
                "-w",
                "workspace.yaml",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killed as a whole at teardown
        )

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def graphql(self, query: str, variables: dict | None = None, timeout: float = 30) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        req = urllib.request.Request(
            f"{self.base_url}/graphql", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            answer = json.load(resp)
        assert not answer.get("errors"), f"GraphQL errors: {answer['errors']}"
        return answer["data"]

    def wait_ready(self) -> None:
        """Webserver answers /server_info, then the code location is loaded (or its load error is shown)."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dagster dev exited with {self.proc.returncode}; log:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/server_info", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError(f"webserver not up after {STARTUP_TIMEOUT_S}s; log:\n{self.log_tail()}")
        query = """{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus
                     locationOrLoadError { __typename ... on PythonError { message } } } } } }"""
        while time.monotonic() < deadline:
            entries = self.graphql(query)["workspaceOrError"].get("locationEntries") or []
            entry = next((e for e in entries if e["name"] == LOCATION), None)
            if entry and entry["loadStatus"] == "LOADED":
                loaded = entry["locationOrLoadError"] or {}
                if loaded.get("__typename") == "PythonError":
                    raise RuntimeError(f"code location failed to load: {loaded['message']}")
                if loaded.get("__typename") == "RepositoryLocation":
                    return
            time.sleep(1)
        raise RuntimeError(f"code location not loaded after {STARTUP_TIMEOUT_S}s; log:\n{self.log_tail()}")

    def _stragglers(self) -> list[int]:
        """Live processes started with this DAGSTER_HOME (found via /proc), other than zombies."""
        marker = f"DAGSTER_HOME={self.home}\0".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if marker in (entry / "environ").read_bytes() + b"\0":
                    stat = (entry / "stat").read_text()
                    if stat.rsplit(")", 1)[1].split()[0] != "Z":
                        found.append(int(entry.name))
            except OSError:  # gone, or not ours to read
                continue
        return found

    def stop(self) -> None:
        pgid = self.proc.pid
        try:
            os.killpg(pgid, signal.SIGTERM)  # the whole group at once: dagster dev and every child it spawned
        except ProcessLookupError:
            pass
        # Its graceful shutdown can hang (the daemon waits on its threads): give it a little, then kill.
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        for pid in self._stragglers():  # anything that left the group (none expected)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._log.close()
        deadline = time.monotonic() + 10
        while (left := self._stragglers()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not left, f"processes of dagster dev still running after SIGKILL: {left}"


@pytest.fixture
def dagster_ui(tmp_path, make_database):
    """A throwaway instance (deploy/local/dagster.yaml in a fresh DAGSTER_HOME), a seeded test database,
    a local backup folder, and `dagster dev` serving this repo's workspace.yaml on a free port."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "deploy" / "local" / "dagster.yaml", home / "dagster.yaml")
    storage = tmp_path / "backups"
    storage.mkdir()
    url = make_database("cbd_ui")
    seed(PgConnection.from_url(url), investigations=200)

    env = {k: v for k, v in os.environ.items() if not k.startswith(SCRUBBED_PREFIXES)}
    env.update(
        DAGSTER_HOME=str(home),
        DATABASE_URL=url,
        BACKUP_STORAGE_URL=f"file://{storage}",
        BACKUP_EXPECTED_SIZE_MB="off",
        PYTHONUNBUFFERED="1",
    )
    dev = DagsterDev(home, env, tmp_path / "dagster_dev.log")
    try:
        dev.wait_ready()
        # Dagster shows a "Join the Dagster community" dialog to a new local instance; mark it seen.
        dev.graphql("mutation { setNuxSeen }")
        dev.storage = storage
        yield dev
    finally:
        dev.stop()


# ------------------------------------------------------------------------------------------ the test


def test_ui_graph_checks_and_materialize_in_chromium(chromium, dagster_ui, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    dev = dagster_ui
    shots = tmp_path / "screenshots"
    shots.mkdir()
    partition = (datetime.now(UTC).date() - timedelta(days=2)).isoformat()

    # What the code location defines, to compare with what the UI shows.
    nodes = dev.graphql(
        """query($keys: [AssetKeyInput!]) { assetNodes(assetKeys: $keys) { assetKey { path } groupName
             assetChecksOrError { ... on AssetChecks { checks { name } } } } }""",
        {"keys": [{"path": [key]} for key in BACKUP_ASSETS]},
    )["assetNodes"]
    defined = {n["assetKey"]["path"][-1]: n for n in nodes}
    assert set(BACKUP_ASSETS) <= set(defined), f"backup assets missing from the code location: {defined.keys()}"
    checks = {key: sorted(c["name"] for c in n["assetChecksOrError"]["checks"]) for key, n in defined.items()}
    assert CORE_CHECKS <= set(checks[ASSET]), f"{ASSET} lacks core checks: {checks[ASSET]}"

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(UI_TIMEOUT_MS)
        expect.set_options(timeout=UI_TIMEOUT_MS)
        # Belt and braces: should the community dialog still appear, dismiss it before any action.
        page.add_locator_handler(
            page.get_by_text("Join the Dagster community"), lambda: page.get_by_role("button", name="Skip").click()
        )
        where = "start"
        try:
            # 1. The asset graph of each backup asset's group: the asset and its checks row.
            for group in sorted({defined[key]["groupName"] for key in BACKUP_ASSETS}):
                where = f"asset graph of group {group}"
                page.goto(f"{dev.base_url}/locations/{LOCATION}/asset-groups/{group}")
                for key in (k for k in BACKUP_ASSETS if defined[k]["groupName"] == group):
                    expect(page.get_by_text(key, exact=True).first).to_be_visible()
                    checks_link = page.locator(f'a[href="/assets/{key}?view=checks"]')
                    expect(checks_link).to_have_text(re.compile(rf"\d+ / {len(checks[key])} Passed"))
                page.screenshot(path=shots / f"1-asset-graph-{group}.png")

            # 2. From the graph node to the asset's checks: every check by name.
            where = f"{ASSET} checks"
            page.goto(f"{dev.base_url}/locations/{LOCATION}/asset-groups/{defined[ASSET]['groupName']}")
            page.locator(f'a[href="/assets/{ASSET}?view=checks"]').click()
            expect(page).to_have_url(re.compile(rf"/assets/{ASSET}\?view=checks"))
            expect(page.get_by_text(f"Checks ({len(checks[ASSET])})", exact=True)).to_be_visible()
            for name in checks[ASSET]:
                expect(page.get_by_text(name, exact=True).first).to_be_visible()
            page.screenshot(path=shots / "2-asset-checks.png")

            # 3. Launch one partition from the asset's Materialize dialog.
            where = "launch dialog"
            page.get_by_role("button", name="Materialize").first.click()  # "Materialize…"
            dialog = page.get_by_role("dialog")
            expect(dialog.get_by_text(f"Launch runs to materialize {ASSET}")).to_be_visible()
            partitions = dialog.get_by_placeholder("No matching partitions")
            partitions.fill(partition)
            partitions.press("Enter")
            expect(dialog.get_by_text("1 partition", exact=True)).to_be_visible()
            page.screenshot(path=shots / "3-launch-dialog.png")
            dialog.get_by_role("button", name="Launch 1 run").click()

            # 4. The launch is confirmed by a toast naming the run; Runs lists it, its page follows it live.
            where = "run page"
            toast = page.get_by_text(re.compile(r"Launched run [0-9a-f]{8}"))
            expect(toast).to_be_visible()
            short_id = re.search(r"Launched run ([0-9a-f]{8})", toast.inner_text()).group(1)
            page.locator('a[href="/runs"]').first.click()  # "Runs" in the side navigation
            page.locator(f'a[href^="/runs/{short_id}"]').filter(has_text=short_id).first.click()
            expect(page).to_have_url(re.compile(rf"/runs/{short_id}[0-9a-f-]{{28}}"))
            run_id = re.search(r"/runs/([0-9a-f-]{36})", page.url).group(1)
            where = f"run {run_id}"
            expect(page.get_by_text(f"partition: {partition}").first).to_be_visible()
            outcome = page.get_by_text(re.compile(r"^(Success|Failure|Canceled)$")).first
            expect(outcome).to_be_visible(timeout=RUN_TIMEOUT_S * 1000)
            page.screenshot(path=shots / "4-run.png")
            status_text = outcome.inner_text()
            assert status_text == "Success", (
                f"run {run_id} ended {status_text!r} in the UI; screenshot {shots / '4-run.png'}; "
                f"dagster dev log:\n{dev.log_tail()}"
            )

            # 5. Back on the graph: the asset's latest event is this run, and its checks were evaluated.
            where = "asset graph after the run"
            page.goto(f"{dev.base_url}/locations/{LOCATION}/asset-groups/{defined[ASSET]['groupName']}")
            expect(page.locator(f'a[href^="/runs/{run_id}"]').first).to_be_visible()  # "Latest event"
            n = len(checks[ASSET])
            expect(page.locator(f'a[href="/assets/{ASSET}?view=checks"]')).to_have_text(
                re.compile(rf"[1-9]\d* / {n} Passed")
            )
            page.screenshot(path=shots / "5-asset-graph-after-run.png")

            # 6. The asset's checks after the run: the core checks succeeded; integrity for this partition.
            where = f"{ASSET} checks after the run"
            page.locator(f'a[href="/assets/{ASSET}?view=checks"]').click()
            for name in sorted(CORE_CHECKS):
                item = page.locator("span").filter(has=page.locator(f'[title="{name}"]')).last
                expect(item).to_contain_text("Succeeded")
            page.locator('[title="integrity"]').first.click()
            expect(page.get_by_text("Evaluation result")).to_be_visible()
            expect(page.get_by_text("Passed", exact=True).first).to_be_visible()
            expect(page.get_by_text(partition, exact=True).first).to_be_visible()
            page.screenshot(path=shots / "6-checks-after-run.png")
        except Exception as exc:
            failure = shots / "failure.png"
            page.screenshot(path=failure)
            raise AssertionError(
                f"UI step '{where}' failed: {exc}\nscreenshot: {failure}\ndagster dev log:\n{dev.log_tail()}"
            ) from exc
        finally:
            browser.close()

    # Cross-check what the UI showed with the instance and the storage.
    run = dev.graphql(
        """query($id: ID!) { runOrError(runId: $id) { ... on Run { status tags { key value } } } }""",
        {"id": run_id},
    )["runOrError"]
    tags = {t["key"]: t["value"] for t in run["tags"]}
    final = shots / "5-asset-graph-after-run.png"
    assert run["status"] == "SUCCESS", f"run {run_id}: {run['status']}; screenshot {final}"
    assert tags.get("dagster/partition") == partition and tags.get("dagster/from_ui") == "true", tags
    manifests = list(dev.storage.rglob(f"*{partition}*/manifest-*.json"))
    assert manifests, f"no manifest for {partition} under {dev.storage}: {sorted(dev.storage.rglob('*'))}"
    print(f"\nscreenshots: {shots} (final: {final})")
    assert final.stat().st_size > 10_000, f"screenshot looks empty: {final}"
