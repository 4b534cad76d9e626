#!/usr/bin/env python3
"""The benchmarks' one harness: what every bench script in bench/ shares.

- the operator command lines that are measured (`dg launch --assets`, `dg launch --job`, `pg_dump`,
  `pg_restore`, `redis-cli --rdb`, ...), all in the "operator commands" section below, so a change of CLI
  is made once;
- whole-process measurement: wall time, peak RSS of the whole process tree (a thread polls /proc: pg_dump,
  redis-cli and any step process a run is asked to start), the largest single process (GNU /usr/bin/time), CPU;
- the investigations-like database builder (a table of a target size, reused across runs);
- a moto S3 server process, and a throwaway DAGSTER_HOME whose run is read back for step times;
- the common CLI (`--size-gb`, `--repeat`, ...), interleaved repeats, and the report: medians, ratios
  against the baselines measured in the same run, PASS/FAIL lines, a results JSON in bench/out/.

It is also a small CLI for the measured shell pipelines (`python bench/harness.py s3-put|s3-get ...`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = HERE / "out"
HARNESS = Path(__file__).resolve()
MiB = 1024 * 1024
GiB = 1024 * MiB
PAGE = os.sysconf("SC_PAGE_SIZE")
CLK_TCK = os.sysconf("SC_CLK_TCK")
GNU_TIME = "/usr/bin/time"

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
    """The newest complete daily partition."""
    return (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)).isoformat()


def previous_hour_utc() -> str:
    """The newest complete hourly partition, in Dagster's hourly key format."""
    hour = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=1)
    return hour.strftime("%Y-%m-%d-%H:%M")


def code_version() -> str:
    """The commit the measured code comes from, and whether the package differs from it (other sessions
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


def venv_tool(name: str) -> str:
    """A console script of this interpreter's environment (dagster, moto_server), else the one on PATH."""
    exe = Path(sys.executable).parent / name
    return str(exe) if exe.exists() else name


def base_env(extra: list[str] | None = None) -> dict[str, str]:
    """Environment of every measured process: this one, fake AWS keys for moto, this checkout first on
    PYTHONPATH (so the measured code is this worktree's), plus `--env KEY=VALUE` items."""
    env = {
        **os.environ,
        **AWS_ENV,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    for item in extra or []:
        k, _, v = item.partition("=")
        env[k] = v
    return env


# ================================================================================= operator commands
# Every measured command line is built here, and only here.

DAGSTER_MODULE = "cidadao_backup_dagster.definitions"


def dg_launch_assets(
    select: str, *, partition: str | None = None, partition_range: str | None = None, config: Path | None = None
) -> list[str]:
    """What an operator runs to materialize assets (one partition or a single-run range), as the README says:
    `dg launch --assets`, which runs the code location's implicit asset job with its executor."""
    argv = [venv_tool("dg"), "launch", "-m", DAGSTER_MODULE, "--assets", select]
    if partition:
        argv += ["--partition", partition]
    if partition_range:
        argv += ["--partition-range", partition_range]
    if config:
        argv += ["-c", str(config)]
    return argv


def dg_launch_job(job: str, config: Path) -> list[str]:
    """What an operator runs to launch a job with a YAML config (e.g. restore_postgres): `dg launch --job`."""
    return [venv_tool("dg"), "launch", "-m", DAGSTER_MODULE, "--job", job, "-c", str(config)]


def code_location_load() -> list[str]:
    """Interpreter start, imports and building the definitions: the part of every run before any work."""
    return [sys.executable, "-c", f"import {DAGSTER_MODULE}"]


def pg_dump_floor(pg: Pg, db: str) -> list[str]:
    """The floor: the fastest a dump leaves this machine (run with stdout to /dev/null)."""
    return ["pg_dump", "-Fc", "-Z0", *pg.cli(), db]


def pg_dump_gzip(pg: Pg, db: str, out: Path) -> list[str]:
    """The strategy document's dump step: plain SQL through gzip into a local file."""
    script = f'set -eo pipefail; pg_dump "$@" | gzip > {shlex.quote(str(out))}'
    return ["bash", "-c", script, "pg_dump_gzip", *pg.cli(), db]


def s3_put(endpoint: str, bucket: str, key: str, path: Path, result: Path | None = None) -> list[str]:
    """boto3 `upload_file` with its default TransferConfig (multipart, 10 threads): the scripts' upload."""
    argv = [sys.executable, str(HARNESS), "s3-put", endpoint, bucket, key, str(path)]
    return argv + (["--result", str(result)] if result else [])


def s3_get(endpoint: str, bucket: str, key: str, path: Path) -> list[str]:
    """boto3 `download_file` with its default TransferConfig."""
    return [sys.executable, str(HARNESS), "s3-get", endpoint, bucket, key, str(path)]


def _restore_script(pg: Pg, dump: Path, target_db: str, jobs: int) -> str:
    cli = shlex.join(pg.cli())
    db = shlex.quote(target_db)
    restore = f"pg_restore {cli} --jobs {jobs} --exit-on-error --dbname {db} {shlex.quote(str(dump))}"
    return f"createdb {cli} {db} && {restore}"


def pg_restore_file(pg: Pg, dump: Path, target_db: str, jobs: int = 2) -> list[str]:
    """createdb + `pg_restore --jobs` from a local, already uncompressed custom-format file."""
    return ["bash", "-c", "set -e; " + _restore_script(pg, dump, target_db, jobs)]


def stock_restore(
    pg: Pg, endpoint: str, bucket: str, key: str, workdir: Path, target_db: str, jobs: int = 2
) -> list[str]:
    """The stock restore pipeline: download the .dump.zst, `zstd -d` it, createdb, `pg_restore --jobs`."""
    zst, dump = workdir / "stock.dump.zst", workdir / "stock.dump"
    files = f"{shlex.quote(str(zst))} {shlex.quote(str(dump))}"
    script = (
        f"set -e; trap 'rm -f {files}' EXIT; {shlex.join(s3_get(endpoint, bucket, key, zst))}; "
        f"zstd -d -q -f {shlex.quote(str(zst))} -o {shlex.quote(str(dump))}; "
        + _restore_script(pg, dump, target_db, jobs)
    )
    return ["bash", "-c", script]


def redis_cli_rdb(port: int, path: Path) -> list[str]:
    """The fastest way to pull an RDB off a server."""
    return ["redis-cli", "-p", str(port), "--rdb", str(path)]


def psql_json_gzip(source: str, out: Path) -> list[str]:
    """The strategy/issue's export one-liner; the database URL comes from $BENCH_URL."""
    copy = f"COPY (SELECT row_to_json(t) FROM {source} t) TO STDOUT"
    return ["bash", "-o", "pipefail", "-c", f'psql -X -q -d "$BENCH_URL" -c "{copy}" | gzip > {shlex.quote(str(out))}']


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

    @staticmethod
    def _image(pid: int) -> tuple[str, bytes] | None:
        try:
            return os.readlink(f"/proc/{pid}/exe"), Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None

    @staticmethod
    def _private(pid: int) -> int:
        """Pages only this process holds (smaps_rollup Private_*): what a fork adds before it execs."""
        total = 0
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    total += int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return 0
        return total

    @classmethod
    def _same_address_space(cls, child_private: int, parent: int) -> bool:
        """A fork's private pages start near zero (everything is shared with the parent, whose own private
        pages drop alike); a vfork child's equal its parent's, because they are the same pages."""
        parent_private = cls._private(parent)
        return parent_private > 0 and abs(child_private - parent_private) <= 0.05 * parent_private

    def sample(self) -> None:
        stack, total, procs = [(self.root, None)], 0, {}
        while stack:
            pid, parent = stack.pop()
            stack.extend((kid, pid) for kid in self._children(pid))
            if pid == self.root and self.skip_root:
                continue  # the /usr/bin/time wrapper: measurement overhead, not the measured work
            rss, name = self._rss_and_name(pid)
            image = self._image(pid) if parent is not None else None
            if image is not None and image == self._image(parent):
                # Forked and not yet exec'd (Dagster's log capture, a subprocess): it shares its parent's
                # pages, so only its private ones are memory the tree adds. A vfork()ed child (how Python's
                # subprocess starts programs) runs in its parent's own address space until it execs: smaps
                # then shows the parent's private pages again, which are no memory of its own.
                private = self._private(pid)
                rss, name = (0 if self._same_address_space(private, parent) else private), f"{name}(fork)"
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
    cwd: Path = REPO,
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
        proc = subprocess.Popen(full, stdout=stdout, stderr=err, env=env, cwd=cwd)
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
FROM generate_series({{lo}}::bigint, {{hi}}::bigint - 1) AS g
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


# The exports' shape: the application's own schema (cidadao_backup_dagster.demo.SCHEMA, 9 columns), rows in
# created_at order over DAYS UTC days from FIRST_DAY (as an application inserts them, so a day's rows sit
# together on disk), 1 query in 50 holding quotes and backslashes (what breaks text-mode COPY's JSON).
EXPORT_FIRST_DAY = "2026-10-01"
EXPORT_DAYS = 30
EXPORT_INSERT_SQL = """
INSERT INTO investigations (user_id, query, status, results, metadata, confidence, created_at, updated_at)
SELECT
    'user-' || (g % 997),
    (ARRAY['Contratos emergenciais de', 'Licitações com preço acima da média em', 'Pagamentos a fornecedores de',
           'Despesas com diárias em', 'Convênios suspeitos de', 'Aditivos contratuais em'])[1 + g % 6]
      || ' ' || (ARRAY['merenda escolar', 'saúde', 'obras públicas', 'transporte', 'tecnologia',
                       'segurança'])[1 + g % 5]
      || ' — ' || (ARRAY['Ministério da Saúde', 'Prefeitura de São Paulo', 'Governo do Pará', 'MEC',
                         'Ministério da Defesa', 'Câmara de Recife', 'DNIT'])[1 + g % 7]
      || CASE WHEN g % 50 = 0 THEN ' "urgente" (processo C:\\2024\\' || g || ')' ELSE '' END
      || ' (' || (2019 + g % 6) || ')',
    (ARRAY['completed', 'completed', 'completed', 'running', 'pending', 'failed', 'cancelled'])[1 + g % 7],
    jsonb_build_object(
        'anomalies', jsonb_build_array(
            jsonb_build_object('type', (ARRAY['price_deviation', 'vendor_concentration', 'temporal_pattern',
                                              'duplicate_contract'])[1 + g % 4],
                               'score', round((random())::numeric, 4),
                               'contract_id', 'CT-' || lpad((g::bigint * 7919 % 1000000)::text, 7, '0'),
                               'amount_brl', round((random() * 5000000)::numeric, 2))),
        'summary', 'Foram analisados ' || (g % 500 + 10) || ' contratos; ' || (g % 13) || ' com indícios.',
        'sources', jsonb_build_array('portal_transparencia', 'tce', 'siafi')),
    jsonb_build_object('agents', jsonb_build_array('Zumbi dos Palmares', 'Anita Garibaldi', 'Tiradentes'),
                       'duration_ms', (random() * 90000)::int, 'model', 'cidadao-ai-v' || (1 + g % 3),
                       'ip_hash', md5(g::text)),
    round((0.5 + random() / 2)::numeric, 4),
    timestamptz '{first}T00:00:00Z' + (g::double precision / {total} * {days} * 86400) * interval '1 second',
    timestamptz '{first}T00:00:00Z' + (g::double precision / {total} * {days} * 86400 + 600) * interval '1 second'
FROM generate_series({lo}::bigint, {hi}::bigint - 1) AS g
"""


@dataclass(frozen=True)
class Shape:
    """What a bench database holds. `row_bytes` set: sized by rows (the generator needs the total up front),
    `size_gb * GiB / row_bytes` of them; unset: filled until pg_database_size reaches the target."""

    stem: str  # database name: <stem>_<size>gb
    marker: str  # bump when the generator changes, so stale databases are rebuilt
    ddl: str
    insert_sql: str  # placeholders {lo} {hi} {total}; run without parameters (the SQL is full of `%`)
    session_sql: str = ""  # per generator session (pg_temp helper functions)
    row_bytes: int | None = None

    def database(self, size_gb: float) -> str:
        return f"{self.stem}_{size_label(size_gb)}gb"


BACKUP_SHAPE = Shape("cbd_bench", "cbd-bench v1", TABLE_SQL, INSERT_SQL, helper_functions_sql())


def export_shape() -> Shape:
    from cidadao_backup_dagster.demo import SCHEMA

    sql = EXPORT_INSERT_SQL.replace("{first}", EXPORT_FIRST_DAY).replace("{days}", str(EXPORT_DAYS))
    return Shape("cbd_bench_exports", "cbd-bench-exports v2", SCHEMA, sql, row_bytes=740)


def db_info(pg: Pg, db: str) -> tuple[bool, int, str | None]:
    with pg.connect("postgres") as conn:
        row = conn.execute(
            "SELECT pg_database_size(oid), shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
            (db,),
        ).fetchone()
    return (False, 0, None) if row is None else (True, int(row[0]), row[1])


def ensure_database(
    pg: Pg, shape: Shape, size_gb: float, *, rows: int | None = None, rebuild: bool = False, jobs: int = 2,
    batch: int = 20000,
) -> dict:  # fmt: skip
    """Build (or reuse) `shape`'s database of about `size_gb` GiB: rows generated server-side, one session
    per core, then VACUUM ANALYZE (hint bits set, so the first measured dump does not pay for them)."""
    db = shape.database(size_gb) if rows is None else f"{shape.stem}_{rows}rows"
    target = int(size_gb * GiB)
    if shape.row_bytes:
        rows = rows or max(int(target / shape.row_bytes), batch)
        marker = f"{shape.marker} rows={rows}"
    else:
        marker = f"{shape.marker} target_bytes={target}"
    exists, size, comment = db_info(pg, db)
    fits = shape.row_bytes is not None or target <= size <= target * 1.3
    if exists and not rebuild and comment and comment.startswith(marker + " ") and fits:
        log(f"reusing {db}: {size / GiB:.2f} GiB ({comment})")
        return {"database": db, "reused": True, "db_bytes": size, "comment": comment, "build_seconds": None}
    if exists:
        log(f"dropping {db} (size {size / GiB:.2f} GiB, marker {comment!r}, rebuild={rebuild})")
    t0 = time.monotonic()
    with pg.connect("postgres") as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{db}"')
    with pg.connect(db) as conn:
        conn.execute(shape.ddl)

    def insert(conn, lo: int, hi: int) -> None:
        total = rows or hi
        conn.execute(shape.insert_sql.replace("{lo}", str(lo)).replace("{hi}", str(hi)).replace("{total}", str(total)))

    def session():
        conn = pg.connect(db)
        conn.execute("SET synchronous_commit = off")
        if shape.session_sql:
            conn.execute(shape.session_sql)
        return conn

    # Calibrate bytes per row on one batch, then fill in parallel (one session per core), then top up.
    with session() as conn:
        before = db_info(pg, db)[1]
        t = time.monotonic()
        insert(conn, 0, min(batch, rows or batch))
        conn.execute("CHECKPOINT")
        after = db_info(pg, db)[1]
    next_lo = min(batch, rows or batch)
    per_row = max((after - before) / next_lo, 200)
    log(f"calibration: {next_lo} rows in {time.monotonic() - t:.1f}s, ~{per_row:.0f} bytes/row on disk")
    lock = threading.Lock()
    while True:
        current = db_info(pg, db)[1]
        if rows is not None:
            needed = rows - next_lo
        else:
            needed = 0 if current >= target else int((target - current) / per_row * 1.01) + 1
        if needed <= 0:
            break
        batches = [(lo, min(lo + batch, next_lo + needed)) for lo in range(next_lo, next_lo + needed, batch)]
        next_lo += needed
        log(f"{db}: {current / GiB:.2f} GiB of ~{target / GiB:.2f}; inserting {needed} rows in {len(batches)} batches")
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
        count = conn.execute("SELECT count(*) FROM investigations").fetchone()[0]
    size = db_info(pg, db)[1]
    counted = "" if shape.row_bytes else f" rows={count}"  # rows-sized markers already say how many
    comment = f"{marker}{counted} built={dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%M:%SZ}"
    with pg.connect("postgres") as conn:
        conn.execute(f"COMMENT ON DATABASE \"{db}\" IS '{comment}'")
    took = time.monotonic() - t0
    log(f"built {db}: {size / GiB:.2f} GiB, {count} rows in {took:.0f}s")
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


def drop_database(pg: Pg, db: str) -> None:
    with pg.connect("postgres") as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


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

    def manifests(self, bucket: str) -> list[dict]:
        """Every backup manifest in the bucket, parsed (sorted by key)."""
        client, out = self.client(), []
        for obj in sorted(self.objects(bucket), key=lambda o: o["Key"]):
            name = obj["Key"].rsplit("/", 1)[-1]
            if name.startswith("manifest") and name.endswith(".json"):  # manifest-<written>-<random>.json
                out.append(json.loads(client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()))
        return out


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


# ============================================================================================ dagster


def dagster_home(workdir: Path) -> Path:
    """A throwaway DAGSTER_HOME (sqlite run storage) for one measured CLI run."""
    home = Path(tempfile.mkdtemp(prefix="dagster_home-", dir=workdir))
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return home


def run_dagster(label: str, argv: list[str], env: dict[str, str], workdir: Path, sample_s: float) -> Run:
    """Measure one Dagster CLI run as a whole process tree (the CLI, pg_dump and any step process), then read the
    run back from its instance (unmeasured): step times, step output and materialization metadata."""
    home = dagster_home(workdir)
    try:
        # Not from the checkout: `dg launch -m` puts its working directory first on sys.path, and PYTHONPATH
        # must choose the measured code (`--env PYTHONPATH=<another checkout>` measures that one).
        m = run_measured(
            label, argv, env={**env, "DAGSTER_HOME": str(home)}, sample_s=sample_s, check=False, cwd=home
        )
        info = subprocess.run(
            [sys.executable, str(HARNESS), "dagster-run-info", str(home)],
            env={**env, "DAGSTER_HOME": str(home)},
            capture_output=True,
            text=True,
        )
    finally:
        shutil.rmtree(home, ignore_errors=True)
    try:
        extra = json.loads(info.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        extra = {"run_info_error": info.stderr[-2000:]}
    if m.exit_code != 0 or not extra.get("success"):
        detail = extra.get("run_info_error") or m.stderr_tail[-3000:]
        raise RuntimeError(f"{label} failed (exit {m.exit_code}): {shlex.join(argv)}\n{detail}")
    return Run([m], extra=extra)


def _dagster_run_info(home: str) -> int:
    """Child: the newest run of the instance at `home` as JSON (success, step seconds, metadata)."""
    os.environ["DAGSTER_HOME"] = home
    import dagster as dg

    instance = dg.DagsterInstance.get()
    runs = instance.get_runs(limit=1)
    if not runs:
        print(json.dumps({"success": False}))
        return 0
    run = runs[0]
    steps: dict[str, float] = {}
    outputs: dict[str, dict] = {}
    checks: dict[str, bool] = {}
    step_processes = 0  # the multiprocess executor records one STEP_WORKER_STARTED per step process

    def jsonable(value: Any) -> Any:
        try:
            json.dumps(value)
            return value
        except Exception:  # noqa: BLE001 - e.g. Dagster @record values refuse the encoder's iteration
            return str(value)

    def plain(meta) -> dict:
        return {k: jsonable(getattr(v, "value", v)) for k, v in (meta or {}).items()}

    for record in instance.all_logs(run.run_id):
        event = record.dagster_event
        if event is None:
            continue
        data = event.event_specific_data
        step_processes += event.event_type_value == "STEP_WORKER_STARTED"
        if event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE") and getattr(data, "duration_ms", None):
            steps[event.step_key] = round(data.duration_ms / 1000, 3)
        elif event.event_type_value == "STEP_OUTPUT":
            outputs[event.step_key] = plain(data.metadata)
        elif event.event_type_value == "ASSET_MATERIALIZATION":
            outputs[f"{event.step_key}:materialization"] = plain(data.materialization.metadata)
        elif event.event_type_value == "ASSET_CHECK_EVALUATION":
            checks[data.check_name] = data.passed
    result = {"success": run.status == dg.DagsterRunStatus.SUCCESS, "steps": steps, "outputs": outputs}
    result["step_processes"] = step_processes
    print(json.dumps({**result, "checks": checks}, default=str))
    return 0


# ============================================================================================ results


@dataclass
class Run:
    """One measured execution of a variant (possibly several measured stages, e.g. dump then upload)."""

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
class Summary:
    """Every run of one variant: medians for time and CPU, maxima for memory."""

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

    @property
    def last(self) -> dict:
        return self.runs[-1].extra

    def median_extra(self, key: str) -> float | None:
        vals = [r.extra[key] for r in self.runs if r.extra.get(key) is not None]
        return statistics.median(vals) if vals else None

    def median_stage(self, i: int) -> float:
        return statistics.median(r.stages[i].wall_s for r in self.runs)

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


def ratio_table(summaries: list[Summary], baselines: list[str]) -> str:
    """Medians of every variant, with its ratio to each baseline measured in the same run."""
    by = {s.variant: s for s in summaries}
    bases = [by[b] for b in baselines if b in by]
    width = max([28, *(len(s.variant) + 1 for s in summaries)])
    ratio_heads = "".join(f" {'x ' + b.variant[:10]:>13}" for b in bases)
    head = (
        f"{'variant':<{width}} {'wall s':>8} {'min s':>7}{ratio_heads} {'stored bytes':>14} "
        f"{'peak RSS MB':>11} {'max proc MB':>11} {'cpu s':>7} {'pg cpu':>6} {'moto cpu':>8} {'host busy':>9}"
    )
    lines = [head, "-" * len(head)]
    for s in summaries:
        ratios = "".join(f" {s.wall_s / b.wall_s:>13.2f}" for b in bases)
        stored = f"{s.stored_bytes:,}" if s.stored_bytes else "-"
        pg_cpu, moto_cpu = _f1(s.median_extra("server_cpu_s")), _f1(s.median_extra("moto_cpu_s"))
        lines.append(
            f"{s.variant:<{width}} {s.wall_s:>8.2f} {s.wall_min:>7.2f}{ratios} {stored:>14} "
            f"{mb(s.peak_tree_rss):>11} {mb(s.max_proc_rss):>11} {s.cpu_s:>7.1f} "
            f"{pg_cpu:>6} {moto_cpu:>8} {s.host_busy:>9.0%}"
        )
    lines.append(
        "medians of the interleaved repeats; min s = best run; peak RSS = sampled sum over the measured process "
        "tree; max proc = largest single process (GNU time); cpu s = user+sys of that tree; pg cpu = PostgreSQL "
        "server processes; moto cpu = the moto server (neither is in the tree); host busy = whole machine"
    )
    return "\n".join(lines)


def ratio_check(s: Summary, base: Summary, limit: float, what: str = "wall") -> tuple[bool, str]:
    ratio = s.wall_s / base.wall_s
    return ratio <= limit, (
        f"{s.variant} {what} {s.wall_s:.2f}s <= {limit}x {base.variant} ({limit * base.wall_s:.2f}s): ratio {ratio:.2f}"
    )


def rss_check(s: Summary, limit_mb: float) -> tuple[bool, str]:
    return s.peak_tree_rss < limit_mb * MiB, (
        f"{s.variant} peak RSS (process tree) {mb(s.peak_tree_rss)} MB < {limit_mb:g} MB "
        f"(largest single process {mb(s.max_proc_rss)} MB)"
    )


def check_lines(checks: list[tuple[bool, str]]) -> list[str]:
    return [f"{'PASS' if ok else 'FAIL'}  {text}" for ok, text in checks]


# ============================================================================================ session


def parse_args(
    description: str, argv: list[str] | None, *, size_gb: float = 1.0, repeat: int = 3, variants: str = "",
    more: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:  # fmt: skip
    """The CLI every bench script shares, plus its own options (`more`)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-gb", type=float, default=size_gb, help=f"data size in GiB (default {size_gb:g})")
    p.add_argument(
        "--repeat", "--repeats", type=int, default=repeat, help="interleaved repetitions; the table shows medians"
    )
    p.add_argument("--variants", default=variants, help=f"comma-separated subset of: {variants}")
    p.add_argument("--host", default="127.0.0.1", help="PostgreSQL host")
    p.add_argument("--port", type=int, default=5432, help="PostgreSQL port")
    p.add_argument("--user", default="postgres", help="PostgreSQL user (trust auth)")
    p.add_argument("--rebuild", action="store_true", help="drop and regenerate the bench database")
    p.add_argument("--sample-ms", type=float, default=50, help="RSS sampling interval")
    p.add_argument(
        "--quiet-wait", type=float, default=30, help="before each run, wait up to this long for an idle machine"
    )
    p.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="extra environment for the measured processes"
    )
    p.add_argument("--tag", default="", help="suffix for the results file name")
    if more:
        more(p)
    args = p.parse_args(argv)
    args.variant_list = [v.strip() for v in args.variants.split(",") if v.strip()]
    return args


class Session:
    """One benchmark run: output folder, environment, and the interleaved measuring loop."""

    def __init__(self, args: argparse.Namespace, name: str):
        self.args = args
        self.name = name
        self.workdir = OUT / "work" / name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.env = base_env(args.env)
        self.sample_s = args.sample_ms / 1000
        self.pg = Pg(args.host, args.port, args.user)
        self.env.update(PGHOST=args.host, PGPORT=str(args.port), PGUSER=args.user)
        self.version_before = code_version()
        self.started = dt.datetime.now(dt.UTC)
        log(f"load average before: {loadavg()}; code {self.version_before}")

    def wants(self, variant: str) -> bool:
        return variant in self.args.variant_list

    def measure(self, label: str, argv: list[str], env: dict[str, str] | None = None, **kw: Any) -> Measured:
        return run_measured(label, argv, env=env or self.env, sample_s=self.sample_s, **kw)

    def dagster(self, label: str, argv: list[str], env: dict[str, str]) -> Run:
        return run_dagster(label, argv, {**self.env, **env}, self.workdir, self.sample_s)

    def interleave(
        self, plan: list[tuple[str, Callable[[], Run]]], *, moto: MotoServer | None = None,
        after_each: Callable[[], None] | None = None,
    ) -> list[Summary]:  # fmt: skip
        """Run every variant of `plan` once per repeat, in turn (a busy moment hits all variants alike)."""
        runs: dict[str, list[Run]] = {}
        for rep in range(1, self.args.repeat + 1):
            for name, fn in plan:
                quiet = settle(self.args.quiet_wait)
                log(f"[{rep}/{self.args.repeat}] {name} ... (load {loadavg()})")
                srv0 = server_cpu()
                moto0 = process_cpu(moto.proc.pid) if moto else 0.0
                run = fn()
                run.extra["server_cpu_s"] = round(max(server_cpu() - srv0, 0.0), 2)
                if moto:
                    run.extra["moto_cpu_s"] = round(process_cpu(moto.proc.pid) - moto0, 2)
                run.extra["started_quiet"] = quiet
                if after_each:
                    after_each()
                runs.setdefault(name, []).append(run)
                log(
                    f"[{rep}/{self.args.repeat}] {name}: {run.wall_s:.2f}s, tree RSS {mb(run.peak_tree_rss)} MB, "
                    f"max proc {mb(run.max_proc_rss)} MB, cpu {run.cpu_s:.1f}s, stored {run.stored_bytes}"
                )
        return [Summary(name, rs) for name, rs in runs.items()]

    def header(self, title: str) -> list[str]:
        after = code_version()
        return [
            f"{title}; {self.args.repeat} interleaved repeat(s); {os.cpu_count()} cores, Python "
            f"{platform.python_version()}, load average after: {loadavg()}",
            f"code: {self.version_before}"
            + ("" if after == self.version_before else f" -> {after} (changed during the run!)"),
        ]

    def finish(
        self, lines: list[str], summaries: list[Summary], checks: list[tuple[bool, str]], result: Path,
        **data: Any,
    ) -> int:  # fmt: skip
        """Print the report and write the results JSON; exit code 0 only when every check passes."""
        report = "\n".join([*lines, "", *check_lines(checks)])
        print(report, flush=True)
        result.write_text(
            json.dumps(
                {
                    **data,
                    "size_gb": self.args.size_gb,
                    "argv": sys.argv,
                    "host": {"cores": os.cpu_count(), "python": platform.python_version(), "node": platform.node()},
                    "code_version": {"before": self.version_before, "after": code_version()},
                    "repeat": self.args.repeat,
                    "started_at": self.started.isoformat(timespec="seconds"),
                    "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "variants": [s.to_json() for s in summaries],
                    "checks": [{"pass": ok, "text": t} for ok, t in checks],
                    "report": report,
                },
                indent=2,
                default=str,
            )
            + "\n"
        )
        log(f"results written to {result}")
        return 0 if all(ok for ok, _ in checks) else 1


# ====================================================================== children (measured helpers)


def _s3_put(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="harness.py s3-put")
    p.add_argument("endpoint")
    p.add_argument("bucket")
    p.add_argument("key")
    p.add_argument("path")
    p.add_argument("--result")
    a = p.parse_args(argv)
    client = s3_client(a.endpoint)
    calls = time_s3_calls(client)
    client.upload_file(a.path, a.bucket, a.key)
    if a.result:
        Path(a.result).write_text(json.dumps({"s3_calls": calls}))
    return 0


def _s3_get(argv: list[str]) -> int:
    endpoint, bucket, key, path = argv
    s3_client(endpoint).download_file(bucket, key, path)
    return 0


if __name__ == "__main__":
    commands = {
        "s3-put": _s3_put,
        "s3-get": _s3_get,
        "dagster-run-info": lambda a: _dagster_run_info(*a),
    }
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit(f"usage: harness.py {{{'|'.join(commands)}}} ...")
    sys.exit(commands[sys.argv[1]](sys.argv[2:]))
