"""Tests of the CLIP BPE tokenizer (sam3_jax.model.tokenizer).

The first group runs without torch; the parity group compares the full id
arrays with the reference SAM 3 tokenizer when the `sam3` package is
installed (skipped otherwise).
"""

from __future__ import annotations

import hashlib
import os
import random

import numpy as np
import pytest

from sam3_jax.model.tokenizer import (
    EOT_ID,
    SOT_ID,
    VOCAB_SIZE,
    ClipTokenizer,
    default_bpe_path,
)

VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"


@pytest.fixture(scope="module")
def tok() -> ClipTokenizer:
    return ClipTokenizer()


def _row(ids, length=32):
    out = np.zeros(length, dtype=np.int32)
    out[: len(ids)] = ids
    return out


# ----------------------------------------------------------------- torch-free


def test_asset_present_and_checksum():
    path = default_bpe_path()
    assert os.path.isfile(path)
    with open(path, "rb") as fh:
        assert hashlib.sha256(fh.read()).hexdigest() == VOCAB_SHA256
    licence = os.path.join(os.path.dirname(path), "LICENSE_CLIP_BPE.txt")
    with open(licence, encoding="utf-8") as fh:
        text = fh.read()
    assert "Copyright (c) 2021 OpenAI" in text and VOCAB_SHA256 in text


def test_constants(tok):
    assert (SOT_ID, EOT_ID, VOCAB_SIZE) == (49406, 49407, 49408)
    assert (tok.SOT_ID, tok.EOT_ID, tok.VOCAB_SIZE) == (SOT_ID, EOT_ID, VOCAB_SIZE)
    assert len(tok.token_to_id) == VOCAB_SIZE
    assert tok.token_to_id["<start_of_text>"] == SOT_ID
    assert tok.token_to_id["<end_of_text>"] == EOT_ID


@pytest.mark.parametrize(
    "text, ids",
    [
        ("shoe", [7342]),
        ("a player in white", [320, 2477, 530, 1579]),
        ("visual", [7195]),
        ("", []),
        ("   \t\n ", []),
        ("SHOE", [7342]),
        ("  a   player\tin\nwhite  ", [320, 2477, 530, 1579]),
    ],
)
def test_known_ids(tok, text, ids):
    assert tok.encode(text) == ids
    out = tok(text)
    np.testing.assert_array_equal(out[0], _row([SOT_ID, *ids, EOT_ID]))


def test_shape_and_dtype(tok):
    out = tok(["shoe", "a player in white", ""])
    assert out.shape == (3, 32) and out.dtype == np.int32
    assert tok("shoe").shape == (1, 32)
    assert tok(("x",), context_length=77).shape == (1, 77)
    assert tok([], context_length=8).shape == (0, 8)
    assert tok(np.array(["a", "b"]), context_length=4).shape == (2, 4)


def test_empty_string(tok):
    np.testing.assert_array_equal(tok("")[0], _row([SOT_ID, EOT_ID]))


def test_truncation_ends_with_eot(tok):
    text = " ".join(["photograph of a dog"] * 40)
    full = tok.encode(text)
    assert len(full) > 100
    for length in (2, 3, 16, 32, 77):
        row = tok(text, context_length=length)[0]
        assert row.shape == (length,)
        assert row[0] == SOT_ID and row[-1] == EOT_ID
        assert list(row[1:-1]) == full[: length - 2]
    # exactly fitting: no truncation, no padding
    fit = tok("shoe", context_length=3)[0]
    assert list(fit) == [SOT_ID, 7342, EOT_ID]


def test_special_strings_map_to_special_ids(tok):
    assert tok.encode("<start_of_text>") == [SOT_ID]
    assert tok.encode("a <end_of_text> b") == [320, EOT_ID, 321]


def test_decode(tok):
    assert tok.decode(tok("A Player in WHITE!")[0]) == "a player in white !"
    assert tok.decode(tok.encode("naïve café 日本語")) == "naïve café 日本語"
    assert tok.decode([]) == ""
    assert tok.decode(tok("")[0]) == ""


def test_cache_is_bounded(tok):
    tok.encode("cache me if you can")
    info = tok._word_ids.cache_info()
    assert info.maxsize is not None and info.currsize > 0


def test_errors(tok):
    with pytest.raises(TypeError, match="str"):
        tok(123)
    with pytest.raises(TypeError, match="str"):
        tok(b"bytes")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        tok(["ok", None])
    with pytest.raises(TypeError, match="str"):
        tok.encode(3.5)
    with pytest.raises(ValueError, match="context_length"):
        tok("shoe", context_length=1)
    with pytest.raises(ValueError, match="context_length"):
        tok("shoe", context_length=0)
    with pytest.raises(TypeError, match="context_length"):
        tok("shoe", context_length=32.0)
    missing = "/nonexistent/dir/vocab.txt.gz"
    with pytest.raises(FileNotFoundError, match="nonexistent"):
        ClipTokenizer(missing)


# --------------------------------------------------------------------- parity

HAND_WRITTEN = [
    "",
    " ",
    "\t\n\r  \u3000",
    "shoe",
    "a player in white",
    "visual",
    "  leading and trailing whitespace   ",
    "tabs\tand\nnew\nlines\r\nand    many     spaces",
    # accents, scripts, emoji, combining marks, full width
    "naïve café résumé Ångström façade Œuvre",
    "Crème Brûlée à la mode",
    "e\u0301 a\u0300 n\u0303 o\u0308 (combining marks)",
    "日本語のテキスト 中文字符 한국어",
    "Привет, мир! Ёжик в тумане",
    "مرحبا بالعالم ١٢٣",
    "שלום עולם",
    "ελληνικά ΚΕΦΑΛΑΙΑ ς σ Σ",
    "हिन्दी देवनागरी",
    "🙂😀👍🏽 🇫🇷 👨‍👩‍👧‍👦 ❤️",
    "ＦＵＬＬ ＷＩＤＴＨ　ｔｅｘｔ １２３ ！？",
    "ﬁ ﬂ ligatures ﬀ",
    "İstanbul ıi ß ẞ ǅ",
    "<ſtart_of_text> 'ſ ſtrange",
    "\u212a kelvin \u2126 ohm",
    # HTML entities (decoded twice)
    "fish &amp; chips &lt;b&gt;bold&lt;/b&gt; &quot;q&quot; &#39;x&#39; &nbsp;",
    "&amp;amp; &amp;lt; &amp;amp;amp;",
    "&copy; &eacute;t&eacute; &#x1F600; &unknown;",
    # mojibake fixed by ftfy
    "â€œquotedâ€\x9d and donâ€™t",
    "CafÃ© Ã  la crÃ¨me",
    "ÃƒÂ©",
    "The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows.",
    "\u201ccurly\u201d \u2018quotes\u2019",
    # punctuation runs
    "!!!??? ... --- *** ((( ))) [[[ ]]] {{{ }}}",
    "hello,world;foo:bar.baz",
    "@#$%^&*()_+-=~`|\\/<>",
    "e-mail: someone@example.com, url: https://x.y/z?a=1&b=2",
    # contractions in various casings
    "it's don't we're they've i'm you'll he'd",
    "IT'S DON'T WE'RE THEY'VE I'M YOU'LL HE'D",
    "It'S Don'T We'Re They'vE I'm You'Ll He'D",
    "'s 't 're 've 'm 'll 'd ''s 'sx 'ss",
    "rock'n'roll o'clock y'all ma'am",
    "it\u2019s don\u2019t",
    # mixed casing
    "MiXeD CaSe WoRdS",
    "camelCaseIdentifier and snake_case_name",
    # digits and numbers
    "3.14 2.71828 1,000,000 -42 +7 1e-5 0x1F 007",
    "²³ ½ ¼ Ⅻ ① ٣ ४",
    "the year 2024 and 1999",
    # special token strings
    "<start_of_text>",
    "<end_of_text>",
    "<start_of_text>a photo<end_of_text>",
    "<START_OF_TEXT> <End_Of_Text>",
    "<start_of_text",
    "start_of_text>",
    "<|startoftext|> <|endoftext|>",
    # literal end-of-word markers
    "</w>",
    "abc</w>def",
    "</w></w></w> w</w",
    # control and odd characters
    "null\x00byte bell\x07 esc\x1b[31m",
    "a\x1cb\x1dc\x1ed\x1fe",
    "zero\u200bwidth\u200djoiner\ufeffbom",
    "soft\u00adhyphen non\u00a0breaking",
    "line\u2028sep\u2029para\x85nel",
    "\U0001d400\U0001d401 math bold",
    "a" * 300,
    "antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    # very long strings
    " ".join(["a red car parked next to a blue bicycle"] * 30),
    "word " * 200,
    "!" * 500,
    "1234567890" * 20,
]


_FRAGMENTS = [
    "dog", "Cat", "HOUSE", "tree", "person", "player", "white", "shoe",
    "'s", "'T", "'re", "'VE", "'m", "'Ll", "'d", "'", "\"",
    "&amp;", "&lt;", "&gt;", "&quot;", "&#39;", "&amp;amp;",
    "<start_of_text>", "<end_of_text>", "</w>", "<", ">", "/",
    "3.14", "1,000,000", "42", "0", "½", "٣",
    " ", "  ", "\t", "\n", "\r\n", "\u3000", "\u00a0",
    "café", "naïve", "日本", "中文", "Привет", "مرحبا", "🙂", "👍🏽", "e\u0301",
    "ＡＢＣ", "ﬁ", "ß", "İ", "ſ", "â€™", "Ã©",
    "...", "!!", "?", "-", "_", "(", ")", ",", ";", ":",
]

_CODEPOINT_RANGES = [
    (0x20, 0x7E),  # ASCII printable
    (0xA0, 0xFF),  # Latin-1
    (0x100, 0x17F),  # Latin extended
    (0x300, 0x36F),  # combining marks
    (0x370, 0x3FF),  # Greek
    (0x400, 0x4FF),  # Cyrillic
    (0x600, 0x6FF),  # Arabic
    (0x900, 0x97F),  # Devanagari
    (0x2000, 0x206F),  # general punctuation
    (0x3040, 0x30FF),  # kana
    (0x4E00, 0x4FFF),  # CJK
    (0xFF00, 0xFFEF),  # half/full width
    (0x1F300, 0x1F64F),  # emoji
]


def _random_strings(count: int, seed: int = 20240917) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(0, 14)):
            if rng.random() < 0.6:
                parts.append(rng.choice(_FRAGMENTS))
            else:
                lo, hi = rng.choice(_CODEPOINT_RANGES)
                parts.append(
                    "".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 6)))
                )
            if rng.random() < 0.5:
                parts.append(" ")
        text = "".join(parts)
        if rng.random() < 0.3:
            text = text.upper()
        out.append(text)
    return out


N_RANDOM = 400


@pytest.fixture(scope="module")
def reference():
    module = pytest.importorskip("sam3.model.tokenizer_ve")
    return module.SimpleTokenizer(bpe_path=default_bpe_path())


@pytest.mark.parametrize("context_length", [32, 77])
def test_parity_with_reference(tok, reference, context_length):
    texts = HAND_WRITTEN + _random_strings(N_RANDOM)
    assert len(texts) >= 300 + len(HAND_WRITTEN)
    ours = tok(texts, context_length=context_length)
    theirs = reference(texts, context_length=context_length).numpy()
    assert ours.shape == theirs.shape == (len(texts), context_length)
    mismatched = [i for i in range(len(texts)) if not np.array_equal(ours[i], theirs[i])]
    assert not mismatched, "\n".join(
        f"{texts[i]!r}:\n  ours   {ours[i].tolist()}\n  theirs {theirs[i].tolist()}"
        for i in mismatched[:5]
    )
    # the long inputs really exercise truncation
    assert (ours[:, -1] == EOT_ID).sum() >= 3


def test_encode_parity_untruncated(tok, reference):
    texts = HAND_WRITTEN + _random_strings(100, seed=7)
    for text in texts:
        assert tok.encode(text) == reference.encode(text), repr(text)


def test_surrogates_match_reference(tok, reference):
    # ftfy repairs lone / paired surrogates before the UTF-8 encoding step
    for text in ["bad \ud800 surrogate", "pair \ud83d\ude00 ok", "\udfff"]:
        assert tok.encode(text) == reference.encode(text), repr(text)
