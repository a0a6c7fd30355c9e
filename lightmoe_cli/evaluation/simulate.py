"""`lightmoe simulate` as one call: a held-out profile's traces replayed through expert caches -> rows + plot.

The replay itself is pure (`cache_replay.replay`); this module reads the profiles and the optional predictor,
checks that they belong to one model, and writes a folder (manifest.json of kind lightmoe-simulation,
simulation.json, hit_rate.png) built aside and swapped in.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.options import Output, check_bounds, option


@dataclass(kw_only=True)
class SimulateRequest(Output):
    """What `lightmoe simulate` was asked for (the defaults of its options live here)."""

    help_overrides: ClassVar[dict[str, str]] = {
        "out": "Folder for simulation.json and hit_rate.png (default: runs/cache/<model>)."}

    heldout: Path = option(help="Profile with routing traces to replay (made with --save-traces, best on held-out "
                           "text: recipes/calibration/demo-heldout.yaml).", flag="--heldout",
                           aliases=("--traces",), role="input")
    profile: Path | None = option(None, "Profile whose statistics choose the resident sets (default: the traced "
                                  "model's default profile).", short="-p", role="input")
    cache: list[float] = option(help="Cache capacities, fractions of each layer's experts.",
                                default_factory=lambda: [0.05, 0.1, 0.25, 0.5], above=0, maximum=1)
    policies: list[str] = option(help="Cache policies: lru, lfu, belady (offline optimum), static (frequency set), "
                                 "task (the task's own set, swapped per task), swap (the non-blocking cache), pinned "
                                 "(frequency core + dynamic region, double-buffered).",
                                 default_factory=lambda: ["lru", "lfu", "belady", "static", "task"])
    predictor: Path | None = option(None, "A trained predictor (lightmoe predict train): adds the `predict` "
                                    "policy, LRU + prefetch of the next layer's predicted experts.", role="input")
    prefetch_width: int | None = option(None, "Experts prefetched per token and layer (default: top-k).",
                                        minimum=1, requires="predictor")
    wanted: list[str] = field(default_factory=list, init=False)

    def output_kind(self) -> tuple[str, bool]:
        return "lightmoe-simulation", False

    def validate(self) -> None:
        from lightmoe_cli.evaluation.cache_replay import SIM_POLICIES

        if not self.cache:
            raise LightMoEError("--cache is empty: give fractions such as 0.05,0.1,0.25")
        if any(not 0 < f <= 1 for f in self.cache):
            raise LightMoEError(f"--cache values are fractions in (0, 1], not {self.cache}")
        self.wanted = list(self.policies)
        if self.predictor is not None and "predict" not in self.wanted:
            self.wanted.append("predict")
        if "predict" in self.wanted and self.predictor is None:
            raise LightMoEError("policy predict needs --predictor DIR (train one with `lightmoe predict train`)")
        bad = [p for p in self.wanted if p not in SIM_POLICIES]
        if bad or not self.wanted:
            raise LightMoEError(f"unknown --policies {bad[0] if bad else ''!r}; policies: "
                                f"{', '.join(SIM_POLICIES)}")
        check_bounds(self)


def _predictions(req: SimulateRequest, full: dict, ident) -> dict:
    from lightmoe_cli.predict.model import load_predictor
    from lightmoe_cli.predict.train import predicted_experts

    pm = load_predictor(req.predictor, ident.fingerprint)
    if pm.cfg.num_experts != ident.num_experts[0]:
        raise LightMoEError(f"--predictor {req.predictor} predicts {pm.cfg.num_experts} experts; the traced model "
                            f"has {ident.num_experts[0]}: train a predictor on this model's profile")
    width = req.prefetch_width or ident.top_k[0]
    return {t: predicted_experts(pm, tr, width) for t, tr in full.items()}


def run_simulation(req: SimulateRequest) -> tuple[dict, Path]:
    """Replay and write; returns the payload of simulation.json and the folder it went to."""
    import numpy as np

    from lightmoe_cli.evaluation.cache_replay import replay
    from lightmoe_cli.evaluation.plots import hit_rate_plot
    from lightmoe_cli.files import atomic_write_json, exclusive_output, file_entries, swap_in_dir
    from lightmoe_cli.identity import library_versions
    from lightmoe_cli.options import check_io
    from lightmoe_cli.paths import default_cache_dir, default_profile, model_slug
    from lightmoe_cli.predict.model import read_predictor_manifest
    from lightmoe_cli.profile.artifact import load_profile

    req.validate()
    tp = load_profile(req.heldout)
    ident = tp.model
    if req.prefetch_width is not None and req.prefetch_width > ident.num_experts[0]:
        raise LightMoEError(f"--prefetch-width {req.prefetch_width} is above the model's {ident.num_experts[0]} "
                            "experts")
    sp = load_profile(req.profile or default_profile(tp.model.name_or_path))
    if sp.model.fingerprint != tp.model.fingerprint:
        raise LightMoEError(f"--profile {sp.path} was made for another model than the traces in {tp.path}")
    if req.predictor is not None:
        read_predictor_manifest(req.predictor)  # verified before the traces are read
    folder = Path(req.out or default_cache_dir(ident.name_or_path))
    check_io(req, folder, [("--profile", sp.path)])
    # with a predictor the traces are read once, router inputs included; without, only the picks
    full = None
    if req.predictor is not None:
        from lightmoe_cli.predict.data import load_profile_traces

        full = load_profile_traces(tp)
    trace = {t: full[t]["ids"] for t in tp.task_names} if full is not None else \
        {t: {li: v.numpy() for li, v in tp.trace_ids(t).items()} for t in tp.task_names}
    mass = {t: {li: s.gate_mass.numpy() for li, s in sp.task_stats(t).layers.items()} for t in sp.task_names}
    predicted = _predictions(req, full, ident) if full is not None else None
    rows = replay(trace, mass, ident.num_experts[0], float(np.mean(ident.bytes_per_expert)), req.cache, req.wanted,
                  predicted)
    tokens = int(sum(len(next(iter(v.values()))) for v in trace.values()))
    payload = {"traces": str(tp.path), "profile": str(sp.path), "tokens": tokens, "rows": [asdict(r) for r in rows]}
    with exclusive_output(folder) as tmp:
        tmp.mkdir(parents=True)
        atomic_write_json(tmp / "simulation.json", payload)
        hit_rate_plot(payload["rows"], tmp / "hit_rate.png", model_slug(ident.name_or_path))
        atomic_write_json(tmp / "manifest.json", {"kind": req.output_kind()[0], "schema_version": 1,
                                                  "model": ident.name_or_path, "fingerprint": ident.fingerprint,
                                                  "versions": library_versions(), "files": file_entries(tmp)})
        swap_in_dir(tmp, folder, req.force)
    return payload, folder
