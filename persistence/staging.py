"""The COPY path: a batch's rows go to Postgres with binary COPY into per-session staging tables,
then one ``INSERT ... SELECT`` moves them to the real table (issue #11, cheaper durability).

Why: sending a batch as arrays (``unnest($1::text[], ...)``) makes the driver check every
element of every array in Python (about a fifth of the flusher's CPU per event); COPY encodes
each row as one record. A staging table is ``TEMP ... ON COMMIT DELETE ROWS``: created once per
session, private to it, empty again after every commit or rollback, so staged rows never
outlive the transaction that wrote them and the write stays idempotent.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

import asyncpg  # type: ignore[import-untyped]

Column = tuple[str, str]  # (name, SQL type)


def create_sql(table: str, columns: Sequence[Column]) -> str:
    """The staging table's DDL (idempotent: ``IF NOT EXISTS``)."""
    body = ", ".join(f'"{name}" {sql_type}' for name, sql_type in columns)
    return f"CREATE TEMP TABLE IF NOT EXISTS {table} ({body}) ON COMMIT DELETE ROWS"


async def stage(
    conn: asyncpg.Connection,
    table: str,
    columns: Sequence[Column],
    records: Iterable[Sequence[object]],
) -> None:
    """COPY ``records`` (tuples in ``columns`` order) into staging table ``table`` (created on
    this session's first use). Must run inside the transaction that consumes them."""
    await conn.execute(create_sql(table, columns))
    await conn.copy_records_to_table(table, records=records, columns=[name for name, _ in columns])


async def copy_in(
    conn: asyncpg.Connection,
    table: str,
    columns: Sequence[Column],
    records: Sequence[Sequence[object]],
    *,
    merge: tuple[str, str] | Literal[False],
) -> list[Any] | None:
    """Put ``records`` (tuples in ``columns`` order) into ``table``, one of two ways.

    Without ``merge``: binary COPY straight into ``table``, ``None`` returned. COPY has no
    ``ON CONFLICT``: a record colliding with a row on a unique key raises
    ``asyncpg.UniqueViolationError`` and fails the caller's transaction. With ``merge``, a
    ``(staging table, SQL)`` pair: the records are staged (``stage``), then the SQL, an ``INSERT
    ... SELECT ... FROM <staging> ON CONFLICT ...``, runs and its rows are returned."""
    if not merge:
        names = [name for name, _ in columns]
        await conn.copy_records_to_table(table, records=records, columns=names)
        return None
    staging, sql = merge
    await stage(conn, staging, columns, records)
    rows: list[Any] = await conn.fetch(sql)
    return rows
