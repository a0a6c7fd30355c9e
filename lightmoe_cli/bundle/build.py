"""`lightmoe build-bundle`: profile + policy + budget -> a deployable bundle folder (written atomically)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from lightmoe_cli.bundle.artifact import (
    SCHEMA_VERSION,
    BudgetRecord,
    Bundle,
    BundleManifest,
    ExpertLayout,
    ProfileRef,
    ReplacementRecord,
    load_bundle,
)
from lightmoe_cli.bundle.options import BuildOptions, ResolvedBuild, resolved
from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.files import exclusive_output, save_tensors, sha256_file
from lightmoe_cli.identity import library_versions, model_identity
from lightmoe_cli.manifest import FINGERPRINT_KEY, write_artifact
from lightmoe_cli.policies.base import BundlePlan, PlanInputs
from lightmoe_cli.policies.budget import slots_for_budget
from lightmoe_cli.profile.artifact import Profile


def _ranking_mass(prof: Profile, ranking: str) -> dict[int, np.ndarray]:
    layers = prof.layer_indices
    if ranking == "reap":
        return {li: prof.saliency(li).double().numpy() for li in layers}
    total = prof.total_stats()
    if ranking == "frequency":
        return {li: total[li].counts.double().numpy() for li in layers}
    return {li: total[li].gate_mass.numpy() for li in layers}


def plan_from_profile(prof: Profile, opts: BuildOptions | ResolvedBuild, bytes_per_expert: list[int],
                      expert_shape: tuple[int, int] | None = None) -> tuple[BundlePlan, BudgetRecord]:
    """Run the chosen policy on the profile's statistics; returns the plan and the budget record.
    `expert_shape` (hidden, intermediate): for a policy that sets its own memory (expert replacing)."""
    opts = resolved(opts)
    policy, params = opts.policy, opts.params
    layers = prof.layer_indices
    top_k = dict(zip(layers, prof.model.top_k, strict=True))
    num_experts = prof.model.num_experts
    fixed = policy.fixed_slots(params, expert_shape, max(top_k.values()), max(num_experts), len(layers)) \
        if expert_shape is not None else None
    if fixed is not None:
        budget = slots_for_budget(bytes_per_expert, num_experts, fraction=1.0)
        budget = dataclasses.replace(budget, total_slots=fixed)
    elif policy.uses_budget:
        budget = slots_for_budget(bytes_per_expert, num_experts, fraction=opts.fraction,
                                  memory_bytes=opts.memory_bytes,
                                  min_per_layer=policy.min_slots_per_layer(params, max(top_k.values())))
    else:
        budget = slots_for_budget(bytes_per_expert, num_experts, fraction=1.0)
    task_mass = {t: {li: s.gate_mass.numpy() for li, s in prof.task_stats(t).layers.items()}
                 for t in prof.task_names}
    kind = policy.similarity_kind(params)
    sims = {li: prof.similarity(li, kind).numpy() for li in layers} if kind else {}
    plan = policy.plan(PlanInputs(_ranking_mass(prof, opts.ranking), task_mass, sims, top_k, budget.total_slots),
                       params)
    spare = plan.runtime.spare_slots  # rows the runtime holds past the residents (double buffering): memory too
    resident_bytes = sum((lp.slots + spare) * b for lp, b in zip(plan.layers, bytes_per_expert, strict=True))
    record = BudgetRecord(opts.fraction, budget.budget_bytes, budget.all_expert_bytes, resident_bytes,
                          resident_bytes / budget.all_expert_bytes, budget.total_slots)
    return plan, record


def _activation_plan(opts: ResolvedBuild, model, tokenizer, prof: Profile, adapter, layers):
    """The activation budget's per-layer k (None without --activation); LExI measures the model first."""
    if opts.activation is None:
        return None
    from lightmoe_cli.policies.activation_budget import ACTIVATION_RULES, plan_activation

    if not adapter.can_change_top_k():
        raise LightMoEError(f"--activation needs a router whose picks per token can be cut; "
                            f"{model.config.model_type} routes inside its router, which lightmoe cannot change")

    measured = {}
    kind = ACTIVATION_RULES[opts.activation].measurement
    if kind == "lexi":
        from lightmoe_cli.bundle.lexi import lexi_deltas

        measured = {"delta": lexi_deltas(model, adapter, layers)}
    elif kind == "alloc":
        from lightmoe_cli.bundle.alloc import alloc_sensitivity, calibration_windows

        measured = {"sensitivity": alloc_sensitivity(model, adapter, layers,
                                                     calibration_windows(prof, tokenizer))}
    elif kind == "routing":
        from lightmoe_cli.bundle.alloc import calibration_windows, routing_weights

        measured = {"weights": routing_weights(model, calibration_windows(prof, tokenizer))}
    try:
        return plan_activation(opts.activation, {m.layer_index: m.top_k for m in layers}, opts.active, measured)
    except ValueError as e:
        raise LightMoEError(str(e)) from e


def _expert_param_ids(adapter, layers) -> set[int]:
    """The routed experts' parameters themselves (not `expert_tensors`, which may be views of them: DBRX).

    Checked against the views' storages, so an adapter that names the wrong parameters fails here instead of
    writing every expert again as a non-expert weight."""
    params = [p for m in layers for p in adapter.expert_parameters(m)]
    storages = {p.untyped_storage().data_ptr() for p in params}
    for m in layers:
        for name, t in adapter.expert_tensors(m).items():
            if t.untyped_storage().data_ptr() not in storages:
                raise LightMoEError(f"layer {m.layer_index}: expert tensor {name} is not held by the adapter's "
                                    "expert_parameters")
    return {id(p) for p in params}


def _non_expert_weights(model, adapter, layers) -> dict[str, torch.Tensor]:
    """Every parameter and persistent buffer except the routed experts; tied weights once (the runtime re-ties)."""
    expert_ids = _expert_param_ids(adapter, layers)
    seen: set[int] = set()
    out = {}
    for name, p in list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers()):
        if id(p) in expert_ids or name.endswith(("inv_freq", "original_inv_freq")) or id(p) in seen:
            continue
        seen.add(id(p))
        out[name] = p
    return out


def _write_expert_store(adapter, layers, folder: Path, meta: dict[str, str], progress=None,
                        overrides: dict[int, dict[int, dict]] | None = None) -> dict[int, ExpertLayout]:
    """One safetensors file per layer, one flat tensor per expert; returns each layer's layout. `overrides`
    (layer -> expert -> tensors): weights a policy changed (merged or fine-tuned experts) stored instead."""
    layout = {}
    task = progress.add_task("expert store", total=sum(m.num_experts for m in layers)) if progress else None
    for m in layers:
        names = sorted(adapter.expert_tensors(m))
        first = adapter.read_expert(m, 0)
        layout[m.layer_index] = ExpertLayout(names, [list(first[n].shape) for n in names],
                                             str(first[names[0]].dtype).replace("torch.", ""))
        store = {}
        for e in range(m.num_experts):
            t = (overrides or {}).get(m.layer_index, {}).get(e) or adapter.read_expert(m, e)
            store[f"e{e}"] = torch.cat([t[n].reshape(-1) for n in names])
            if progress:
                progress.advance(task)
        save_tensors(store, folder / f"layer_{m.layer_index}.safetensors", meta)
    return layout


def build_bundle(prof: Profile, model, tokenizer, model_name: str, out: Path, opts: BuildOptions | ResolvedBuild,
                 progress=None, force: bool = False, task_classifier: bool = True) -> Bundle:
    """Write the bundle for `opts.policy` into `out` (via `<out>.tmp`, swapped in at the end; an `out` that is not
    a bundle is replaced only with `force`). `task_classifier=False` skips the serving detector (seconds of
    training): for bundles that are only scored, never served (`lightmoe tune`'s candidates)."""
    from lightmoe_cli.bundle.transforms import WEIGHT_TRANSFORMS, TransformInputs
    from lightmoe_cli.models import get_adapter
    from lightmoe_cli.replace.construct import expert_shape

    opts = resolved(opts)
    policy, params = opts.policy, opts.params
    adapter = get_adapter(model)
    layers = adapter.moe_layers(model)
    identity = model_identity(model, adapter, model_name)
    prof.check_model(identity)
    plan, budget = plan_from_profile(prof, opts, [adapter.bytes_per_expert(m) for m in layers], expert_shape(layers))
    activation = _activation_plan(opts, model, tokenizer, prof, adapter, layers)  # resolve() refused what
    # a policy cannot serve (a per-token rule with on-demand loading or expert replacing) before any model loaded
    weights = None  # a policy whose expert weights are not the model's: what its transform made
    if policy.weight_transform is not None:
        transform = WEIGHT_TRANSFORMS.get(policy.weight_transform)
        weights = transform(TransformInputs(model, tokenizer, adapter, layers, plan, params, prof,
                                            identity.fingerprint, Path(out), _ranking_mass(prof, opts.ranking),
                                            budget, progress))
        budget = weights.budget or budget
    predictor = _checked_predictor(policy.predictor(params), layers, policy.name, identity.fingerprint)
    with exclusive_output(Path(out)) as tmp:
        if predictor is not None:
            _copy_predictor(predictor, tmp / "predictor")
        if weights is not None and weights.lowrank:
            tmp.mkdir(parents=True, exist_ok=True)
            save_tensors(weights.lowrank, tmp / "lowrank.safetensors", {FINGERPRINT_KEY: identity.fingerprint})
        _write_bundle(tmp, Path(out), prof, model, tokenizer, adapter, layers, identity, opts, plan, budget,
                      progress, activation, weights.record if weights else None,
                      weights.overrides if weights else None, force, task_classifier)
    return load_bundle(out, verify=False)


def _checked_predictor(folder: str | None, layers, policy: str, fingerprint: str) -> Path | None:
    """A policy that prefetches needs a verified predictor trained on this model's MoE layers (refused by
    name)."""
    if folder is None:
        return None
    if not folder:
        raise LightMoEError(f"--policy {policy} needs --predictor DIR: train one with `lightmoe predict train`")
    from lightmoe_cli.predict.model import load_predictor

    pm = load_predictor(Path(folder), fingerprint)
    indices = [m.layer_index for m in layers]
    want = list(zip(indices[:-1], indices[1:], strict=True))
    if [tuple(p) for p in pm.cfg.pairs] != want or pm.cfg.num_experts != layers[0].num_experts:
        raise LightMoEError(f"predictor {folder} predicts layer pairs {pm.cfg.pairs} over {pm.cfg.num_experts} "
                            f"experts; this model needs {want} over {layers[0].num_experts}: train one on its profile")
    return Path(folder)


def _copy_predictor(src: Path, dst: Path) -> None:
    """The predictor artifact, whole (its manifest, weights and scores): verified again on every load, and its
    files listed in the bundle's manifest too."""
    import shutil

    from lightmoe_cli.predict.model import read_predictor_manifest

    manifest = read_predictor_manifest(src)
    dst.mkdir(parents=True)
    for rel in [*manifest.files, "manifest.json"]:
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, dst / rel)


def _write_bundle(tmp: Path, out: Path, prof: Profile, model, tokenizer, adapter, layers, identity,
                  opts: ResolvedBuild, plan: BundlePlan, budget: BudgetRecord, progress, activation,
                  replacement: ReplacementRecord | None = None, overrides: dict | None = None,
                  force: bool = False, task_classifier: bool = True) -> None:
    policy, params = opts.policy, opts.params
    meta = {FINGERPRINT_KEY: identity.fingerprint}
    (tmp / "model").mkdir(parents=True)
    (tmp / "experts").mkdir()
    model.config.save_pretrained(tmp / "model")
    tokenizer.save_pretrained(tmp / "model")
    save_tensors(_non_expert_weights(model, adapter, layers), tmp / "model" / "non_expert.safetensors", meta)
    layout = _write_expert_store(adapter, layers, tmp / "experts", meta, progress, overrides)
    kind = policy.similarity_kind(params)
    if kind:
        save_tensors({f"layer.{m.layer_index}": prof.similarity(m.layer_index, kind).float() for m in layers},
                     tmp / "similarity.safetensors", meta)

    classifier = profile_text_classifier(prof) if plan.task_resident and task_classifier else None
    if classifier is not None:
        from lightmoe_cli.bundle.task_classifier import FOLDER

        classifier.save(tmp / FOLDER, meta)
    manifest = BundleManifest(
        kind=BundleManifest.KIND, schema_version=SCHEMA_VERSION, created=BundleManifest.now(), model=identity,
        versions=library_versions(), policy=policy.name, params=params.to_json(), ranking=opts.ranking,
        runtime=plan.runtime, budget=budget, layers=plan.layers, task_resident=plan.task_resident,
        task_signatures={t: {li: (s.gate_mass / max(float(s.gate_mass.sum()), 1e-12)).tolist()
                             for li, s in prof.task_stats(t).layers.items()} for t in prof.task_names},
        expert_layout=layout, activation=activation, replacement=replacement,
        profile=ProfileRef(str(prof.path), sha256_file(prof.path / "manifest.json"), dict(prof.manifest.tasks),
                           prof.manifest.recipe))
    write_artifact(tmp, out, manifest, force)


def profile_text_classifier(prof: Profile):
    """The serving detector of a bundle with task sets, trained on the profile's calibration text; None when that
    text cannot be read any more (the server then detects tasks by routing alone)."""
    from lightmoe_cli.bundle.task_classifier import chunks, train_text_classifier
    from lightmoe_cli.recipes import RecipeError, iter_task_texts, recipe_from_resolved

    try:
        recipe = recipe_from_resolved(prof.manifest.recipe)
        texts = {t.name: chunks(iter_task_texts(recipe, t)) for t in recipe.tasks if t.name in prof.task_names}
    except (RecipeError, KeyError, TypeError, OSError):
        return None
    return train_text_classifier(texts) if len([t for t in texts.values() if t]) >= 2 else None


def build_bundle_request(opts: BuildOptions, progress=None, resolved_opts: ResolvedBuild | None = None) -> Bundle:
    """`lightmoe build-bundle` as one call: options checked, then the profile and model loaded and the bundle
    written to --out or to its default folder (model, policy and budget in the name). `resolved_opts`: `opts`
    already resolved by the caller (checked once, not twice)."""
    from lightmoe_cli.loading import load_model_and_tokenizer, resolve_model
    from lightmoe_cli.options import check_io
    from lightmoe_cli.paths import default_bundle, default_profile
    from lightmoe_cli.profile.artifact import load_profile

    r = resolved_opts or opts.resolve()  # every option checked before a model is loaded
    prof = load_profile(opts.profile or default_profile(resolve_model(opts.model)))
    name = opts.model or prof.model.name_or_path
    out = opts.out or default_bundle(name, r.policy.name, r.bundle_name_tag())
    check_io(opts, out, [("--profile", prof.path), ("--model", resolve_model(name)), *r.params.inputs()])
    predictor = r.policy.predictor(r.params)
    if predictor:  # verified (hashes, the model it was trained on) before the model loads
        from lightmoe_cli.predict.model import read_predictor_manifest

        if read_predictor_manifest(Path(predictor)).model.fingerprint != prof.model.fingerprint:
            raise LightMoEError(f"predictor {predictor} was trained on another model than the profile's "
                                f"({prof.model.name_or_path}): train one on its profile")
    lm, tok = load_model_and_tokenizer(name, dtype=r.dtype)
    return build_bundle(prof, lm, tok, name, out, r, progress=progress, force=opts.force)
