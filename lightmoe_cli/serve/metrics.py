"""The server's Prometheus metrics (prometheus_client, one registry per server so tests can run several)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
MASS_BUCKETS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 1.0)


class ServerMetrics:
    def __init__(self, engine_swaps=lambda: 0, bytes_loaded=lambda: 0):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("lightmoe_requests", "Requests answered, by outcome", ["outcome"], registry=r)
        self.task_requests = Counter("lightmoe_task_requests", "Requests by task (detected or named)", ["task"],
                                     registry=r)
        self.prompt_tokens = Counter("lightmoe_prompt_tokens", "Prompt tokens prefilled", registry=r)
        self.completion_tokens = Counter("lightmoe_completion_tokens", "Tokens generated", registry=r)
        self.queue_depth = Gauge("lightmoe_queue_depth", "Requests waiting for a batch slot", registry=r)
        self.batch_size = Histogram("lightmoe_batch_size", "Rows per decode step", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64))
        self.swaps = Gauge("lightmoe_swaps", "Layers whose resident set moved since start", registry=r)
        self.swaps.set_function(engine_swaps)
        self.bytes_loaded = Gauge("lightmoe_expert_bytes_loaded", "Expert bytes read since start", registry=r)
        self.bytes_loaded.set_function(bytes_loaded)
        self.latency = Histogram("lightmoe_request_seconds", "Arrival to last token", registry=r,
                                 buckets=LATENCY_BUCKETS)
        self.ttft = Histogram("lightmoe_time_to_first_token_seconds", "Arrival to first token", registry=r,
                              buckets=LATENCY_BUCKETS)
        self.served_mass = Histogram("lightmoe_served_mass", "Share of the router's gate mass served by resident "
                                     "experts, per response", registry=r, buckets=MASS_BUCKETS)

    def finished(self, job, reason: str) -> None:
        now = time.monotonic()
        self.requests.labels("cancelled" if reason == "cancelled" else "ok").inc()
        self.task_requests.labels(job.task or "unknown").inc()
        self.prompt_tokens.inc(len(job.prompt_ids))
        self.completion_tokens.inc(len(job.generated))
        self.latency.observe(now - job.arrival)
        if job.first_token_at is not None:
            self.ttft.observe(job.first_token_at - job.arrival)
        if job.served_mass is not None:
            self.served_mass.observe(job.served_mass)

    def failed(self, job) -> None:
        self.requests.labels("error").inc()

    def rejected(self, status: int) -> None:
        self.requests.labels(f"rejected_{status}").inc()
