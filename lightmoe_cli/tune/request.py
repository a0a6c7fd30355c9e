"""What `lightmoe tune` is asked for (`TuneRequest`) and `run_tune`, which answers it: the best residency policy x
budget x activation rule for a memory (and a speed or quality target), measured on the profile's own tasks.

Cheapest evidence first: (1) fit's byte counts and the profile's residency outlook prune the grid before anything
is built; (2) held-out NLL through the runtime, on the calibration documents the profile did not read, ranks what
is left by successive halving (more documents for the survivors); (3) decode speed is measured on the finalists
only. Every option is checked, and the outputs' write rules too, before the model loads: a bad input is one line
and nothing is written.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.options import Force, ModelChoice, check_bounds, option, split_list
from lightmoe_cli.tune.search import (
    Candidate,
    Figures,
    advice,
    choose,
    grid,
    keep_best,
    pareto_front,
    rungs,
    sweep_advice,
)

TUNE_KIND = "lightmoe-tune"
BUNDLE_KIND = "lightmoe-bundle"
# main parameters searched per policy (field name -> values); others keep the policy's defaults
POLICY_SETTINGS: dict[str, list[dict[str, Any]]] = {
    "task-aware": [{"swap_rule": "jump"}, {"swap_rule": "incremental"}],
}
# the advice's run-length sweep: task-aware's best against prune on this many documents per task, in runs of these
# lengths (the first documents of each task; prune's come from the halving when it scored them)
SWEEP_LENGTHS = (1, 2, 4)


@dataclass
class TuneRequest(ModelChoice, Force):
    memory: str | None = option(None, "Required. Memory for the weights: a size (e.g. 40MiB: non-expert weights + "
                                "resident experts, fp32) or a share of the expert weights (e.g. 50%).")
    profile: Path | None = option(None, "Profile folder (default: the model's, artifacts/profiles/<model>).",
                                  short="-p", role="input")
    min_decode_tps: float | None = option(None, "Pick the best NLL among configurations decoding at least this "
                                          "many tokens/s.", above=0.0)
    max_nll_increase: float | None = option(None, "Pick the fastest configuration within this NLL increase "
                                            "(nats/token) over the full model.", minimum=0.0)
    traffic: str | None = option(None, "Score on a stream whose task changes every N requests, e.g. blocks:8 "
                                 "(default: each task's documents in one run).")
    policies: list[str] = option(help="Residency policies searched.",
                                   default_factory=lambda: ["prune", "task-aware", "swap"])
    activations: list[str] = option(help="Activation rules searched, RULE:ACTIVE "
                                    "(none: the model's own top-k).",
                                    default_factory=lambda: ["none", "topk:0.75", "lexi:0.75"])
    budget_steps: list[float] = option(help="Resident budgets searched, as shares of the memory's.",
                                       default_factory=lambda: [1.0, 0.75])
    docs_per_task: int = option(10, "Held-out documents per task for the final rung (the calibration text past "
                                "what the profile read).", minimum=1)
    doc_tokens: int = option(96, "Tokens scored per held-out document (longer ones are cut).", minimum=8)
    eta: int = option(5, "Successive halving: keep 1 in ETA candidates per rung, ETA x the documents.", minimum=2)
    finalists: int = option(2, "Candidates whose decode speed is measured.", minimum=1)
    decode_tokens: int = option(32, "New tokens per prompt when decode speed is measured (2 prompts).", minimum=1)
    exhaustive: bool = option(False, "Score every candidate of the grid on every document and time each one "
                              "(no outlook pruning, no halving): the reference tune is measured against.",
                              flag="--exhaustive")
    out: Path | None = option(None, "Bundle folder of the pick (default: runs/tune/<model>-<memory>[-blocksN]); "
                              "<out>.tune.json and <out>.frontier.png are written beside it.", short="-o",
                              role="output")
    threads: int | None = option(None, "torch CPU threads (default: all cores).", minimum=1)

    def validate(self) -> None:
        """Bounds, the exclusive targets and the list options' syntax, before anything loads."""
        check_bounds(self)
        if not self.memory:
            raise LightMoEError("--memory is required: a size such as 40MiB or a share of the experts such as 50%")
        if self.min_decode_tps is not None and self.max_nll_increase is not None:
            raise LightMoEError("give --min-decode-tps or --max-nll-increase, not both")
        traffic_block(self.traffic)
        activation_list(self.activations)
        if any(not (0 < s <= 1) for s in self.budget_steps):
            raise LightMoEError(f"--budget-steps {self.budget_steps}: each must be in (0, 1]")


def traffic_block(text: str | None) -> int | None:
    """'blocks:8' -> 8 (None: no --traffic)."""
    if text is None:
        return None
    kind, _, n = text.partition(":")
    if kind != "blocks" or not n.isdigit() or int(n) < 1:
        raise LightMoEError(f"--traffic {text!r}: use blocks:N (the task changes every N requests, N >= 1)")
    return int(n)


def activation_list(items: list[str]) -> list[tuple[str | None, float]]:
    from lightmoe_cli.policies.activation_budget import ACTIVATION_RULES

    out: list[tuple[str | None, float]] = []
    for item in split_list(items):
        rule, _, active = item.partition(":")
        if rule == "none":
            out.append((None, 1.0))
            continue
        if rule not in ACTIVATION_RULES:
            raise LightMoEError(f"--activations {item!r}: unknown rule; rules: none, {', '.join(ACTIVATION_RULES)}")
        try:
            share = float(active or "0.75")
        except ValueError:
            raise LightMoEError(f"--activations {item!r}: use RULE:SHARE, e.g. topk:0.75") from None
        if not (0 < share <= 1):
            raise LightMoEError(f"--activations {item!r}: the share must be in (0, 1]")
        out.append((rule, share))
    return out


@dataclass
class TuneReport:
    model: str
    profile: str
    memory: str
    fraction: float  # resident expert budget the memory allows (share of the expert weights)
    traffic: int | None
    figures: list[Figures]
    full_tps: float | None
    pick: Figures
    why: str
    advice: str
    frontier: list[Figures]
    rungs: list[tuple[int, int]]  # (candidates kept, documents per task)
    pruned: list[tuple[str, str]]  # (candidate, reason) dropped before any measurement
    seconds: dict[str, float] = field(default_factory=dict)
    bundle: Path | None = None
    documents: int = 0
    exhaustive: bool = False
    sweep: dict[str, Any] = field(default_factory=dict)  # task-aware vs prune by run length (the advice's evidence)

    def to_json(self) -> dict[str, Any]:
        return {"kind": TUNE_KIND, "model": self.model, "profile": self.profile, "memory": self.memory,
                "resident_fraction": self.fraction, "traffic_block": self.traffic, "exhaustive": self.exhaustive,
                "documents": self.documents,
                "rungs": [{"candidates": k, "documents_per_task": d} for k, d in self.rungs],
                "pick": self.pick.candidate.name, "why": self.why, "advice": self.advice,
                "bundle": str(self.bundle) if self.bundle else None, "full_decode_tps": self.full_tps,
                "frontier": [f.candidate.name for f in self.frontier], "seconds": self.seconds,
                "pruned_before_measuring": [{"name": n, "why": w} for n, w in self.pruned],
                "advice_sweep": self.sweep,
                "candidates": [f.to_json() for f in self.figures]}


def _resident_fraction(memory: str, non_expert: float, routed: float, model: str) -> float:
    from lightmoe_cli.fit.plans import GiB
    from lightmoe_cli.fit.request import parse_memory

    text = memory.strip()
    if text.endswith("%"):
        try:
            share = float(text[:-1]) / 100
        except ValueError:
            raise LightMoEError(f"cannot read --memory {memory!r}: use a size such as 40MiB or a share such as "
                                "50%") from None
        if not (0 < share <= 1):
            raise LightMoEError(f"--memory {memory}: a share of the expert weights must be in (0%, 100%]")
        return share
    value = parse_memory(text, "--memory")
    if value < non_expert:
        need = f"{non_expert / GiB:.2f} GiB" if non_expert >= 0.01 * GiB else f"{non_expert / 2**20:.2f} MiB"
        raise LightMoEError(f"--memory {memory} is too small: {model} needs at least {need} for the non-expert "
                            "weights alone (fp32)")
    return min(1.0, (value - non_expert) / routed)


def _check_holds_top_k(memory: str, fraction: float, layers, non_expert: float, routed: float) -> float:
    """Every candidate keeps at least top-k experts per MoE layer (a token's picks must have somewhere to go):
    a memory below that is refused before the model loads, naming the least that works. Returns that least
    share of the expert weights (smaller budget steps are left out of the grid)."""
    from lightmoe_cli.fit.plans import GiB

    need = max((m.top_k / m.num_experts for m in layers), default=0.0)
    if fraction + 1e-9 >= need:
        return need
    total = non_expert + need * routed
    size = f"{total / GiB:.2f} GiB" if total >= GiB else f"{total / 2**20:.1f} MiB"
    raise LightMoEError(f"--memory {memory} holds fewer than top-k experts per MoE layer: use at least "
                        f"{need:.1%} of the expert weights (--memory {size} in all)")


def _heldout_docs(prof, tokenizer, docs_per_task: int, doc_tokens: int) -> dict[str, list[str]]:
    """Per task, the recipe's documents past the tokens the profile read (its manifest records them), each cut
    to `doc_tokens` tokens."""
    from lightmoe_cli.recipes import RecipeError, iter_task_texts, recipe_from_resolved

    try:
        recipe = recipe_from_resolved(prof.manifest.recipe)
    except (RecipeError, KeyError, TypeError) as e:
        raise LightMoEError(f"profile {prof.path} records no readable calibration recipe ({e}): tune needs its "
                            "text") from None
    out: dict[str, list[str]] = {}
    for task in recipe.tasks:
        if task.name not in prof.manifest.tasks:
            continue
        read, seen, docs = prof.manifest.tasks[task.name], 0, []
        for text in iter_task_texts(recipe, task):
            ids = tokenizer(text).input_ids
            if seen < read:  # the profile's share, and the document it stopped in
                seen += len(ids)
                continue
            if len(ids) < 8:
                continue
            docs.append(tokenizer.decode(ids[:doc_tokens]))
            if len(docs) >= docs_per_task:
                break
        if docs:
            out[task.name] = docs
    if len(out) < 1:
        raise LightMoEError(f"the calibration text of profile {prof.path} has no documents past what the profile "
                            "read: profile fewer tokens (--max-tokens) to leave a held-out split")
    return out


def _outlook_pruned(prof, candidates: list[Candidate]) -> tuple[list[Candidate], list[tuple[str, str]]]:
    """Drop task-aware candidates at a budget where the profile's held-out coverage says a task's own set holds
    no more of its gate mass than one global set (the outlook's PAYS_OFF): they can only serve as prune does."""
    from lightmoe_cli.analysis.outlook import PAYS_OFF, residency_outlook

    stats = {t: prof.task_stats(t) for t in prof.task_names}
    task_mass = {t: {li: s.gate_mass.numpy() for li, s in st.layers.items()} for t, st in stats.items()}
    halves = {t: {li: s.half_mass.numpy() for li, s in st.layers.items()} for t, st in stats.items()}
    top_k = dict(zip(prof.layer_indices, prof.model.top_k, strict=True))
    budgets = tuple(sorted({c.budget for c in candidates if c.budget < 1}))
    gain = {r.budget: r.heldout_gain for r in residency_outlook(task_mass, halves, top_k, None, budgets).rows} \
        if budgets and len(task_mass) > 1 else {}
    kept, pruned = [], []
    for c in candidates:
        if c.policy == "task-aware" and gain.get(c.budget, 0.0) < PAYS_OFF:
            pruned.append((c.name, f"outlook: a task's own set gains {gain.get(c.budget, 0.0):+.1%} held-out gate "
                                   f"mass over one global set at {c.budget:.0%} (< {PAYS_OFF:.0%})"))
        else:
            kept.append(c)
    return kept, pruned


def _nested_pruned(candidates: list[Candidate]) -> tuple[list[Candidate], list[tuple[str, str]]]:
    """Without a target the pick is the lowest NLL, so drop a candidate that the same policy and activation rule
    at a larger budget of the grid dominates: a budget's resident experts are the highest-mass ones, so a
    smaller budget keeps a subset of a larger one's (per task under a manager) and re-routes more. On the demo
    every smaller step scored worse than its larger one. A speed or NLL target keeps them: there a smaller
    budget can win on speed or memory."""
    largest: dict[tuple, float] = {}
    for c in candidates:
        key = (c.policy, c.params, c.activation, c.active)
        largest[key] = max(largest.get(key, 0.0), c.budget)
    kept, pruned = [], []
    for c in candidates:
        top = largest[(c.policy, c.params, c.activation, c.active)]
        if c.budget < top:
            pruned.append((c.name, f"nested: the same serving at {top:.0%} keeps a superset of its experts "
                                   "resident (no speed or NLL target, so the lower NLL decides)"))
        else:
            kept.append(c)
    return kept, pruned


def _stream(docs: dict[str, list[str]], block: int | None):
    """Every document once, in runs of `block` of one task (None: each task's documents in one run), the tasks
    taken in turn (a stream whose task changes every `block` requests, as evaluation/stream.py's)."""
    from lightmoe_cli.evaluation.stream import StreamRequest
    from lightmoe_cli.tune.search import interleave

    return [StreamRequest(t, docs[t][i], b, pos) for b, pos, t, i in interleave(
        {t: len(v) for t, v in docs.items()}, block)]


def _score(rt, stream) -> list[tuple[float, int]]:
    from lightmoe_cli.evaluation.stream import run_stream

    res = run_stream(rt, "tune", stream, 0)
    return [(s.nll, s.tokens) for s in res.scores]


def _has_state(spec) -> bool:
    """A manager or run-time loads: the serving changes as it goes, so a document's score depends on the stream
    before it (no memo across rungs), and a tie goes to a candidate without (the simpler serving)."""
    return spec.manager is not None or spec.serving.value in ("on_demand", "background")


def _decode_tps(rt, prompts: list[str], new_tokens: int) -> float:
    from lightmoe_cli.runtime.generate import generate_one

    done, toks, secs = [0], 0, 0.0
    generate_one(rt, prompts[0], 4, [0])  # warm-up
    for p in prompts:
        r = generate_one(rt, p, new_tokens, done)
        toks, secs = toks + r.new_tokens, secs + r.decode_s
    return toks / secs if secs > 0 else 0.0


def run_tune(req: TuneRequest, progress=None) -> TuneReport:
    """Search, measure, choose, write the pick's bundle and its tune.json. `progress`: a rich Progress (or None)."""
    import shutil
    import tempfile

    import torch

    from lightmoe_cli.bundle.artifact import load_bundle
    from lightmoe_cli.bundle.build import _activation_plan, build_bundle
    from lightmoe_cli.bundle.options import BuildOptions
    from lightmoe_cli.files import check_output
    from lightmoe_cli.fit.count import count_model, read_config
    from lightmoe_cli.fit.request import sizes_of
    from lightmoe_cli.loading import load_model_and_tokenizer, resolve_model
    from lightmoe_cli.models import get_adapter
    from lightmoe_cli.paths import RUNS_DIR, default_profile, model_slug
    from lightmoe_cli.policies.activation_budget import ACTIVATION_RULES
    from lightmoe_cli.policies.registry import get_policy
    from lightmoe_cli.profile.artifact import load_profile
    from lightmoe_cli.runtime.loader import build_runtime

    t_start = time.perf_counter()
    req.validate()
    block = traffic_block(req.traffic)
    activations = activation_list(req.activations)
    for p in req.policies:
        get_policy(p)  # unknown names: one line
    if req.model is not None:
        read_config(req.model)  # a folder without config.json: one line
    prof_path = Path(req.profile) if req.profile else default_profile(resolve_model(req.model))
    prof = load_profile(prof_path)
    model = req.model or prof.model.name_or_path
    config, folder = read_config(model)
    counted = count_model(config, folder)
    sizes, _ = sizes_of(counted, "fp32", 1)
    fraction = _resident_fraction(req.memory, sizes.non_expert, sizes.routed, str(model))
    floor = _check_holds_top_k(req.memory, fraction, counted.moe_layers, sizes.non_expert, sizes.routed)
    if req.min_decode_tps is not None:
        from lightmoe_cli.fit.probe import probe_memory_bandwidth

        bound = probe_memory_bandwidth(64) / (sizes.read_non_expert + min(
            share for _, share in activations) * sizes.read_routed)
        if req.min_decode_tps > bound:
            raise LightMoEError(f"--min-decode-tps {req.min_decode_tps:g} is impossible here: even the fewest "
                                f"active experts bound decoding at {bound:,.0f} tokens/s (bytes read per token / "
                                "this machine's memory bandwidth)")
    tag = req.memory.strip().rstrip("%") + ("pct" if req.memory.strip().endswith("%") else "")
    out = Path(req.out) if req.out else RUNS_DIR / "tune" / (f"{model_slug(model)}-{tag}" +
                                                             (f"-blocks{block}" if block else ""))
    side_json = out.with_name(out.name + ".tune.json")
    inputs = [("--profile", prof.path), ("--model", resolve_model(model))]
    check_output(out, BUNDLE_KIND, inputs, req.force)
    check_output(side_json, TUNE_KIND, inputs, req.force, single_file=True)
    if req.threads:
        torch.set_num_threads(req.threads)

    # (1) the grid, pruned by bytes and the outlook before anything is built
    if fraction >= 1.0:
        policies = {"full": [{}]}
        budgets = [1.0]
    else:
        policies = {p: POLICY_SETTINGS.get(p, [{}]) for p in req.policies if p != "full"}
        budgets = sorted({round(fraction * s, 4) for s in req.budget_steps if fraction * s + 1e-9 >= floor},
                         reverse=True)
    refused = {p for p in policies if get_policy(p).per_token_refusal}
    per_token = {r for r in ACTIVATION_RULES if ACTIVATION_RULES.get(r).per_token}
    candidates = grid(policies, budgets, activations, refused, per_token)
    pruned: list[tuple[str, str]] = []
    if not req.exhaustive:
        candidates, pruned = _outlook_pruned(prof, candidates)
        if req.min_decode_tps is None and req.max_nll_increase is None:
            candidates, nested = _nested_pruned(candidates)
            pruned += nested

    lm, tok = load_model_and_tokenizer(model)
    docs = _heldout_docs(prof, tok, req.docs_per_task, req.doc_tokens)
    per_task = min(len(v) for v in docs.values())
    docs = {t: v[:per_task] for t, v in docs.items()}
    n_docs = per_task * len(docs)
    schedule = [(len(candidates), per_task)] if req.exhaustive else \
        rungs(len(candidates), per_task, req.eta, req.finalists, min_docs=1)
    work = sum(k * d * len(docs) for k, d in schedule) + n_docs
    task = progress.add_task("tune", total=work) if progress is not None else None
    adapter = get_adapter(lm)
    layers = adapter.moe_layers(lm)
    tmp = Path(tempfile.mkdtemp(prefix="lightmoe-tune-"))
    seconds: dict[str, float] = {"setup": time.perf_counter() - t_start, "build": 0.0, "score": 0.0,
                                 "speed": 0.0}
    try:
        bundles: dict[tuple, Path] = {}
        plans: dict[tuple, Any] = {}

        def bundle_for(c: Candidate) -> Path:
            if c.build_key not in bundles:
                t0 = time.perf_counter()
                path = tmp / f"b{len(bundles)}"
                opts = BuildOptions(policy=c.policy, fraction=c.budget if c.policy != "full" else None,
                                    params=dict(c.params)).resolve()
                build_bundle(prof, lm, tok, str(model), path, opts, task_classifier=False)
                bundles[c.build_key] = path
                seconds["build"] += time.perf_counter() - t0
            return bundles[c.build_key]

        def plan_for(c: Candidate):
            if c.activation is None:
                return None
            key = (c.activation, c.active)
            if key not in plans:
                t0 = time.perf_counter()
                opts = BuildOptions(policy="prune", activation=c.activation, active=c.active).resolve()
                plans[key] = _activation_plan(opts, lm, tok, prof, adapter, layers)
                seconds["build"] += time.perf_counter() - t0
            return plans[key]

        loaded: dict[Path, Any] = {}

        def built(c: Candidate):
            """The candidate's bundle, read once (its manifest holds every task's statistics)."""
            path = bundle_for(c)
            if path not in loaded:
                loaded[path] = load_bundle(path, verify=False)
            return loaded[path]

        def runtime_for(c: Candidate):
            return build_runtime(built(c), activation=plan_for(c), tokenizer=tok)

        # the full model's NLL of every document (it has no state: order does not matter), the reference each
        # increase is measured from
        t0 = time.perf_counter()
        full = Candidate("full", 1.0)
        rt = runtime_for(full)
        everything = _stream(docs, block)
        full_nll = {(r.domain, r.text): s for r, s in zip(everything, _score(rt, everything), strict=True)}
        rt.close()
        seconds["score"] += time.perf_counter() - t0
        if progress is not None:
            progress.advance(task, n_docs)

        figures = {c: Figures(c) for c in candidates}
        # a candidate without state (no manager, no run-time loads) scores a document the same wherever it stands
        # in the stream: each document is scored once, and a later rung reads only the ones it adds
        memo: dict[Candidate, dict[tuple[str, str], tuple[float, int]]] = {}

        def scores_of(c: Candidate, stream) -> list[tuple[float, int]]:
            if c not in memo:
                rt = runtime_for(c)
                try:
                    return _score(rt, stream)
                finally:
                    rt.close()
            known = memo[c]
            todo = [r for r in stream if (r.domain, r.text) not in known]
            if todo:
                rt = runtime_for(c)
                try:
                    known.update({(r.domain, r.text): s for r, s in zip(todo, _score(rt, todo), strict=True)})
                finally:
                    rt.close()
            return [known[(r.domain, r.text)] for r in stream]

        alive = list(candidates)
        for r, (keep, n) in enumerate(schedule):
            alive = alive if r == 0 else keep_best({c: figures[c].nll for c in alive}, keep)
            for c in figures:
                if c not in alive and figures[c].dropped is None:
                    figures[c].dropped = f"halving: not in the best {keep} on {schedule[r - 1][1] * len(docs)} docs"
            for c in alive:
                try:
                    bundle = built(c)
                    if not _has_state(bundle.runtime_spec):
                        memo.setdefault(c, {})
                    t0 = time.perf_counter()
                    stream = _stream({t: v[:n] for t, v in docs.items()}, block)
                    scores = scores_of(c, stream)
                except LightMoEError as e:
                    figures[c].dropped = f"cannot be built: {e}"
                    figures[c].nll_increase[n * len(docs)] = math.inf
                    continue
                seconds["score"] += time.perf_counter() - t0
                tokens = sum(t for _, t in scores)
                reference = sum(full_nll[(r.domain, r.text)][0] for r in stream)
                figures[c].nll_increase[n * len(docs)] = (sum(s for s, _ in scores) - reference) / tokens
                figures[c].memory_bytes = sizes.non_expert + bundle.manifest.budget.resident_expert_bytes
                figures[c].moving_parts = int(_has_state(bundle.runtime_spec))
                if progress is not None:
                    progress.advance(task, n * len(docs))
        last = {c: figures[c].nll for c in alive if figures[c].dropped is None}
        if not last:
            why_not = next(f.dropped for f in figures.values() if f.dropped and f.dropped.startswith("cannot be"))
            raise LightMoEError(f"--memory {req.memory}: no configuration can be built "
                                f"({why_not.removeprefix('cannot be built: ')}); give it more memory. Nothing written")
        # the grid times every candidate (its frontier is the whole grid's); tune only its finalists
        finalists = keep_best(last, len(last) if req.exhaustive else req.finalists)
        for c in alive:
            if c not in finalists and figures[c].dropped is None:
                figures[c].dropped = f"not among the {req.finalists} finalists on {n_docs} docs"

        # (3) decode speed, finalists only (and more, in NLL order, while a speed target is not met)
        prompts = [everything[0].text[:200], everything[-1].text[:200]]
        t0 = time.perf_counter()

        def measure(c: Candidate) -> float:
            rt = runtime_for(c)
            try:
                return _decode_tps(rt, prompts, req.decode_tokens)
            finally:
                rt.close()

        for c in finalists:
            figures[c].decode_tps = measure(c)
        if req.min_decode_tps is not None:
            rest = sorted((c for c in figures if figures[c].nll is not None and figures[c].decode_tps is None
                           and math.isfinite(figures[c].nll)), key=lambda c: figures[c].nll)
            for c in rest:
                if any((figures[f].decode_tps or 0) >= req.min_decode_tps for f in finalists):
                    break
                figures[c].decode_tps = measure(c)
                finalists.append(c)
        full_tps = measure(full)
        seconds["speed"] = time.perf_counter() - t0
        measured = [figures[c] for c in finalists]
        pick, why = choose(measured, req.min_decode_tps, req.max_nll_increase)
        if pick is None:
            raise LightMoEError(why + ": nothing written")
        front = [measured[i] for i in pareto_front([(f.memory_bytes, f.nll, f.decode_tps or 0.0) for f in measured])]
        best_by_policy: dict[str, float] = {}
        for f in figures.values():
            if f.nll is not None and f.candidate.activation is None and f.candidate.budget == max(budgets):
                best_by_policy[f.candidate.policy] = min(best_by_policy.get(f.candidate.policy, math.inf), f.nll)
        line = advice(best_by_policy, block)
        t0 = time.perf_counter()
        sweep = {}
        managed = [f for f in figures.values() if f.candidate.policy == "task-aware" and f.nll is not None
                   and f.candidate.activation is None and f.candidate.budget == max(budgets)]
        if managed:
            # task-aware's best against prune at the same budget, by run length: the advice's evidence
            best = min(managed, key=lambda f: f.nll).candidate
            prune = Candidate("prune", best.budget)
            if not _has_state(built(prune).runtime_spec):
                memo.setdefault(prune, {})
            sub = {t: v[:min(per_task, max(SWEEP_LENGTHS))] for t, v in docs.items()}

            def increase(c: Candidate, b: int) -> float:
                stream = _stream(sub, b)
                scores = scores_of(c, stream)
                ref = sum(full_nll[(r.domain, r.text)][0] for r in stream)
                return (sum(s for s, _ in scores) - ref) / sum(t for _, t in scores)

            lengths = sorted({b for b in SWEEP_LENGTHS if b <= len(next(iter(sub.values())))})
            by_block = {b: increase(best, b) for b in lengths}
            static = increase(prune, 1)  # prune has no state: one order serves every run length
            line = sweep_advice(by_block, static)
            sweep = {"task_aware": best.name, "prune": prune.name, "documents_per_task": len(next(iter(sub.values()))),
                     "task_aware_by_block": {str(b): v for b, v in by_block.items()}, "prune_nll_increase": static}
        seconds["advice"] = time.perf_counter() - t0

        # the pick's bundle, written under the usual rules (atomic, refused over a non-bundle unless --force)
        c = pick.candidate
        opts = BuildOptions(policy=c.policy, fraction=c.budget if c.policy != "full" else None,
                            params=dict(c.params), activation=c.activation,
                            active=c.active if c.activation else 1.0).resolve()
        build_bundle(prof, lm, tok, str(model), out, opts, force=req.force)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    seconds["total"] = time.perf_counter() - t_start
    report = TuneReport(str(model), str(prof.path), req.memory, fraction, block, list(figures.values()), full_tps,
                        pick, why, line, front, schedule, pruned, seconds, out, n_docs, req.exhaustive, sweep)
    return report
