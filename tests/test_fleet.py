"""The fleet's ingress logic on two in-process replicas of the tiny bundle (no Ray): affinity routing, the task
named at the ingress, retries when a replica dies, 503 when none is live, streams, relearning; and the command's
one-line errors. The real Ray Serve application is tested in test_fleet_ray.py (slow)."""

import asyncio
import json
import sys

import pytest
from typer.testing import CliRunner

from lightmoe_cli.bundle.build import BuildOptions, build_bundle
from lightmoe_cli.bundle.task_classifier import load_text_classifier
from lightmoe_cli.cli import app
from lightmoe_cli.fleet.asgi import Start, call_asgi
from lightmoe_cli.fleet.front import FleetFront, prompt_text
from lightmoe_cli.fleet.router import AffinityRouter, RoundRobinRouter
from lightmoe_cli.serve.server import ServeRequest, build_server

ARITH = ["12 + 7 = ", "45 - 3 = 42\n9 * 9 = ", "3 + 4 = 7\n8 + 1 = "]
STRINGS = ["reverse lamp -> pmal\nupper dog -> ", "reverse cat -> ", "upper sky -> SKY\nreverse tree -> "]


class Gone(Exception):
    """What the transport raises when a replica's process died."""


@pytest.fixture(scope="module")
def bundle(tiny_moe, tiny_profile, tmp_path_factory):
    root, model, tok = tiny_moe
    return build_bundle(tiny_profile, model, tok, str(root / "model"), tmp_path_factory.mktemp("fleet") / "b",
                        BuildOptions(policy="lightmoe", fraction=0.5, ranking="gate_mass", params={}))


@pytest.fixture(scope="module")
def servers(bundle):
    out = [build_server(ServeRequest(bundle=bundle.path, max_batch=4, max_wait_ms=20), bundle) for _ in range(2)]
    yield out
    for s in out:
        s.close()


class Fleet:
    """Two replicas reached in-process; `dead` replicas raise Gone at once, `dies_after_start` ones after their
    status line (before any body), like an actor killed mid-request."""

    def __init__(self, servers, bundle, router=None):
        self.servers, self.dead, self.dies_after_start, self.calls = servers, set(), set(), []
        clf = load_text_classifier(bundle.path)
        tasks = sorted(bundle.manifest.task_resident)
        self.front = FleetFront(router or AffinityRouter(2, tasks), self.call, self.probe,
                                lambda e: isinstance(e, Gone), bundle.path.name,
                                lambda text: clf.predict(text)[0], "text", probe_every_s=0.05)

    def call(self, i, method, path, headers, body):
        self.calls.append(i)

        async def gen():
            if i in self.dead:
                raise Gone(f"replica {i} died")
            async for item in call_asgi(self.servers[i].app, method, path, headers, body):
                yield item
                if i in self.dies_after_start:
                    raise Gone(f"replica {i} died mid-request")
        return gen()

    async def probe(self, i):
        if i in self.dead or i in self.dies_after_start:
            raise Gone(f"replica {i} is down")
        return {"index": i, "task": self.servers[i].engine.current_task}

    async def post(self, prompt, **kw):
        body = json.dumps({"prompt": prompt, "max_tokens": 4, "temperature": 0, **kw}).encode()
        out = await self.front.handle("POST", "/v1/completions", {"content-type": "application/json"}, body)
        if isinstance(out.body, bytes):
            return out.status, out.headers, out.body
        return out.status, out.headers, b"".join([c async for c in out.body])


def test_prompt_text_reads_completions_and_chat_bodies():
    assert prompt_text("/v1/completions", {"prompt": ["a b", "c"]}) == "a b"
    assert prompt_text("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}) == \
        "user: hi\nassistant: "
    assert prompt_text("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"text": "x"}]}]}) \
        .startswith("user: x")
    assert prompt_text("/v1/completions", {"prompt": 3}) == ""


def test_affinity_sends_each_task_to_one_replica_and_the_answer_says_where(servers, bundle):
    fleet = Fleet(servers, bundle)

    async def go():
        return await asyncio.gather(*(fleet.post(p) for p in ARITH + STRINGS))

    answers = asyncio.run(go())
    replica_of: dict[str, set[int]] = {}
    for status, _, body in answers:
        assert status == 200
        m = json.loads(body)["lightmoe"]
        assert m["task_source"] == "text" and m["fleet"]["tries"] == 1 and m["fleet"]["route"] == "affinity"
        replica_of.setdefault(m["task"], set()).add(m["fleet"]["replica"])
    assert set(replica_of) == {"arithmetic", "strings"}
    assert all(len(rs) == 1 for rs in replica_of.values())
    assert replica_of["arithmetic"] != replica_of["strings"]  # two tasks, two replicas: one each
    # the answer equals the single server's for the same prompt (the replica is that server)
    status, _, body = asyncio.run(fleet.post(ARITH[0]))
    direct = asyncio.run(_direct(servers[0], ARITH[0]))
    assert json.loads(body)["choices"][0]["text"] == direct["choices"][0]["text"]
    c = fleet.front.counts
    assert c.sent == c.answered == 7 and c.retried == c.refused == c.broken == 0


async def _direct(server, prompt):
    chunks = [x async for x in call_asgi(server.app, "POST", "/v1/completions", [("content-type", "application/json")],
                                         json.dumps({"prompt": prompt, "max_tokens": 4, "temperature": 0}).encode())]
    assert isinstance(chunks[0], Start) and chunks[0].status == 200
    return json.loads(b"".join(chunks[1:]))


def test_a_named_task_is_kept_and_bad_bodies_get_the_replicas_own_400(servers, bundle):
    fleet = Fleet(servers, bundle)
    status, _, body = asyncio.run(fleet.post(ARITH[0], task="strings"))
    m = json.loads(body)["lightmoe"]
    assert status == 200 and m["task"] == "strings" and m["task_source"] == "named"
    out = asyncio.run(fleet.front.handle("POST", "/v1/completions", {"content-type": "application/json"},
                                        b"{not json"))
    assert out.status == 400 and b"JSON" in out.body
    status, _, body = asyncio.run(fleet.post(ARITH[0], task="nope"))
    assert status == 400 and "arithmetic" in json.loads(body)["error"]["message"]


def test_a_replica_that_dies_loses_no_request_and_comes_back(servers, bundle):
    fleet = Fleet(servers, bundle, RoundRobinRouter(2))
    fleet.dies_after_start.add(0)

    async def go():
        return await asyncio.gather(*(fleet.post(p) for p in ARITH + STRINGS))

    answers = asyncio.run(go())
    assert [s for s, _, _ in answers] == [200] * 6
    assert all(json.loads(b)["lightmoe"]["fleet"]["replica"] == 1 for _, _, b in answers)
    c = fleet.front.counts
    assert c.retried >= 1 and c.sent == c.answered == 6 and c.refused == c.broken == 0
    assert 0 not in fleet.front.router.live
    # Ray restarted it: the next probe finds it, the router gives it work again
    fleet.dies_after_start.clear()

    async def back():
        watcher = asyncio.create_task(fleet.front.watch())
        for _ in range(100):
            if 0 in fleet.front.router.live:
                break
            await asyncio.sleep(0.02)
        watcher.cancel()

    asyncio.run(back())
    assert 0 in fleet.front.router.live and c.relearned == 1
    asyncio.run(fleet.post(ARITH[0]))
    asyncio.run(fleet.post(ARITH[1]))
    assert fleet.calls[-2:] in ([0, 1], [1, 0])


def test_no_live_replica_is_a_503_with_retry_after_and_counted(servers, bundle):
    fleet = Fleet(servers, bundle)
    fleet.dead |= {0, 1}
    status, headers, body = asyncio.run(fleet.post(ARITH[0]))
    assert status == 503 and headers["Retry-After"] == "2" and "no replica is live" in json.loads(body)["error"][
        "message"]
    c = fleet.front.counts
    assert c.sent == c.refused == 1 and c.retried == 2 and c.answered == 0
    health = asyncio.run(fleet.front.handle("GET", "/health", {}, b""))
    assert health.status == 503 and [r["live"] for r in json.loads(health.body)["replicas"]] == [False, False]


def test_streams_relay_and_a_death_mid_stream_ends_with_an_error_event(servers, bundle):
    fleet = Fleet(servers, bundle)
    status, headers, body = asyncio.run(fleet.post(ARITH[0], stream=True))
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = [e for e in body.decode().split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    text = "".join(json.loads(e[6:])["choices"][0]["text"] for e in events[:-1] if json.loads(e[6:]).get("choices"))
    assert text == asyncio.run(_direct(servers[0], ARITH[0]))["choices"][0]["text"]
    home = fleet.front.router.assignment.replicas_of["arithmetic"][0]

    async def leave_early():  # a client that reads one chunk and goes away
        body = json.dumps({"prompt": ARITH[0], "max_tokens": 64, "temperature": 0, "stream": True}).encode()
        out = await fleet.front.handle("POST", "/v1/completions", {"content-type": "application/json"}, body)
        await anext(out.body)
        await out.body.aclose()

    asyncio.run(leave_early())
    c = fleet.front.counts
    assert c.cancelled == 1 and c.sent == c.answered + c.cancelled and fleet.front.router.inflight == [0, 0]

    def call(i, method, path, headers, body):  # the replica dies after its first chunk went out
        async def gen():
            n = 0
            async for item in call_asgi(servers[i].app, method, path, headers, body):
                yield item
                n += not isinstance(item, Start)
                if n == 1:
                    raise Gone("died")
        return gen()

    fleet.front.call = call
    status, _, body = asyncio.run(fleet.post(ARITH[0], stream=True, max_tokens=8))
    assert status == 200 and "died mid-stream" in body.decode().split("\n\n")[-2]
    assert fleet.front.counts.broken == 1 and home not in fleet.front.router.live


def test_health_models_metrics_and_the_api_key(servers, bundle):
    fleet = Fleet(servers, bundle)
    asyncio.run(fleet.post(ARITH[0]))
    h = json.loads(asyncio.run(fleet.front.handle("GET", "/health", {}, b"")).body)
    assert h["status"] == "ok" and h["counts"]["answered"] == 1 and len(h["replicas"]) == 2
    assert h["router"]["router"] == "affinity" and "arithmetic" in h["router"]["assignment"]
    models = json.loads(asyncio.run(fleet.front.handle("GET", "/v1/models", {}, b"")).body)
    assert models["data"][0]["id"] == bundle.path.name
    text = asyncio.run(fleet.front.handle("GET", "/metrics", {}, b"")).body.decode()
    assert 'lightmoe_fleet_requests{outcome="answered"} 1' in text and "lightmoe_swaps " in text
    fleet.front.api_key = "k"
    assert asyncio.run(fleet.front.handle("GET", "/v1/models", {}, b"")).status == 401
    ok = asyncio.run(fleet.front.handle("GET", "/v1/models", {"authorization": "Bearer k"}, b""))
    assert ok.status == 200 and asyncio.run(fleet.front.handle("GET", "/health", {}, b"")).status == 200


def test_replicas_without_ray_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    res = CliRunner().invoke(app, ["serve", "--replicas", "2"])
    assert res.exit_code == 1
    out = res.output.strip()
    assert "lightmoe[ray]" in out and len(out.splitlines()) == 1 and "Traceback" not in out


def test_fleet_options_need_replicas_and_are_bounded():
    for args, msg in ((["--router", "round-robin"], "--replicas"), (["--replicas", "0"], "at least 1"),
                      (["--replicas", "2", "--router", "random"], "affinity, round-robin"),
                      (["--queue-bound", "4"], "--replicas")):
        res = CliRunner().invoke(app, ["serve", *args])
        assert res.exit_code == 1 and msg in res.output and len(res.output.strip().splitlines()) == 1, res.output


def test_an_unreachable_ray_cluster_or_busy_port_is_one_line(tmp_path):
    pytest.importorskip("ray.serve")
    res = CliRunner().invoke(app, ["serve", "--replicas", "2", "--ray-address", "127.0.0.1:1"])
    assert res.exit_code == 1 and "cannot reach a Ray cluster" in res.output
    assert len(res.output.strip().splitlines()) == 1
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = CliRunner().invoke(app, ["serve", "--replicas", "2", "--port", str(port)])
    assert res.exit_code == 1 and "pick another --port" in res.output and "Traceback" not in res.output
