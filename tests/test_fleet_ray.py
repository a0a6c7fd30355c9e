"""`lightmoe serve --replicas 2` as a real Ray Serve application on the tiny bundle: requests routed by task, the
OpenAI client's answers, and a replica killed (SIGKILL) under load: every request is answered, retried or refused,
none lost; Ray restarts the replica and the router gives it work again. Slow (Ray and two model loads)."""

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from lightmoe_cli.bundle.build import BuildOptions, build_bundle
from lightmoe_cli.serve.server import free_port

pytest.importorskip("ray.serve")
openai = pytest.importorskip("openai")

ARITH = ["12 + 7 = ", "45 - 3 = 42\n9 * 9 = ", "3 + 4 = 7\n8 + 1 = "]
STRINGS = ["reverse lamp -> pmal\nupper dog -> ", "reverse cat -> ", "upper sky -> SKY\nreverse tree -> "]
KEY = "fleet-secret"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def fleet(tiny_moe, tiny_profile, tmp_path_factory):
    root, model, tok = tiny_moe
    tmp = tmp_path_factory.mktemp("fleet-ray")
    bundle = build_bundle(tiny_profile, model, tok, str(root / "model"), tmp / "b",
                          BuildOptions(policy="lightmoe", fraction=0.5, ranking="gate_mass", params={}))
    port = free_port()
    log = open(tmp / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "lightmoe_cli.cli", "serve", "--bundle", str(bundle.path),
                             "--replicas", "2", "--threads", "1", "--port", str(port), "--max-batch", "4",
                             "--max-wait-ms", "20"], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "LIGHTMOE_API_KEY": KEY})  # the replicas see it too
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while True:
        try:
            h = httpx.get(url + "/health", timeout=10)
            if h.status_code == 200 and all(r["live"] for r in h.json()["replicas"]):
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"fleet did not start: {(tmp / 'serve.log').read_text()[-3000:]}")
        time.sleep(1)
    yield url, proc, bundle.path.name
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=60)


def _health(url):
    return httpx.get(url + "/health", timeout=30).json()


@pytest.mark.slow
def test_fleet_routes_by_task_through_ray_serve_with_the_openai_client(fleet):
    url, _, name = fleet
    assert httpx.get(url + "/v1/models", timeout=30).status_code == 401  # the ingress checks the key
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=60)
    assert [m.id for m in client.models.list().data] == [name]
    where: dict[str, set[int]] = {}
    for p in ARITH + STRINGS:
        r = client.completions.create(model=name, prompt=p, max_tokens=4, temperature=0)
        m = r.model_extra["lightmoe"]
        assert m["task_source"] == "text"
        where.setdefault(m["task"], set()).add(m["fleet"]["replica"])
    assert set(where) == {"arithmetic", "strings"} and all(len(v) == 1 for v in where.values())
    assert where["arithmetic"] != where["strings"]
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=name, prompt=ARITH[0], max_tokens=6, temperature=0, stream=True) if c.choices)
    whole = client.completions.create(model=name, prompt=ARITH[0], max_tokens=6, temperature=0).choices[0].text
    assert streamed == whole


@pytest.mark.slow
def test_a_killed_replica_loses_no_request_and_is_relearned(fleet):
    url, proc, name = fleet
    before = _health(url)
    counts0 = before["counts"]
    victim = next(r for r in before["replicas"] if r["index"] == before["router"]["assignment"]["arithmetic"][0])
    results: list[int | str] = []
    lock = threading.Lock()
    n = 32

    def ask(i):
        prompts = ARITH + STRINGS
        try:
            r = httpx.post(url + "/v1/completions", json={"model": name, "prompt": prompts[i % 6], "max_tokens": 256,
                                                          "temperature": 0}, headers=AUTH, timeout=120)
            out = r.status_code
        except httpx.HTTPError as e:  # a request lost without an answer would land here
            out = type(e).__name__
        with lock:
            results.append(out)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while _health(url)["router"]["inflight"][victim["index"]] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # kill it while it holds requests
    os.kill(victim["pid"], signal.SIGKILL)
    for t in threads:
        t.join(timeout=180)
    print(f"kill under load: client {sorted(results, key=str)}")
    assert len(results) == n and set(results) <= {200, 503}, results
    after = _health(url)
    c = {k: after["counts"][k] - counts0[k] for k in counts0}
    print(f"ingress counts: {c}, router: {after['router']}")
    assert c["sent"] == n == c["answered"] + c["refused"] + c["broken"] + c["cancelled"]
    assert c["cancelled"] == 0
    assert results.count(200) == c["answered"] and results.count(503) == c["refused"]
    assert c["retried"] >= 1  # the kill caught requests in flight on the victim
    # Ray restarts the replica; the ingress finds it and gives it tasks again
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        h = _health(url)
        if all(r["live"] for r in h["replicas"]) and h["counts"]["relearned"] > counts0["relearned"]:
            break
        time.sleep(1)
    else:
        pytest.fail(f"the killed replica did not come back: {_health(url)}")
    assert h["replicas"][victim["index"]]["pid"] != victim["pid"]
    used = set()
    for p in ARITH + STRINGS:
        r = httpx.post(url + "/v1/completions", json={"model": name, "prompt": p, "max_tokens": 2}, headers=AUTH,
                       timeout=60)
        used.add(r.json()["lightmoe"]["fleet"]["replica"])
    assert used == {0, 1}
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
