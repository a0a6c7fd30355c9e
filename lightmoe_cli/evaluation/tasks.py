"""Demo evaluation tasks: multiple-choice items over held-out data of every demo domain, as lm-eval tasks.

Why multiple choice: it is scored by loglikelihood, which is exact, cheap on a CPU and what the MoE
compression papers report. Generated domains ask for the exact answer among near-miss distractors (off-by-one,
off-by-ten, another transform of the same word); text domains ask for the true next line of a held-out document
among lines of other documents of the same domain. Items are built at set-up time by our code from the corpus's
test split (nothing third-party is committed); the lm-eval YAMLs are rendered with absolute paths at run time,
because lm-eval resolves relative paths against the working directory.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from lightmoe_cli.demo.corpus import read_split
from lightmoe_cli.demo.generators import GENERATORS, generate_problems
from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.files import atomic_write

TEXT_DOMAINS = ["dictionary", "bible_en", "bible_es", "python_docs", "python_code"]
N_CHOICES = 4


@dataclass
class MCItem:
    domain: str
    context: str
    choices: list[str]
    gold: int


def _numeric_distractors(answer: str, rng: random.Random) -> list[str]:
    v = int(answer)
    pool = [v + d for d in (1, -1, 2, -2, 10, -10, 11, -9)] + [-v if v else 7, v * 2 if v else 3]
    pool = list(dict.fromkeys(str(x) for x in pool if str(x) != answer))
    return rng.sample(pool, N_CHOICES - 1)


def _string_distractors(prompt: str, answer: str, rng: random.Random) -> list[str]:
    word = prompt.split(" -> ")[0].split()[-1]
    pool = [word[::-1], word.upper(), "".join(sorted(word)), word, word[1:] + word[0], word + word[-1],
            answer[::-1], answer[:-1], answer + answer[-1:]]
    pool = list(dict.fromkeys(p for p in pool if p and p != answer))
    while len(pool) < N_CHOICES - 1:
        pool.append(answer + "x" * len(pool))
    return rng.sample(pool, N_CHOICES - 1)


def generated_items(domain: str, n: int, seed: int = 2026) -> list[MCItem]:
    """Exact-answer items with three solved examples of the same domain as context."""
    rng = random.Random(f"{domain}:mc:{seed}")
    problems = generate_problems(domain, n + 3, seed=seed)
    items = []
    for i in range(n):
        p = problems[i + 3]
        shots = "\n".join(q.text for q in problems[i:i + 3])
        if domain == "strings" and not p.answer.lstrip("-").isdigit():
            distract = _string_distractors(p.prompt, p.answer, rng)
        elif domain == "algebra" and " = " in p.answer:
            var, val = p.answer.split(" = ")
            distract = [f"{var} = {d}" for d in _numeric_distractors(val, rng)]
        else:
            distract = _numeric_distractors(p.answer, rng)
        choices = [p.answer, *distract]
        rng.shuffle(choices)
        items.append(MCItem(domain, f"{shots}\n{p.prompt}", choices, choices.index(p.answer)))
    return items


def text_items(corpus: Path, domain: str, n: int, seed: int = 2026, context_chars: int = 300) -> list[MCItem]:
    """Next-line items from held-out documents: the true next line vs lines of other held-out documents."""
    rng = random.Random(f"{domain}:mc:{seed}")
    docs = [[ln for ln in d.splitlines() if ln.strip()] for d in read_split(corpus, domain, "test")]
    docs = [d for d in docs if len(d) >= 4]
    freq: dict[str, int] = {}
    for d in docs:
        for ln in d:
            freq[ln.strip()] = freq.get(ln.strip(), 0) + 1

    def usable(line: str) -> bool:  # no boilerplate ("[1913 Webster]"), nothing too short to tell apart
        return len(line.strip()) >= 8 and freq[line.strip()] <= 2

    if len(docs) < 2:
        raise LightMoEError(f"too few held-out documents in domain {domain}: rebuild the corpus (just corpus)")
    items: list[MCItem] = []
    while len(items) < n:
        di = rng.randrange(len(docs))
        doc = docs[di]
        candidates = [k for k in range(2, len(doc)) if usable(doc[k])]
        if not candidates:
            continue
        j = rng.choice(candidates)
        context = "\n".join(doc[:j])[-context_chars:] + "\n"
        distract = []
        while len(distract) < N_CHOICES - 1:
            other = docs[rng.randrange(len(docs))]
            line = other[rng.randrange(len(other))]
            if other is not doc and usable(line) and line.strip() != doc[j].strip() and line not in distract:
                distract.append(line)
        choices = [doc[j], *distract]
        rng.shuffle(choices)
        items.append(MCItem(domain, context, choices, choices.index(doc[j])))
    return items


def ppl_documents(corpus: Path, domain: str, n: int, chars: int = 1000, seed: int = 2026) -> list[str]:
    """Held-out text of one domain cut at line ends into documents of about `chars` characters.

    Why equal-sized pieces: per-document NLL differences are paired units for the bootstrap; pieces of similar
    length weigh alike, and a long source document cannot dominate a domain's interval."""
    rng = random.Random(f"{domain}:ppl:{seed}")
    sources = read_split(corpus, domain, "test")
    rng.shuffle(sources)
    docs, current = [], ""
    for text in sources:  # short sources (the generated domains) join the next one
        for line in (text.rstrip("\n") + "\n").splitlines(keepends=True):
            current += line
            if len(current) >= chars:
                docs.append(current[: chars * 2])
                current = ""
                if len(docs) == n:
                    return docs
    if len(docs) < 2:
        raise LightMoEError(f"too few held-out documents in domain {domain}: rebuild the corpus (just corpus)")
    return docs


def build_demo_items(corpus: Path, out: Path, per_domain: int = 200, ppl_docs: int = 48) -> dict[str, Path]:
    """Write one JSONL of MC items per demo domain into `out`; returns domain -> file."""
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for domain in [*TEXT_DOMAINS, *GENERATORS]:
        items = text_items(corpus, domain, per_domain) if domain in TEXT_DOMAINS else \
            generated_items(domain, per_domain)
        path = out / f"{domain}.jsonl"
        atomic_write(path, "\n".join(json.dumps(asdict(i), ensure_ascii=False) for i in items) + "\n")
        files[domain] = path
        ppl = out / "ppl" / f"{domain}.jsonl"
        ppl.parent.mkdir(exist_ok=True)
        atomic_write(ppl, "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n"
                                  for t in ppl_documents(corpus, domain, ppl_docs)))
    return files


TASK_TEMPLATE = """task: demo_{domain}
tag: [demo]
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: gold
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


PPL_TEMPLATE = """task: demo_{domain}_ppl
tag: [demo_ppl]
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
should_decontaminate: false
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
metadata:
  version: 1.0
"""

TAGS = {"demo": "multiple-choice items of every demo domain", "demo_ppl": "held-out text of every demo domain "
        "(loglikelihood_rolling: perplexities, bits per byte, NLL per token)"}


def render_lm_eval_tasks(items_dir: Path, out: Path) -> list[str]:
    """lm-eval YAMLs with absolute data paths: `demo_<domain>` (multiple choice, tag `demo`) and, where the
    held-out text is built, `demo_<domain>_ppl` (tag `demo_ppl`); returns the task names."""
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for path in sorted(items_dir.glob("*.jsonl")):
        domain = path.stem
        atomic_write(out / f"demo_{domain}.yaml", TASK_TEMPLATE.format(domain=domain, path=path.resolve()))
        names.append(f"demo_{domain}")
    for path in sorted((items_dir / "ppl").glob("*.jsonl")):
        domain = path.stem
        atomic_write(out / f"demo_{domain}_ppl.yaml", PPL_TEMPLATE.format(domain=domain, path=path.resolve()))
        names.append(f"demo_{domain}_ppl")
    if not names:
        raise LightMoEError(f"no demo task data in {items_dir}: build it with `lightmoe eval --build-tasks` "
                            "(needs the corpus: just corpus)")
    return names


def read_items(path: Path) -> list[MCItem]:
    return [MCItem(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
