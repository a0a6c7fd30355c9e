"""Task-shift streams: blocks of one domain in a mixed order, NLL per request, summaries against prune, full
and the oracle."""

import json

import pytest

from lightmoe_cli.evaluation.stream import RequestScore, StreamResult, build_stream, summarise_streams


@pytest.fixture
def ppl_dir(tmp_path):
    for d in ("a", "b", "c"):
        (tmp_path / f"{d}.jsonl").write_text("".join(json.dumps({"text": f"{d} doc {i}\n"}) + "\n" for i in range(5)))
    return tmp_path


def test_stream_blocks_change_domain_and_take_documents_in_order(ppl_dir):
    s = build_stream(ppl_dir, block=3, n_requests=10)
    assert len(s) == 10 and [r.position for r in s] == [0, 1, 2] * 3 + [0]
    for i in range(1, 10):
        assert (s[i].domain != s[i - 1].domain) == (s[i].position == 0)
    first = [r.text for r in s if r.domain == s[0].domain]
    assert first == [f"{s[0].domain} doc {i % 5}\n" for i in range(len(first))]  # in order, cycling
    assert build_stream(ppl_dir, 3, 10) == s  # seeded
    assert all(s1.domain != s0.domain for s0, s1 in zip(build_stream(ppl_dir, 1, 12), build_stream(ppl_dir, 1, 12)[1:],
                                                        strict=False))


def test_summary_reports_gap_and_oracle_share(ppl_dir):
    reqs = build_stream(ppl_dir, block=2, n_requests=4)

    def res(name, nlls):
        return StreamResult(name, 2, reqs, [RequestScore(n, 10, 0, 0, 0.0) for n in nlls])

    rows = summarise_streams([res("full", [10] * 4), res("prune", [20] * 4), res("oracle", [12] * 4),
                              res("managed", [16] * 4)])
    m = next(r for r in rows if r["config"] == "managed")
    assert m["nll_per_token"] == pytest.approx(1.6) and m["vs_prune"]["diff"] == pytest.approx(-0.4)
    assert m["gap_closed"] == pytest.approx(0.4) and m["oracle_share"] == pytest.approx(0.5)
    assert m["curve"] == [pytest.approx(1.6), pytest.approx(1.6)]
