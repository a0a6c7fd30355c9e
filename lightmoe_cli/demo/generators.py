"""Generated domains of the demo corpus: text written by our own code, with exact answers.

Why generated data: it gives the demo model domains whose correct continuation is known exactly, so later
stages (eval, task-shift scenarios) can score answers without any third-party benchmark, and it is free of
licensing questions. Every generator is a pure function of a seeded `random.Random`, so a corpus rebuilt on
another machine is byte-identical.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

_CONSONANTS = "bcdfghjklmnprstvwz"
_VOWELS = "aeiou"


def pseudo_word(rng: random.Random, min_syllables: int = 1, max_syllables: int = 3) -> str:
    """A pronounceable made-up word (consonant-vowel syllables), so string tasks need no dictionary."""
    n = rng.randint(min_syllables, max_syllables)
    word = "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(n))
    if rng.random() < 0.3:
        word += rng.choice(_CONSONANTS)
    return word


@dataclass(frozen=True)
class Problem:
    """One generated question with its exact answer; `text` is how it appears in the corpus."""

    prompt: str
    answer: str

    @property
    def text(self) -> str:
        return f"{self.prompt}{self.answer}"


# ---------------------------------------------------------------- arithmetic
def arithmetic_problem(rng: random.Random) -> Problem:
    """Integer arithmetic with + - * and parentheses, answer evaluated exactly."""
    kind = rng.random()
    if kind < 0.35:
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        op = rng.choice("+-")
        expr = f"{a} {op} {b}"
    elif kind < 0.6:
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        expr = f"{a} * {b}"
    elif kind < 0.85:
        a, b, c = rng.randint(1, 99), rng.randint(1, 99), rng.randint(1, 20)
        op1, op2 = rng.choice("+-"), rng.choice("+-*")
        expr = f"({a} {op1} {b}) {op2} {c}" if rng.random() < 0.5 else f"{a} {op1} {b} {op2} {c}"
    else:
        a, b = rng.randint(10, 500), rng.randint(2, 12)
        q = a // b
        return Problem(f"{q * b} / {b} = ", str(q))
    value = eval(expr, {"__builtins__": {}})  # noqa: S307 - expr is built above from digits and operators only
    return Problem(f"{expr} = ", str(value))


# ---------------------------------------------------------------- algebra
def algebra_problem(rng: random.Random) -> Problem:
    """Linear equations in one unknown with an integer solution, plus evaluation of a polynomial."""
    var = rng.choice("xyzabn")
    if rng.random() < 0.6:
        x = rng.randint(-20, 20)
        a = rng.choice([i for i in range(-9, 10) if i not in (0,)])
        b = rng.randint(-50, 50)
        c = a * x + b
        lhs = f"{a}{var}" if a not in (1, -1) else ("" if a == 1 else "-") + var
        lhs += f" + {b}" if b >= 0 else f" - {-b}"
        return Problem(f"solve {lhs} = {c} ; ", f"{var} = {x}")
    x = rng.randint(-9, 9)
    a, b, c = rng.randint(1, 5), rng.randint(-9, 9), rng.randint(-9, 9)
    value = a * x * x + b * x + c
    poly = f"{a}{var}^2 {'+' if b >= 0 else '-'} {abs(b)}{var} {'+' if c >= 0 else '-'} {abs(c)}"
    return Problem(f"evaluate {poly} at {var} = {x} ; ", str(value))


# ---------------------------------------------------------------- string transforms
def _reverse(w: str, rng: random.Random) -> tuple[str, str]:
    return f"reverse {w}", w[::-1]


def _upper(w: str, rng: random.Random) -> tuple[str, str]:
    return f"upper {w}", w.upper()


def _sort(w: str, rng: random.Random) -> tuple[str, str]:
    return f"sort {w}", "".join(sorted(w))


def _count(w: str, rng: random.Random) -> tuple[str, str]:
    ch = rng.choice(w)
    return f"count {ch} in {w}", str(w.count(ch))


def _length(w: str, rng: random.Random) -> tuple[str, str]:
    return f"length {w}", str(len(w))


def _first_last(w: str, rng: random.Random) -> tuple[str, str]:
    return f"swap ends {w}", (w[-1] + w[1:-1] + w[0]) if len(w) > 1 else w


def _join(w: str, rng: random.Random) -> tuple[str, str]:
    v = pseudo_word(rng)
    return f"join {w} {v}", f"{w}-{v}"


_STRING_OPS: list[Callable[[str, random.Random], tuple[str, str]]] = [
    _reverse, _upper, _sort, _count, _length, _first_last, _join,
]


def string_problem(rng: random.Random) -> Problem:
    """A transform applied to a made-up word (reverse, upper, sort, count, length, swap ends, join)."""
    word = pseudo_word(rng, 2, 4)
    prompt, answer = rng.choice(_STRING_OPS)(word, rng)
    return Problem(f"{prompt} -> ", answer)


GENERATORS: dict[str, Callable[[random.Random], Problem]] = {
    "arithmetic": arithmetic_problem,
    "algebra": algebra_problem,
    "strings": string_problem,
}


def generate_documents(domain: str, n_docs: int, seed: int, problems_per_doc: int = 24) -> list[str]:
    """`n_docs` documents of one generated domain, one problem per line; deterministic in `seed`."""
    gen = GENERATORS[domain]
    rng = random.Random(f"{domain}:{seed}")
    return ["\n".join(gen(rng).text for _ in range(problems_per_doc)) for _ in range(n_docs)]


def generate_problems(domain: str, n: int, seed: int) -> list[Problem]:
    """Held-out problems (prompt/answer pairs) of a generated domain, for exact-answer evaluation."""
    rng = random.Random(f"{domain}:problems:{seed}")
    return [GENERATORS[domain](rng) for _ in range(n)]
