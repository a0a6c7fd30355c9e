"""`merge`: expert merging (HC-SMoE style), a baseline of expert replacing.

Each layer's experts are clustered by output similarity (hierarchical, average linkage) into as many clusters as
the layer has slots under the budget (the same global allocation as prune); each cluster becomes one expert
whose weights are its members' average weighted by calibration gate mass, held in the slot of its most-used
member. The router stays whole and every member's picks go to the merged expert with their router weights (two
picks of one cluster add up: the router rows of a cluster are summed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lightmoe_cli.policies.base import (
    BundlePlan,
    LayerPlan,
    PlanInputs,
    Policy,
    PolicyParams,
    RuntimeSpec,
    Serving,
    param,
)
from lightmoe_cli.policies.registry import register_policy
from lightmoe_cli.policies.residency.prune import frequency_residents
from lightmoe_cli.policies.resident import covered_share


def cluster_experts(similarity: np.ndarray, mass: np.ndarray, clusters: int) -> list[int]:
    """(E,) expert -> its cluster's representative (the member with the most mass), `clusters` clusters by
    average-linkage agglomerative clustering on 1 - similarity."""
    from sklearn.cluster import AgglomerativeClustering

    e = similarity.shape[0]
    if clusters >= e:
        return list(range(e))
    distance = np.clip(1.0 - (similarity + similarity.T) / 2, 0.0, None)
    np.fill_diagonal(distance, 0.0)
    labels = AgglomerativeClustering(n_clusters=clusters, metric="precomputed", linkage="average").fit_predict(distance)
    rep = {}
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rep[c] = int(members[np.argmax(mass[members])])
    return [rep[c] for c in labels]


@dataclass(frozen=True)
class MergeParams(PolicyParams):
    similarity: str = param("output", "cluster experts by output | weight | coactivation similarity",
                            choices=("output", "weight", "coactivation"))


@register_policy
class Merge(Policy):
    name = "merge"
    summary = "merging (HC-SMoE): experts clustered by similarity, each cluster one mass-weighted average expert"
    Params = MergeParams
    needs_similarity = True
    weight_transform = "merge"
    export_refusal = ("serves experts the model does not have as weights of its own shape (cluster averages): export "
                      "a prune or prune-lora bundle")

    def plan(self, inputs: PlanInputs, params: MergeParams) -> BundlePlan:
        slots, _ = frequency_residents(inputs, max(inputs.top_k.values()))
        layers = []
        for li in sorted(inputs.mass):
            table = cluster_experts(inputs.similarity[li], inputs.mass[li], slots[li])
            resident = sorted(set(table))
            layers.append(LayerPlan(li, len(table), inputs.top_k[li], len(resident), resident, table,
                                    covered_share(inputs.mass[li], resident)))
        return BundlePlan(layers, RuntimeSpec(Serving.REMAP))
