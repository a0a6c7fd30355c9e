"""Self-test every MoE architecture of the installed transformers on a tiny random model.

Why: lightmoe's adapters find MoE blocks structurally, so a new transformers release can add or change
families silently. Building each architecture tiny and checking the operations lightmoe relies on (plain
forward, trace, drop, redirect, read/write one expert), then running the whole pipeline on it (profile ->
build-bundle full/prune/lightmoe -> run, see `selftest_pipeline`), tells the user in about a second per family
which ones work with their install.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from lightmoe_cli.errors import LightMoEError, UnsupportedModelError
from lightmoe_cli.models.adapter import MoEAdapter
from lightmoe_cli.models.architectures import ArchInfo, find_architecture, list_moe_architectures
from lightmoe_cli.models.layers import MoELayer
from lightmoe_cli.models.registry import get_adapter
from lightmoe_cli.models.routing import record_routing, redirect_experts
from lightmoe_cli.models.tiny_configs import VOCAB, tiny_config
from lightmoe_cli.selftest.pipeline import PipelineWorkspace, StageFailed, check_pipeline, pipeline_workspace

BATCH, SEQ = 2, 8


@dataclass
class SelfTestResult:
    """The outcome of one architecture's self-test."""

    arch: str  # class name, e.g. "MixtralForCausalLM"
    model_type: str
    supported: bool  # lightmoe found MoE layers it can handle
    passed: bool  # every check passed
    detail: str  # what failed, or a short summary when it passed
    n_moe_layers: int = 0
    num_experts: int = 0
    top_k: int = 0
    seconds: float = 0.0


class CheckFailed(Exception):
    """One self-test check did not hold."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def _logits(model: nn.Module, input_ids: torch.Tensor, what: str) -> torch.Tensor:
    with torch.no_grad():
        logits = model(input_ids).logits
    _check(bool(torch.isfinite(logits).all()), f"{what}: non-finite logits")
    return logits


def _trace(model: nn.Module, input_ids: torch.Tensor) -> dict[int, list[torch.Tensor]]:
    """layer_index -> the top_k_index of each experts call during one forward."""
    traced: dict[int, list[torch.Tensor]] = defaultdict(list)
    with record_routing(model, lambda i, index, weights: traced[i].append(index)):
        _logits(model, input_ids, "traced forward")
    return traced


def _check_trace_matches_router(model: nn.Module, adapter: MoEAdapter, layers: list[MoELayer],
                                input_ids: torch.Tensor) -> None:
    """Traced indices must be exactly what each router returned (captured by a forward hook on it)."""
    returned: dict[int, list[torch.Tensor]] = defaultdict(list)
    handles = [
        layer.router.register_forward_hook(
            lambda m, a, out, layer=layer: returned[layer.layer_index].append(
                adapter.router_top_k_index(layer, out).detach().reshape(-1, layer.top_k).clone()))
        for layer in layers
    ]
    try:
        traced = _trace(model, input_ids)
    finally:
        for h in handles:
            h.remove()
    tokens = input_ids.numel()
    for layer in layers:
        got, want = traced.get(layer.layer_index, []), returned.get(layer.layer_index, [])
        _check(len(got) > 0, f"layer {layer.layer_index}: routing not traced")
        _check(len(got) == len(want), f"layer {layer.layer_index}: {len(got)} traced calls, {len(want)} router calls")
        for g, w in zip(got, want, strict=True):
            _check(tuple(g.shape) == (tokens, layer.top_k),
                   f"layer {layer.layer_index}: traced shape {tuple(g.shape)}, expected ({tokens}, {layer.top_k})")
            _check(torch.equal(g, w), f"layer {layer.layer_index}: traced indices differ from the router's")


def _check_keep_half(model: nn.Module, adapter: MoEAdapter, layers: list[MoELayer],
                     input_ids: torch.Tensor) -> None:
    """Keep every other expert: the copy is smaller, its forward finite, its routing inside the kept range."""
    keep = {layer.layer_index: list(range(0, layer.num_experts, 2)) for layer in layers}
    small = adapter.keep_experts(model, keep)
    n_params = sum(p.numel() for p in model.parameters())
    n_small = sum(p.numel() for p in small.parameters())
    _check(n_small < n_params, f"keep_experts: {n_small} params, not fewer than {n_params}")
    small_layers = {layer.layer_index: layer for layer in adapter.moe_layers(small)}
    for i, kept in keep.items():
        _check(small_layers[i].num_experts == len(kept),
               f"keep_experts: layer {i} has {small_layers[i].num_experts} experts, expected {len(kept)}")
    traced = _trace(small, input_ids)
    for i, calls in traced.items():
        limit = len(keep[i]) + adapter.extra_slots(small_layers[i])
        _check(all(int(c.max()) < limit for c in calls), f"keep_experts: layer {i} routed past its {limit} slots")


def _check_redirect(model: nn.Module, layers: list[MoELayer], input_ids: torch.Tensor) -> None:
    """Redirect expert 0 to expert 1 everywhere: no token may reach expert 0, the forward stays finite."""
    table = {}
    for layer in layers:
        t = torch.arange(layer.num_experts)
        t[0] = 1
        table[layer.layer_index] = t
    with redirect_experts(model, table):
        traced = _trace(model, input_ids)
    for i, calls in traced.items():
        _check(all(not bool((c == 0).any()) for c in calls), f"redirect: layer {i} still routed to expert 0")


def _check_read_write(adapter: MoEAdapter, layer: MoELayer) -> None:
    """Expert 0's tensors written into slot 1 read back identical (runs last: it changes the model)."""
    _check(adapter.bytes_per_expert(layer) > 0, "bytes_per_expert is 0")
    tensors = adapter.read_expert(layer, 0)
    adapter.write_expert(layer, 1, tensors)
    back = adapter.read_expert(layer, 1)
    _check(all(torch.equal(back[k], v) for k, v in tensors.items()), "write_expert: expert 1 reads back different")


def _selftest(info: ArchInfo, workspace: PipelineWorkspace | None = None) -> SelfTestResult:
    """Build `info`'s architecture tiny and run every check (with a workspace, the pipeline too); never raises."""
    start = time.perf_counter()
    result = SelfTestResult(info.class_name, info.model_type, supported=False, passed=False, detail="")
    try:
        torch.manual_seed(0)
        model = info.load_class()(tiny_config(info)).eval()
        input_ids = torch.randint(3, VOCAB, (BATCH, SEQ))
        try:
            adapter = get_adapter(model)
        except UnsupportedModelError:
            result.detail = "no MoE layer found"
            return result
        layers = adapter.moe_layers(model)
        result.supported = True
        result.n_moe_layers, result.num_experts, result.top_k = len(layers), layers[0].num_experts, layers[0].top_k
        _logits(model, input_ids, "forward")
        _check_trace_matches_router(model, adapter, layers, input_ids)
        _check_keep_half(model, adapter, layers, input_ids)
        _check_redirect(model, layers, input_ids)
        pipeline = check_pipeline(model, info.model_type, workspace, input_ids) if workspace is not None else ""
        _check_read_write(adapter, layers[-1])  # last: it changes the model
        result.passed = True
        export = pipeline.split(" ran, ", 1)[1] if " ran, " in pipeline else ""
        result.detail = (f"{result.num_experts} experts, top-{result.top_k}, MoE layers "
                         + ",".join(str(layer.layer_index) for layer in layers)
                         + ("; pipeline ran" if workspace is not None else "") + (f"; {export}" if export else ""))
    except CheckFailed as e:
        result.detail = str(e)
    except StageFailed as e:
        result.detail = f"pipeline {e}"
    except Exception as e:  # report any failure as a result row, keep sweeping
        result.detail = f"{type(e).__name__}: {e}".splitlines()[0][:200]
    finally:
        result.seconds = time.perf_counter() - start
    return result


def run_selftest(arch: str | ArchInfo, pipeline: bool = True) -> SelfTestResult:
    """Self-test one architecture (model_type, family or class name); `pipeline=False`: adapter checks only."""
    info = arch if isinstance(arch, ArchInfo) else find_architecture(arch)
    with quiet(), _workspace(pipeline) as workspace:
        return _selftest(info, workspace)


@contextlib.contextmanager
def _workspace(pipeline: bool) -> Iterator[PipelineWorkspace | None]:
    """The pipeline's shared workspace, or None when only the adapter checks run."""
    if not pipeline:
        yield None
        return
    with pipeline_workspace() as workspace:
        yield workspace


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence transformers' per-model notices (slow-kernel fallbacks, RoPE hints) during a sweep, and run on
    one thread: tiny models gain nothing from more, and lose 10-100x when other jobs hold the cores."""
    logger = logging.getLogger("transformers")
    level, threads = logger.level, torch.get_num_threads()
    logger.setLevel(logging.ERROR)
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
        torch.set_num_threads(threads)


def select_architectures(names: list[str] | None) -> list[ArchInfo]:
    """The architectures the user asked for (all when `names` is empty)."""
    infos = list_moe_architectures()
    if not names:
        return infos
    unknown = [n for n in names if not any(i.matches(n) for i in infos)]
    if unknown:
        known = ", ".join(sorted({i.model_type for i in infos}))
        raise LightMoEError(f"unknown MoE architecture(s) {', '.join(unknown)}; known model types: {known}")
    return [i for i in infos if any(i.matches(n) for n in names)]


def models_command(archs: list[str] | None, run_selftest: bool = True, pipeline: bool = True) -> None:
    """`lightmoe models`: list MoE architectures and (by default) self-test each, pipeline included, as a table."""
    from lightmoe_cli.selftest.table import print_results

    infos = select_architectures(archs)
    if not run_selftest:
        print_results([SelfTestResult(i.class_name, i.model_type, supported=True, passed=False, detail="")
                       for i in infos], ran=False)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    results = []
    columns = (TextColumn("self-test {task.description:<32}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with quiet(), _workspace(pipeline) as workspace, Progress(*columns, transient=True) as progress:
        task = progress.add_task("", total=len(infos))
        for info in infos:
            progress.update(task, description=info.class_name)
            results.append(_selftest(info, workspace))
            progress.advance(task)
    print_results(results, ran=True)
