"""Corpus builder: real offline sources parse into clean documents; splits are deterministic."""

import json
import shutil
from itertools import islice

import pytest

from lightmoe_cli.demo import corpus as C


def _need(condition: bool, package: str):
    if not condition:
        pytest.skip(f"{package} not installed (just corpus-deps)")


def test_split_is_deterministic_and_roughly_proportional():
    keys = [f"doc{i}" for i in range(4000)]
    splits = [C.split_of(k) for k in keys]
    assert splits == [C.split_of(k) for k in keys]
    assert 0.02 < splits.count("val") / 4000 < 0.06 and 0.02 < splits.count("test") / 4000 < 0.06


def test_select_documents_respects_budget_and_keeps_order():
    docs = [C.Document(f"k{i}", "x" * 100) for i in range(50)]
    chosen = C.select_documents(docs, max_bytes=1000, seed=0)
    assert 10 <= len(chosen) <= 11
    assert [d.key for d in chosen] == sorted((d.key for d in chosen), key=lambda k: int(k[1:]))
    assert chosen == C.select_documents(docs, max_bytes=1000, seed=0)


def test_bible_chapters_are_clean_text():
    _need(shutil.which("mod2imp") is not None, "libsword-utils")
    en = list(islice(C.SOURCES["bible_en"](), 3))
    es = list(islice(C.SOURCES["bible_es"](), 3))
    assert en[0].text.startswith("1:1 In the beginning, God created the heavens and the earth.")
    assert es[0].text.startswith("1:1 EN el principio crió Dios los cielos y la tierra")
    for doc in en + es:
        assert "<" not in doc.text and "$$$" not in doc.text


def test_dictionary_and_python_sources():
    _need(C.GCIDE_PATH.exists(), "dict-gcide")
    first = next(C.SOURCES["dictionary"]())
    assert first.text.startswith("A \\A\\") and "[1913 Webster]" in first.text
    _need(C.PYDOC_SOURCES.exists(), "python3.11-doc")
    doc = next(C.SOURCES["python_docs"]())
    assert doc.key.endswith(":0") and len(doc.text) <= 7000
    code = next(C.SOURCES["python_code"]())
    compile(code.text, code.key, "exec") if code.key.endswith(".py:0") and len(code.text) < 5900 else None
    assert "site-packages" not in code.key


def test_build_corpus_writes_all_splits(tmp_path):
    stats = C.build_corpus(tmp_path, domains=["arithmetic", "strings"], max_bytes_per_domain=200_000)
    assert [s.domain for s in stats] == ["arithmetic", "strings"]
    for s in stats:
        assert sum(s.bytes.values()) >= 200_000 and min(s.documents.values()) > 0
        rows = C.read_split(tmp_path, s.domain, "val")
        assert len(rows) == s.documents["val"]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["domains"][0]["domain"] == "arithmetic"
    assert not list(tmp_path.rglob("*.tmp"))


def test_missing_source_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(C, "GCIDE_PATH", tmp_path / "nope.dict.dz")
    with pytest.raises(C.CorpusSourceMissing, match="just corpus-deps"):
        next(C.dictionary_documents())
    with pytest.raises(FileNotFoundError, match="lightmoe demo corpus"):
        C.read_split(tmp_path, "arithmetic", "train")


def test_unknown_domain_is_refused(tmp_path):
    with pytest.raises(ValueError, match="known: dictionary"):
        C.build_corpus(tmp_path, domains=["klingon"])
