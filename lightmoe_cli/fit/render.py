"""Rich tables of a fit report: parameters and bytes by kind, the per-token figures, the plans."""

from __future__ import annotations

from rich.table import Table

from lightmoe_cli.fit.count import KINDS

_LABELS = {"embeddings": "embeddings", "attention": "attention", "dense_mlp": "dense MLP layers",
           "router": "routers", "shared_experts": "shared experts", "routed_experts": "routed experts",
           "lm_head": "lm_head", "other": "norms and other"}


def _b(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{n:,.0f} B"


def _p(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:,.3f}{unit}"
    return f"{n:,.0f}"


def _rate(x: float | None) -> str:
    return "-" if not x else f"{x / 1e9:,.1f} GB/s"


def kinds_table(report) -> Table:
    c, s = report.count, report.sizes
    t = Table(title=f"{report.model} ({c.model_type}): parameters and bytes by kind at {report.dtype}")
    t.add_column("kind")
    t.add_column("parameters", justify="right")
    t.add_column("bytes", justify="right")
    for kind in KINDS:
        if c.params[kind] or s.weights[kind]:
            label = _LABELS[kind] + (" (tied: the embeddings)" if kind == "lm_head" and c.tied_embeddings else "")
            t.add_row(label, _p(c.params[kind]), _b(s.weights[kind]))
    if c.moe_layers:
        m = c.moe_layers[0]
        same = all((x.num_experts, x.params) == (m.num_experts, m.params) for x in c.moe_layers)
        per = "each" if same else "first"
        t.add_row(f"  routed experts per MoE layer ({len(c.moe_layers)} layers, {per}: {m.num_experts} experts, "
                  f"top-{m.top_k})", _p(m.params), _b(s.experts[0][1]))
    t.add_row("total", _p(c.total), _b(s.total), style="bold")
    t.add_row(f"KV cache per token at context {report.context:,}", "", _b(s.kv / report.context))
    t.add_row(f"KV cache at context {report.context:,} (one sequence)", "", _b(s.kv))
    return t


def active_table(report) -> Table:
    c, s = report.count, report.sizes
    t = Table(title="per decoded token")
    t.add_column("")
    t.add_column("value", justify="right")
    t.add_row("active parameters (input embedding included)", _p(c.active))
    t.add_row("active parameters (input embedding left out)", _p(c.active_without_input_embedding))
    t.add_row("weight bytes read (embedding row, non-expert, top-k experts)", _b(s.read_non_expert + s.read_routed))
    t.add_row(f"bytes read with the KV cache at context {report.context:,}", _b(s.read_per_token))
    return t


def plans_table(report) -> Table:
    m = report.machine
    measured = report.measured

    def src(key: str) -> str:
        return " measured" if measured.get(key) else ""

    gpu = f"GPU {_b(m.gpu_memory)} at {_rate(m.gpu_bandwidth)}{src('gpu_bandwidth')}" if m.gpu_memory else "no GPU"
    t = Table(title=f"plans for RAM {_b(m.memory)} at {_rate(m.bandwidth)}{src('bandwidth')}, {gpu}, disk "
                    f"{_rate(m.disk_bandwidth)}{src('disk_bandwidth')}",
              caption="decode bound: bytes read per token / bandwidth, at batch 1; real decoding is slower")
    t.add_column("#", justify="right")
    t.add_column("plan")
    t.add_column("fits")
    t.add_column("GPU", justify="right")
    t.add_column("RAM", justify="right")
    t.add_column("decode bound", justify="right")
    t.add_column("note")
    for i, p in enumerate(report.plans, 1):
        bound = "-" if p.tokens_per_s is None else f"{p.tokens_per_s:,.1f} tok/s"
        t.add_row(str(i), p.name, "[green]yes[/green]" if p.fits else "[red]no[/red]",
                  _b(p.gpu_bytes) if p.gpu_bytes else "-", _b(p.ram_bytes) if p.ram_bytes else "-", bound, p.note)
    return t


def plan_commands(report) -> list[str]:
    """One line per plan: its number and the command that sets it up (printed unwrapped, to copy)."""
    return [f"[{i}] {p.command}" for i, p in enumerate(report.plans, 1) if p.command != "-"]
