"""One export run's read of PostgreSQL: a REPEATABLE READ snapshot, the table resolved against the catalog,
counts and COPY statements, and COPY data read in pipeline-sized chunks."""

from __future__ import annotations

import psycopg
from psycopg import sql

from ..artifacts.storage import MiB
from ..postgres.client import PgConnection
from .spec import TIME_TYPES, Column, ExportSchemaError, ExportSpec, Format, ResolvedTable, Window, parse_table

# row_to_json never emits a raw control character (it escapes them as \n, \u0001, ...), so CSV mode with
# these two as QUOTE and DELIMITER passes every JSON line through untouched. Plain text-format COPY (what
# the strategy's one-liner uses) would double every backslash: `"a \"quote\""` comes out as
# `"a \\"quote\\""`, which is not the same JSON, or not JSON at all.
_JSON_PASSTHROUGH = sql.SQL("WITH (FORMAT csv, QUOTE E'\\x01', DELIMITER E'\\x02')")


class ExportSession:
    """One read-only REPEATABLE READ transaction: every count and COPY of a run sees the same snapshot.

    Session settings make the output independent of the server's and role's defaults: UTC (row_to_json
    writes `2026-11-24T10:00:00.123456+00:00`), ISO dates, UTF-8, and no statement/idle timeouts that a
    managed server may set per role (a large export must not be killed halfway)."""

    def __init__(self, conn: PgConnection):
        self._pg = conn
        self.conn = conn.connect(autocommit=True)
        try:
            for setting in (
                "SET statement_timeout = 0",
                "SET idle_in_transaction_session_timeout = 0",
                "SET TimeZone = 'UTC'",
                "SET DateStyle = 'ISO, MDY'",
                "SET IntervalStyle = 'postgres'",
                "SET client_encoding = 'UTF8'",
                "SET extra_float_digits = 1",
            ):
                self.conn.execute(setting)
            self.conn.autocommit = False
            self.conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            self.conn.read_only = True
            # now() is the transaction's start: the moment the snapshot was taken, which the RPO is measured from.
            self.server_version, self.database, self.taken_at = self.conn.execute(
                "SELECT current_setting('server_version'), current_database(), now()"
            ).fetchone()
        except BaseException:
            self.conn.close()
            raise

    def close(self) -> None:
        try:
            self.conn.rollback()
        finally:
            self.conn.close()

    def __enter__(self) -> ExportSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- schema

    def resolve(self, spec: ExportSpec) -> ResolvedTable:
        """Check that the table, the columns and the time column exist; fail naming the one that does not."""
        schema, name = parse_table(spec.table, spec.table_variable)
        regclass = sql.Identifier(*([schema] if schema else []), name).as_string(self.conn)
        row = self.conn.execute(
            """SELECT c.oid, n.nspname, c.relname, c.relkind FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s)""",
            (regclass,),
        ).fetchone()
        if row is None:
            where = f"schema {schema!r}" if schema else f"the search_path ({self._search_path()})"
            raise ExportSchemaError(
                f"Table {spec.table!r} does not exist in database {self.database!r} ({where}). Fix: create it, or "
                f"set {spec.table_variable} to the table to export (schema.table when it is not in the search_path)."
            )
        oid, schema, name, relkind = row
        if relkind not in ("r", "p", "v", "m", "f"):
            raise ExportSchemaError(
                f"{schema}.{name} is not a table or view (relkind {relkind!r}); check {spec.table_variable}"
            )
        available = self.conn.execute(
            """SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
               WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum""",
            (oid,),
        ).fetchall()
        by_name = {n: Column(n, t) for n, t in available}
        listing = ", ".join(by_name) or "(none)"
        if spec.columns is None:
            columns = tuple(by_name.values())
        else:
            missing = [c for c in spec.columns if c not in by_name]
            if missing:
                plural = "s" if len(missing) > 1 else ""
                raise ExportSchemaError(
                    f"Column{plural} {', '.join(repr(c) for c in missing)} of {spec.columns_variable} "
                    f"do{'' if plural else 'es'} not exist in {schema}.{name} (its columns: {listing}). "
                    f"Fix: set {spec.columns_variable} to columns that exist (comma-separated), or restore the column."
                )
            columns = tuple(by_name[c] for c in spec.columns)
        if not columns:
            raise ExportSchemaError(f"{schema}.{name} has no columns to export")
        time_column, indexed = None, False
        if spec.time_column is not None:
            time_column = by_name.get(spec.time_column)
            if time_column is None:
                raise ExportSchemaError(
                    f"Time column {spec.time_column!r} ({spec.time_column_variable}) does not exist in {schema}.{name} "
                    f"(its columns: {listing}). Fix: set {spec.time_column_variable} to the column that dates each row."
                )
            if time_column.type not in TIME_TYPES:
                raise ExportSchemaError(
                    f"Time column {schema}.{name}.{time_column.name} is {time_column.type}, not a timestamp or date; "
                    f"daily partitions need one. Fix: set {spec.time_column_variable} to a timestamptz column."
                )
            indexed = bool(
                self.conn.execute(
                    """SELECT 1 FROM pg_index i
                       JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                       WHERE i.indrelid = %s AND a.attname = %s LIMIT 1""",
                    (oid, time_column.name),
                ).fetchone()
            )
        return ResolvedTable(schema, name, columns, time_column, indexed)

    def _search_path(self) -> str:
        return self.conn.execute("SELECT current_setting('search_path')").fetchone()[0]

    # -- data

    def _where(self, table: ResolvedTable, window: Window) -> sql.Composable:
        if table.time_column is None or window.start is None or window.end is None:
            return sql.SQL("")
        col = sql.Identifier(table.time_column.name)
        return sql.SQL(" WHERE {col} >= {start} AND {col} < {end}").format(
            col=col, start=sql.Literal(window.start), end=sql.Literal(window.end)
        )

    def count(self, table: ResolvedTable, window: Window) -> int:
        query = sql.SQL("SELECT count(*) FROM {}").format(table.identifier) + self._where(table, window)
        return self.conn.execute(query).fetchone()[0]

    def copy_statement(self, table: ResolvedTable, window: Window, fmt: Format) -> sql.Composed:
        if fmt == "csv":  # the raw values, exactly what `COPY ... TO STDOUT WITH CSV HEADER` writes
            select = sql.SQL(", ").join(sql.Identifier(c.name) for c in table.columns)
            inner = sql.SQL("SELECT {} FROM {}").format(select, table.identifier) + self._where(table, window)
            return sql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv, HEADER)").format(inner)
        select = sql.SQL(", ").join(_json_select_item(c) for c in table.columns)
        inner = sql.SQL("SELECT {} FROM {}").format(select, table.identifier) + self._where(table, window)
        return sql.SQL("COPY (SELECT row_to_json(t) FROM ({}) t) TO STDOUT {}").format(inner, _JSON_PASSTHROUGH)


def _json_select_item(column: Column) -> sql.Composable:
    """How a column enters row_to_json. Two types need help to keep one valid object per line with offsets:
    `json` is embedded verbatim (its own newlines included), so it goes through jsonb; a timestamp without
    time zone would print without an offset, so it is read as UTC."""
    ident = sql.Identifier(column.name)
    if column.type == "json":
        return sql.SQL("{}::jsonb AS {}").format(ident, ident)
    if column.type == "json[]":
        return sql.SQL("{}::jsonb[] AS {}").format(ident, ident)
    if column.type == "timestamp without time zone":
        return sql.SQL("({} AT TIME ZONE 'UTC') AS {}").format(ident, ident)
    return ident


class _CopySource:
    """`read(n)` over a psycopg COPY: the server sends one message per row; this hands the pipeline
    chunks of about `n` bytes (joined once), so nothing larger than one chunk is ever held."""

    def __init__(self, copy: psycopg.Copy):
        self._read = copy.read

    def read(self, n: int = MiB) -> bytes:
        rows, size, read = [], 0, self._read
        while size < n:
            data = read()
            if not data:
                break
            rows.append(data)
            size += len(data)
        return b"".join(rows)
