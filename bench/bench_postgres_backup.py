#!/usr/bin/env python3
"""Benchmark the PostgreSQL backup against baselines measured in the same run.

Variants (each run as its own subprocess, so wall time and RSS belong to that process tree only):

  floor  `pg_dump -Fc -Z0 <db> > /dev/null`: the fastest a dump can leave this machine.
  seed   the strategy document's script: `pg_dump <db> | gzip > file`, then boto3 `upload_file`.
  ours   `core.pg_backup.backup_postgres` into `S3Storage` (or, with --via-dagster, the Dagster asset
         `postgres_daily_backup` materialized by `dagster asset materialize`).

S3 is a moto server the bench starts on a free 127.0.0.1 port; moto's own memory and CPU are not counted
(it is not part of the measured process tree), but it shares the machine's cores with the backup.

Peak RSS: a sampler thread walks the measured process tree through /proc/<pid>/task/*/children every
`--sample-ms` and sums VmRSS (statm) over all live members ("peak RSS", the figure the target uses). Every
measured command runs under GNU /usr/bin/time, whose "Maximum resident set size" is the exact kernel
high-water mark of the largest single process in the tree ("max proc").

Usage (from the repo root, with the project's venv):
  .venv/bin/python bench/bench_postgres_backup.py                 # 1 GB database, 3 interleaved repeats
  .venv/bin/python bench/bench_postgres_backup.py --size-gb 2.0   # doubling run; RSS flatness vs 1 GB
  .venv/bin/python bench/bench_postgres_backup.py --via-dagster   # ours = the Dagster asset
  .venv/bin/python bench/bench_postgres_backup.py --profile       # + ours with other zstd/chunk/part settings

Results go to bench/out/results-<size>.json (bench/out/ is gitignored).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = HERE / "out"
MiB = 1024 * 1024
GiB = 1024 * MiB
PAGE = os.sysconf("SC_PAGE_SIZE")
BENCH_MARKER = "cbd-bench v1"  # bump when the generator changes, so stale databases are rebuilt

TARGET_VS_FLOOR = 1.3
TARGET_VS_SEED = 0.5
TARGET_RSS_MB = 300
FLATNESS_MAX_RATIO = 1.15

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


# ============================================================================================ helpers


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def size_label(size_gb: float) -> str:
    return f"{size_gb:g}".replace(".", "_")


def mb(n: float | None) -> str:
    return "-" if n is None else f"{n / MiB:.0f}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def yesterday_utc() -> str:
    return (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)).isoformat()


def code_version() -> str:
    """The commit the measured code comes from, and whether core/ or defs/ differ from it (other sessions
    may be editing the working tree while a long benchmark runs)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "cidadao_backup_dagster"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{head}{' + uncommitted changes in cidadao_backup_dagster/' if dirty else ''}"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


# ======================================================================================= measurement


class TreeSampler(threading.Thread):
    """Samples the summed RSS of a process and all its live descendants via /proc (no psutil)."""

    def __init__(self, root: int, interval: float, skip_root: bool = False):
        super().__init__(name="rss-sampler", daemon=True)
        self.root, self.interval, self.skip_root = root, interval, skip_root
        self.peak = 0
        self.peak_procs: dict[str, int] = {}
        self.samples = 0
        self.max_procs = 0
        self._halt = threading.Event()

    @staticmethod
    def _children(pid: int) -> list[int]:
        kids: list[int] = []
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                try:
                    with open(f"/proc/{pid}/task/{tid}/children") as f:
                        kids.extend(int(x) for x in f.read().split())
                except OSError:
                    pass
        except OSError:
            pass
        return kids

    @staticmethod
    def _rss_and_name(pid: int) -> tuple[int, str]:
        try:
            with open(f"/proc/{pid}/statm") as f:
                rss = int(f.read().split()[1]) * PAGE
            with open(f"/proc/{pid}/comm") as f:
                return rss, f.read().strip()
        except (OSError, IndexError, ValueError):
            return 0, "?"

    def sample(self) -> None:
        stack, total, procs = [self.root], 0, {}
        while stack:
            pid = stack.pop()
            stack.extend(self._children(pid))
            if pid == self.root and self.skip_root:
                continue  # the /usr/bin/time wrapper: measurement overhead, not the measured work
            rss, name = self._rss_and_name(pid)
            total += rss
            procs[f"{name}[{pid}]"] = rss
        self.samples += 1
        self.max_procs = max(self.max_procs, len(procs))
        if total > self.peak:
            self.peak, self.peak_procs = total, procs

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


@dataclass
class Measured:
    label: str
    command: str
    wall_s: float
    exit_code: int
    peak_tree_rss: int  # bytes: sampled sum over the live process tree
    max_proc_rss: int  # bytes: exact ru_maxrss of the largest single process (wait4)
    cpu_s: float  # user+sys of the root and its reaped descendants
    samples: int
    peak_procs: dict[str, int]
    host_busy: float = 0.0  # share of all cores busy during the run (whole machine: server, moto, others)
    stderr_tail: str = ""


GNU_TIME = "/usr/bin/time"


def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from the first line of /proc/stat."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    return sum(vals) - idle, sum(vals)


def run_measured(
    label: str,
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    stdout: Any = subprocess.DEVNULL,
    sample_s: float = 0.05,
    check: bool = True,
    stderr_keep: int = 4000,
) -> Measured:
    """Run `argv` under /usr/bin/time. Why not wait4() on our own child: a child vforked from this (large)
    Python process inherits its RSS high-water mark across exec, so its ru_maxrss would report at least
    the bench driver's own RSS. /usr/bin/time is tiny, so the "Maximum resident set size" it reports for
    its child (the max over the child and its waited-for descendants) is clean."""
    use_time = os.access(GNU_TIME, os.X_OK)
    with tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile("r", suffix=".time") as tfile:
        full = [GNU_TIME, "-f", "%M %U %S %x", "-o", tfile.name, *argv] if use_time else argv
        busy0, total0 = cpu_jiffies()
        t0 = time.perf_counter()
        proc = subprocess.Popen(full, stdout=stdout, stderr=err, env=env, cwd=REPO)
        sampler = TreeSampler(proc.pid, sample_s, skip_root=use_time)
        sampler.start()
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        busy1, total1 = cpu_jiffies()
        sampler.stop()
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        tail = err.read()[-stderr_keep:].decode(errors="replace")
        maxrss_kb, cpu = ru.ru_maxrss, ru.ru_utime + ru.ru_stime
        if use_time:
            fields = (tfile.read().strip().splitlines() or [""])[-1].split()
            if len(fields) == 4:
                maxrss_kb, cpu = int(fields[0]), float(fields[1]) + float(fields[2])
    m = Measured(
        label=label,
        command=shlex.join(argv),
        wall_s=wall,
        exit_code=proc.returncode,
        peak_tree_rss=sampler.peak,
        max_proc_rss=maxrss_kb * 1024,
        cpu_s=cpu,
        samples=sampler.samples,
        peak_procs=sampler.peak_procs,
        host_busy=(busy1 - busy0) / max(total1 - total0, 1),
        stderr_tail=tail,
    )
    if check and m.exit_code != 0:
        raise RuntimeError(f"{label} failed (exit {m.exit_code}): {argv}\n{tail}")
    return m


CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int | str) -> tuple[str, list[str]] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    name = raw[raw.index("(") + 1 : raw.rindex(")")]
    return name, raw[raw.rindex(")") + 2 :].split()  # fields from #3 (state) on


def process_cpu(pid: int, with_children: bool = False) -> float:
    st = _stat_fields(pid)
    if st is None:
        return 0.0
    f = st[1]  # utime, stime, cutime, cstime are fields 14..17, i.e. f[11..14]
    ticks = int(f[11]) + int(f[12]) + ((int(f[13]) + int(f[14])) if with_children else 0)
    return ticks / CLK_TCK


def server_cpu() -> float:
    """CPU seconds used so far by the local PostgreSQL server: every `postgres` process, plus the postmaster's
    reaped children (a backend that starts and exits within a measured run lands in the postmaster's cutime)."""
    total, procs = 0.0, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat_fields(entry)
            if st and st[0] == "postgres":
                procs[int(entry)] = int(st[1][1])  # ppid
    for pid, ppid in procs.items():
        total += process_cpu(pid, with_children=ppid not in procs)  # the postmaster: include reaped backends
    return total


def settle(quiet_wait: float, max_busy: float = 0.15) -> bool:
    """Unmeasured: flush dirty pages from the previous variant so its writeback does not bill the next, then
    wait (at most `quiet_wait` s) until the machine is nearly idle, since other sessions share these cores.
    Returns whether a quiet second was seen."""
    os.sync()
    deadline = time.monotonic() + quiet_wait
    while True:
        b0, t0 = cpu_jiffies()
        time.sleep(1.0)
        b1, t1 = cpu_jiffies()
        busy = (b1 - b0) / max(t1 - t0, 1)
        if busy <= max_busy:
            return True
        if time.monotonic() > deadline:
            log(f"machine still {busy:.0%} busy after waiting {quiet_wait:.0f}s; measuring anyway")
            return False


# ============================================================================================ postgres


@dataclass(frozen=True)
class Pg:
    host: str
    port: int
    user: str

    def url(self, db: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{db}"

    def cli(self) -> list[str]:
        return ["-h", self.host, "-p", str(self.port), "-U", self.user]

    def connect(self, db: str, autocommit: bool = True):
        import psycopg

        return psycopg.connect(host=self.host, port=self.port, user=self.user, dbname=db, autocommit=autocommit)


# A Portuguese-ish vocabulary of public-spending investigations; picked with a skewed (Zipf-like)
# distribution so frequent words dominate the way they do in real text.
WORDS = """
    de da do das dos e o a os as em no na nos nas para por com sem sobre entre contra ate apos que se
    contrato contratos licitacao licitacoes pregao eletronico dispensa inexigibilidade empenho empenhos
    pagamento pagamentos despesa despesas receita orcamento orcamentario emenda parlamentar convenio
    convenios repasse repasses transferencia fundo municipal estadual federal prefeitura secretaria
    ministerio saude educacao infraestrutura obras publicas transporte seguranca assistencia social cultura
    esporte turismo agricultura meio ambiente habitacao saneamento energia tecnologia fornecedor
    fornecedores empresa empresas consorcio servico servicos material materiais aquisicao compra compras
    locacao veiculos medicamentos merenda escolar construcao reforma manutencao pavimentacao iluminacao
    limpeza urbana coleta residuos consultoria assessoria software licencas valor valores total global
    unitario estimado homologado adjudicado aditivo aditivos reajuste sobrepreco superfaturamento
    fracionamento direcionamento irregularidade irregularidades indicio indicios anomalia anomalias suspeita
    suspeito atipico atipica concentracao recorrente historico media mediana desvio padrao percentual acima
    abaixo limite teto mercado referencia comparacao analise investigacao relatorio auditoria controladoria
    tribunal contas fiscalizacao transparencia portal dados abertos cidadao servidor servidores folha
    salario salarios remuneracao diarias passagens viagens cartao corporativo beneficio beneficios programa
    bolsa familia auxilio municipio municipios estado capital regiao norte nordeste sul sudeste centro oeste
    interior janeiro fevereiro marco abril maio junho julho agosto setembro outubro novembro dezembro
    primeiro segundo terceiro quarto semestre trimestre anual mensal exercicio periodo vigencia prazo
    identificado identificada encontrado encontrada verificado verificada detectado detectada possivel
    provavel alto alta baixo baixa medio risco grave moderado leve critico relevante mesmo mesma mais menos
    muito pouco cada todo toda todos todas outro outra outros outras foi foram sera seria tem tinha houve
    havia pode podem deve devem esta estao era eram nao sim ja ainda tambem apenas somente porem contudo
    entretanto portanto assim logo
""".split()
ORGAO_WORDS = """
    Ministerio Secretaria Fundacao Instituto Departamento Agencia Autarquia Companhia Superintendencia
    Nacional Estadual Municipal Federal Saude Educacao Obras Transportes Fazenda Planejamento Cultura
    Desenvolvimento Regional Urbano Social Seguranca Publica Meio Ambiente Ciencia Tecnologia
""".split()
UFS = """
    AC AL AP AM BA CE DF ES GO MA MT MS MG PA PB PR PE PI RJ RN RS RO RR SC SP SE TO
""".split()
AGENTS = """
    zumbi anita tiradentes machado dandara bonifacio nana ayrton_senna oxossi lampiao drummond obaluaie
""".split()
MODELS = ["gpt-4o-mini", "claude-3-haiku", "llama-3.1-70b", "maritaca-sabia-3", "mistral-large"]
ANOMALY_TYPES = [
    "sobrepreco",
    "fracionamento",
    "fornecedor_unico",
    "prazo_irregular",
    "valor_atipico",
    "concentracao_fornecedor",
    "empresa_recem_criada",
    "aditivo_excessivo",
]
STATUSES = ["completed"] * 12 + ["failed"] * 2 + ["running", "pending", "cancelled", "timeout"]


def _arr(items: list[str]) -> str:
    return "ARRAY[" + ",".join("'" + w.replace("'", "''") + "'" for w in items) + "]::text[]"


def helper_functions_sql() -> str:
    n = len(WORDS)
    return f"""
    CREATE OR REPLACE FUNCTION pg_temp.vocab() RETURNS text[] LANGUAGE sql IMMUTABLE AS $$ SELECT {_arr(WORDS)} $$;
    CREATE OR REPLACE FUNCTION pg_temp.w() RETURNS text LANGUAGE sql VOLATILE AS
      $$ SELECT (pg_temp.vocab())[1 + floor(power(random(), 1.8) * {n})::int] $$;
    CREATE OR REPLACE FUNCTION pg_temp.ws(n int) RETURNS text LANGUAGE sql VOLATILE AS
      $$ SELECT string_agg(pg_temp.w(), ' ') FROM generate_series(1, n) $$;
    CREATE OR REPLACE FUNCTION pg_temp.pick(a text[]) RETURNS text LANGUAGE sql VOLATILE AS
      $$ SELECT a[1 + floor(random() * cardinality(a))::int] $$;
    CREATE OR REPLACE FUNCTION pg_temp.digits(n int) RETURNS text LANGUAGE sql VOLATILE AS
      $$ SELECT lpad(floor(random() * 10 ^ n)::bigint::text, n, '0') $$;
    """


# One batch of investigations rows, generated server-side. Subqueries reference `g` so PostgreSQL runs
# them per row (an uncorrelated subquery would be an InitPlan, evaluated once for the whole batch).
INSERT_SQL = f"""
INSERT INTO investigations (id, query, status, results, metadata, created_at)
SELECT
  gen_random_uuid(),
  initcap(pg_temp.ws(5 + (random() * 16)::int)) || ' em ' || pg_temp.pick({_arr(UFS)})
    || ' ' || (2018 + (random() * 7)::int)::text || '?',
  pg_temp.pick({_arr(STATUSES)}),
  jsonb_build_object(
    'summary', pg_temp.ws(20 + (random() * 40)::int),
    'confidence', round(random()::numeric, 4),
    'total_value', round((random() * 10 ^ (3 + random() * 5))::numeric, 2),
    'contracts_analyzed', (random() * 5000)::int,
    'anomalies', (SELECT coalesce(jsonb_agg(jsonb_build_object(
        'type', pg_temp.pick({_arr(ANOMALY_TYPES)}),
        'score', round(random()::numeric, 3),
        'contract_id', 'CT-' || pg_temp.digits(4) || '/' || pg_temp.digits(6),
        'value', round((random() * 2000000)::numeric, 2),
        'expected_value', round((random() * 1500000)::numeric, 2),
        'description', pg_temp.ws(6 + (random() * 14)::int))), '[]'::jsonb)
      FROM generate_series(1, (random() * 3.6)::int + 0 * g)),
    'entities', (SELECT jsonb_agg(jsonb_build_object(
        'cnpj', pg_temp.digits(14),
        'nome', initcap(pg_temp.ws(2 + (random() * 3)::int)) || ' Ltda',
        'participacao', round(random()::numeric, 3)))
      FROM generate_series(1, 1 + (random() * 2)::int + 0 * g))
  ),
  jsonb_build_object(
    'agent', pg_temp.pick({_arr(AGENTS)}),
    'model', pg_temp.pick({_arr(MODELS)}),
    'tokens', jsonb_build_object('prompt', (random() * 8000)::int, 'completion', (random() * 2000)::int),
    'duration_ms', (random() * 120000)::int,
    'orgao', jsonb_build_object(
        'codigo', pg_temp.digits(5),
        'nome', pg_temp.pick({_arr(ORGAO_WORDS)}) || ' ' || pg_temp.pick({_arr(ORGAO_WORDS)}) || ' '
                || pg_temp.pick({_arr(ORGAO_WORDS)}),
        'uf', pg_temp.pick({_arr(UFS)})),
    'tags', (SELECT jsonb_agg(pg_temp.w()) FROM generate_series(1, 2 + (random() * 4)::int + 0 * g)),
    'request_id', gen_random_uuid()::text,
    'client_ip', '10.' || (random() * 255)::int || '.' || (random() * 255)::int || '.' || (random() * 255)::int,
    'api_version', 'v' || (1 + (random() * 2)::int)::text
  ),
  now() - random() * interval '730 days'
FROM generate_series(%(lo)s::bigint, %(hi)s::bigint - 1) AS g
"""

TABLE_SQL = """
CREATE TABLE investigations (
    id uuid PRIMARY KEY,
    query text NOT NULL,
    status text NOT NULL,
    results jsonb,
    metadata jsonb,
    created_at timestamptz NOT NULL
)
"""


def db_info(pg: Pg, db: str) -> tuple[bool, int, str | None]:
    with pg.connect("postgres") as conn:
        row = conn.execute(
            "SELECT pg_database_size(oid), shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
            (db,),
        ).fetchone()
    return (False, 0, None) if row is None else (True, int(row[0]), row[1])


def ensure_database(pg: Pg, db: str, size_gb: float, *, rebuild: bool, jobs: int, batch: int) -> dict:
    target = int(size_gb * GiB)
    exists, size, comment = db_info(pg, db)
    marker = f"{BENCH_MARKER} target_bytes={target}"
    if exists and not rebuild and comment and comment.startswith(marker) and target <= size <= target * 1.3:
        log(f"reusing {db}: {size / GiB:.2f} GiB ({comment})")
        return {"database": db, "reused": True, "db_bytes": size, "comment": comment, "build_seconds": None}
    if exists:
        log(f"dropping {db} (size {size / GiB:.2f} GiB, marker {comment!r}, rebuild={rebuild})")
    t0 = time.monotonic()
    with pg.connect("postgres") as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{db}"')
    with pg.connect(db) as conn:
        conn.execute(TABLE_SQL)

    def insert(conn, lo: int, hi: int) -> None:
        conn.execute(INSERT_SQL, {"lo": lo, "hi": hi})

    def session():
        conn = pg.connect(db)
        conn.execute("SET synchronous_commit = off")
        conn.execute(helper_functions_sql())
        return conn

    # Calibrate bytes per row on one batch, then fill in parallel (one session per core), then top up.
    with session() as conn:
        before = db_info(pg, db)[1]
        t = time.monotonic()
        insert(conn, 0, batch)
        conn.execute("CHECKPOINT")
        after = db_info(pg, db)[1]
    per_row = max((after - before) / batch, 200)
    log(f"calibration: {batch} rows in {time.monotonic() - t:.1f}s, ~{per_row:.0f} bytes/row on disk")
    next_lo = batch
    lock = threading.Lock()
    while True:
        current = db_info(pg, db)[1]
        if current >= target:
            break
        needed = int((target - current) / per_row * 1.01) + 1
        batches = [(lo, min(lo + batch, next_lo + needed)) for lo in range(next_lo, next_lo + needed, batch)]
        next_lo += needed
        log(f"{db}: {current / GiB:.2f} GiB of {target / GiB:.2f}; inserting {needed} rows in {len(batches)} batches")
        errors: list[BaseException] = []
        done = [0]

        def worker(batches=batches, errors=errors, done=done) -> None:
            try:
                with session() as conn:
                    while True:
                        with lock:
                            if not batches or errors:
                                return
                            lo, hi = batches.pop(0)
                        insert(conn, lo, hi)
                        with lock:
                            done[0] += hi - lo
                            if done[0] // (batch * 10) != (done[0] - (hi - lo)) // (batch * 10):
                                log(f"  {done[0]} rows inserted, {time.monotonic() - t0:.0f}s elapsed")
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(jobs)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if errors:
            raise errors[0]
        with pg.connect(db) as conn:
            conn.execute("CHECKPOINT")
    log("VACUUM ANALYZE (sets hint bits so the first measured dump does not pay for them)")
    with pg.connect(db) as conn:
        conn.execute("VACUUM (ANALYZE) investigations")
        conn.execute("CHECKPOINT")
        rows = conn.execute("SELECT count(*) FROM investigations").fetchone()[0]
    size = db_info(pg, db)[1]
    comment = f"{marker} rows={rows} built={dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%M:%SZ}"
    with pg.connect("postgres") as conn:
        conn.execute(f"COMMENT ON DATABASE \"{db}\" IS '{comment}'")
    took = time.monotonic() - t0
    log(f"built {db}: {size / GiB:.2f} GiB, {rows} rows in {took:.0f}s")
    return {"database": db, "reused": False, "db_bytes": size, "comment": comment, "build_seconds": round(took, 1)}


def table_stats(pg: Pg, db: str) -> dict:
    with pg.connect(db) as conn:
        rows, heap, toast, idx, avg_row = conn.execute(
            """SELECT c.reltuples::bigint, pg_relation_size(c.oid),
                      coalesce(pg_total_relation_size(c.reltoastrelid), 0), pg_indexes_size(c.oid),
                      (SELECT avg(pg_column_size(i.*))::int FROM (SELECT * FROM investigations LIMIT 5000) i)
               FROM pg_class c WHERE c.relname = 'investigations'"""
        ).fetchone()
    return {
        "rows_estimate": rows,
        "heap_bytes": heap,
        "toast_bytes": toast,
        "index_bytes": idx,
        "avg_row_bytes": avg_row,
    }


# ================================================================================================= S3


class MotoServer:
    """A moto S3 server in its own process (so it does not share our GIL) on a free 127.0.0.1 port."""

    def __init__(self, log_path: Path):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> MotoServer:
        exe = Path(sys.executable).parent / "moto_server"
        argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "moto.server"]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [*argv, "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **AWS_ENV},
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                self.client().list_buckets()
                break
            except Exception as exc:  # noqa: BLE001
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start; see {self.log_path}") from exc
                time.sleep(0.2)
        log(f"moto server pid {self.proc.pid} on {self.endpoint}")
        return self

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def rss(self) -> int:
        return TreeSampler._rss_and_name(self.proc.pid)[0] if self.proc else 0

    def client(self):
        return s3_client(self.endpoint)

    def new_bucket(self, stem: str) -> str:
        name = f"{stem}-{uuid.uuid4().hex[:8]}"
        self.client().create_bucket(Bucket=name)
        return name

    def objects(self, bucket: str) -> list[dict]:
        out = []
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket):
            out.extend(page.get("Contents", []))
        return out

    def empty(self, bucket: str) -> None:
        client = self.client()
        for obj in self.objects(bucket):
            client.delete_object(Bucket=bucket, Key=obj["Key"])
        for up in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
            client.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])


def s3_client(endpoint: str):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        region_name=AWS_ENV["AWS_DEFAULT_REGION"],
        config=Config(retries={"mode": "standard", "max_attempts": 5}),
    )


def time_s3_calls(client, names=("CompleteMultipartUpload", "UploadPart", "PutObject")) -> dict[str, list[float]]:
    """Client-side wall time of selected S3 operations, via botocore's before/after-call events (measurement
    only: the code under test is not changed). moto's CompleteMultipartUpload concatenates every part in
    Python, so it costs seconds per GB that a real S3-compatible service does not charge at that point."""
    stats: dict[str, list[float]] = {n: [] for n in names}
    started: dict[tuple[int, str], float] = {}

    def before(event_name: str, **_: Any) -> None:
        started[(threading.get_ident(), event_name.rsplit(".", 1)[-1])] = time.monotonic()

    def after(event_name: str, **_: Any) -> None:
        op = event_name.rsplit(".", 1)[-1]
        t = started.pop((threading.get_ident(), op), None)
        if t is not None:
            stats[op].append(time.monotonic() - t)

    for n in names:
        client.meta.events.register(f"before-call.s3.{n}", before)
        client.meta.events.register(f"after-call.s3.{n}", after)
    return stats


# ========================================================================================== variants


@dataclass
class Run:
    """One measured execution of a variant (possibly several measured stages)."""

    stages: list[Measured]
    stored_bytes: int | None = None
    extra: dict = field(default_factory=dict)

    @property
    def wall_s(self) -> float:
        return sum(s.wall_s for s in self.stages)

    @property
    def peak_tree_rss(self) -> int:
        return max(s.peak_tree_rss for s in self.stages)

    @property
    def max_proc_rss(self) -> int:
        return max(s.max_proc_rss for s in self.stages)

    @property
    def cpu_s(self) -> float:
        return sum(s.cpu_s for s in self.stages)

    @property
    def host_busy(self) -> float:
        return sum(s.host_busy * s.wall_s for s in self.stages) / max(self.wall_s, 1e-9)


@dataclass
class Ctx:
    pg: Pg
    db: str
    moto: MotoServer
    workdir: Path
    sample_s: float
    partition: str
    env: dict[str, str]


def variant_floor(ctx: Ctx) -> Run:
    argv = ["pg_dump", "-Fc", "-Z0", *ctx.pg.cli(), ctx.db]
    return Run([run_measured("floor", argv, env=ctx.env, sample_s=ctx.sample_s)])


def variant_seed(ctx: Ctx, bucket: str) -> Run:
    gz = ctx.workdir / f"cidadao_ai_pg_{time.strftime('%Y%m%d_%H%M%S')}.sql.gz"
    script = 'set -eo pipefail; pg_dump "$@" | gzip > "$OUT"'
    dump = run_measured(
        "seed: pg_dump | gzip > file",
        ["bash", "-c", script, "seed", *ctx.pg.cli(), ctx.db],
        env={**ctx.env, "OUT": str(gz)},
        sample_s=ctx.sample_s,
    )
    local = gz.stat().st_size
    key = f"backups/{gz.name}"
    result = ctx.workdir / f"upload-{uuid.uuid4().hex[:8]}.json"
    upload = run_measured(
        "seed: boto3 upload_file",
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "_upload",
            "--endpoint",
            ctx.moto.endpoint,
            "--bucket",
            bucket,
            "--key",
            key,
            "--file",
            str(gz),
            "--result",
            str(result),
        ],
        env=ctx.env,
        sample_s=ctx.sample_s,
    )
    s3_calls = json.loads(result.read_text())["s3_calls"]
    result.unlink()
    stored = int(ctx.moto.client().head_object(Bucket=bucket, Key=key)["ContentLength"])
    gz.unlink()
    if stored != local:
        raise RuntimeError(f"seed upload stored {stored} bytes, file had {local}")
    complete = sum(s3_calls["CompleteMultipartUpload"])
    return Run([dump, upload], stored_bytes=stored, extra={"s3_calls": s3_calls, "complete_seconds": complete})


@dataclass(frozen=True)
class OursConfig:
    zstd_level: int = 3
    zstd_threads: int = -1
    chunk_mb: float | None = None  # None: the core's default (pipeline.CHUNK)
    part_mb: int | None = None  # None: the core's default (storage.DEFAULT_PART_SIZE)
    local: int = 0  # 1: LocalStorage in bench/out/work instead of S3 (isolates the cost of moto on this host)

    def label(self) -> str:
        if self == OursConfig():
            return "ours"
        bits = [f"l{self.zstd_level}", f"t{self.zstd_threads}"]
        if self.chunk_mb is not None:
            bits.append(f"chunk{self.chunk_mb:g}M")
        if self.part_mb is not None:
            bits.append(f"part{self.part_mb}M")
        if self.local:
            bits.append("local")
        return "ours[" + ",".join(bits) + "]"

    @classmethod
    def parse(cls, spec: str) -> OursConfig:
        kw: dict[str, Any] = {}
        names = {
            "level": "zstd_level",
            "l": "zstd_level",
            "threads": "zstd_threads",
            "t": "zstd_threads",
            "chunk_mb": "chunk_mb",
            "chunk": "chunk_mb",
            "part_mb": "part_mb",
            "part": "part_mb",
            "local": "local",
        }
        for item in filter(None, (s.strip() for s in spec.split(","))):
            k, v = item.split("=")
            name = names[k.strip()]
            kw[name] = float(v) if name == "chunk_mb" else int(v)
        return cls(**kw)


def variant_ours(ctx: Ctx, bucket: str, cfg: OursConfig) -> Run:
    result = ctx.workdir / f"ours-{uuid.uuid4().hex[:8]}.json"
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "_ours",
        "--url",
        ctx.pg.url(ctx.db),
        "--endpoint",
        ctx.moto.endpoint,
        "--bucket",
        bucket,
        "--prefix",
        "bench",
        "--series",
        f"postgres/{ctx.db}/daily",
        "--partition",
        ctx.partition,
        "--config",
        json.dumps(asdict(cfg)),
        "--result",
        str(result),
        "--local-root",
        str(ctx.workdir / "local-store"),
    ]
    m = run_measured(cfg.label(), argv, env=ctx.env, sample_s=ctx.sample_s)
    data = json.loads(result.read_text())
    result.unlink()
    art = data["manifest"]["artifact"]
    if cfg.local:
        local_root = ctx.workdir / "local-store"
        stored_now = (local_root / art["key"]).stat().st_size
        shutil.rmtree(local_root, ignore_errors=True)
    else:
        stored_now = int(ctx.moto.client().head_object(Bucket=bucket, Key=f"bench/{art['key']}")["ContentLength"])
    if stored_now != art["stored_bytes"]:
        raise RuntimeError("stored object size differs from the manifest")
    return Run(
        [m],
        stored_bytes=art["stored_bytes"],
        extra={
            "raw_bytes": art["raw_bytes"],
            "inner_total_seconds": data["manifest"]["timings"]["total_seconds"],
            "inner_dump_seconds": data["manifest"]["timings"]["dump_seconds"],
            "child_seconds": data["child_seconds"],
            "import_seconds": data["import_seconds"],
            "rows_total": data["manifest"]["contents"]["rows_total"],
            "complete_seconds": sum(data["s3_calls"]["CompleteMultipartUpload"]),
            "upload_parts": len(data["s3_calls"]["UploadPart"]),
            "self_maxrss_kb": data["self_maxrss_kb"],
        },
    )


def variant_dagster(ctx: Ctx, bucket: str) -> Run:
    home = Path(tempfile.mkdtemp(prefix="dagster_home-", dir=ctx.workdir))
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    exe = Path(sys.executable).parent / "dagster"
    argv = [
        str(exe) if exe.exists() else "dagster",
        "asset",
        "materialize",
        "-m",
        "cidadao_backup_dagster.definitions",
        "--select",
        "postgres_daily_backup",
        "--partition",
        ctx.partition,
    ]
    env = {
        **ctx.env,
        "DAGSTER_HOME": str(home),
        "DATABASE_URL": ctx.pg.url(ctx.db),
        "BACKUP_STORAGE_URL": f"s3://{bucket}/bench",
        "AWS_ENDPOINT_URL": ctx.moto.endpoint,
        "AWS_ENDPOINT_URL_S3": ctx.moto.endpoint,
    }
    try:
        m = run_measured("ours (dagster asset)", argv, env=env, sample_s=ctx.sample_s, stderr_keep=200_000)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    objects = ctx.moto.objects(bucket)
    manifests = [o for o in objects if o["Key"].endswith("manifest.json")]
    steps = {
        name: float(v) * {"ms": 0.001, "s": 1.0, "m": 60.0}[unit]
        for name, v, unit in re.findall(r'Finished execution of step "([^"]+)" in ([\d.]+)(ms|s|m)\b', m.stderr_tail)
    }
    extra: dict[str, Any] = {"objects": [(o["Key"], o["Size"]) for o in objects], "dagster_steps": steps}
    stored = None
    if manifests:
        body = ctx.moto.client().get_object(Bucket=bucket, Key=manifests[0]["Key"])["Body"].read()
        try:
            art = json.loads(body)["artifact"]
            stored = int(art["stored_bytes"])
            extra["raw_bytes"] = art.get("raw_bytes")
        except (ValueError, KeyError, TypeError):
            pass
    if stored is None:
        data_objs = [o for o in objects if not o["Key"].endswith(".json")]
        stored = max((o["Size"] for o in data_objs), default=None)
    if not stored:
        raise RuntimeError(f"dagster run stored no backup in s3://{bucket}: {objects}\n{m.stderr_tail}")
    return Run([m], stored_bytes=stored, extra=extra)


# ======================================================================================== reporting


@dataclass
class Summary:
    variant: str
    runs: list[Run]

    @property
    def wall_s(self) -> float:
        return statistics.median(r.wall_s for r in self.runs)

    @property
    def wall_min(self) -> float:
        return min(r.wall_s for r in self.runs)

    @property
    def peak_tree_rss(self) -> int:
        return max(r.peak_tree_rss for r in self.runs)

    @property
    def max_proc_rss(self) -> int:
        return max(r.max_proc_rss for r in self.runs)

    @property
    def cpu_s(self) -> float:
        return statistics.median(r.cpu_s for r in self.runs)

    @property
    def stored_bytes(self) -> int | None:
        return self.runs[-1].stored_bytes

    @property
    def host_busy(self) -> float:
        return statistics.median(r.host_busy for r in self.runs)

    def median_extra(self, key: str) -> float | None:
        vals = [r.extra[key] for r in self.runs if r.extra.get(key) is not None]
        return statistics.median(vals) if vals else None

    def to_json(self) -> dict:
        return {
            "variant": self.variant,
            "wall_s_median": round(self.wall_s, 3),
            "wall_s_min": round(self.wall_min, 3),
            "walls": [round(r.wall_s, 3) for r in self.runs],
            "cpu_s_median": round(self.cpu_s, 2),
            "host_busy_median": round(self.host_busy, 3),
            "server_cpu_s_median": self.median_extra("server_cpu_s"),
            "moto_cpu_s_median": self.median_extra("moto_cpu_s"),
            "peak_tree_rss_bytes": self.peak_tree_rss,
            "max_proc_rss_bytes": self.max_proc_rss,
            "stored_bytes": self.stored_bytes,
            "runs": [
                {
                    "stored_bytes": r.stored_bytes,
                    "extra": r.extra,
                    "stages": [{**asdict(s), "stderr_tail": s.stderr_tail[-4000:]} for s in r.stages],
                }
                for r in self.runs
            ],
        }


def _f1(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def print_table(summaries: list[Summary], floor: Summary | None, seed: Summary | None) -> str:
    head = (
        f"{'variant':<28} {'wall s':>8} {'min s':>7} {'x floor':>8} {'x seed':>7} {'stored bytes':>14} "
        f"{'peak RSS MB':>11} {'max proc MB':>11} {'cpu s':>7} {'pg cpu':>6} {'moto cpu':>8} {'host busy':>9}"
    )
    lines = [head, "-" * len(head)]
    for s in summaries:
        xf = f"{s.wall_s / floor.wall_s:.2f}" if floor else "-"
        xs = f"{s.wall_s / seed.wall_s:.2f}" if seed else "-"
        stored = f"{s.stored_bytes:,}" if s.stored_bytes else "-"
        pg_cpu, moto_cpu = _f1(s.median_extra("server_cpu_s")), _f1(s.median_extra("moto_cpu_s"))
        lines.append(
            f"{s.variant:<28} {s.wall_s:>8.2f} {s.wall_min:>7.2f} {xf:>8} {xs:>7} {stored:>14} "
            f"{mb(s.peak_tree_rss):>11} {mb(s.max_proc_rss):>11} {s.cpu_s:>7.1f} "
            f"{pg_cpu:>6} {moto_cpu:>8} {s.host_busy:>9.0%}"
        )
    return "\n".join(lines)


def evaluate(ours: Summary, floor: Summary | None, seed: Summary | None) -> list[tuple[bool, str]]:
    checks = []
    if floor:
        lim = TARGET_VS_FLOOR * floor.wall_s
        checks.append(
            (
                ours.wall_s <= lim,
                f"{ours.variant} wall {ours.wall_s:.2f}s <= {TARGET_VS_FLOOR}x floor "
                f"({lim:.2f}s): ratio {ours.wall_s / floor.wall_s:.2f}",
            )
        )
    if seed:
        lim = TARGET_VS_SEED * seed.wall_s
        checks.append(
            (
                ours.wall_s <= lim,
                f"{ours.variant} wall {ours.wall_s:.2f}s <= {TARGET_VS_SEED}x seed "
                f"({lim:.2f}s): ratio {ours.wall_s / seed.wall_s:.2f}",
            )
        )
        if ours.stored_bytes and seed.stored_bytes:
            checks.append(
                (
                    ours.stored_bytes <= seed.stored_bytes,
                    f"{ours.variant} stored {ours.stored_bytes:,} B <= seed gzip {seed.stored_bytes:,} B: "
                    f"ratio {ours.stored_bytes / seed.stored_bytes:.3f}",
                )
            )
    checks.append(
        (
            ours.peak_tree_rss < TARGET_RSS_MB * MiB,
            f"{ours.variant} peak RSS (process tree) {mb(ours.peak_tree_rss)} MB < {TARGET_RSS_MB} MB "
            f"(largest single process {mb(ours.max_proc_rss)} MB)",
        )
    )
    return checks


def flatness(result_path: Path, size_gb: float, ours: Summary, mode: str) -> tuple[bool, str] | None:
    """Compare our peak RSS with the largest smaller-size result of the same mode, if one exists."""
    best: tuple[float, dict] | None = None
    for p in OUT.glob("results-*.json"):
        if p == result_path:
            continue
        if p.stem.removeprefix("results-").replace("-dagster", "").replace("_", "").isdigit() is False:
            continue  # tagged runs (smoke tests, experiments) are not baselines
        try:
            data = json.loads(p.read_text())
        except ValueError:
            continue
        if data.get("mode") != mode or not data.get("size_gb") or data["size_gb"] >= size_gb:
            continue
        if best is None or data["size_gb"] > best[0]:
            best = (data["size_gb"], data)
    if best is None:
        return None
    prev_gb, prev = best
    prev_ours = next((v for v in prev["variants"] if v["variant"] == prev["ours_variant"]), None)
    if not prev_ours:
        return None
    ratio_tree = ours.peak_tree_rss / prev_ours["peak_tree_rss_bytes"]
    ratio_proc = ours.max_proc_rss / prev_ours["max_proc_rss_bytes"]
    ok = ratio_tree <= FLATNESS_MAX_RATIO and ratio_proc <= FLATNESS_MAX_RATIO
    return ok, (
        f"RSS flat from {prev_gb:g} GB to {size_gb:g} GB: tree {mb(prev_ours['peak_tree_rss_bytes'])} -> "
        f"{mb(ours.peak_tree_rss)} MB (x{ratio_tree:.2f}), largest process {mb(prev_ours['max_proc_rss_bytes'])} -> "
        f"{mb(ours.max_proc_rss)} MB (x{ratio_proc:.2f}); limit x{FLATNESS_MAX_RATIO}"
    )


# ============================================================================================= main


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-gb", type=float, default=1.0, help="database size (GiB, pg_database_size); default 1.0")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5432)
    p.add_argument("--user", default="postgres")
    p.add_argument("--rebuild", action="store_true", help="drop and regenerate the bench database")
    p.add_argument("--build-only", action="store_true", help="build/reuse the database, measure nothing")
    p.add_argument("--gen-jobs", type=int, default=os.cpu_count() or 2, help="parallel generator sessions")
    p.add_argument("--gen-batch", type=int, default=20000, help="rows per INSERT batch")
    p.add_argument("--repeat", type=int, default=3, help="interleaved repetitions; the table shows medians")
    p.add_argument("--variants", default="floor,seed,ours", help="subset of floor,seed,ours (comma-separated)")
    p.add_argument(
        "--via-dagster",
        action="store_true",
        help="ours = `dagster asset materialize` of postgres_daily_backup instead of backup_postgres",
    )
    p.add_argument(
        "--profile",
        nargs="?",
        const="default",
        default=None,
        help="also run ours with other settings: 'level=1,threads=-1;level=3,threads=0;...' "
        "(keys: level, threads, chunk_mb, part_mb); no value = a small default grid",
    )
    p.add_argument("--no-warmup", action="store_true", help="skip the unmeasured warm-up pg_dump")
    p.add_argument("--sample-ms", type=float, default=50, help="RSS sampling interval")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=30,
        help="before each run, wait up to this many seconds for the machine to be nearly idle",
    )
    p.add_argument("--partition", default=yesterday_utc(), help="partition key (default: yesterday, UTC)")
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the measured processes (e.g. placeholders --via-dagster needs)",
    )
    p.add_argument("--tag", default="", help="suffix for the results file name")
    return p.parse_args(argv)


DEFAULT_PROFILE = "level=1,threads=-1;level=3,threads=0;level=1,threads=0;level=3,threads=-1,chunk_mb=4"


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    workdir = OUT / "work"
    workdir.mkdir(exist_ok=True)
    pg = Pg(args.host, args.port, args.user)
    db = f"cbd_bench_{size_label(args.size_gb)}gb"
    mode = "dagster" if args.via_dagster else "core"
    result_path = OUT / f"results-{size_label(args.size_gb)}{'-dagster' if args.via_dagster else ''}{args.tag}.json"

    log(f"load average before: {loadavg()}")
    dbinfo = ensure_database(pg, db, args.size_gb, rebuild=args.rebuild, jobs=args.gen_jobs, batch=args.gen_batch)
    dbinfo.update(table_stats(pg, db))
    log(
        f"{db}: {dbinfo['db_bytes'] / GiB:.2f} GiB; heap {mb(dbinfo['heap_bytes'])} MB, toast "
        f"{mb(dbinfo['toast_bytes'])} MB, indexes {mb(dbinfo['index_bytes'])} MB, ~{dbinfo['avg_row_bytes']} B/row"
    )
    if args.build_only:
        return 0

    env = {
        **os.environ,
        **AWS_ENV,
        "PGHOST": args.host,
        "PGPORT": str(args.port),
        "PGUSER": args.user,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    version_before = code_version()
    for item in args.env:
        k, _, v = item.partition("=")
        env[k] = v
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    profiles: list[OursConfig] = []
    if args.profile:
        spec = DEFAULT_PROFILE if args.profile == "default" else args.profile
        profiles = [OursConfig.parse(s) for s in spec.split(";") if s.strip()]
    ours_label = "ours (dagster asset)" if args.via_dagster else OursConfig().label()

    if not args.no_warmup:
        log("warm-up: unmeasured pg_dump -Fc -Z0 > /dev/null (page cache)")
        run_measured("warmup", ["pg_dump", "-Fc", "-Z0", *pg.cli(), db], env=env)

    runs: dict[str, list[Run]] = {}
    with MotoServer(workdir / "moto.log") as moto:
        ctx = Ctx(pg, db, moto, workdir, args.sample_ms / 1000, args.partition, env)
        seed_bucket = moto.new_bucket("cbd-bench-seed")
        ours_bucket = moto.new_bucket("cbd-bench-ours")
        plan: list[tuple[str, Any]] = []
        if "floor" in variants:
            plan.append(("floor", lambda: variant_floor(ctx)))
        if "seed" in variants:
            plan.append(("seed", lambda: variant_seed(ctx, seed_bucket)))
        if "ours" in variants:
            if args.via_dagster:
                plan.append((ours_label, lambda: variant_dagster(ctx, ours_bucket)))
            else:
                plan.append((ours_label, lambda: variant_ours(ctx, ours_bucket, OursConfig())))
        for cfg in profiles:
            plan.append((cfg.label(), lambda cfg=cfg: variant_ours(ctx, ours_bucket, cfg)))
        for rep in range(1, args.repeat + 1):
            for name, fn in plan:
                quiet = settle(args.quiet_wait)
                log(f"[{rep}/{args.repeat}] {name} ... (load {loadavg()})")
                srv0, moto0 = server_cpu(), process_cpu(moto.proc.pid)
                run = fn()
                run.extra["server_cpu_s"] = round(server_cpu() - srv0, 2)
                run.extra["moto_cpu_s"] = round(process_cpu(moto.proc.pid) - moto0, 2)
                run.extra["started_quiet"] = quiet
                moto.empty(seed_bucket)
                moto.empty(ours_bucket)
                runs.setdefault(name, []).append(run)
                log(
                    f"[{rep}/{args.repeat}] {name}: {run.wall_s:.2f}s, tree RSS {mb(run.peak_tree_rss)} MB, "
                    f"max proc {mb(run.max_proc_rss)} MB, cpu {run.cpu_s:.1f}s, stored {run.stored_bytes}"
                )
        moto_rss = moto.rss()

    summaries = [Summary(name, rs) for name, rs in runs.items()]
    by = {s.variant: s for s in summaries}
    floor, seed, ours = by.get("floor"), by.get("seed"), by.get(ours_label)

    out: list[str] = []
    out.append(
        f"PostgreSQL backup benchmark: {db} ({dbinfo['db_bytes'] / GiB:.2f} GiB pg_database_size, "
        f"{dbinfo['rows_estimate']:,} rows), {args.repeat} interleaved repeat(s), medians; "
        f"{os.cpu_count()} cores, {platform.python_version()}"
    )
    version_after = code_version()
    out.append(
        f"code: {version_before}"
        + ("" if version_after == version_before else f" -> {version_after} (changed during the run!)")
    )
    if ours and ours.runs[-1].extra.get("raw_bytes"):
        raw = ours.runs[-1].extra["raw_bytes"]
        out.append(
            f"pg_dump -Fc -Z0 stream: {raw:,} bytes; zstd ratio {raw / ours.stored_bytes:.2f}"
            + (f", seed gzip (plain SQL) {seed.stored_bytes:,} bytes" if seed else "")
        )
    out.append("")
    out.append(print_table(summaries, floor, seed))
    out.append(
        "peak RSS = sampled sum over the measured process tree; max proc = largest single process "
        "(GNU time); cpu s = user+sys of that tree; pg cpu = PostgreSQL server processes; moto cpu = the moto "
        "server (neither is in the tree); host busy = share of all cores busy on the whole machine"
    )
    out.append("")
    if seed:
        st = [statistics.median(r.stages[i].wall_s for r in seed.runs) for i in range(2)]
        out.append(f"seed stages (median): pg_dump|gzip {st[0]:.2f}s + upload_file {st[1]:.2f}s")
    if ours and ours.runs[-1].extra.get("dagster_steps"):
        out.append(
            "dagster steps (last run): "
            + ", ".join(f"{k} {v:.2f}s" for k, v in ours.runs[-1].extra["dagster_steps"].items())
        )
    if ours and ours.runs[-1].extra.get("inner_total_seconds") is not None:
        ex = ours.runs[-1].extra
        out.append(
            f"ours inside the child (last run): import {ex['import_seconds']:.2f}s, backup_postgres "
            f"{ex['child_seconds']:.2f}s (manifest dump_seconds {ex['inner_dump_seconds']})"
        )
    moto_lines = []
    for s in (seed, ours, *[by.get(c.label()) for c in profiles]):
        if s and s.runs[-1].extra.get("complete_seconds") is not None:
            c = statistics.median(r.extra["complete_seconds"] for r in s.runs)
            moto_lines.append(f"{s.variant} {c:.2f}s")
    if moto_lines:
        out.append("moto CompleteMultipartUpload, client-side wall (median): " + ", ".join(moto_lines))
    if ours and floor and ours.runs[-1].extra.get("complete_seconds") is not None:
        adj = statistics.median(r.wall_s - r.extra["complete_seconds"] for r in ours.runs)
        out.append(
            f"(info) ours without moto's CompleteMultipartUpload: {adj:.2f}s = {adj / floor.wall_s:.2f}x floor"
            + (f", {adj / seed.wall_s:.2f}x seed" if seed else "")
        )
    if ours and floor and len(ours.runs) > 1:
        out.append(
            f"(info) best-of-{len(ours.runs)} (robust when other sessions load the machine): ours {ours.wall_min:.2f}s "
            f"= {ours.wall_min / floor.wall_min:.2f}x floor's best"
            + (f", {ours.wall_min / seed.wall_min:.2f}x seed's best" if seed else "")
        )
    out.append(f"moto server RSS at the end (not counted): {mb(moto_rss)} MB; load average after: {loadavg()}")
    out.append("")
    checks: list[tuple[bool, str]] = []
    if ours:
        checks += evaluate(ours, floor, seed)
        flat = flatness(result_path, args.size_gb, ours, mode)
        if flat:
            checks.append(flat)
        elif args.size_gb > 1.0:
            out.append("(no smaller-size result JSON of the same mode in bench/out/: RSS flatness not evaluated)")
    for ok, text in checks:
        out.append(f"{'PASS' if ok else 'FAIL'}  {text}")
    if profiles:
        out.append("")
        out.append("profile (targets: <=1.3x floor, <=0.5x seed, stored <= seed, RSS < 300 MB):")
    for cfg in [OursConfig(), *profiles]:
        s = by.get(cfg.label())
        if s and profiles:
            verdict = "".join("P" if ok else "F" for ok, _ in evaluate(s, floor, seed))
            c = statistics.median(r.extra.get("complete_seconds", 0.0) for r in s.runs)
            out.append(
                f"  {s.variant:<26} {s.wall_s:6.2f}s"
                + (
                    f"  x floor {s.wall_s / floor.wall_s:.2f} (w/o moto complete {(s.wall_s - c) / floor.wall_s:.2f})"
                    if floor
                    else ""
                )
                + (
                    f"  x seed {s.wall_s / seed.wall_s:.2f}  stored/seed {s.stored_bytes / seed.stored_bytes:.3f}"
                    if seed
                    else ""
                )
                + f"  RSS {mb(s.peak_tree_rss)} MB  cpu {s.cpu_s:.1f}s  [{verdict}]"
            )
    report = "\n".join(out)
    print(report, flush=True)

    result_path.write_text(
        json.dumps(
            {
                "size_gb": args.size_gb,
                "mode": mode,
                "ours_variant": ours_label,
                "database": dbinfo,
                "argv": sys.argv,
                "host": {"cores": os.cpu_count(), "python": platform.python_version(), "node": platform.node()},
                "partition": args.partition,
                "code_version": {"before": version_before, "after": version_after},
                "repeat": args.repeat,
                "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "variants": [s.to_json() for s in summaries],
                "checks": [{"pass": ok, "text": t} for ok, t in checks],
                "report": report,
            },
            indent=2,
        )
        + "\n"
    )
    log(f"results written to {result_path}")
    return 0 if all(ok for ok, _ in checks) else 1


# ==================================================================== children (the measured code)


def child_upload(argv: list[str]) -> int:
    """The seed script's upload step: boto3 upload_file with its default transfer settings."""
    p = argparse.ArgumentParser()
    for name in ("--endpoint", "--bucket", "--key", "--file", "--result"):
        p.add_argument(name, required=True)
    a = p.parse_args(argv)
    client = s3_client(a.endpoint)
    calls = time_s3_calls(client)
    client.upload_file(a.file, a.bucket, a.key)
    Path(a.result).write_text(json.dumps({"s3_calls": calls}))
    return 0


def child_ours(argv: list[str]) -> int:
    """backup_postgres into S3Storage, exactly as a caller of the core would; writes the manifest as JSON."""
    t0 = time.monotonic()
    p = argparse.ArgumentParser()
    for name in ("--url", "--endpoint", "--bucket", "--prefix", "--series", "--partition", "--config", "--result"):
        p.add_argument(name, required=True)
    p.add_argument("--local-root")
    a = p.parse_args(argv)
    cfg = OursConfig(**json.loads(a.config))
    sys.path.insert(0, str(REPO))
    from cidadao_backup_dagster.core.artifacts import pipeline
    from cidadao_backup_dagster.core.artifacts.storage import DEFAULT_PART_SIZE, LocalStorage, S3Storage
    from cidadao_backup_dagster.core.postgres.backup import BackupSettings, backup_postgres
    from cidadao_backup_dagster.core.postgres.client import PgConnection

    if cfg.chunk_mb is not None:  # bench-only experiment: the module constant the pipeline reads per call
        pipeline.CHUNK = int(cfg.chunk_mb * MiB)
    client = s3_client(a.endpoint)
    calls = time_s3_calls(client)
    if cfg.local:
        storage = LocalStorage(a.local_root)
    else:
        storage = S3Storage(
            client, a.bucket, a.prefix, part_size=cfg.part_mb * MiB if cfg.part_mb else DEFAULT_PART_SIZE
        )
    t1 = time.monotonic()
    manifest = backup_postgres(
        PgConnection.from_url(a.url),
        storage,
        series=a.series,
        partition=a.partition,
        settings=BackupSettings(zstd_level=cfg.zstd_level, zstd_threads=cfg.zstd_threads),
    )
    t2 = time.monotonic()
    import resource

    Path(a.result).write_text(
        json.dumps(
            {
                "manifest": manifest.data,
                "import_seconds": t1 - t0,
                "child_seconds": t2 - t1,
                "s3_calls": calls,
                "self_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            }
        )
    )
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_upload":
        sys.exit(child_upload(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "_ours":
        sys.exit(child_ours(sys.argv[2:]))
    sys.exit(main(sys.argv[1:]))
