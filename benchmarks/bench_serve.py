"""Load test of `lightmoe serve` with the official `openai` async client, on the demo model.

Traffic: `--requests` held-out documents of the 8 demo domains, the domain changing at every request
(interleaved), sent by `--clients` concurrent clients with Poisson arrivals (`--rate` requests/s; 0, the default:
as fast as the clients go, so throughput is capacity). Each request asks for `--max-tokens` new tokens with
echo + logprobs, so the server also scores the document: NLL per token through the server, per configuration, on
the same documents.

Configurations: full; at each budget prune, task-aware with FIFO + its jump manager, task-aware with task
scheduling (routing detector), the oracle (the request names its task), and task scheduling over `--task-groups`
groups of tasks sharing one set each. Each runs as a `lightmoe serve` process;
the configurations run interleaved (harness), `--repeats` times (the NLL of the scheduled rows depends on the
arrival order, so it is reported from every repeat: median).

Phases beside the load test (each also in the JSON):
- detect: task detection accuracy per domain on held-out documents, routing probe vs text classifier;
- meter: Spearman correlation between a response's served mass and its NLL difference to the full model;
- single: one request alone, time to first token and decode tokens/s of `serve` against `run` (bound 1.00).

    python benchmarks/bench_serve.py --budgets 0.25,0.5 --requests 200 --clients 16 --task-groups 4
    python benchmarks/bench_serve.py --budgets 0.5 --phases load --repeats 3 --task-groups 4,2 \
        --only "task-aware task-sched 50%,task-sched 4 groups 50%,task-sched 2 groups 50%"
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.harness import (  # noqa: E402
    Config,
    Harness,
    HarnessOptions,
    Metric,
    NoisePolicy,
    analyse,
    demo_model_and_profile,
)


def proc_mib(pid: int | str, key: str = "VmRSS") -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


class ServerProcess:
    """`lightmoe serve` in its own process, as users run it: the load generator never shares its interpreter
    (or its GIL) with the server, and the server's RSS is its own."""

    def __init__(self, bundle: Path, threads: int, *flags: str):
        import subprocess

        from lightmoe_cli.serve.server import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "lightmoe_cli.cli", "serve", "--bundle", str(bundle),
                                      "--port", str(self.port), "--threads", str(threads), *flags],
                                     stderr=subprocess.PIPE, text=True)

    def __enter__(self) -> ServerProcess:
        import httpx

        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start: {self.proc.stderr.read()[-2000:]}")
            time.sleep(0.2)

    def metric(self, name: str) -> float:
        import httpx

        for line in httpx.get(self.url + "/metrics", timeout=10).text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0

    def model(self) -> str:
        import httpx

        return httpx.get(self.url + "/v1/models", timeout=10).json()["data"][0]["id"]

    def stop(self) -> int:
        import signal

        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=120)

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.kill()


async def load(url: str, model: str, docs, clients: int, rate: float, max_tokens: int, name_task: bool,
               seed: int = 0) -> list[dict]:
    """Send every document once; returns one record per request (status, latency, NLL sum, meter). Each request
    carries an `x-request-id` (its record's `request_id`: Ray Serve logs it, so a fleet's access logs join the
    records) and its record keeps when it was due, sent and answered (`due_s`, `sent_s`, `done_s`: seconds
    from the load's start; a whole answer has no client-side first token)."""
    import random
    import uuid

    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
    rng = random.Random(seed)
    t0 = time.perf_counter()
    arrivals, t = [], 0.0
    for _ in docs:
        arrivals.append(t)
        t += rng.expovariate(rate) if rate > 0 else 0.0
    gate = asyncio.Semaphore(clients)
    out: list[dict] = [None] * len(docs)  # type: ignore[list-item]
    run = uuid.uuid4().hex[:8]

    async def one(i: int, doc) -> None:
        await asyncio.sleep(max(arrivals[i] - (time.perf_counter() - t0), 0))
        async with gate:
            start = time.perf_counter()
            rid = f"load-{run}-{i}"
            rec = {"index": i, "request_id": rid, "domain": doc.domain, "status": 200, "due_s": arrivals[i],
                   "sent_s": start - t0}
            try:
                r = await client.completions.create(model=model, prompt=doc.text, max_tokens=max_tokens, echo=True,
                                                    logprobs=0, temperature=0, extra_headers={"x-request-id": rid},
                                                    extra_body={"task": doc.domain} if name_task else None)
            except openai.APIStatusError as e:
                rec["status"] = e.status_code
                out[i] = rec
                return
            done = time.perf_counter()
            rec |= {"latency": done - start, "done_s": done - t0}
            n = r.usage.prompt_tokens
            lps = r.choices[0].logprobs.token_logprobs[1:n]
            rec |= {"nll": -sum(lps), "tokens": len(lps), "prompt_tokens": n, "new_tokens": r.usage.completion_tokens,
                    **{k: v for k, v in r.model_extra["lightmoe"].items() if k != "choices"}}
            out[i] = rec

    await asyncio.gather(*(one(i, d) for i, d in enumerate(docs)))
    await client.close()
    return out


def summarise_load(recs: list[dict], seconds: float) -> dict:
    ok = [r for r in recs if r["status"] == 200]
    lat = sorted(r["latency"] for r in ok)
    ttft = sorted(r["first_token_seconds"] for r in ok if r.get("first_token_seconds") is not None)

    def pct(xs, q):
        return xs[min(int(q * len(xs)), len(xs) - 1)] if xs else None

    return {"seconds": seconds, "answered": len(ok), "rejected_429": sum(r["status"] == 429 for r in recs),
            "errors_5xx": sum(r["status"] >= 500 for r in recs), "sent": len(recs),
            "requests_per_s": len(ok) / seconds, "new_tokens_per_s": sum(r["new_tokens"] for r in ok) / seconds,
            "latency_p50": pct(lat, 0.5), "latency_p99": pct(lat, 0.99), "ttft_p50": pct(ttft, 0.5),
            "ttft_p99": pct(ttft, 0.99),
            "nll_per_token": sum(r["nll"] for r in ok) / max(sum(r["tokens"] for r in ok), 1),
            "requests_after_a_swap": sum(r.get("swaps_waited", 0) > 0 for r in ok)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budgets", default="0.25,0.5")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--rate", type=float, default=0.0, help="Poisson arrivals per second (0, the default: the clients "
                    "send at will, so throughput is capacity; since the engine's thread fix every configuration "
                    "keeps up with 12/s on the demo model, which then measures latency, not capacity)")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-wait-ms", type=float, default=500.0)
    ap.add_argument("--doc-chars", type=int, default=1200, help="documents are cut to this many characters")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--detector", default="routing", help="the task-scheduled servers' detector (the JSON of "
                    "2026-12-01 was measured with routing)")
    ap.add_argument("--task-groups", default="", help="comma-separated group counts: each adds a task-scheduled "
                    "configuration serving the tasks in that many groups of shared sets (serve --task-groups)")
    ap.add_argument("--phases", default="load,detect,meter,single")
    ap.add_argument("--only", default="", help="comma-separated config labels of the load phase (default all; full "
                    "and each one's prune baseline are kept: the NLL gap needs both)")
    ap.add_argument("--out", default="serve.json")
    HarnessOptions.add_arguments(ap, repeats=1)
    args = ap.parse_args()
    harness = Harness("bench_serve", args.threads, HarnessOptions.from_args(args), NoisePolicy(min_repeats=1))

    from lightmoe_cli.bundle.build import BuildOptions, build_bundle
    from lightmoe_cli.evaluation.stream import build_stream
    from lightmoe_cli.paths import ITEMS_DIR

    name, model, tok, prof = demo_model_and_profile(args.threads)
    work = ROOT / "runs" / "bench-serve"
    budgets = [float(b) for b in args.budgets.split(",")]
    bundles = {"full": build_bundle(prof, model, tok, name, work / "full", BuildOptions(policy="full"), force=True)}
    for b in budgets:
        for policy in ("prune", "task-aware"):
            bundles[f"{policy}-{b}"] = build_bundle(prof, model, tok, name, work / f"{policy}-{b}",
                                                    BuildOptions(policy=policy, fraction=b), force=True)
    del model
    import dataclasses

    stream = [dataclasses.replace(d, text=d.text[: args.doc_chars])
              for d in build_stream(ITEMS_DIR / "ppl", 1, args.requests)]
    configs: dict[str, tuple[str, str, bool, list[str]]] = {"full": ("full", "fifo", False, [])}
    groups = [int(g) for g in args.task_groups.split(",") if g]
    for b in budgets:
        configs |= {f"prune {b:.0%}": (f"prune-{b}", "fifo", False, []),
                    f"task-aware FIFO+jump {b:.0%}": (f"task-aware-{b}", "fifo", False, []),
                    f"task-aware task-sched {b:.0%}": (f"task-aware-{b}", "task", False, []),
                    f"oracle (task named) {b:.0%}": (f"task-aware-{b}", "task", True, [])}
        configs |= {f"task-sched {g} groups {b:.0%}": (f"task-aware-{b}", "task", False, ["--task-groups", str(g)])
                    for g in groups}
    if args.only:
        keep = set(args.only.split(","))
        if unknown := keep - set(configs):
            sys.exit(f"--only: unknown config(s) {', '.join(sorted(unknown))}; configs: {', '.join(configs)}")
        keep |= {"full"} | {f"prune {label.split()[-1]}" for label in keep if label != "full"}
        configs = {label: c for label, c in configs.items() if label in keep}
    phases = set(args.phases.split(","))
    result: dict = {"detector": args.detector, "requests": args.requests, "clients": args.clients, "rate": args.rate,
                    "max_tokens": args.max_tokens, "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms,
                    "threads": args.threads, "doc_chars": args.doc_chars}
    records: dict[str, list[dict]] = {}

    def measure(label: str) -> dict:
        key, schedule, named, extra = configs[label]
        flags = ["--max-batch", str(args.max_batch), "--max-queue", "10000", "--schedule", schedule,
                 "--max-wait-ms", str(args.max_wait_ms), "--detector", args.detector, *extra]
        with ServerProcess(bundles[key].path, args.threads, *flags) as srv:
            rss0 = proc_mib(srv.proc.pid)
            t0 = time.perf_counter()
            recs = asyncio.run(load(srv.url, srv.model(), stream, args.clients, args.rate, args.max_tokens, named))
            seconds = time.perf_counter() - t0
            extra = {"rss_before_mib": rss0, "rss_after_mib": proc_mib(srv.proc.pid),
                     "peak_rss_mib": proc_mib(srv.proc.pid, "VmHWM"), "layer_swaps": srv.metric("lightmoe_swaps"),
                     "mib_moved": srv.metric("lightmoe_expert_bytes_loaded") / 2**20}
            extra["exit_code"] = srv.stop()
        records.setdefault(label, recs)
        return summarise_load(recs, seconds) | extra

    if "load" in phases:
        runs = harness.measure(list(configs), measure, warmup=False)
        result["load"] = {label: {k: statistics.median([r[k] for r in rs]) if all(
            isinstance(r.get(k), (int, float)) for r in rs) else rs[0].get(k) for k in rs[0]}
            for label, rs in runs.items()}
        result["nll"] = nll_table(records, configs, budgets)
        if "meter" in phases:
            result["meter"] = meter_correlation(records)
        base = {label: f"prune {label.split()[-1]}" if label != "full" and not label.startswith("prune") else None
                for label in configs}
        # bound 1.00 on the throughput ratio: a task-aware bundle holds prune's resident bytes and runs the same
        # top-k; its set moves, redirect lookups and (scheduled by task) smaller batches only add work
        cfgs = [Config(label, baseline=base[label], bounds={"requests_per_s": 1.0 if base[label] else None})
                for label in configs]
        metrics = [Metric("requests_per_s", "req/s"), Metric("new_tokens_per_s", "new tok/s", ratio=False),
                   Metric("latency_p50", "p50 s", higher_is_better=False, ratio=False),
                   Metric("latency_p99", "p99 s", higher_is_better=False, ratio=False),
                   Metric("ttft_p50", "TTFT p50 s", higher_is_better=False, ratio=False),
                   Metric("nll_per_token", "NLL/tok", higher_is_better=False, ratio=False, fmt=".4f"),
                   Metric("layer_swaps", "layer swaps", ratio=False, fmt=",.0f"),
                   Metric("mib_moved", "MiB moved", ratio=False, fmt=",.1f"),
                   Metric("rss_before_mib", "RSS MiB before", ratio=False, fmt=",.0f"),
                   Metric("rss_after_mib", "RSS MiB after", ratio=False, fmt=",.0f")]
        rows = analyse(cfgs, runs, metrics, None)
    if "detect" in phases:
        result["detect"] = detection(bundles[f"task-aware-{budgets[-1]}"], args.doc_chars)
    if "single" in phases:
        result["single"] = single_request(bundles[f"task-aware-{budgets[-1]}"], args.threads, stream[0].text)
    if "load" in phases:
        harness.finish(rows, metrics, "lightmoe serve under load (x prune: throughput ratio)", result,
                       harness.options.results_dir / args.out)
    else:
        from benchmarks.harness import write_json

        write_json(harness.options.results_dir / args.out, result)
    print_extras(result)


def nll_table(records: dict[str, list[dict]], configs: dict, budgets: list[float]) -> dict:
    """Per budget: each config's NLL/token, its paired difference to prune, and the share of prune's gap to full
    it closes (documents answered by every config)."""
    import numpy as np

    from lightmoe_cli.analysis.paired import gap_closed, paired_bootstrap

    def by_domain(recs, key):
        out: dict[str, list[float]] = {}
        for r in recs:
            out.setdefault(r["domain"], []).append(r.get(key, np.nan))
        return {d: np.asarray(v) for d, v in out.items()}

    table = {}
    full = records["full"]
    for b in budgets:
        prune = records[f"prune {b:.0%}"]
        for label in configs:
            if not label.endswith(f"{b:.0%}") or label.startswith("prune"):
                continue
            recs = records[label]
            ok = all(r["status"] == 200 for r in recs + prune + full)
            if not ok:
                table[label] = {"error": "some requests were not answered"}
                continue
            w = by_domain(recs, "tokens")
            diff = paired_bootstrap(by_domain(recs, "nll"), by_domain(prune, "nll"), w)
            tot = {k: sum(r["nll"] for r in v) / sum(r["tokens"] for r in v) for k, v in
                   (("c", recs), ("p", prune), ("f", full))}
            table[label] = {"nll_per_token": tot["c"], "prune": tot["p"], "full": tot["f"],
                            "vs_prune": diff.to_json(), "gap_closed": gap_closed(tot["c"], tot["p"], tot["f"])}
    return table


def meter_correlation(records: dict[str, list[dict]]) -> dict:
    """Spearman(served mass, ΔNLL per token vs full) over every response that has a served mass."""
    from scipy.stats import spearmanr

    full = records["full"]
    xs, ys = [], []
    for label, recs in records.items():
        if label == "full":
            continue
        for r, f in zip(recs, full, strict=True):
            if r["status"] == 200 and f["status"] == 200 and r.get("served_mass") is not None:
                xs.append(r["served_mass"])
                ys.append(r["nll"] / r["tokens"] - f["nll"] / f["tokens"])
    if len(xs) < 3:
        return {"responses": len(xs)}
    rho, p = spearmanr(xs, ys)
    bins = {}
    for lo, hi in ((0, 0.8), (0.8, 0.9), (0.9, 0.95), (0.95, 0.99), (0.99, 1.01)):
        sel = [y for x, y in zip(xs, ys, strict=True) if lo <= x < hi]
        if sel:
            bins[f"{lo:.2f}-{min(hi, 1):.2f}"] = {"responses": len(sel), "mean_dnll": sum(sel) / len(sel)}
    return {"responses": len(xs), "spearman": float(rho), "p_value": float(p), "by_served_mass": bins}


def detection(bundle, doc_chars: int) -> dict:
    """Accuracy per domain of both detectors on held-out documents (the test split's ppl items)."""
    import json

    from lightmoe_cli.bundle.task_classifier import load_text_classifier
    from lightmoe_cli.paths import ITEMS_DIR
    from lightmoe_cli.serve.detect import RoutingDetector
    from lightmoe_cli.serve.server import ServeRequest, build_server

    srv = build_server(ServeRequest(bundle=bundle.path, schedule="task"), bundle)
    tok = srv.runtime.tokenizer
    clf = load_text_classifier(bundle.path)
    out: dict = {}
    for probe_tokens in (16, 64):
        det = RoutingDetector(bundle.manifest.task_signatures, srv.runtime.layers[0].layer_index, srv.engine.probe,
                              probe_tokens)
        out[f"routing@{probe_tokens}"] = {}
        for p in sorted((ITEMS_DIR / "ppl").glob("*.jsonl")):
            docs = [json.loads(x)["text"][:doc_chars] for x in p.read_text().splitlines() if x.strip()]
            right = sum(det.detect(tok(d, add_special_tokens=False).input_ids, d)[0] == p.stem for d in docs)
            out[f"routing@{probe_tokens}"][p.stem] = right / len(docs)
    if clf is not None:
        out["text"] = {}
        for p in sorted((ITEMS_DIR / "ppl").glob("*.jsonl")):
            docs = [json.loads(x)["text"][:doc_chars] for x in p.read_text().splitlines() if x.strip()]
            out["text"][p.stem] = sum(clf.predict(d)[0] == p.stem for d in docs) / len(docs)
    srv.close()
    for k in list(out):
        out[k]["mean"] = sum(out[k].values()) / len(out[k])
    return out


SHORT_PROMPT = "12 + 7 = 19\n45 - 3 = "


def single_request(bundle, threads: int, document: str, new_tokens: int = 64, repeats: int = 15,
                   thread_counts: tuple[int, ...] = (1, 2)) -> dict:
    """One request alone: `run`'s generate_one (in this process) vs the server (its own process, streamed with
    the openai client), interleaved, at each torch thread count (both sides the same), for two prompts: a held-out
    document as the load test sends (cut to --doc-chars), and a 12-token one, where the HTTP stack's round trip
    is a large share of the first token's time. Why several thread counts: on a 2-core machine a server with 2
    intra-op threads shares its cores with its HTTP loop and the client, which a bare `run` does not; 1 thread
    shows the engine's own cost without that contention."""
    import openai
    import torch

    from lightmoe_cli.runtime.generate import generate_one
    from lightmoe_cli.runtime.loader import build_runtime

    prompts = {"document": document, "short": SHORT_PROMPT}
    rt = build_runtime(bundle)
    out: dict = {"bound": 1.0, "repeats": repeats, "new_tokens": new_tokens,
                 "prompt_tokens": {k: len(rt.tokenizer(v).input_ids) for k, v in prompts.items()}, "prompts": {}}
    for t in sorted(set(thread_counts) | {threads}):
        torch.set_num_threads(t)
        res = {(k, side): [] for k in prompts for side in ("run", "serve")}
        rtt: list[float] = []
        inside: dict[str, list[float]] = {}  # the server's own arrival -> first token, from its meter
        with ServerProcess(bundle.path, t, "--schedule", "fifo") as srv:
            client = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0)
            model = srv.model()
            for prompt in prompts.values():  # warm-up both sides
                for _ in range(2):
                    generate_one(rt, prompt, 8, [0])
                    client.completions.create(model=model, prompt=prompt, max_tokens=8, temperature=0)
            for _ in range(repeats):
                for name, prompt in prompts.items():
                    # run's first token waits for the prompt's tokenization too, as the server's does
                    t0 = time.perf_counter()
                    rt.tokenizer(prompt, return_tensors="pt")
                    tokenize = time.perf_counter() - t0
                    r = generate_one(rt, prompt, new_tokens, [0])
                    res[name, "run"].append((tokenize + r.prefill_s,
                                             r.new_tokens / r.decode_s if r.decode_s else 0.0))
                    t0 = time.perf_counter()
                    client.models.list()  # a request that does no model work: the HTTP stack's own round trip
                    rtt.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    first, n = None, 0
                    for chunk in client.completions.create(model=model, prompt=prompt, max_tokens=new_tokens,
                                                           temperature=0, stream=True):
                        if first is None and chunk.choices and chunk.choices[0].text:
                            first = time.perf_counter()  # the first token is sent at once
                        if chunk.usage is not None:  # the last chunk: tokens generated (deltas are coalesced)
                            n = chunk.usage.completion_tokens
                            inside.setdefault(name, []).append(chunk.model_extra["lightmoe"]["first_token_seconds"])
                    end = time.perf_counter()
                    res[name, "serve"].append((first - t0, (n - 1) / (end - first) if n > 1 else 0.0))
            srv.stop()
        trip = statistics.median(rtt)
        for name in prompts:
            med = {side: (statistics.median(a for a, _ in res[name, side]),
                          statistics.median(b for _, b in res[name, side])) for side in ("run", "serve")}
            out["prompts"].setdefault(name, {"threads": {}})["threads"][str(t)] = {
                "run": {"ttft_s": med["run"][0], "decode_tok_s": med["run"][1]},
                "serve": {"ttft_s": med["serve"][0], "decode_tok_s": med["serve"][1]},
                "decode_ratio": med["serve"][1] / med["run"][1], "ttft_ratio": med["run"][0] / med["serve"][0],
                # each repeat's serve against the run just before it: the machine's speed drifts by several percent
                # within a run (run's own tok/s moved 12% between runs), and a pair shares that drift
                "paired_decode_ratio": statistics.median(
                    s[1] / r[1] for r, s in zip(res[name, "run"], res[name, "serve"], strict=True) if r[1] and s[1]),
                "paired_ttft_ratio": statistics.median(
                    r[0] / s[0] for r, s in zip(res[name, "run"], res[name, "serve"], strict=True)),
                # a served first token cannot come sooner than the prefill plus one round trip of the HTTP stack
                "http_round_trip_s": trip, "ttft_bound": med["run"][0] / (med["run"][0] + trip),
                "serve_ttft_inside_s": statistics.median(inside[name][-repeats:]),
                "raw": {side: [list(x) for x in res[name, side]] for side in ("run", "serve")}}
    torch.set_num_threads(threads)
    rt.close()
    for p in out["prompts"].values():
        best_run = max(v["run"]["decode_tok_s"] for v in p["threads"].values())
        best_serve = max(v["serve"]["decode_tok_s"] for v in p["threads"].values())
        p["best_decode_ratio"] = best_serve / best_run  # each side at its fastest thread count
    return out


def print_extras(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    c = Console(width=160)
    if "nll" in result:
        t = Table(title="held-out NLL through the server (paired vs prune, 95% interval)")
        for col in ("config", "NLL/tok", "vs prune", "gap closed"):
            t.add_column(col)
        for label, r in result["nll"].items():
            if "error" in r:
                t.add_row(label, r["error"], "", "")
                continue
            d = r["vs_prune"]
            t.add_row(label, f"{r['nll_per_token']:.4f}", f"{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]",
                      "-" if r["gap_closed"] is None else f"{r['gap_closed']:.0%}")
        c.print(t)
    if "meter" in result:
        c.print(f"meter: {result['meter']}")
    if "detect" in result:
        c.print(f"detection: {result['detect']}")
    if "single" in result:
        single = result["single"]
        t = Table(title=f"one request alone: serve (own process, streamed) vs run (generate_one), "
                        f"{single['new_tokens']} new tokens")
        for col in ("prompt", "threads", "run tok/s", "serve tok/s", "decode ratio (paired)", "run TTFT ms",
                    "serve TTFT ms", "of it in the server ms", "HTTP round trip ms", "TTFT ratio (paired; bound)"):
            t.add_column(col)
        for name, p in single["prompts"].items():
            for n, r in p["threads"].items():
                t.add_row(f"{name} ({single['prompt_tokens'][name]} tokens)", n, f"{r['run']['decode_tok_s']:.0f}",
                          f"{r['serve']['decode_tok_s']:.0f}",
                          f"{r['decode_ratio']:.2f}x ({r.get('paired_decode_ratio', float('nan')):.2f}x)",
                          f"{r['run']['ttft_s'] * 1e3:.1f}", f"{r['serve']['ttft_s'] * 1e3:.1f}",
                          f"{r['serve_ttft_inside_s'] * 1e3:.1f}", f"{r['http_round_trip_s'] * 1e3:.1f}",
                          f"{r['ttft_ratio']:.2f}x ({r.get('paired_ttft_ratio', float('nan')):.2f}x; "
                          f"{r['ttft_bound']:.2f})")
        c.print(t)
        c.print("each at its fastest thread count: " + ", ".join(
            f"{name} serve {p['best_decode_ratio']:.2f}x run" for name, p in single["prompts"].items()))


if __name__ == "__main__":
    main()
