#!/usr/bin/env python3
"""Point-in-time recovery (issue 15, item 8) against stock tools, measured in the same run as whole processes,
on a private PostgreSQL 15 cluster started here (own port and directory, wal_level replica, replication
allowed; fsync on) holding the investigations-like database of --size-gb plus pgbench's tables.

1. Base backup into a local folder (file:// storage):
  floor_base       `pg_basebackup -Ft -D - -X none --checkpoint=fast | zstd -T0 > file`
  ours_base        a child process calling `core.postgres.pitr.base_backup` (tar stream, backup_manifest read
                   as it passes, zstd, SHA-256, manifest last)
  dagster_base     `dg launch --assets postgres_base_backup --partition <last week>` (POSTGRES_PITR=on),
                   its checks included (base_integrity re-reads the base and runs pg_verifybackup)
2. WAL archive while `pgbench -c 2 -T <s>` writes: per window, one archive run in the middle of pgbench and
   one after it ended; each window starts from an archive caught up (unmeasured). MB/s = new WAL (LSN
   distance from where the previous run ended) / wall time of the two runs.
  alone_wal        pgbench only: its tps is the reference
  floor_wal        `pg_receivewal --slot <own slot> --endpos <current - 1> --no-loop -D dir` + `zstd` of each
                   new file (the partial every time): no hash, no manifest, no fsync of the output
  ours_wal         a child process calling `core.postgres.pitr.archive_wal`
  dagster_wal      `dg launch --assets postgres_wal_archive`, its checks included
3. Restore to an instant T (a whole second while pgbench wrote, after the base and part 2's WAL):
  hand_recovery    docs/pitr.md's stock-tools runbook block, verbatim (fetch + extract + pg_verifybackup the
                   base, fetch every WAL file of the timeline, recovery_target_time, start, wait for the
                   promotion), then `pg_ctl stop`: the recovery part only
  ours_recovery    a child process calling `core.postgres.pitr.restore_to_instant` (the WAL up to the stop
                   point only), then `cleanup()`
  hand_full        the runbook + `createdb` + `pg_dump -Fc | pg_restore` of the database into the cluster + stop
  dagster_restore  `dg launch --job restore_postgres -c <target_time, target_database>` (recovery, exported
                   snapshot dump, verified restore into a staging database, row counts, rename)
Checks: the restored databases (hand_full, dagster_restore) hold the same pgbench_history rows.

  .venv/bin/python bench/bench_pitr.py --size-gb 0.2 --repeat 1     # smoke
  .venv/bin/python bench/bench_pitr.py --size-gb 1.0 --repeat 2
Results: bench/out/pitr-<size><tag>.json.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as h  # noqa: E402

PG_BIN = Path("/usr/lib/postgresql/15/bin")
SOURCE = "bench"  # POSTGRES_SOURCE_NAME: the series name under postgres/ and the slot cbd_pitr_bench
FLOOR_SLOT = "bench_floor"
VARIANTS = (
    "floor_base,ours_base,dagster_base,alone_wal,floor_wal,ours_wal,dagster_wal,"
    "hand_recovery,ours_recovery,hand_full,dagster_restore"
)
BASE_VARIANTS = ("floor_base", "ours_base", "dagster_base")
WAL_VARIANTS = ("alone_wal", "floor_wal", "ours_wal", "dagster_wal")
RESTORE_VARIANTS = ("hand_recovery", "ours_recovery", "hand_full", "dagster_restore")


def as_postgres(argv: list) -> list[str]:
    """initdb, postgres and the runbook refuse root."""
    argv = [str(a) for a in argv]
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def give_to_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chown", "-R", "postgres:", str(path)], check=True)


def lsn(text: str) -> int:
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def fmt_lsn(n: int) -> str:
    return f"{n >> 32:X}/{n & 0xFFFFFFFF:X}"


def tree_bytes(path: Path, pattern: str = "*") -> int:
    return sum(p.stat().st_size for p in path.rglob(pattern) if p.is_file()) if path.exists() else 0


# ========================================================================================= the cluster


@dataclass
class Cluster:
    root: Path
    port: int

    @property
    def pg(self) -> h.Pg:
        return h.Pg("127.0.0.1", self.port, "postgres")

    def url(self, db: str) -> str:
        return self.pg.url(db)

    def one(self, query: str, db: str = "postgres"):
        with self.pg.connect(db) as conn:
            return conn.execute(query).fetchone()[0]


@contextmanager
def private_cluster(root: Path, settings: str = "") -> Iterator[Cluster]:
    """A PostgreSQL 15 cluster on its own port and directory, replication allowed for `postgres` over TCP (as
    cidadao_backup_dagster_tests/test_pitr.py starts one); stopped and removed after."""
    root.mkdir()
    give_to_postgres(root)
    data = root / "data"
    subprocess.run(
        as_postgres([PG_BIN / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-N"]),
        check=True,
        capture_output=True,
    )
    port = h.free_port()
    with open(data / "postgresql.conf", "a") as conf:
        conf.write(
            f"port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{root}'\n"
            "wal_level = replica\nmax_wal_senders = 8\nmax_replication_slots = 8\nmax_wal_size = 2GB\n" + settings
        )
    (data / "pg_hba.conf").write_text(
        "local all all trust\nhost replication postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 trust\n"
    )
    pg_ctl = [PG_BIN / "pg_ctl", "-D", data, "-l", root / "log"]
    subprocess.run(as_postgres([*pg_ctl, "-w", "start"]), check=True, capture_output=True)
    h.log(f"private PostgreSQL 15 cluster on port {port} in {root}")
    try:
        yield Cluster(root, port)
    finally:
        subprocess.run(as_postgres([*pg_ctl, "-m", "immediate", "stop"]), capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


# ====================================================================== children: the core calls alone


def _child(argv: list[str]) -> int:
    """`bench_pitr.py core-base|core-wal|core-recover KEY=VALUE...`: one core call, its result as JSON."""
    from cidadao_backup_dagster.core.artifacts.storage import LocalStorage
    from cidadao_backup_dagster.core.postgres.backup import BackupSettings
    from cidadao_backup_dagster.core.postgres.client import PgConnection
    from cidadao_backup_dagster.core.postgres.pitr import archive_wal, base_backup, restore_to_instant

    kind, kw = argv[0], dict(a.split("=", 1) for a in argv[1:])
    storage, settings = LocalStorage(Path(kw["store"])), BackupSettings(pg_bin_dir=str(PG_BIN))
    if kind == "core-base":
        m = base_backup(
            PgConnection.from_url(kw["url"]), storage, source=SOURCE, partition=kw["partition"],
            settings=settings, tmp_dir=kw["tmp"],
        )  # fmt: skip
        out = {"stored_bytes": m.artifact.stored_bytes, "raw_bytes": m.artifact.raw_bytes, **m.data["base"]}
    elif kind == "core-wal":
        out = archive_wal(
            PgConnection.from_url(kw["url"]), storage, source=SOURCE, settings=settings, tmp_dir=kw["tmp"]
        ).metadata()
    else:
        rec = restore_to_instant(storage, source=SOURCE, target_time=kw["target_time"], bin_dir=str(PG_BIN),
                                 tmp_dir=kw["tmp"])  # fmt: skip
        out = {"recovered_to": str(rec.recovered_to), "wal_files": len(rec.plan.wal), "stop": str(rec.stop_record)}
        rec.cleanup()
    print(json.dumps(out, default=str))
    return 0


def core_argv(kind: str, **kw: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), kind, *(f"{k}={v}" for k, v in kw.items())]


# ============================================================================================= runbook


def runbook_block() -> str:
    """The bash block under docs/pitr.md's stock-tools runbook heading, as test_pitr.py runs it: verbatim."""
    text = (h.REPO / "docs" / "pitr.md").read_text()
    found = re.search(r"## Runbook: restore to an instant.*?```bash\n(.*?)```", text, re.S)
    if not found:
        raise SystemExit("docs/pitr.md has no runbook block")
    return found.group(1)


def by_hand(root: Path, store: Path, target_time: str, after: str) -> list[str]:
    """The runbook as its reader runs it (the data directory's owner, `env -i`), then `after` (bash)."""
    variables = {
        "BACKUP_DIR": store, "SOURCE": SOURCE, "TARGET_TIME": target_time, "PGBIN": PG_BIN,
        "WORK": root / "work", "PORT": h.free_port(), "PATH": os.environ["PATH"],
    }  # fmt: skip
    script = runbook_block() + "\n# --- the bench: what follows the runbook\n" + after
    return as_postgres(
        ["env", "-i", *(f"{k}={v}" for k, v in variables.items()), "bash", "-euo", "pipefail", "-c", script]
    )


# =============================================================================================== bench


class PitrBench:
    def __init__(self, s: h.Session, c: Cluster, db: str, tmp: Path):
        self.s, self.c, self.db, self.tmp = s, c, db, tmp
        self.week = self._last_week()
        self.restore_tmp = tmp / "restore_tmp"  # RESTORE_TMPDIR: the throwaway server's user must reach into it
        self.restore_tmp.mkdir()
        self.restore_tmp.chmod(0o711)
        self.store = tmp / "store"  # parts 2 and 3: the base, then the WAL archive
        self.ours_end = 0  # where our slot's last archive run ended (LSN)
        self.floor_end = 0
        self.counts: dict[str, int] = {}  # pgbench_history rows of each restored database

    @staticmethod
    def _last_week() -> str:
        """The newest complete weekly partition (Sunday to Saturday, UTC); launched with allow_late."""
        import datetime as dt

        today = dt.datetime.now(dt.UTC).date()
        this_sunday = today - dt.timedelta(days=(today.weekday() + 1) % 7)
        return (this_sunday - dt.timedelta(days=7)).isoformat()

    def env(self, store: Path) -> dict[str, str]:
        return {
            "POSTGRES_PITR": "on", "DATABASE_URL": self.c.url(self.db), "POSTGRES_SOURCE_NAME": SOURCE,
            "BACKUP_STORAGE_URL": f"file://{store}", "PG_BIN_DIR": str(PG_BIN), "RESTORE_TMPDIR": str(self.restore_tmp),
        }  # fmt: skip

    def measure(self, label: str, argv: list[str]) -> tuple[h.Measured, str]:
        """A measured process and its standard output."""
        out = self.tmp / f"{label.replace(' ', '_')}.out"
        with open(out, "w") as f:
            m = self.s.measure(label, argv, stdout=f)
        return m, out.read_text()

    def core(self, label: str, kind: str, **kw: str) -> tuple[h.Measured, dict]:
        m, out = self.measure(label, core_argv(kind, url=self.c.url(self.db), tmp=str(self.restore_tmp), **kw))
        return m, json.loads(out.strip().splitlines()[-1])

    # ---------------------------------------------------------------------------------- 1. base backup

    def base_plan(self) -> list:
        store = self.tmp / "store-base"

        def fresh() -> None:
            shutil.rmtree(store, ignore_errors=True)
            store.mkdir()

        def floor() -> h.Run:
            out = self.tmp / "floor-base.tar.zst"
            basebackup = [
                PG_BIN / "pg_basebackup",
                *self.c.pg.cli(),
                "-D",
                "-",
                "-Ft",
                "-X",
                "none",
                "--checkpoint=fast",
            ]
            script = f"set -eo pipefail; {' '.join(map(str, basebackup))} | zstd -q -T0 > {out}"
            try:
                return h.Run([self.s.measure("floor_base", ["bash", "-c", script])], stored_bytes=out.stat().st_size)
            finally:
                out.unlink(missing_ok=True)

        def ours() -> h.Run:
            fresh()
            m, res = self.core("ours_base", "core-base", store=str(store), partition=self.week)
            return h.Run([m], stored_bytes=res["stored_bytes"], extra={"raw_bytes": res["raw_bytes"]})

        def dagster() -> h.Run:
            fresh()
            config = self.tmp / "base.json"
            config.write_text(json.dumps({"ops": {"postgres_base_backup": {"config": {"allow_late": True}}}}))
            argv = h.dg_launch_assets("postgres_base_backup", partition=self.week, config=config)
            run = self.s.dagster("dagster_base", argv, self.env(store))
            run.stored_bytes = tree_bytes(store, "*.tar.zst")
            run.extra["base_step_s"] = run.extra["steps"].get("postgres_base_backup")
            run.extra["integrity_s"] = run.extra["steps"].get("postgres_base_backup_base_integrity")
            return run

        return [("floor_base", floor), ("ours_base", ours), ("dagster_base", dagster)]

    # ---------------------------------------------------------------------------------- 2. WAL archive

    def setup_archive(self) -> None:
        """Unmeasured: the base that part 3 restores from, the archive caught up, the floor's own slot."""
        self.store.mkdir()
        h.log("base backup for parts 2 and 3 (unmeasured, core call)")
        self.core("setup_base", "core-base", store=str(self.store), partition=self.week)
        self.ours_catch_up()
        self.c.one(f"SELECT pg_create_physical_replication_slot('{FLOOR_SLOT}', true)::text")
        (self.tmp / "floor-recv").mkdir()
        (self.tmp / "floor-out").mkdir()
        self.floor_end = lsn(
            self.c.one(f"SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = '{FLOOR_SLOT}'")
        )

    def ours_catch_up(self) -> None:
        _, res = self.core("catch_up", "core-wal", store=str(self.store))
        self.ours_end = lsn(res["end_lsn"])

    def floor_argv(self, end: int) -> list[str]:
        recv, out = self.tmp / "floor-recv", self.tmp / "floor-out"
        receive = [PG_BIN / "pg_receivewal", *self.c.pg.cli(), "--slot", FLOOR_SLOT, "--endpos", fmt_lsn(end - 1),
                   "--no-loop", "-D", recv]  # fmt: skip
        script = (
            f"set -eo pipefail; {' '.join(map(str, receive))}\n"
            f'for f in {recv}/*; do n=$(basename "$f"); case "$n" in\n'
            f'  *.partial) zstd -q -f -T0 "$f" -o "{out}/$n.$(date +%s%N).zst";;\n'
            f'  *) [ -e "{out}/$n.zst" ] || zstd -q -T0 "$f" -o "{out}/$n.zst";;\nesac; done'
        )
        return ["bash", "-c", script]

    def archive(self, kind: str, label: str) -> tuple[h.Measured, int, int, dict]:
        """One archive run of `kind`: (measurement, new WAL bytes, stored bytes, step times)."""
        if kind == "floor":
            end = lsn(self.c.one("SELECT pg_current_wal_lsn()::text"))
            before = tree_bytes(self.tmp / "floor-out")
            m = self.s.measure(label, self.floor_argv(end))
            new, self.floor_end = end - self.floor_end, end
            return m, new, tree_bytes(self.tmp / "floor-out") - before, {}
        if kind == "ours":
            m, meta = self.core(label, "core-wal", store=str(self.store))
            steps: dict = {}
        else:
            run = self.s.dagster(label, h.dg_launch_assets("postgres_wal_archive"), self.env(self.store))
            (m,) = run.stages
            meta, steps = run.extra["outputs"]["postgres_wal_archive:materialization"], run.extra["steps"]
        end = lsn(meta["end_lsn"])
        new, self.ours_end = end - self.ours_end, end
        return m, new, int(meta["stored_bytes"]), steps

    def pgbench(self, seconds: float) -> list[str]:
        return ["pgbench", *self.c.pg.cli(), "-n", "-c", "2", "-T", str(int(seconds)), self.db]

    def window(self, kind: str) -> h.Run:
        secs = self.s.args.pgbench_seconds
        # Every window starts right after a checkpoint: the same full-page images in each (WAL volume and tps).
        with self.c.pg.connect("postgres") as conn:
            conn.execute("CHECKPOINT")
        if kind == "alone":
            m, out = self.measure("alone_wal", self.pgbench(secs))
            return h.Run([m], extra={"tps": tps_of(out)})
        if kind == "floor":  # each window archives only its own WAL (unmeasured catch-up)
            self.archive("floor", "floor catch-up")
        else:
            self.ours_catch_up()
        bench = subprocess.Popen(self.pgbench(secs), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(secs / 2)
        runs = [self.archive(kind, f"{kind}_wal mid")]
        output = bench.communicate()[0]
        if bench.returncode != 0:
            raise RuntimeError(f"pgbench failed: {output[-2000:]}")
        runs.append(self.archive(kind, f"{kind}_wal end"))
        new, stored = sum(r[1] for r in runs), sum(r[2] for r in runs)
        run = h.Run([r[0] for r in runs], stored_bytes=stored)
        run.extra.update(tps=tps_of(output), wal_bytes=new, mid_s=runs[0][0].wall_s, end_s=runs[1][0].wall_s)
        run.extra["wal_mb_s"] = new / h.MiB / run.wall_s
        if kind == "dagster":
            run.extra["wal_step_s"] = sum(r[3].get("postgres_wal_archive", 0) for r in runs)
        return run

    def wal_plan(self) -> list:
        return [(f"{k}_wal", lambda k=k: self.window(k)) for k in ("alone", "floor", "ours", "dagster")]

    def instant(self) -> str:
        """Unmeasured: pgbench writes; T is a whole second in the middle; the archive then goes past it."""
        secs = max(self.s.args.pgbench_seconds / 2, 6)
        bench = subprocess.Popen(self.pgbench(secs), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        time.sleep(secs / 2)
        now = self.c.one("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS')")
        bench.wait()
        self.ours_catch_up()
        give_to_postgres(self.store)  # the runbook's reader: the server's user (root can read anything anyway)
        return now + "Z"

    # ------------------------------------------------------------------------------ 3. restore to an instant

    def restore_plan(self, target_time: str) -> list:
        s, counts = self.s, self.counts
        stop = '"$PGBIN/pg_ctl" -D "$WORK/data" -m fast stop\n'

        def hand(label: str, full: bool) -> h.Run:
            root = Path(tempfile.mkdtemp(prefix="hand-", dir=self.tmp))
            give_to_postgres(root)
            target = f"{self.db}_{label}"
            cli = " ".join(self.c.pg.cli())
            after = (
                f"createdb {cli} {target}\n"
                f'pg_dump -h "$WORK" -p "$PORT" -Fc {self.db} | pg_restore {cli} --exit-on-error -d {target}\n'
            ) if full else ""  # fmt: skip
            try:
                m, out = self.measure(label, by_hand(root, self.store, target_time, after + stop))
                stopped = re.search(r"recovery stopping before .*", out)
                if full:
                    counts[label] = self.history(target)
                return h.Run([m], extra={"stop": stopped.group(0) if stopped else None})
            finally:
                if (root / "work" / "data" / "postmaster.pid").exists():
                    subprocess.run(
                        as_postgres([PG_BIN / "pg_ctl", "-D", root / "work" / "data", "-m", "immediate", "stop"])
                    )
                shutil.rmtree(root, ignore_errors=True)
                h.drop_database(self.c.pg, target)

        def ours() -> h.Run:
            m, res = self.core("ours_recovery", "core-recover", store=str(self.store), target_time=target_time)
            return h.Run([m], extra=res)

        def dagster() -> h.Run:
            target = f"{self.db}_dagster"
            config = self.tmp / "restore.json"
            op = {"config": {"target_time": target_time, "target_database": target}}
            config.write_text(json.dumps({"ops": {"restore_postgres_op": op}}))
            try:
                run = s.dagster("dagster_restore", h.dg_launch_job("restore_postgres", config), self.env(self.store))
                counts["dagster_restore"] = self.history(target)
            finally:
                h.drop_database(self.c.pg, target)
            meta = run.extra["outputs"].get("restore_postgres_op", {})
            run.extra.update(job_s=run.extra["steps"].get("restore_postgres_op"), **{
                k: meta.get(k) for k in ("recovered_to", "wal_files", "duration_s", "rows")})  # fmt: skip
            return run

        return [
            ("hand_recovery", lambda: hand("hand_recovery", False)),
            ("ours_recovery", ours),
            ("hand_full", lambda: hand("hand_full", True)),
            ("dagster_restore", dagster),
        ]

    def history(self, db: str) -> int:
        return int(self.c.one("SELECT count(*) FROM pgbench_history", db))


def tps_of(text: str) -> float | None:
    found = re.search(r"tps = ([\d.]+) \(without initial connection time\)", text)
    return float(found.group(1)) if found else None


# ============================================================================================ reporting


def wal_table(summaries: list[h.Summary]) -> list[str]:
    by = {x.variant: x for x in summaries}
    alone, floor = by.get("alone_wal"), by.get("floor_wal")
    base_tps = alone.median_extra("tps") if alone else None
    floor_rate = floor.median_extra("wal_mb_s") if floor else None
    head = (
        f"{'variant':<14} {'runs s (mid+end)':>17} {'new WAL MB':>10} {'MB/s':>7} {'x floor':>7} {'stored MB':>9} "
        f"{'peak RSS MB':>11} {'pgbench tps':>11} {'x alone':>7}"
    )
    lines = [head, "-" * len(head)]
    for x in summaries:
        if not x.variant.endswith("_wal"):
            continue
        tps, rate, wal = x.median_extra("tps"), x.median_extra("wal_mb_s"), x.median_extra("wal_bytes")
        if x.variant == "alone_wal":
            lines.append(
                f"{'alone_wal':<14} {'-':>17} {'-':>10} {'-':>7} {'-':>7} {'-':>9} {'-':>11} {h._f1(tps):>11} "
                f"{'1.00':>7}"
            )
            continue
        walls = f"{x.median_extra('mid_s'):.2f}+{x.median_extra('end_s'):.2f}"
        ratio = f"{rate / floor_rate:.2f}" if rate and floor_rate else "-"
        vs = f"{tps / base_tps:.2f}" if tps and base_tps else "-"
        stored = f"{x.stored_bytes / h.MiB:.1f}" if x.stored_bytes else "-"
        lines.append(
            f"{x.variant:<14} {walls:>17} {wal / h.MiB:>10.1f} {rate:>7.2f} {ratio:>7} {stored:>9} "
            f"{h.mb(x.peak_tree_rss):>11} {h._f1(tps):>11} {vs:>7}"
        )
    lines.append(
        "medians; new WAL = LSN distance from the previous run's end (each window starts caught up); MB/s = new WAL "
        "/ the two runs' wall time; pgbench tps while the window's runs went (alone: no archive run)"
    )
    return lines


def restore_lines(b: PitrBench, by: dict[str, h.Summary], target_time: str) -> tuple[list[str], list]:
    """Part 3's notes, and its checks: every recovery stopped at the same commit, the restores hold the same rows."""
    wal_files = len(list((b.store / "postgres" / SOURCE / "wal").glob("*/*/")))
    lines = [f"target_time {target_time}; hand_* = docs/pitr.md's runbook verbatim (it fetches all {wal_files} WAL "
             "files of the timeline; ours only those up to the stop point)"]  # fmt: skip
    if "ours_recovery" in by:
        lines.append(f"ours_recovery: {by['ours_recovery'].last.get('wal_files')} WAL files fetched")
    if "dagster_restore" in by:
        d = by["dagster_restore"]
        lines.append(
            f"dagster_restore: restore_postgres_op step {d.median_extra('job_s'):.2f}s, {d.last.get('rows'):,} rows "
            "verified; the rest is the CLI, code location and instance"
        )
    stops = {n: by[n].last.get("stop") for n in ("hand_recovery", "hand_full", "ours_recovery") if n in by}
    checks = []
    if stops:
        same = len(set(stops.values())) == 1 and None not in stops.values()
        checks.append((same, f"every recovery stopped at the same commit: {sorted(set(map(str, stops.values())))}"))
    if {"hand_full", "dagster_restore"} <= b.counts.keys():
        agree = b.counts["hand_full"] == b.counts["dagster_restore"]
        checks.append((agree, f"restored pgbench_history rows agree: by hand {b.counts['hand_full']:,}, "
                              f"dagster {b.counts['dagster_restore']:,}"))  # fmt: skip
    return lines, checks


def report(s: h.Session, b: PitrBench, info: dict, summaries: list[h.Summary], target_time: str | None) -> int:
    by = {x.variant: x for x in summaries}
    cluster_bytes = b.c.one("SELECT sum(pg_database_size(oid))::bigint FROM pg_database")
    lines = s.header(
        f"PITR benchmark: {info['database']} ({info['db_bytes'] / h.GiB:.2f} GiB) + pgbench scale "
        f"{s.args.pgbench_scale}, cluster {cluster_bytes / h.GiB:.2f} GiB, private PostgreSQL 15 (fsync on), "
        "file:// storage"
    )
    checks: list[tuple[bool, str]] = []
    if any(x.variant in BASE_VARIANTS for x in summaries):
        lines += ["", "1. base backup", h.ratio_table([x for x in summaries if x.variant in BASE_VARIANTS],
                                                      ["floor_base"])]  # fmt: skip
        if "dagster_base" in by:
            d = by["dagster_base"]
            lines.append(
                f"dagster_base: postgres_base_backup step {d.median_extra('base_step_s'):.2f}s, base_integrity check "
                f"{d.median_extra('integrity_s') or 0:.2f}s (re-reads the base, pg_verifybackup); the rest is the CLI, "
                "code location, instance and the other checks"
            )
    if any(x.variant in WAL_VARIANTS for x in summaries):
        lines += ["", f"2. WAL archive while pgbench -c 2 -T {s.args.pgbench_seconds:g} writes", *wal_table(summaries)]
        if "dagster_wal" in by:
            d = by["dagster_wal"]
            steps, wal = d.median_extra("wal_step_s"), d.median_extra("wal_bytes")
            lines.append(
                f"dagster_wal: postgres_wal_archive steps (mid+end) {steps:.2f}s = {wal / h.MiB / steps:.1f} MB/s "
                "inside the step; the rest of the run is the CLI, code location, instance and the three checks"
            )
    if target_time:
        chosen = [x for x in summaries if x.variant in RESTORE_VARIANTS]
        notes, more = restore_lines(b, by, target_time)
        lines += ["", "3. restore to an instant", h.ratio_table(chosen, ["hand_recovery", "hand_full"]), *notes]
        checks += more
    result = h.OUT / f"pitr-{h.size_label(s.args.size_gb)}{s.args.tag}.json"
    return s.finish(lines, summaries, checks, result, database=info, target_time=target_time, counts=b.counts)


def main(argv: list[str]) -> int:
    if argv and argv[0].startswith("core-"):
        return _child(argv)

    def more(p) -> None:
        p.add_argument("--pgbench-scale", type=int, default=5, help="pgbench -i -s (the writers' tables)")
        p.add_argument("--pgbench-seconds", type=float, default=20, help="pgbench -T of each WAL window")

    args = h.parse_args(__doc__, argv, size_gb=0.2, repeat=1, variants=VARIANTS, more=more)
    s = h.Session(args, "pitr")
    tmp = Path(tempfile.mkdtemp(prefix="cbd-bench-pitr-"))
    tmp.chmod(0o711)
    try:
        with private_cluster(tmp / "cluster") as c:
            s.pg = c.pg
            s.env.update(PGHOST=c.pg.host, PGPORT=str(c.port), PGUSER="postgres")
            info = h.ensure_database(c.pg, h.BACKUP_SHAPE, args.size_gb)
            subprocess.run(["pgbench", *c.pg.cli(), "-i", "-q", "-s", str(args.pgbench_scale), info["database"]],
                           check=True, capture_output=True)  # fmt: skip
            b = PitrBench(s, c, info["database"], tmp)
            summaries = [] if not any(map(s.wants, BASE_VARIANTS)) else s.interleave(
                [p for p in b.base_plan() if s.wants(p[0])])  # fmt: skip
            target_time = None
            if any(map(s.wants, WAL_VARIANTS + RESTORE_VARIANTS)):
                b.setup_archive()
                if any(map(s.wants, WAL_VARIANTS)):
                    summaries += s.interleave([p for p in b.wal_plan() if s.wants(p[0])])
                if any(map(s.wants, RESTORE_VARIANTS)):
                    target_time = b.instant()
                    h.log(f"restoring to {target_time}")
                    summaries += s.interleave([p for p in b.restore_plan(target_time) if s.wants(p[0])])
            return report(s, b, info, summaries, target_time)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
