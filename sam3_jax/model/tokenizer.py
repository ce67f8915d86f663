"""CLIP byte-level BPE tokenizer (text side of SAM 3), free of torch.

The produced ids are meant to be identical to those of the reference SAM 3
text tokenizer for every input string, so that a JAX text encoder loaded from
converted SAM 3 weights sees exactly the same token sequences.

Pipeline, per input string:

1. normalisation: ``ftfy.fix_text``, two rounds of HTML entity decoding,
   every run of whitespace replaced by one blank, outer blanks removed,
   lower-casing;
2. pre-tokenisation with a regular expression (``regex`` module, case
   insensitive) that yields, in order of preference, the literal special token
   strings, English clitics, runs of letters, single digits, and runs of any
   other non-blank characters;
3. every piece is turned into UTF-8 bytes, each byte shown as one printable
   unicode character, the last symbol gets the ``</w>`` end-of-word marker, and
   the lowest-ranked adjacent pair is merged repeatedly;
4. ``__call__`` wraps the ids between start/end markers, truncates (keeping an
   end marker as the last kept id) and right-pads with zeros.

The merge list ``bpe_simple_vocab_16e6.txt.gz`` ships in ``sam3_jax/assets``
(OpenAI CLIP, MIT licence; see ``LICENSE_CLIP_BPE.txt`` next to it).
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.resources
import os
from typing import Iterable, Sequence, Union

import ftfy
import numpy as np
import regex

__all__ = [
    "ClipTokenizer",
    "DEFAULT_BPE_FILENAME",
    "EOT_ID",
    "SOT_ID",
    "VOCAB_SIZE",
    "default_bpe_path",
]

DEFAULT_BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"

SOT_TOKEN = "<start_of_text>"
EOT_TOKEN = "<end_of_text>"

# 256 single-byte symbols, the same 256 with the end-of-word suffix, the
# merged symbols, then the two markers.
NUM_MERGES = 48_894
VOCAB_SIZE = 2 * 256 + NUM_MERGES + 2  # 49408
SOT_ID = VOCAB_SIZE - 2  # 49406
EOT_ID = VOCAB_SIZE - 1  # 49407

END_OF_WORD = "</w>"

_BPE_CACHE_SIZE = 1 << 16

TextInput = Union[str, Sequence[str]]


def default_bpe_path() -> str:
    """Filesystem path of the merge list bundled with the package."""
    try:
        resource = importlib.resources.files("sam3_jax").joinpath(
            "assets", DEFAULT_BPE_FILENAME
        )
        return os.fspath(resource)
    except (ModuleNotFoundError, TypeError):
        # Fall back on the source layout: sam3_jax/model/../assets.
        here = os.path.dirname(os.path.abspath(__file__))
        return os.path.join(os.path.dirname(here), "assets", DEFAULT_BPE_FILENAME)


@functools.lru_cache(maxsize=None)
def _byte_alphabet() -> tuple[str, ...]:
    """Printable stand-in character for each byte value 0..255.

    Bytes that already print as a visible Latin-1 glyph ('!'..'~', '¡'..'¬',
    '®'..'ÿ') stand for themselves; the remaining 68 byte values (controls,
    blank, soft hyphen, ...) are given code points 256, 257, ... in increasing
    byte order, so that no symbol is whitespace or a control character.
    """
    visible = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    alphabet = []
    next_spare = 0x100
    for value in range(256):
        if value in visible:
            alphabet.append(chr(value))
        else:
            alphabet.append(chr(next_spare))
            next_spare += 1
    return tuple(alphabet)


def _vocab_base_order() -> list[str]:
    """Order in which the single-byte symbols occupy ids 0..255.

    The visible bytes come first (in byte order), then the remapped ones.
    """
    alphabet = _byte_alphabet()
    return [alphabet[b] for b in range(256) if ord(alphabet[b]) == b] + [
        alphabet[b] for b in range(256) if ord(alphabet[b]) != b
    ]


_WHITESPACE_RUN = regex.compile(r"\s+")

_PIECE_ALTERNATIVES = (
    SOT_TOKEN,
    EOT_TOKEN,
    # clitics are tried before letter runs
    "'s",
    "'t",
    "'re",
    "'ve",
    "'m",
    "'ll",
    "'d",
    r"[\p{L}]+",  # a run of letters
    r"[\p{N}]",  # one digit / numeric character at a time
    r"[^\s\p{L}\p{N}]+",  # a run of anything else that is not blank
)
_PIECE_PATTERN = regex.compile("|".join(_PIECE_ALTERNATIVES), regex.IGNORECASE)


def _normalise(text: str) -> str:
    """Repair, unescape, collapse whitespace and lower-case ``text``."""
    fixed = ftfy.fix_text(text)
    fixed = html.unescape(html.unescape(fixed)).strip()
    return _WHITESPACE_RUN.sub(" ", fixed).strip().lower()


def _read_merges(path: str) -> list[tuple[str, str]]:
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"CLIP BPE merge file not found: {path!r} (expected the gzip'd "
            f"'{DEFAULT_BPE_FILENAME}' shipped in sam3_jax/assets)"
        )
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    # line 0 is a version header; only the first NUM_MERGES merges are used.
    body = lines[1 : 1 + NUM_MERGES]
    merges = []
    for number, line in enumerate(body, start=2):
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}: malformed merge on line {number}: {line!r}")
        merges.append((parts[0], parts[1]))
    if len(merges) != NUM_MERGES:
        raise ValueError(
            f"{path}: expected {NUM_MERGES} merges, found only {len(merges)}"
        )
    return merges


class ClipTokenizer:
    """Byte-level BPE tokenizer reproducing SAM 3's CLIP text tokenization.

    Args:
        bpe_path: path of the gzip'd merge list; ``None`` uses the copy
            bundled in ``sam3_jax/assets``.
    """

    SOT_ID = SOT_ID
    EOT_ID = EOT_ID
    VOCAB_SIZE = VOCAB_SIZE

    def __init__(self, bpe_path: str | os.PathLike | None = None):
        path = default_bpe_path() if bpe_path is None else os.fspath(bpe_path)
        self.bpe_path = path
        merges = _read_merges(path)

        self._byte_to_symbol = _byte_alphabet()
        self._symbol_to_byte = {s: b for b, s in enumerate(self._byte_to_symbol)}

        symbols = _vocab_base_order()
        symbols = symbols + [s + END_OF_WORD for s in symbols]
        symbols += [left + right for left, right in merges]
        symbols += [SOT_TOKEN, EOT_TOKEN]
        # later duplicates win, as with a plain dict(zip(...)) construction
        self.token_to_id: dict[str, int] = {}
        for index, symbol in enumerate(symbols):
            self.token_to_id[symbol] = index
        self.id_to_token: dict[int, str] = {i: s for s, i in self.token_to_id.items()}
        self._merge_rank: dict[tuple[str, str], int] = {}
        for rank, pair in enumerate(merges):
            self._merge_rank[pair] = rank

        if (
            len(symbols) != VOCAB_SIZE
            or self.token_to_id[SOT_TOKEN] != SOT_ID
            or self.token_to_id[EOT_TOKEN] != EOT_ID
        ):
            raise ValueError(f"{path}: unexpected vocabulary layout")

        self.vocab_size = VOCAB_SIZE
        self.sot_token_id = SOT_ID
        self.eot_token_id = EOT_ID
        self._special_ids = frozenset((SOT_ID, EOT_ID))
        # per-instance bounded memo of the word -> id list computation
        self._word_ids = functools.lru_cache(maxsize=_BPE_CACHE_SIZE)(
            self._compute_word_ids
        )

    # ------------------------------------------------------------------ BPE
    def _merge_symbols(self, symbols: list[str]) -> list[str]:
        """Greedily apply the best-ranked merge until none applies."""
        ranks = self._merge_rank
        while len(symbols) > 1:
            best_rank = None
            best_pair = None
            for pair in zip(symbols, symbols[1:]):
                rank = ranks.get(pair)
                if rank is not None and (best_rank is None or rank < best_rank):
                    best_rank, best_pair = rank, pair
            if best_pair is None:
                break
            left, right = best_pair
            joined = left + right
            merged: list[str] = []
            pos = 0
            last = len(symbols) - 1
            # fuse every non-overlapping occurrence, scanning left to right
            while pos <= last:
                if pos < last and symbols[pos] == left and symbols[pos + 1] == right:
                    merged.append(joined)
                    pos += 2
                else:
                    merged.append(symbols[pos])
                    pos += 1
            symbols = merged
        return symbols

    def _compute_word_ids(self, piece: str) -> tuple[int, ...]:
        """Ids of one pre-tokenised piece (given in its byte-symbol form)."""
        if piece in (SOT_TOKEN, EOT_TOKEN):
            # the literal marker strings map straight onto the marker ids
            return (self.token_to_id[piece],)
        symbols = list(piece)
        symbols[-1] += END_OF_WORD
        return tuple(self.token_to_id[s] for s in self._merge_symbols(symbols))

    def _to_symbols(self, piece: str) -> str:
        table = self._byte_to_symbol
        return "".join(table[b] for b in piece.encode("utf-8"))

    # --------------------------------------------------------------- public
    def encode(self, text: str) -> list[int]:
        """BPE ids of ``text`` (no start/end markers, no padding)."""
        if not isinstance(text, str):
            raise TypeError(
                f"ClipTokenizer.encode expects a str, got {type(text).__name__}"
            )
        ids: list[int] = []
        for match in _PIECE_PATTERN.finditer(_normalise(text)):
            ids.extend(self._word_ids(self._to_symbols(match.group())))
        return ids

    def __call__(self, texts: TextInput, context_length: int = 32) -> np.ndarray:
        """Tokenize one string or a sequence of strings.

        Returns an int32 array of shape ``(N, context_length)``: each row is
        ``[SOT] + encode(text) + [EOT]`` followed by zeros; a sequence longer
        than ``context_length`` is cut and its last kept id replaced by EOT.
        """
        batch = self._as_batch(texts)
        if isinstance(context_length, bool) or not isinstance(
            context_length, (int, np.integer)
        ):
            raise TypeError(
                "context_length must be an int, got "
                f"{type(context_length).__name__}"
            )
        context_length = int(context_length)
        if context_length < 2:
            raise ValueError(
                f"context_length must be >= 2 (room for SOT and EOT), got {context_length}"
            )
        out = np.zeros((len(batch), context_length), dtype=np.int32)
        for row, text in enumerate(batch):
            ids = [SOT_ID, *self.encode(text), EOT_ID]
            if len(ids) > context_length:
                ids = ids[:context_length]
                ids[-1] = EOT_ID
            out[row, : len(ids)] = ids
        return out

    @staticmethod
    def _as_batch(texts: TextInput) -> list[str]:
        if isinstance(texts, str):
            return [texts]
        if isinstance(texts, (bytes, bytearray)) or not isinstance(texts, Iterable):
            raise TypeError(
                "texts must be a str or a sequence of str, got "
                f"{type(texts).__name__}"
            )
        batch = list(texts)
        for index, item in enumerate(batch):
            if not isinstance(item, str):
                raise TypeError(
                    f"texts[{index}] must be a str, got {type(item).__name__}"
                )
        return batch

    def decode(self, ids: Iterable[int]) -> str:
        """Best-effort inverse of :meth:`encode` / one row of :meth:`__call__`.

        Everything after the last EOT (the zero padding) is dropped, the SOT /
        EOT markers are skipped, as are ids outside the vocabulary. Since
        normalisation is lossy, the text is lower-cased and re-spaced.
        """
        values = [int(i) for i in np.asarray(ids).reshape(-1)]
        if EOT_ID in values:
            values = values[: len(values) - values[::-1].index(EOT_ID)]
        words: list[str] = []
        pending = bytearray()
        for i in values:
            if i in self._special_ids or i not in self.id_to_token:
                continue
            token = self.id_to_token[i]
            closes_word = token.endswith(END_OF_WORD)
            if closes_word:
                token = token[: -len(END_OF_WORD)]
            pending.extend(self._symbol_to_byte[c] for c in token)
            if closes_word:
                words.append(pending.decode("utf-8", errors="replace"))
                pending.clear()
        if pending:
            words.append(pending.decode("utf-8", errors="replace"))
        return " ".join(words)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(bpe_path={self.bpe_path!r})"
