"""The `lightmoe models` table: one row per architecture, then the pass rate."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from lightmoe_cli.selftest.run import SelfTestResult


def results_table(results: list[SelfTestResult], ran: bool) -> Table:
    """A rich table of self-test results (`ran=False`: the self-test column says "skipped")."""
    table = Table(title="MoE causal-LM architectures in the installed transformers")
    table.add_column("architecture", no_wrap=True)
    table.add_column("model_type", overflow="fold")
    table.add_column("supported", no_wrap=True)
    table.add_column("self-test", no_wrap=True)
    table.add_column("detail", overflow="fold")
    for r in results:
        if not ran:
            verdict = "[dim]skipped[/]"
        else:
            verdict = f"[green]pass[/] {r.seconds:.1f}s" if r.passed else f"[red]FAIL[/] {r.seconds:.1f}s"
        supported = "[dim]?[/]" if not ran else "[green]yes[/]" if r.supported else "[red]no[/]"
        table.add_row(r.arch, r.model_type, supported, verdict, r.detail)
    return table


def summary_line(results: list[SelfTestResult]) -> str:
    """'N/M passed (P%)'."""
    passed, total = sum(r.passed for r in results), len(results)
    return f"{passed}/{total} passed ({100 * passed / total if total else 0:.0f}%)"


def print_results(results: list[SelfTestResult], ran: bool, console: Console | None = None) -> None:
    """Print the table, then the summary line when the self-tests ran."""
    console = console or Console()
    console.print(results_table(results, ran))
    if ran:
        console.print(summary_line(results))
    else:
        console.print(f"{len(results)} MoE architectures (self-test skipped)")
