"""Prompt sources for load tests: ShareGPT JSON, random lengths, a prompts file.

Token counts here are client-side estimates (no model tokenizer on the load generator): they
only size prompts and pick ``max_tokens``. Reported token totals come from the server's usage.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Pieces the way most tokenizers split English: a word with its leading space, a number, or
# one punctuation mark. Close to one token per piece for common words.
_PIECE = re.compile(r"\s*[A-Za-z]+|\s*\d{1,3}|\s*[^\sA-Za-z\d]")

# Short common words: one token each for the usual BPE vocabularies and for the simulator.
_WORDS_TEXT = """
the of and to in is you that it he was for on are as with his they at be this have from
or one had by word but not what all were we when your can said there use an each which
she do how their if will up other about out many then them these so some her would make
like him into time has look two more write go see number no way could people my than
first water been call who oil its now find long down day did get come made may part over
new sound take only little work know place year live me back give most very after thing
our just name good sentence man think say great where help through much before line
right too mean old any same tell boy follow came want show also around form three small
set put end does another well large must big even such because turn here why ask went
men read need land different home us move try kind hand picture again change off play
spell air away animal house point page letter mother answer found study still learn
"""
WORDS = tuple(_WORDS_TEXT.split())


@dataclass(frozen=True, slots=True)
class Sample:
    """One request's input: a prompt (or chat messages) and its output length."""

    prompt: str
    prompt_len: int
    """Estimated prompt tokens (the server's usage replaces it in results)."""
    output_len: int
    """``max_tokens`` for the request."""
    messages: tuple[dict[str, Any], ...] | None = None
    """Chat history to send as is (chat endpoint); None: ``prompt`` as one user message."""

    def to_wire(self) -> list[Any]:
        return [self.prompt, self.prompt_len, self.output_len, self.messages]

    @classmethod
    def from_wire(cls, row: Sequence[Any]) -> Sample:
        msgs = tuple(row[3]) if row[3] is not None else None
        return cls(str(row[0]), int(row[1]), int(row[2]), msgs)


class DatasetError(ValueError):
    """A dataset that cannot be used; the message says why."""


def estimate_tokens(text: str) -> int:
    return max(1, len(_PIECE.findall(text)))


def _cycle(items: Sequence[Sample], n: int) -> list[Sample]:
    if not items:
        raise DatasetError("the dataset has no usable entries")
    return [items[i % len(items)] for i in range(n)]


def length_range(mean: int, ratio: float) -> tuple[int, int]:
    """vLLM's random-dataset range: [floor(mean*(1-r)), ceil(mean*(1+r))], at least 1."""
    lo = max(1, math.floor(mean * (1 - ratio)))
    hi = max(lo, math.ceil(mean * (1 + ratio)))
    return lo, hi


def random_samples(
    n: int, input_len: int, output_len: int, range_ratio: float = 0.0, seed: int = 0
) -> list[Sample]:
    """Prompts of random common words with lengths uniform in the ranges of ``range_ratio``.

    Every prompt is different, so a prefix cache cannot shortcut the prefill.
    """
    if input_len < 1 or output_len < 1:
        raise DatasetError("random dataset: input and output lengths must be at least 1")
    if not 0 <= range_ratio < 1:
        raise DatasetError("random dataset: range ratio must be in [0, 1)")
    rng = random.Random(seed)
    in_lo, in_hi = length_range(input_len, range_ratio)
    out_lo, out_hi = length_range(output_len, range_ratio)
    out = []
    for _ in range(n):
        k = rng.randint(in_lo, in_hi)
        words = rng.choices(WORDS, k=k)
        prompt = " ".join(words).capitalize()
        out.append(Sample(prompt, k, rng.randint(out_lo, out_hi)))
    return out


def sharegpt_samples(
    path: Path,
    n: int,
    output_len: int | None = None,
    seed: int = 0,
    max_prompt_len: int = 1024,
    max_total_len: int = 2048,
) -> list[Sample]:
    """ShareGPT-format JSON: ``[{"conversations": [{"from": "human", "value": ...}, ...]}]``.

    As vLLM samples it: the first turn is the prompt, the second turn's length is the output
    length (unless ``output_len`` is given); conversations with fewer than two turns, a prompt
    or answer under 4 tokens, a prompt over ``max_prompt_len`` or a total over
    ``max_total_len`` are skipped; the rest is shuffled with ``seed``.
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"ShareGPT file {path}: {exc}") from None
    if not isinstance(data, list):
        raise DatasetError(f"ShareGPT file {path}: expected a JSON list of conversations")
    usable: list[Sample] = []
    for entry in data:
        turns = entry.get("conversations") if isinstance(entry, dict) else None
        if not isinstance(turns, list) or len(turns) < 2:
            continue
        first, second = turns[0], turns[1]
        if not (isinstance(first, dict) and isinstance(second, dict)):
            continue
        prompt = str(first.get("value", ""))
        answer = str(second.get("value", ""))
        p_len = estimate_tokens(prompt)
        o_len = output_len if output_len is not None else estimate_tokens(answer)
        if output_len is None and (p_len < 4 or o_len < 4):
            continue
        if output_len is None and (p_len > max_prompt_len or p_len + o_len > max_total_len):
            continue
        usable.append(Sample(prompt, p_len, o_len))
    random.Random(seed).shuffle(usable)
    return _cycle(usable, n)


def prompt_file_samples(path: Path, n: int, output_len: int) -> list[Sample]:
    """One prompt per line (``.txt``), or JSON lines with ``prompt`` or ``messages`` and an
    optional ``max_tokens``. Blank lines are skipped; the prompts are used in order, cycling."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise DatasetError(f"prompts file {path}: {exc}") from None
    jsonl = path.suffix in (".jsonl", ".ndjson")
    usable: list[Sample] = []
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if not jsonl:
            usable.append(Sample(line, estimate_tokens(line), output_len))
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise DatasetError(f"prompts file {path}:{no}: {exc}") from None
        if not isinstance(obj, dict):
            raise DatasetError(f"prompts file {path}:{no}: expected a JSON object")
        max_tokens = obj.get("max_tokens", output_len)
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise DatasetError(f"prompts file {path}:{no}: max_tokens must be a positive integer")
        if isinstance(obj.get("messages"), list):
            msgs = tuple(obj["messages"])
            text = " ".join(str(m.get("content", "")) for m in msgs if isinstance(m, dict))
            usable.append(Sample(text, estimate_tokens(text), max_tokens, msgs))
        elif isinstance(obj.get("prompt"), str):
            usable.append(Sample(obj["prompt"], estimate_tokens(obj["prompt"]), max_tokens))
        else:
            raise DatasetError(f"prompts file {path}:{no}: needs 'prompt' or 'messages'")
    return _cycle(usable, n)
