"""`lightmoe build-bundle`: profile + policy + budget -> a deployable bundle folder (written atomically)."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from lightmoe_cli.bundle.artifact import SCHEMA_VERSION, Bundle, load_bundle
from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.files import swap_in_dir
from lightmoe_cli.identity import library_versions, model_identity, sha256_file
from lightmoe_cli.policies.budget import slots_for_budget
from lightmoe_cli.policies.manager import ManagerParams
from lightmoe_cli.policies.plan import MIN_SLOTS_PER_LAYER, POLICIES, BundlePlan, PlanInputs
from lightmoe_cli.profile.artifact import Profile


@dataclass
class BuildOptions:
    policy: str = "lightmoe"
    fraction: float | None = 0.5
    memory_bytes: int | None = None
    similarity: str = "output"
    min_similarity: float = 0.5
    eviction: str = "lru"
    manager: ManagerParams | None = None
    missing: str = "reroute"
    ranking: str = "gate_mass"  # which experts a layer keeps: gate_mass, frequency (counts) or reap (saliency)


def plan_from_profile(prof: Profile, opts: BuildOptions, bytes_per_expert: list[int]) -> tuple[BundlePlan, dict]:
    """Run the chosen policy on the profile's statistics; returns the plan and the budget record."""
    if opts.policy not in POLICIES:
        raise LightMoEError(f"unknown policy {opts.policy!r}; policies: {', '.join(POLICIES)}")
    total = prof.total_stats()
    layers = prof.layer_indices
    if opts.ranking == "gate_mass":
        mass = {li: total[li].gate_mass.numpy() for li in layers}
    elif opts.ranking == "frequency":
        mass = {li: total[li].counts.double().numpy() for li in layers}
    elif opts.ranking == "reap":
        mass = {li: prof.saliency(li).double().numpy() for li in layers}
    else:
        raise LightMoEError(f"unknown ranking {opts.ranking!r}; use gate_mass, frequency or reap")
    task_mass = {t: {li: s.gate_mass.numpy() for li, s in prof.task_stats(t).layers.items()}
                 for t in prof.task_names}
    top_k = dict(zip(layers, prof.manifest["model"]["top_k"], strict=True))
    num_experts = prof.manifest["model"]["num_experts"]
    if opts.policy == "full":
        budget = slots_for_budget(bytes_per_expert, num_experts, fraction=1.0)
    else:
        budget = slots_for_budget(bytes_per_expert, num_experts, fraction=opts.fraction,
                                  memory_bytes=opts.memory_bytes,
                                  min_per_layer=1 if (opts.policy, opts.missing) == ("lightmoe", "drop")
                                  else MIN_SLOTS_PER_LAYER[opts.policy](max(top_k.values())))
    sims = {li: prof.similarity(li, opts.similarity).numpy() for li in layers} if opts.policy == "lightmoe" else {}
    inputs = PlanInputs(mass, task_mass, sims, top_k, budget.total_slots)
    if opts.policy == "lightmoe":
        plan = POLICIES["lightmoe"](inputs, opts.min_similarity, opts.manager, opts.missing)
    elif opts.policy == "lru":
        plan = POLICIES["lru"](inputs, opts.eviction)
    else:
        plan = POLICIES[opts.policy](inputs)
    resident_bytes = sum(lp.slots * b for lp, b in zip(plan.layers, bytes_per_expert, strict=True))
    record = {"requested_fraction": opts.fraction, "requested_bytes": budget.budget_bytes,
              "all_expert_bytes": budget.all_expert_bytes, "resident_expert_bytes": resident_bytes,
              "resident_fraction": resident_bytes / budget.all_expert_bytes, "slots": budget.total_slots}
    return plan, record


def _expert_param_ids(adapter, layers) -> set[int]:
    return {id(t) for m in layers for t in adapter.expert_tensors(m).values()}


def _save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(path))


def build_bundle(prof: Profile, model, tokenizer, model_name: str, out: Path, opts: BuildOptions,
                 progress=None) -> Bundle:
    """Write the bundle for `opts.policy` into `out` (via `<out>.tmp`, renamed at the end)."""
    from lightmoe_cli.models import get_adapter

    adapter = get_adapter(model)
    layers = adapter.moe_layers(model)
    identity = model_identity(model, adapter, model_name)
    prof.check_model(identity)
    plan, budget = plan_from_profile(prof, opts, [adapter.bytes_per_expert(m) for m in layers])

    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "model").mkdir(parents=True)
    (tmp / "experts").mkdir()
    model.config.save_pretrained(tmp / "model")
    tokenizer.save_pretrained(tmp / "model")
    expert_ids = _expert_param_ids(adapter, layers)
    seen: dict[int, str] = {}
    non_expert = {}
    for name, p in list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers()):
        if id(p) in expert_ids or name.endswith(("inv_freq", "original_inv_freq")):
            continue
        if id(p) in seen:  # tied weights are stored once; the runtime re-ties them
            continue
        seen[id(p)] = name
        non_expert[name] = p
    _save(non_expert, tmp / "model" / "non_expert.safetensors")

    layout = {}
    task = progress.add_task("expert store", total=sum(m.num_experts for m in layers)) if progress else None
    for m in layers:
        names = sorted(adapter.expert_tensors(m))
        first = adapter.read_expert(m, 0)
        layout[str(m.layer_index)] = {"names": names, "shapes": [list(first[n].shape) for n in names],
                                      "dtype": str(first[names[0]].dtype).replace("torch.", "")}
        store = {}
        for e in range(m.num_experts):
            t = adapter.read_expert(m, e)
            store[f"e{e}"] = torch.cat([t[n].reshape(-1) for n in names])
            if progress:
                progress.advance(task)
        _save(store, tmp / "experts" / f"layer_{m.layer_index}.safetensors")
    if opts.policy == "lightmoe":
        _save({f"layer.{m.layer_index}": prof.similarity(m.layer_index, opts.similarity).float() for m in layers},
              tmp / "similarity.safetensors")

    files = {p.relative_to(tmp).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
             for p in sorted(tmp.rglob("*")) if p.is_file()}
    manifest = {
        "kind": "lightmoe-bundle",
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "policy": opts.policy,
        "options": {k: v for k, v in asdict(opts).items() if k != "manager"},
        "model": identity,
        "budget": budget,
        "plan": plan.to_json(),
        "expert_layout": layout,
        "profile": {"path": str(prof.path), "recipe": prof.manifest["recipe"],
                    "manifest_sha256": sha256_file(prof.path / "manifest.json"), "tasks": prof.manifest["tasks"]},
        "task_signatures": {t: {str(li): (s.gate_mass / max(float(s.gate_mass.sum()), 1e-12)).tolist()
                                for li, s in prof.task_stats(t).layers.items()} for t in prof.task_names}
        if opts.policy == "lightmoe" else {},
        "versions": library_versions(),
        "files": files,
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    swap_in_dir(tmp, out)
    return load_bundle(out, verify=False)


def describe_plan(bundle: Bundle) -> list[tuple]:
    """Rows for the build summary table: layer, slots / experts, covered gate mass, redirected, dropped."""
    rows = []
    for lp in bundle.layers:
        table = np.asarray(lp["redirect"])
        missing = [e for e in range(lp["num_experts"]) if e not in set(lp["resident"])]
        redirected = sum(1 for e in missing if table[e] >= 0)
        rows.append((lp["layer_index"], f"{lp['slots']}/{lp['num_experts']}", f"{lp['covered_mass']:.1%}",
                     str(redirected), str(len(missing) - redirected)))
    return rows
