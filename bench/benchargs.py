"""What the benchmarks share: argument types (a bad value stops the run at once with an argparse error
that says what to pass, not a traceback minutes later, nor a silent fall-back to the default) and
the benchmark database."""

from __future__ import annotations

import argparse


def int_in(lo: int, hi: int):
    """A whole number from lo to hi."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number from {lo} to {hi}, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"expected a whole number from {lo} to {hi}, got {value}")
        return value

    return parse


def int_list(lo: int, hi: int, example: str):
    """Comma-separated whole numbers from lo to hi; each may be written as 1e6."""

    def parse(text: str) -> list[int]:
        values = []
        for item in text.split(","):
            try:
                f = float(item)
            except ValueError:
                f = float("nan")
            if not (f.is_integer() and lo <= f <= hi):  # false for nan and inf too
                raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers from {lo:,} to {hi:,}, "
                                                 f"e.g. {example}; got {item!r}")
            values.append(int(f))
        return values

    return parse


def ensure_database(db_url: str) -> None:
    """Create the PostgreSQL database of ``db_url`` if it does not exist."""
    import psycopg

    base, name = db_url.rsplit("/", 1)
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')
