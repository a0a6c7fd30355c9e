"""Predictor examples from a profile's traces: per window and layer pair, the router inputs of layer l and the
experts layer l+1 (the next MoE layer) picked for the same tokens.

Why windows: the traces keep each token's position in its calibration window, so a causal encoder can use the
tokens before it (as a serving engine can), never the ones after.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class PredictorData:
    pairs: list[tuple[int, int]]  # (source MoE layer, target MoE layer)
    inputs: list[np.ndarray]  # per sequence: (S, H) router inputs at the source layer, float32
    targets: list[np.ndarray]  # per sequence: (S, K) expert ids picked at the target layer
    pair_of: list[int]  # per sequence: index into pairs
    task_of: list[str]

    @property
    def tokens(self) -> int:
        return sum(len(t) for t, p in zip(self.targets, self.pair_of, strict=True) if p == 0)


def window_starts(positions: np.ndarray) -> list[tuple[int, int]]:
    """(T,) positions in window -> [(start, end)] of each window (a window starts where the position is 0)."""
    starts = np.flatnonzero(np.asarray(positions) == 0).tolist()
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    ends = [*starts[1:], len(positions)]
    return [(s, e) for s, e in zip(starts, ends, strict=True) if e > s]


def examples_from_traces(traces: dict[str, dict], layers: list[int]) -> PredictorData:
    """traces[task] = {"positions": (T,), "router_input": {layer: (T, H)}, "ids": {layer: (T, K)}}."""
    pairs = list(zip(layers[:-1], layers[1:], strict=True))
    data = PredictorData(pairs, [], [], [], [])
    for task, tr in traces.items():
        for start, end in window_starts(tr["positions"]):
            for p, (src, dst) in enumerate(pairs):
                data.inputs.append(np.asarray(tr["router_input"][src][start:end], dtype=np.float32))
                data.targets.append(np.asarray(tr["ids"][dst][start:end], dtype=np.int64))
                data.pair_of.append(p)
                data.task_of.append(task)
    return data


def load_profile_traces(prof) -> dict[str, dict]:
    """A profile's traces in the form `examples_from_traces` reads (router inputs required)."""
    out = {}
    for task in prof.task_names:
        inputs = prof.trace_tensors(task, "router_input")
        out[task] = {"positions": prof.trace_tensors(task, "positions")[None].numpy(),
                     "router_input": {li: v.float().numpy() for li, v in inputs.items()},
                     "ids": {li: v.long().numpy() for li, v in prof.trace_tensors(task, "ids").items()}}
    return out


def split_traces(traces: dict[str, dict], heldout_share: float) -> tuple[dict[str, dict], dict[str, dict]]:
    """Each task's windows cut in two, the last `heldout_share` of them held out (whole windows, so no window
    is seen in training and scored): the default held-out set of `lightmoe predict train` without --heldout."""
    train, test = {}, {}
    for task, tr in traces.items():
        windows = window_starts(tr["positions"])
        keep = max(1, min(len(windows) - 1, round(len(windows) * (1 - heldout_share))))
        if len(windows) < 2:
            raise ValueError(f"task {task} has {len(windows)} window(s): too few to hold any out")
        cut = windows[keep][0]

        def part(sl: slice, tr=tr) -> dict:
            return {"positions": tr["positions"][sl],
                    "router_input": {li: v[sl] for li, v in tr["router_input"].items()},
                    "ids": {li: v[sl] for li, v in tr["ids"].items()}}
        train[task], test[task] = part(slice(0, cut)), part(slice(cut, None))
    return train, test
