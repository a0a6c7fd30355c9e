"""`lightmoe serve` on a tiny model, driven with the official `openai` client and raw HTTP."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
import torch

from lightmoe_cli.bundle.build import BuildOptions, build_bundle
from lightmoe_cli.serve.server import ServeRequest, ThreadedServer, build_server, free_port

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def bundle(tiny_moe, tiny_profile, tmp_path_factory):
    root, model, tok = tiny_moe
    tmp = tmp_path_factory.mktemp("serve")
    return build_bundle(tiny_profile, model, tok, str(root / "model"), tmp / "b",
                        BuildOptions(policy="lightmoe", fraction=0.5, ranking="gate_mass", params={}))


@pytest.fixture(scope="module")
def server(bundle):
    srv = build_server(ServeRequest(bundle=bundle.path, max_batch=4, max_wait_ms=50), bundle)
    with ThreadedServer(srv) as running:
        yield running


def _client(server, **kw):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=kw.pop("api_key", "none"), max_retries=0, **kw)


def _name(server):
    return server.server.context.model_name


def test_completions_chat_and_streaming_with_the_openai_client(server):
    client = _client(server)
    assert [m.id for m in client.models.list().data] == [_name(server)]
    r = client.completions.create(model=_name(server), prompt="12 + 7 = ", max_tokens=6, temperature=0)
    assert r.object == "text_completion" and r.choices[0].finish_reason in ("length", "stop")
    assert r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 6
    meter = r.model_extra["lightmoe"]
    assert 0.0 <= meter["served_mass"] <= 1.0 and meter["task"] in ("arithmetic", "strings")
    assert meter["task_source"] == "text"  # the bundle's classifier, the default detector
    # where its time went: waiting, to the first token, to the engine's last, then the answer's building
    assert meter["done_seconds"] >= meter["first_token_seconds"] >= meter["queue_seconds"] >= 0.0
    assert meter["answer_seconds"] >= 0.0
    # a list of prompts: one choice each, in order
    r2 = client.completions.create(model=_name(server), prompt=["reverse lamp -> ", "12 + 7 = "], max_tokens=6,
                                   temperature=0)
    assert [c.index for c in r2.choices] == [0, 1] and r2.choices[1].text == r.choices[0].text
    chat = client.chat.completions.create(model=_name(server), messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=5, temperature=0)
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens <= 5
    pieces = list(client.completions.create(model=_name(server), prompt="12 + 7 = ", max_tokens=6, temperature=0,
                                            stream=True))
    assert "".join(p.choices[0].text for p in pieces if p.choices) == r.choices[0].text
    assert pieces[-1].usage.completion_tokens == r.usage.completion_tokens
    last = pieces[-1].model_extra["lightmoe"]
    assert last["done_seconds"] >= last["first_token_seconds"] and last["answer_seconds"] >= 0.0
    chunks = list(client.chat.completions.create(model=_name(server), messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=5, temperature=0, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == chat.choices[0].message.content


def test_seeded_sampling_repeats_and_greedy_batch_equals_alone(server):
    client = _client(server)
    kw = dict(model=_name(server), prompt="reverse lamp -> ", max_tokens=8, temperature=1.0, seed=5)
    assert client.completions.create(**kw).choices[0].text == client.completions.create(**kw).choices[0].text
    prompts = ["12 + 7 = ", "reverse lamp -> pmal\nupper dog -> ", "45 - 3 = 42\n9 * 9 = ", "x"]
    alone = [client.completions.create(model=_name(server), prompt=p, max_tokens=12, temperature=0).choices[0].text
             for p in prompts]
    together: dict[int, str] = {}

    def ask(i):
        together[i] = _client(server).completions.create(model=_name(server), prompt=prompts[i], max_tokens=12,
                                                         temperature=0).choices[0].text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [together[i] for i in range(len(prompts))] == alone  # joining and leaving the batch changes nothing


def test_echo_logprobs_equal_the_runtimes_own(server):
    text = "12 + 7 = 19\n45 - 3 = 42\n"
    r = _client(server).completions.create(model=_name(server), prompt=text, max_tokens=0, echo=True, logprobs=1,
                                           temperature=0)
    lp = r.choices[0].logprobs
    assert r.choices[0].text == text and lp.token_logprobs[0] is None
    rt = server.server.runtime
    ids = rt.tokenizer(text, add_special_tokens=False).input_ids
    with torch.no_grad():
        logits = rt.model(input_ids=torch.tensor([ids])).logits[0]
    own = torch.log_softmax(logits[:-1].float(), -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
    assert len(lp.token_logprobs) == len(ids)
    assert torch.allclose(torch.tensor(lp.token_logprobs[1:]), own, atol=1e-4)
    assert "".join(lp.tokens) == text


def _post(server, path, body, **headers):
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return httpx.post(server.url + path, content=data, headers={"content-type": "application/json", **headers},
                      timeout=30)


def test_without_stop_strings_text_is_decoded_per_delta_not_per_token(server, monkeypatch):
    """The answer's text is the same whether the engine decodes it at every token (a stop string that never
    matches forces that) or only when a delta goes out, and the second decodes fewer times than it generates."""
    tok = server.server.engine.rt.tokenizer
    calls = []
    real = type(tok).decode

    def counting(self, *a, **kw):
        calls.append(1)
        return real(self, *a, **kw)

    monkeypatch.setattr(type(tok), "decode", counting)
    monkeypatch.setattr(server.server.engine, "stream_interval_s", 10.0)  # one delta: the first token's
    client = _client(server)
    plain = client.completions.create(model=_name(server), prompt="12 + 7 = ", max_tokens=24, temperature=0)
    per_plain = len(calls)
    calls.clear()
    stopped = client.completions.create(model=_name(server), prompt="12 + 7 = ", max_tokens=24, temperature=0,
                                        stop=["never appears"])
    assert plain.choices[0].text == stopped.choices[0].text
    generated = plain.usage.completion_tokens
    if generated > 3:
        assert per_plain < generated <= len(calls)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=_name(server), prompt="12 + 7 = ", max_tokens=24, temperature=0, stream=True) if c.choices)
    assert streamed == plain.choices[0].text


def test_meter_folded_in_batches_equals_the_served_mass_of_one_full_forward(server):
    """The meter keeps a request's forwards and folds them METER_EVERY at a time: its served mass equals the one
    computed directly from one forward over every token the request fed (prompt + generated), under the same
    resident set."""
    from lightmoe_cli.serve.engine import METER_EVERY, Job
    from lightmoe_cli.serve.sampling import Sampling

    engine = server.server.engine
    rt = engine.rt
    ids = rt.tokenizer("12 + 7 = 19\nreverse lamp -> ", add_special_tokens=False).input_ids
    done = threading.Event()
    job = Job(ids, METER_EVERY + 9, Sampling(temperature=1.0, seed=3), lambda ev: done.set()
              if ev["type"] in ("done", "error") else None, task_hint="arithmetic")
    engine.submit(job)
    assert done.wait(60)
    fed = len(ids) + len(job.generated) - (1 if len(job.generated) == job.max_tokens else 0)
    assert job.mass_tokens == fed > METER_EVERY and not job.meter_backlog
    seen = []

    def record(strategy, index, weights):
        seen.append((strategy.served_table()[index.long()], weights.float()))

    for m in rt.layers:
        m.observers.append(record)
    try:
        with torch.no_grad():
            rt.model(input_ids=torch.tensor([(ids + job.generated)[:fed]]))
    finally:
        for m in rt.layers:
            m.observers.remove(record)
    per_layer = torch.stack([(w * own).sum(-1) / w.sum(-1) for own, w in seen])  # (L, T)
    assert job.served_mass == pytest.approx(float(per_layer.mean(0).mean()), abs=1e-4)
    assert 0.0 < job.served_mass < 1.0  # a 50% bundle: some of the mass ran on other experts


@pytest.mark.parametrize("body,status,needle", [
    ("{not json", 400, "not valid JSON"),
    ({"prompt": 12}, 400, "prompt"),
    ({"prompt": "hi", "max_tokens": "many"}, 400, "max_tokens"),
    ({"prompt": "hi", "max_tokens": -1}, 400, "max_tokens"),
    ({"prompt": "hi", "max_tokens": 10**7}, 400, "context"),
    ({"prompt": "hi", "temperature": 5}, 400, "temperature"),
    ({"prompt": "hi", "max_tokens": 0}, 400, "echo"),
    ({"prompt": "hi", "task": "klingon"}, 400, "klingon"),
    ({"prompt": "hi", "model": "gpt-4"}, 404, "gpt-4"),
    ({}, 400, "prompt"),
])
def test_bad_requests_get_openai_errors(server, body, status, needle):
    r = _post(server, "/v1/completions", body)
    assert r.status_code == status
    err = r.json()["error"]
    assert needle in err["message"] and err["type"]


def test_a_prompt_past_the_context_is_refused(server):
    ctx = server.server.context
    old, ctx.max_context = ctx.max_context, 32
    try:
        r = _post(server, "/v1/completions", {"prompt": "12 + 7 = 19\n" * 20, "max_tokens": 1})
        assert r.status_code == 400 and "context of 32 tokens" in r.json()["error"]["message"]
        r = _post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "12 + 7 = 19\n" * 20}]})
        assert r.status_code == 400
    finally:
        ctx.max_context = old
    assert _post(server, "/v1/chat/completions", {"messages": []}).status_code == 400


def test_health_and_metrics(server):
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    _client(server).completions.create(model=_name(server), prompt="12 + 7 = ", max_tokens=3, temperature=0)
    text = httpx.get(server.url + "/metrics").text
    for name in ("lightmoe_requests_total", "lightmoe_completion_tokens_total", "lightmoe_queue_depth",
                 "lightmoe_batch_size_bucket", "lightmoe_swaps", "lightmoe_expert_bytes_loaded",
                 "lightmoe_task_requests_total", "lightmoe_request_seconds_bucket", "lightmoe_served_mass_bucket"):
        assert name in text, name
    assert 'lightmoe_requests_total{outcome="ok"}' in text


def test_a_client_gone_mid_stream_frees_its_slot(server):
    engine = server.server.engine
    with httpx.stream("POST", server.url + "/v1/completions", json={"prompt": "12 + ", "max_tokens": 500,
                                                                    "stream": True, "temperature": 1.0}) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                break  # one chunk, then hang up
    deadline = time.monotonic() + 10
    while engine.rows and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not engine.rows


def test_one_failing_request_fails_alone(server, monkeypatch):
    from lightmoe_cli.serve import engine as engine_mod

    real = engine_mod.choose

    def flaky(logits, s, gen):
        if s.seed == 666:
            raise RuntimeError("boom")
        return real(logits, s, gen)

    monkeypatch.setattr(engine_mod, "choose", flaky)
    out = {}

    def ask(name, seed):
        out[name] = _post(server, "/v1/completions", {"prompt": "12 + 7 = ", "max_tokens": 8, "seed": seed})

    threads = [threading.Thread(target=ask, args=(n, s)) for n, s in (("bad", 666), ("good1", 1), ("good2", 2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out["bad"].status_code == 500 and "boom" in out["bad"].json()["error"]["message"]
    assert out["good1"].status_code == out["good2"].status_code == 200


def test_routing_detector_names_tasks_through_the_server(bundle):
    srv = build_server(ServeRequest(bundle=bundle.path, detector="routing"), bundle)
    with ThreadedServer(srv) as running:
        r = _client(running).completions.create(model=_name(running), prompt="12 + 7 = 19\n", max_tokens=2)
        meter = r.model_extra["lightmoe"]
        assert meter["task_source"] == "routing" and meter["task"] in ("arithmetic", "strings")


def test_api_key_and_overload(bundle):
    srv = build_server(ServeRequest(bundle=bundle.path, max_batch=1, max_queue=1, api_key="sesame"), bundle)
    with ThreadedServer(srv) as running:
        assert _post(running, "/v1/completions", {"prompt": "hi"}).status_code == 401
        assert _post(running, "/v1/completions", {"prompt": "hi"}, authorization="Bearer nope").status_code == 401
        assert httpx.get(running.url + "/health").status_code == 200  # liveness needs no key
        client = _client(running, api_key="sesame")
        assert client.completions.create(model=_name(running), prompt="hi", max_tokens=2).usage.total_tokens > 0
        answers = []

        def ask():
            r = _post(running, "/v1/completions", {"prompt": "12 + ", "max_tokens": 40},
                      authorization="Bearer sesame")
            answers.append((r.status_code, r.headers.get("retry-after")))

        threads = [threading.Thread(target=ask) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        codes = {c for c, _ in answers}
        assert codes == {200, 429}  # nothing lost, nothing failed: answered or told to retry
        assert all(r == "1" for c, r in answers if c == 429)


def test_sigterm_finishes_in_flight_requests_and_exits_0(bundle, tmp_path):
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "lightmoe_cli.cli", "serve", "--bundle", str(bundle.path),
                             "--port", str(port), "--threads", "1"], env=env, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else ""
            time.sleep(0.2)
        result = {}

        def ask():
            result["r"] = httpx.post(url + "/v1/completions", json={"prompt": "12 + ", "max_tokens": 600,
                                                                    "temperature": 1.0, "seed": 3}, timeout=60)

        t = threading.Thread(target=ask)
        t.start()
        time.sleep(0.5)  # the request is decoding
        proc.send_signal(signal.SIGTERM)
        t.join(timeout=60)
        assert result["r"].status_code == 200 and result["r"].json()["usage"]["completion_tokens"] > 0
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_port_in_use_is_one_line_before_anything_loads(bundle):
    import socket

    from typer.testing import CliRunner

    from lightmoe_cli.cli import app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = CliRunner().invoke(app, ["serve", "--bundle", str(bundle.path), "--port", str(port)])
    assert r.exit_code == 1 and f"cannot listen on 127.0.0.1:{port}" in r.output and "--port" in r.output
    assert "Traceback" not in r.output


def test_the_engine_uses_every_core_by_default():
    from lightmoe_cli.serve.server import engine_threads

    assert [engine_threads(n) for n in (1, 2, 4, 16)] == [1, 2, 4, 16]


def test_health_names_the_engine_threads(server):
    from lightmoe_cli.serve.server import engine_threads

    assert httpx.get(server.url + "/health", timeout=10).json()["threads"] == engine_threads()
