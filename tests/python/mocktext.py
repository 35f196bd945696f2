"""What the deterministic mock answers, computed in Python.

A copy of `proto/src/mock.rs` (`WORDS`, `token`, `text`, the embedding
vectors): if that file changes its word list or its vector recipe, change this
one too. The suite compares the gateway's output against these values, so a
gateway that drops, reorders or re-encodes bytes fails visibly.
"""

from __future__ import annotations

import math

WORDS = (
    " lorem", " ipsum", " dolor", " sit", " amet", " consectetur", " adipiscing", " elit",
    " sed", " do", " eiusmod", " tempor", " incididunt", " ut", " labore", " et",
    " dolore", " magna", " aliqua", " enim", " ad", " minim", " veniam", " quis",
    " nostrud", " exercitation", " ullamco", " laboris", " nisi", " aliquip", " ex", " ea",
    " commodo", " consequat", " duis", " aute", " irure", " in", " reprehenderit", " voluptate",
    " velit", " esse", " cillum", " fugiat", " nulla", " pariatur", " excepteur", " sint",
    " occaecat", " cupidatat", " non", " proident", " sunt", " culpa", " qui", " officia",
    " deserunt", " mollit", " anim", " id", " est", " laborum", " the", " end",
)
assert len(WORDS) == 64

MASK = (1 << 64) - 1

# The mock upstream's embedding size when the request doesn't say.
DEFAULT_EMBEDDING_DIMS = 16


def token(i: int) -> str:
    """The i-th token of the mock text."""
    return WORDS[i % len(WORDS)]


def text(n: int) -> str:
    """The whole mock completion of `n` tokens."""
    return "".join(token(i) for i in range(n))


def embedding(inp: str, dims: int = DEFAULT_EMBEDDING_DIMS) -> list[float]:
    """The mock's vector for `inp`: FNV-1a seed, splitmix64 draws in [-1, 1),
    normalized to unit length (the mock renders 6 decimals)."""
    seed = 0xCBF29CE484222325
    for b in inp.encode("utf-8"):
        seed ^= b
        seed = (seed * 0x00000100000001B3) & MASK

    def draws():
        state = seed
        for _ in range(dims):
            state = (state + 0x9E3779B97F4A7C15) & MASK
            z = state
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
            z ^= z >> 31
            yield ((z >> 11) / float(1 << 53)) * 2.0 - 1.0

    values = list(draws())
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]
