"""Rich tables for results shown in the terminal (the data comes from the pure cores)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table


def domain_stats_table(stats: Sequence) -> Table:
    """Corpus build summary: documents and bytes per domain and split."""
    table = Table(title="demo corpus")
    table.add_column("domain")
    for split in ("train", "val", "test"):
        table.add_column(f"{split} docs", justify="right")
        table.add_column(f"{split} MB", justify="right")
    for s in stats:
        cells = []
        for split in ("train", "val", "test"):
            cells += [f"{s.documents[split]:,}", f"{s.bytes[split] / 1e6:.2f}"]
        table.add_row(s.domain, *cells)
    return table
