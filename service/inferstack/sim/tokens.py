"""Deterministic tokenizer and seeded text for the engine simulator.

Nothing here is a real tokenizer: it only has to be cheap, stable across runs and
processes, and plausible. Text splits into word, number and punctuation pieces
(leading space attached, as byte-level BPE does) and long words into several
pieces, so a token is roughly three to five characters of English. Ids come from
a stable hash.

Generated text is drawn from a fixed vocabulary, one piece per token, so that the
number of streamed content chunks equals ``usage.completion_tokens``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random
import re
import sys
from array import array
from collections.abc import Iterator, Sequence
from typing import Any

import orjson

_MASK64 = (1 << 64) - 1


def mix64(x: int) -> int:
    """splitmix64 finaliser: a cheap, well-mixed 64-bit hash of an integer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def stable_hash(*parts: object) -> int:
    """64-bit hash of ``parts`` that is the same in every process (unlike ``hash``)."""
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        h.update(repr(part).encode("utf-8", "surrogatepass"))
        h.update(b"\x1f")
    return int.from_bytes(h.digest(), "little")


def unit_interval(*parts: object) -> float:
    """Deterministic number in [0, 1) from ``parts``."""
    return stable_hash(*parts) / float(1 << 64)


# ---------------------------------------------------------------------------
# Vocabulary of generated text
# ---------------------------------------------------------------------------

_WORD_TEXT = """
the of and to in a is that for it as was with be by on not he this are or his from at
which but have an they you were her she there one all we their has been if more when
will would who so no out up into do any your what time can only other new some could
these two may first then do than like such make how over did even most after also made
many before must through back years where much your way well down should because each
just those people how too little state good very world still own see men work long get
here between both life being under never day same another know while last might us great
old year off come since against go came right used take three states himself few house
use during without again place around however home small found thought went say part
once general high upon school every does got united left number course until always
away something fact though water less public put think almost hand enough far took head
yet government system better set told nothing night end why called eyes find
going look asked later knew point next program city business give group toward young
days let room president side social present given several order national possible rather
second face per among form important often things early white case become large big
need four within felt along children saw best ever least power development light
thing seemed family interest want members others mind country area done turned although
open service problem certain kind different thus began door help sense means whole
matter perhaps itself york times human law line above name example action company hands
local show whether five history gave today either act feet across taken past quite
anything having seen experience body word half really week model engine token
request latency batch memory cache stream server client gateway queue
"""
_WORDS = _WORD_TEXT.split()

VOCAB_WORDS: tuple[str, ...] = tuple(dict.fromkeys(_WORDS))

PUNCT_PIECES: tuple[str, ...] = (",", ".", "\n\n")
# Piece table: [capitalised word, no space] + [" word"] + [" Word"] + punctuation.
GEN_PIECES: tuple[str, ...] = (
    tuple(w.capitalize() for w in VOCAB_WORDS)
    + tuple(" " + w for w in VOCAB_WORDS)
    + tuple(" " + w.capitalize() for w in VOCAB_WORDS)
    + PUNCT_PIECES
)
GEN_JSON: tuple[bytes, ...] = tuple(orjson.dumps(p) for p in GEN_PIECES)
"""``GEN_JSON[i]`` is ``GEN_PIECES[i]`` as a JSON string literal (hot-path chunk building)."""

_NW = len(VOCAB_WORDS)
_CAP0 = 0
_LOWER = _NW
_CAP = 2 * _NW
_COMMA = 3 * _NW
_PERIOD = _COMMA + 1
_PARA = _COMMA + 2


def generate_piece_ids(seed: int) -> Iterator[int]:
    """Endless stream of indices into :data:`GEN_PIECES` for text seeded by ``seed``."""
    rng = random.Random(seed)
    rand = rng.random
    nwords = _NW
    first = True
    while True:
        sentence = 5 + int(rand() * 14)
        for i in range(sentence):
            w = int(rand() * nwords)
            if i == 0:
                yield (_CAP0 if first else _CAP) + w
                first = False
            else:
                yield _LOWER + w
                if i < sentence - 2 and rand() < 0.08:
                    yield _COMMA
        yield _PERIOD
        if rand() < 0.15:
            yield _PARA


def natural_length(seed: int, low: int = 16, high: int = 256) -> int:
    """Where a model would emit EOS for text seeded by ``seed``: ``low``..``high`` tokens."""
    return low + mix64(seed ^ 0x5EED) % (high - low + 1)


# ---------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------

_PIECE_RE = re.compile(r"<\|[a-z_]+\|>| ?[^\W\d_]+| ?\d{1,3}| ?[^\s\w]+| ?_+|\s+(?!\S)|\s+")
_MAX_PIECE = 8
_SPLIT = 6


class Tokenizer:
    """Deterministic word-piece tokenizer with stable ids.

    Generated pieces keep fixed ids (so detokenising generated ids gives the
    text back); any other piece hashes into the rest of the vocabulary.
    """

    SPECIAL: tuple[str, ...] = (
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|tool_call|>",
    )

    def __init__(self, vocab_size: int = 128256) -> None:
        self.vocab_size = max(vocab_size, 4096 + len(GEN_PIECES) + len(self.SPECIAL))
        self._base_gen = 256
        self._special_base = self.vocab_size - len(self.SPECIAL)
        self._hash_lo = self._base_gen + len(GEN_PIECES)
        self._hash_span = self._special_base - self._hash_lo
        self._ids: dict[str, int] = {p: self._base_gen + i for i, p in enumerate(GEN_PIECES)}
        for i, s in enumerate(self.SPECIAL):
            self._ids[s] = self._special_base + i
        self._fixed = dict(self._ids)
        self._strs: dict[int, str] = {v: k for k, v in self._ids.items()}
        self.bos_id = self._ids["<|begin_of_text|>"]
        self.eos_id = self._ids["<|end_of_text|>"]

    def gen_id(self, piece_index: int) -> int:
        """Token id of ``GEN_PIECES[piece_index]``."""
        return self._base_gen + piece_index

    def _piece_id(self, piece: str) -> int:
        tid = self._ids.get(piece)
        if tid is None:
            digest = hashlib.blake2b(piece.encode("utf-8", "surrogatepass"), digest_size=8)
            tid = self._hash_lo + int.from_bytes(digest.digest(), "little") % self._hash_span
            if len(self._ids) > 500_000:  # bound memory on adversarial input
                self._ids = dict(self._fixed)
                self._strs = {v: k for k, v in self._fixed.items()}
            self._ids[piece] = tid
            self._strs.setdefault(tid, piece)
        return tid

    @staticmethod
    def pieces(text: str) -> list[str]:
        """Split text into token strings (the inverse of concatenation)."""
        out: list[str] = []
        for piece in _PIECE_RE.findall(text):
            if len(piece) <= _MAX_PIECE or piece.startswith("<|"):
                out.append(piece)
                continue
            head = _SPLIT + (1 if piece[0] == " " else 0)
            out.append(piece[:head])
            for i in range(head, len(piece), _SPLIT):
                out.append(piece[i : i + _SPLIT])
        return out

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = [self.bos_id] if add_bos else []
        ids.extend(self._piece_id(p) for p in self.pieces(text))
        return ids

    def count(self, text: str) -> int:
        return len(self.pieces(text))

    def token_str(self, tid: int) -> str:
        s = self._strs.get(tid)
        if s is not None:
            return s
        # Unknown id: a stable made-up piece, so decoding never fails.
        syll = ("ka", "lo", "mi", "ne", "ru", "ta", "vo", "si", "de", "pa")
        x = mix64(tid)
        return " " + "".join(syll[(x >> (4 * i)) % 10] for i in range(1 + x % 3))

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.token_str(t) for t in ids)


# ---------------------------------------------------------------------------
# Chat template
# ---------------------------------------------------------------------------


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, dict):
                if isinstance(part.get("text"), str):
                    parts.append(part["text"])
                elif part.get("type") not in (None, "text"):
                    parts.append(f"<{part.get('type')}>")
            elif isinstance(part, str):
                parts.append(part)
        return "\n".join(parts)
    return str(content)


def render_chat(
    messages: Sequence[dict[str, Any]],
    tools: Sequence[dict[str, Any]] | None = None,
    add_generation_prompt: bool = True,
) -> str:
    """ChatML-style rendering (the shape of Qwen's and Hermes' templates)."""
    out: list[str] = []
    if tools:
        schema = "\n".join(orjson.dumps(t).decode() for t in tools)
        out.append(
            "<|im_start|>system\n# Tools\n\nYou may call one or more functions."
            f"\n<tools>\n{schema}\n</tools><|im_end|>\n"
        )
    for msg in messages:
        role = str(msg.get("role", "user"))
        text = _content_text(msg.get("content"))
        calls = msg.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                if isinstance(call, dict):
                    text += "\n<tool_call>\n" + orjson.dumps(call.get("function")).decode()
                    text += "\n</tool_call>"
        out.append(f"<|im_start|>{role}\n{text}<|im_end|>\n")
    if add_generation_prompt:
        out.append("<|im_start|>assistant\n")
    return "".join(out)


# ---------------------------------------------------------------------------
# Tool-call arguments from a JSON schema
# ---------------------------------------------------------------------------

_STRING_FORMATS = {
    "date": "2024-05-17",
    "date-time": "2024-05-17T09:30:00Z",
    "time": "09:30:00",
    "email": "user@example.com",
    "uri": "https://example.com/resource",
    "url": "https://example.com/resource",
    "uuid": "123e4567-e89b-42d3-a456-426614174000",
    "ipv4": "192.0.2.10",
}


class SchemaSampler:
    """Deterministic JSON value that conforms to a (practical subset of) JSON Schema."""

    def __init__(self, root: dict[str, Any], seed: int) -> None:
        self.root = root
        self.rng = random.Random(seed)

    def _resolve(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        ref = schema.get("$ref")
        while isinstance(ref, str) and ref.startswith("#/") and depth < 16:
            node: Any = self.root
            for part in ref[2:].split("/"):
                node = node.get(part) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                return {}
            schema = node
            ref = schema.get("$ref")
            depth += 1
        return schema

    def sample(self, schema: Any, depth: int = 0) -> Any:
        if not isinstance(schema, dict) or depth > 8:
            return None
        schema = self._resolve(schema, depth)
        rng = self.rng
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return enum[rng.randrange(len(enum))]
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                typed = [o for o in options if isinstance(o, dict) and o.get("type") != "null"]
                return self.sample((typed or options)[0], depth + 1)
        all_of = schema.get("allOf")
        if isinstance(all_of, list) and all_of:
            merged: dict[str, Any] = {}
            for part in all_of:
                if isinstance(part, dict):
                    part = self._resolve(part, depth)
                    for k, v in part.items():
                        if k == "properties" and isinstance(v, dict):
                            merged.setdefault("properties", {}).update(v)
                        else:
                            merged.setdefault(k, v)
            merged.setdefault("type", "object")
            return self.sample(merged, depth + 1)
        typ = schema.get("type")
        if isinstance(typ, list):
            typ = next((t for t in typ if t != "null"), "null")
        if typ is None:
            typ = "object" if "properties" in schema else "string"
        if typ == "object":
            props = schema.get("properties")
            out: dict[str, Any] = {}
            if isinstance(props, dict):
                for name, sub in props.items():
                    out[str(name)] = self.sample(sub, depth + 1)
            return out
        if typ == "array":
            lo = int(schema.get("minItems", 1))
            hi = int(schema.get("maxItems", max(lo, 3)))
            n = lo if hi <= lo else rng.randint(lo, min(hi, lo + 2))
            return [self.sample(schema.get("items", {}), depth + 1) for _ in range(n)]
        if typ == "integer":
            lo = math.ceil(float(schema.get("minimum", 0)))
            hi = math.floor(float(schema.get("maximum", max(lo, 100))))
            return rng.randint(lo, max(lo, hi))
        if typ == "number":
            lo_f = float(schema.get("minimum", 0.0))
            hi_f = float(schema.get("maximum", max(lo_f, 100.0)))
            return round(lo_f + (max(lo_f, hi_f) - lo_f) * rng.random(), 2)
        if typ == "boolean":
            return rng.random() < 0.5
        if typ == "null":
            return None
        return self._string(schema)

    def _string(self, schema: dict[str, Any]) -> str:
        fmt = schema.get("format")
        if isinstance(fmt, str) and fmt in _STRING_FORMATS:
            return _STRING_FORMATS[fmt]
        words = [VOCAB_WORDS[self.rng.randrange(_NW)] for _ in range(1 + self.rng.randrange(3))]
        text = " ".join(words)
        min_len = int(schema.get("minLength", 0))
        max_len = schema.get("maxLength")
        while len(text) < min_len:
            text += " " + VOCAB_WORDS[self.rng.randrange(_NW)]
        if isinstance(max_len, int) and max_len >= 0:
            text = text[:max_len]
        return text


def tool_arguments(parameters: dict[str, Any] | None, seed: int) -> str:
    """JSON arguments for a tool, as the string a Hermes-style parser returns."""
    schema = parameters if isinstance(parameters, dict) else {}
    value = SchemaSampler(schema, seed).sample(schema)
    if not isinstance(value, dict):
        value = {}
    # The stdlib encoder gives the ", " / ": " spacing of vLLM's tool parsers.
    return json.dumps(value, ensure_ascii=False)


# ---------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------


def embedding(text_key: str, dim: int, seed: int) -> list[float]:
    """Unit-norm vector for ``text_key``; identical inputs give identical vectors."""
    raw = hashlib.shake_256(f"{seed}\x1f{text_key}".encode("utf-8", "surrogatepass"))
    values = array("h", raw.digest(2 * dim))
    norm = math.sqrt(math.fsum(float(v) * v for v in values)) or 1.0
    return [v / norm for v in values]


def embedding_base64(vector: Sequence[float]) -> str:
    """Little-endian float32 bytes, base64-encoded (OpenAI's ``encoding_format=base64``)."""
    data = array("f", vector)
    if data.itemsize != 4:  # pragma: no cover - every supported platform has 4-byte floats
        raise RuntimeError("float32 array expected")
    if sys.byteorder != "little":  # pragma: no cover
        data.byteswap()
    return base64.b64encode(data.tobytes()).decode("ascii")
