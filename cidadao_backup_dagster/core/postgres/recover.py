"""Scenario 2, accidental DELETE: bring chosen rows of one table back from a backup into the live table.

The backup goes into a temporary database (schema plus that one table's data, no indexes) on the scratch
server (the drill server when DRILL_DATABASE_URL is set, else the live one), the rows matching the operator's
filter are staged on the live server in a TEMP table, and inserted with `ON CONFLICT DO NOTHING` (or
`DO UPDATE`) in one transaction. The dry run stages, counts, samples and rolls back: the live table is never
written. The temporary database is dropped whatever happens.

The filter is one SQL expression, never a script: `check_filter` refuses statement separators, comments and
unbalanced parentheses before anything runs; it is evaluated only on the temporary copy, in a READ ONLY
transaction, first through the extended protocol (whose Parse refuses more than one statement: a second guard).
The live server never sees the filter's text.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from ..artifacts.manifest import Manifest
from ..artifacts.storage import Storage
from ..errors import BackupError, RefusedError
from ..protection.scratch import RECOVER_PREFIX, create_scratch_database, scratch_name
from .client import BinDir, PgConnection, pg_binary, restore_client
from .restore import Logger, drop_database, fetch_archive, run_pg_restore


@dataclass
class RecoverResult:
    table: str
    partition: str
    matched_in_backup: int
    would_insert: int
    already_present: int
    inserted: int = 0
    updated: int = 0
    dry_run: bool = True
    sample: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def split_table(name: str) -> tuple[str, str]:
    schema, _, table = name.rpartition(".")
    return (schema or "public"), table


def _restore_one_table(archive: Path, temp: PgConnection, schema: str, table: str, bin_dir: BinDir) -> None:
    """Pre-data for everything (types, domains, functions the table may need) plus this table's data only."""
    toc = subprocess.run(
        [pg_binary("pg_restore", bin_dir), "--list", str(archive)], capture_output=True, text=True, check=True
    ).stdout
    wanted = f" TABLE DATA {schema} {table} "
    keep = [
        line
        for line in toc.splitlines()
        if line.startswith(";") or (" TABLE DATA " not in line and " BLOB" not in line) or wanted in line
    ]
    if not any(wanted in line for line in keep):
        raise BackupError(f"The backup holds no data for table {schema}.{table}: check the table name")
    with tempfile.NamedTemporaryFile("w", suffix=".list", delete=False) as f:
        f.write("\n".join(keep) + "\n")
    try:
        run_pg_restore(
            archive,
            temp,
            jobs=1,
            no_owner=True,
            extra_args=("--section=pre-data", "--section=data", f"--use-list={f.name}"),
            bin_dir=bin_dir,
        )
    finally:
        Path(f.name).unlink(missing_ok=True)


def _key_columns(conn: psycopg.Connection, schema: str, table: str) -> list[str]:
    """Primary key, else the first unique constraint: what ON CONFLICT needs to avoid duplicating rows."""
    rows = conn.execute(
        """SELECT con.contype, array_agg(a.attname ORDER BY k.ord)
           FROM pg_constraint con
           CROSS JOIN LATERAL unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord)
           JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum
           WHERE con.conrelid = %s::regclass AND con.contype IN ('p', 'u')
           GROUP BY con.oid, con.contype ORDER BY con.contype, con.oid""",
        (sql.Identifier(schema, table).as_string(conn),),
    ).fetchall()
    return list(rows[0][1]) if rows else []


def _insertable_columns(conn: psycopg.Connection, schema: str, table: str) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            """SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0
               AND NOT attisdropped AND attgenerated = '' ORDER BY attnum""",
            (sql.Identifier(schema, table).as_string(conn),),
        )
    ]


# ------------------------------------------------------------------------------------------- the filter

_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_\u0080-\U0010ffff]*)?\$")
_ONE_EXPRESSION = "one boolean expression, e.g. \"created_at >= '2026-11-20' AND status = 'completed'\""


def _ident_char(c: str) -> bool:
    return c.isalnum() or c in "_$" or ord(c) >= 0x80


def _end_of_quoted(text: str, start: int, quote: str, *, backslash: bool) -> int | None:
    """Index just past the quote closing the literal/identifier opened at `start`; None when it never closes.
    A doubled quote is part of the text; in an E'' string so is a backslash-escaped one."""
    i = start + 1
    while i < len(text):
        c = text[i]
        if backslash and c == "\\":
            i += 2
            continue
        if c == quote:
            if text.startswith(quote, i + 1):
                i += 2
                continue
            return i + 1
        i += 1
    return None


def check_filter(where: str) -> str:
    """`where`, stripped, when it is one expression; else RefusedError naming the problem (nothing has run).

    Scans the text as PostgreSQL's lexer does (standard_conforming_strings on, which the scratch session sets):
    '...' and E'...' strings, "..." identifiers and $tag$...$tag$ strings are skipped; outside them a `;` (a
    second statement), `--` or `/*` (a comment hiding the rest) and a `)` closing what the filter did not open
    (breaking out of the parentheses it is wrapped in) are refused, as is anything left unterminated."""
    text = (where or "").strip()
    if not text:
        raise BackupError("where is empty: give a filter such as \"id = '...'\" or \"created_at >= '2026-11-20'\"")

    def refuse(problem: str) -> RefusedError:
        return RefusedError(f"The filter {text!r} is refused: {problem}. Give {_ONE_EXPRESSION}. Nothing was run")

    if "\x00" in text:
        raise refuse("it contains a NUL character")
    depth, i = 0, 0
    while i < len(text):
        c = text[i]
        if c in "'\"":
            escapes = c == "'" and i > 0 and text[i - 1] in "eE" and (i < 2 or not _ident_char(text[i - 2]))
            end = _end_of_quoted(text, i, c, backslash=escapes)
            if end is None:
                what = "string" if c == "'" else "quoted identifier"
                raise refuse(f"the {what} opened at character {i + 1} never closes")
            i = end
            continue
        if c == "$" and not (i > 0 and _ident_char(text[i - 1])) and (tag := _DOLLAR_TAG.match(text, i)):
            close = text.find(tag.group(0), tag.end())
            if close < 0:
                raise refuse(f"the dollar-quoted string opened at character {i + 1} never closes")
            i = close + len(tag.group(0))
            continue
        if c == ";":
            raise refuse(f"';' at character {i + 1} separates statements, and a filter is a single expression")
        if text.startswith("--", i) or text.startswith("/*", i):
            raise refuse(f"{text[i : i + 2]!r} at character {i + 1} starts a comment, which filters may not hold")
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth < 0:
                raise refuse(f"')' at character {i + 1} closes a parenthesis the filter did not open")
        i += 1
    if depth:
        raise refuse(f"{depth} parenthes{'i' if depth == 1 else 'e'}s never close{'s' if depth == 1 else ''}")
    return text


def _count_matching(src: psycopg.Connection, schema: str, table: str, where: str, qualified: str) -> int:
    """Count the rows matching `where` through the extended protocol (Parse refuses a second statement), in the
    caller's READ ONLY transaction on the scratch copy."""
    query = sql.SQL("SELECT count(*) FROM {} WHERE ({})").format(sql.Identifier(schema, table), sql.SQL(where))
    try:
        return src.execute(query, prepare=True).fetchone()[0]
    except psycopg.errors.ReadOnlySqlTransaction as exc:
        raise RefusedError(
            f"The filter {where!r} tries to write ({exc.diag.message_primary}): filters are evaluated read-only on "
            "the backup's copy. Use an expression that only reads. Nothing was written"
        ) from None
    except psycopg.Error as exc:
        # SQLSTATE 42601 covers both a plain syntax error and a second statement: only the text tells them apart.
        several = isinstance(exc, psycopg.errors.SyntaxError) and "multiple commands" in str(exc)
        problem = "is more than one statement" if several else f"does not work on {qualified}: {exc}".strip()
        raise (RefusedError if several else BackupError)(f"The filter {where!r} {problem}") from None


def recover_rows(
    storage: Storage,
    manifest: Manifest,
    live: PgConnection,
    table: str,
    where: str,
    *,
    scratch_server: PgConnection | None = None,
    dry_run: bool = True,
    on_conflict: str = "nothing",
    sample_rows: int = 5,
    tmp_dir: str | None = None,
    bin_dir: BinDir = None,
    identities: list | None = None,
    say: Logger = print,
) -> RecoverResult:
    t0 = time.monotonic()
    if on_conflict not in ("nothing", "update"):
        raise BackupError(f"on_conflict must be 'nothing' or 'update', not {on_conflict!r}")
    where = check_filter(where)  # one expression, or refused before anything is touched
    schema, name = split_table(table)
    qualified = f"{schema}.{name}"
    if qualified not in manifest.tables:
        raise BackupError(f"Table {qualified} is not in backup {manifest.partition} (it has {len(manifest.tables)})")
    keys, live_columns = _live_table(live, schema, name, qualified)

    server = scratch_server or live
    bin_dir = restore_client(manifest, bin_dir).bin_dir  # refused before anything is fetched or created
    temp_db = scratch_name(RECOVER_PREFIX, name)
    archive = fetch_archive(storage, manifest, tmp_dir, identities)
    try:
        say(
            f"Restoring {qualified} from backup {manifest.partition} into temporary database {temp_db} on "
            f"{server.with_dbname(temp_db).display()}"
        )
        create_scratch_database(server, temp_db)  # labelled: a killed run's leftover is swept
        temp = server.with_dbname(temp_db)
        _restore_one_table(archive, temp, schema, name, bin_dir)
        archive.unlink(missing_ok=True)
        with temp.connect(autocommit=True) as src:
            src.execute("SET standard_conforming_strings = on")  # the lexing check_filter assumed
            backup_columns = set(_insertable_columns(src, schema, name))
            missing = [c for c in keys if c not in backup_columns]
            if missing:
                raise BackupError(f"Key column(s) {missing} of {qualified} are not in the backup's table")
            columns = [c for c in live_columns if c in backup_columns]
            # The filter runs only here, in one READ ONLY snapshot: the count and the rows copied out agree.
            src.autocommit = False
            src.read_only = True
            src.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            matched = _count_matching(src, schema, name, where, qualified)
            result = RecoverResult(qualified, manifest.partition, matched, 0, 0, dry_run=dry_run)
            with live.connect() as dst:
                _stage_and_apply(
                    src, dst, result, sql.Identifier(schema, name), columns, keys, where,
                    sample_rows=sample_rows, on_conflict=on_conflict,
                )  # fmt: skip
    finally:
        archive.unlink(missing_ok=True)
        drop_database(server, temp_db)
    result.seconds = round(time.monotonic() - t0, 3)
    return result


def _live_table(live: PgConnection, schema: str, name: str, qualified: str) -> tuple[list[str], list[str]]:
    """(key columns, insertable columns) of the live table; refuses a table that is missing or has no key."""
    with live.connect() as conn:
        if not conn.execute("SELECT to_regclass(%s)", (sql.Identifier(schema, name).as_string(conn),)).fetchone()[0]:
            raise BackupError(f"Table {qualified} does not exist in the live database {live.display()}")
        keys = _key_columns(conn, schema, name)
        live_columns = _insertable_columns(conn, schema, name)
    if not keys:
        raise BackupError(
            f"{qualified} has no primary key or unique constraint in the live database: rows could be duplicated. "
            "Add one, or restore the backup with restore_postgres and copy rows by hand"
        )
    return keys, live_columns


def _stage_and_apply(
    src: psycopg.Connection,
    dst: psycopg.Connection,
    result: RecoverResult,
    target: sql.Identifier,
    columns: list[str],
    keys: list[str],
    where: str,
    *,
    sample_rows: int,
    on_conflict: str,
) -> None:
    """Copy the matching rows from the backup's copy (`src`) into a TEMP table on the live server (`dst`), count
    and sample those not there yet, then insert them in `dst`'s transaction, or roll back on a dry run."""
    col_list = sql.SQL(", ").join(map(sql.Identifier, columns))
    stage = sql.Identifier(f"cbd_stage_{uuid.uuid4().hex[:8]}")
    dst.execute(
        sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(stage, col_list, target)
    )
    # COPY goes through the simple protocol; its filter is the text that just parsed as one statement.
    copy_out = sql.SQL("COPY (SELECT {} FROM {} WHERE ({})) TO STDOUT").format(col_list, target, sql.SQL(where))
    copy_in = sql.SQL("COPY {} ({}) FROM STDIN").format(stage, col_list)
    # Text COPY: binary would carry this database's type OIDs (enums, composites), which differ there.
    with src.cursor().copy(copy_out) as out, dst.cursor().copy(copy_in) as into:
        for block in out:
            into.write(block)
    key_match = sql.SQL(" AND ").join(
        sql.SQL("l.{k} IS NOT DISTINCT FROM s.{k}").format(k=sql.Identifier(k)) for k in keys
    )
    absent = sql.SQL("NOT EXISTS (SELECT 1 FROM {} l WHERE {})").format(target, key_match)
    result.would_insert = dst.execute(sql.SQL("SELECT count(*) FROM {} s WHERE {}").format(stage, absent)).fetchone()[0]
    result.already_present = result.matched_in_backup - result.would_insert
    sample_query = sql.SQL("SELECT to_jsonb(s) FROM {} s WHERE {} LIMIT {}").format(
        stage, absent, sql.Literal(sample_rows)
    )
    result.sample = [json.loads(json.dumps(r[0], default=str)) for r in dst.execute(sample_query)]
    if result.dry_run:
        dst.rollback()  # dry run: the live table is never written
        return
    conflict = sql.SQL(", ").join(map(sql.Identifier, keys))
    if on_conflict == "update":
        sets = sql.SQL(", ").join(
            sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in columns if c not in keys
        )
        action = sql.SQL("DO UPDATE SET {}").format(sets)
    else:
        action = sql.SQL("DO NOTHING")
    insert = sql.SQL(
        "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM {} ON CONFLICT ({}) {} RETURNING (xmax = 0)"
    ).format(target, col_list, col_list, stage, conflict, action)
    flags = [r[0] for r in dst.execute(insert)]
    result.inserted = sum(1 for f in flags if f)
    result.updated = len(flags) - result.inserted
    dst.commit()
