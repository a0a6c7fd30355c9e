"""Which ways of running a model fit a machine, and the decode bound of each: pure arithmetic on byte counts.

Why a bound and not a forecast: decoding one token at batch 1 reads every weight it uses once, so its time is at
least (bytes read from each memory / that memory's bandwidth), summed over the memories the weights live in.
Compute, kernel launches and Python add to it; nothing makes it faster (the same physics as
`lightmoe_cli.analysis.decode_bytes`, whose per-token read model this follows: the token's embedding row, every
non-expert matrix, top-k experts per MoE layer, and the KV cache at the given context).

The plans: everything on the GPU; experts split between GPU and CPU as llama.cpp does it (`--n-cpu-moe N` keeps
the experts of the first N layers in RAM, `-ot` says the same per tensor); everything in RAM; and a lightmoe
bundle, which keeps the non-expert weights and a resident share of the experts in RAM under a budget.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

GiB = 2**30
MiB = 2**20
# Peak RSS of `lightmoe run` beyond the weights it holds: measured on the demo model's prune bundles at 25/50/75%
# (fp32, 2 prompts x 32 new tokens, torch 2.13 CPU, 2026-12-01): peak RSS minus non-expert and resident expert
# bytes was 411 MiB at each of the three budgets (torch and transformers alone: 245 MiB, with transformers' model
# and generation code: 373 MiB; the rest is the tokenizer, generation workspace and allocator slack). It is the
# runtime's, not the model's: on the 1.05B OLMoE shape (benchmarks/fit_rss.py, docs/fit.md) it was 432 MiB, most
# of the extra 21 MiB glibc's slack of one freed 24 MiB expert read buffer: fit predicted 0.5-1.1% low there.
RUNTIME_BASELINE_BYTES = 411 * MiB
LIGHTMOE_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # what a bundle can store


@dataclass(frozen=True)
class Sizes:
    """A model's bytes at the dtype it will run in.

    weights: kind -> bytes; experts: per MoE layer (decoder index, bytes of all its experts, bytes of one
    expert, top-k); read_non_expert: non-expert bytes one decoded token reads (its embedding row, not the whole
    table; the lm_head, tied or not); kv: KV-cache bytes of one sequence at the context."""

    weights: dict[str, float]
    experts: tuple[tuple[int, float, float, int], ...]
    read_non_expert: float
    kv: float

    @property
    def total(self) -> float:
        return sum(self.weights.values())

    @property
    def routed(self) -> float:
        return self.weights["routed_experts"]

    @property
    def non_expert(self) -> float:
        return self.total - self.routed

    @property
    def read_routed(self) -> float:
        return sum(one * k for _, _, one, k in self.experts)

    @property
    def read_per_token(self) -> float:
        """Bytes one decoded token reads: weights it uses and the KV cache it attends to."""
        return self.read_non_expert + self.read_routed + self.kv


@dataclass(frozen=True)
class Machine:
    """Memory sizes and bandwidths (bytes, bytes/s); None: unknown (no GPU, or a bandwidth not measured)."""

    memory: float
    gpu_memory: float | None = None
    bandwidth: float | None = None
    gpu_bandwidth: float | None = None
    disk_bandwidth: float | None = None


@dataclass(frozen=True)
class Plan:
    """One way of running the model: where its bytes live, what a token reads from each place, the decode bound
    (tokens/s; None when a bandwidth it needs is unknown) and the command that sets it up."""

    name: str
    fits: bool
    gpu_bytes: float
    ram_bytes: float
    read_gpu: float
    read_ram: float
    read_disk: float
    tokens_per_s: float | None
    command: str
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def decode_bound(machine: Machine, read_gpu: float = 0.0, read_ram: float = 0.0,
                 read_disk: float = 0.0) -> float | None:
    """Tokens/s at most: 1 / sum of (bytes read from each memory / its bandwidth); None if one is unknown."""
    seconds = 0.0
    for nbytes, bw in ((read_gpu, machine.gpu_bandwidth), (read_ram, machine.bandwidth),
                       (read_disk, machine.disk_bandwidth)):
        if nbytes > 0:
            if not bw:
                return None
            seconds += nbytes / bw
    return 1.0 / seconds if seconds else None


def _ot_rule(indices: list[int]) -> str:
    return "-ot \"blk\\.(" + "|".join(map(str, indices)) + ")\\.ffn_(up|down|gate)_exps\\.weight=CPU\""


def plan_all_gpu(s: Sizes, m: Machine, context: int) -> Plan | None:
    if m.gpu_memory is None:
        return None
    need = s.total + s.kv
    return Plan("everything on the GPU", need <= m.gpu_memory, need, 0.0, s.read_per_token, 0.0, 0.0,
                decode_bound(m, read_gpu=s.read_per_token), f"llama-server -m MODEL.gguf -ngl 999 -c {context}",
                "" if need <= m.gpu_memory else f"needs {need / GiB:.1f} GiB of GPU memory")


def plan_split(s: Sizes, m: Machine, context: int) -> Plan | None:
    """Non-expert weights and the KV cache on the GPU, then the experts of as many MoE layers as still fit there
    (the last ones: llama.cpp's --n-cpu-moe N keeps the first N layers' experts in RAM)."""
    if m.gpu_memory is None or s.non_expert + s.kv > m.gpu_memory or s.total + s.kv <= m.gpu_memory:
        return None
    free = m.gpu_memory - s.non_expert - s.kv
    on_gpu: list[tuple[int, float, float, int]] = []
    for layer in reversed(s.experts):
        if layer[1] > free:
            break
        free -= layer[1]
        on_gpu.append(layer)
    on_cpu = [layer for layer in s.experts if layer not in on_gpu]
    ram = sum(b for _, b, _, _ in on_cpu)
    read_cpu = sum(one * k for _, _, one, k in on_cpu)
    read_gpu = s.read_per_token - read_cpu
    n = on_cpu[-1][0] + 1  # --n-cpu-moe counts decoder layers from 0, dense ones included
    flags = "--cpu-moe" if not on_gpu else f"--n-cpu-moe {n}"
    return Plan(f"experts of {len(on_cpu)}/{len(s.experts)} MoE layers in RAM, the rest on the GPU", ram <= m.memory,
                m.gpu_memory - free, ram, read_gpu, read_cpu, 0.0, decode_bound(m, read_gpu=read_gpu,
                                                                               read_ram=read_cpu),
                f"llama-server -m MODEL.gguf -ngl 999 {flags} -c {context}  (or: -ngl 999 "
                f"{_ot_rule([i for i, _, _, _ in on_cpu])})",
                "" if ram <= m.memory else f"the RAM side needs {ram / GiB:.1f} GiB")


def plan_ram(s: Sizes, m: Machine, context: int) -> Plan:
    need = s.total + s.kv
    return Plan("everything in RAM (CPU)", need <= m.memory, 0.0, need, 0.0, s.read_per_token, 0.0,
                decode_bound(m, read_ram=s.read_per_token), f"llama-server -m MODEL.gguf -ngl 0 -c {context}",
                "" if need <= m.memory else f"needs {need / GiB:.1f} GiB of RAM")


@dataclass(frozen=True)
class Residency:
    """A lightmoe bundle's budget in RAM: the resident share of the expert weights and the RSS it predicts."""

    resident_bytes: float
    fraction: float
    predicted_rss: float


def lightmoe_residency(s: Sizes, memory: float, baseline: float = RUNTIME_BASELINE_BYTES) -> Residency | None:
    """The largest resident expert budget that leaves room for the runtime, the non-expert weights and the KV
    cache in `memory` (at least one expert per MoE layer); None when not even that fits."""
    free = memory - baseline - s.non_expert - s.kv
    least = sum(one for _, _, one, _ in s.experts)
    if free < least or s.routed <= 0:
        return None
    resident = min(free, s.routed)
    return Residency(resident, resident / s.routed, predicted_rss(s, resident, baseline))


def predicted_rss(s: Sizes, resident_bytes: float, baseline: float = RUNTIME_BASELINE_BYTES) -> float:
    """Peak RSS of `lightmoe run` on a bundle holding `resident_bytes` of experts: the runtime's baseline, the
    non-expert weights, the resident experts and the KV cache."""
    return baseline + s.non_expert + resident_bytes + s.kv


def plan_lightmoe(s: Sizes, m: Machine, model: str, dtype: str) -> list[Plan]:
    """A bundle at the largest budget that fits RAM: picks are served by resident experts (prune / redirect /
    the task-aware manager), so a token reads k experts from RAM; with a disk bandwidth, also the bound when
    every miss is loaded from disk on demand (uniform routing: a share 1 - budget of the picks)."""
    bundle_dtype = LIGHTMOE_DTYPES.get(dtype)
    if bundle_dtype is None:
        return [Plan("lightmoe bundle", False, 0, 0, 0, 0, 0, None, "-",
                     f"lightmoe bundles store fp32, bf16 or fp16, not {dtype}: run fit with --dtype bf16")]
    r = lightmoe_residency(s, m.memory)
    if r is None:
        need = RUNTIME_BASELINE_BYTES + s.non_expert + s.kv + sum(one for _, _, one, _ in s.experts)
        return [Plan("lightmoe bundle", False, 0, need, 0, 0, 0, None, "-",
                     f"needs {need / GiB:.1f} GiB of RAM for one resident expert per layer")]
    budget_mib = int(r.resident_bytes // MiB)
    command = f"lightmoe build-bundle --model {model} --memory {budget_mib}MiB --dtype {bundle_dtype}"
    read = s.read_per_token
    plans = [Plan(f"lightmoe bundle, {r.fraction:.0%} of experts resident", True, 0.0, r.predicted_rss, 0.0, read,
                  0.0, decode_bound(m, read_ram=read), command,
                  f"predicted peak RSS {r.predicted_rss / GiB:.2f} GiB (runtime baseline "
                  f"{RUNTIME_BASELINE_BYTES / MiB:.0f} MiB included)")]
    if r.fraction < 1:
        miss = (1 - r.fraction) * s.read_routed
        plans.append(Plan("lightmoe bundle, misses loaded from disk", True, 0.0, r.predicted_rss, 0.0,
                          read - miss, miss, decode_bound(m, read_ram=read - miss, read_disk=miss),
                          command + " --policy lru", "uniform routing assumed: skewed routing misses less"))
    return plans


def plan_budget(s: Sizes, m: Machine, model: str, dtype: str, fraction: float) -> Plan | None:
    """A bundle holding `fraction` of the expert weights (build-bundle --budget): its predicted peak RSS."""
    bundle_dtype = LIGHTMOE_DTYPES.get(dtype)
    if bundle_dtype is None:
        return None
    rss = predicted_rss(s, fraction * s.routed)
    read = s.read_per_token
    return Plan(f"lightmoe bundle at --budget {fraction:g}", rss <= m.memory, 0.0, rss, 0.0, read, 0.0,
                decode_bound(m, read_ram=read),
                f"lightmoe build-bundle --model {model} --budget {fraction:g} --dtype {bundle_dtype}",
                f"predicted peak RSS {rss / MiB:,.1f} MiB (runtime baseline {RUNTIME_BASELINE_BYTES / MiB:.0f} MiB "
                "included)")


def all_plans(s: Sizes, m: Machine, model: str, dtype: str, context: int,
              budget: float | None = None) -> list[Plan]:
    plans = [plan_all_gpu(s, m, context), plan_split(s, m, context), plan_ram(s, m, context),
             *plan_lightmoe(s, m, model, dtype),
             plan_budget(s, m, model, dtype, budget) if budget is not None else None]
    return [p for p in plans if p is not None]
