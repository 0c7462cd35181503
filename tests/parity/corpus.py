# The texts are full of confusable characters on purpose.
# ruff: noqa: RUF001
"""Texts on which the reference tokenizer must give llama.cpp's token ids, and ways to vary them.

Hand-picked hard cases for pre-tokenizers and byte-level BPE (digit runs, whitespace runs,
contractions, every script llama.cpp's Unicode table classifies, emoji sequences, code, special
tokens in running text), mechanical variations of them, and seeded random Unicode. Everything is
deterministic: the same corpus on every run.
"""

from __future__ import annotations

import random

SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")

SENTENCES = [
    "Hello world",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG",
    "A man, a plan, a canal: Panama.",
    "To be, or not to be, that is the question:",
    "It was the best of times, it was the worst of times.",
    "She sells sea-shells on the sea-shore; the shells she sells are sea-shells, I'm sure.",
    "How much wood would a woodchuck chuck if a woodchuck could chuck wood?",
    "Pack my box with five dozen liquor jugs!",
    "Sphinx of black quartz, judge my vow.",
    "What's the weather like today? It's sunny -- mostly.",
    "Dr. Smith (Ph.D.) arrived at 5 p.m. on Jan. 3rd, 2024.",
    "e.g. i.e. etc. vs. a.k.a. U.S.A.",
    "Once upon a time...",
    "Mr. and Mrs. Dursley, of number four, Privet Drive, were proud to say that they were perfectly normal.",
    "camelCaseIdentifier snake_case_identifier kebab-case-identifier SCREAMING_SNAKE",
    "Supercalifragilisticexpialidocious",
    "pneumonoultramicroscopicsilicovolcanoconiosis",
    "I said \"hello\" and she said 'goodbye'.",
    "He said: `run it`, then ``double`` and ```triple```.",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z",
    "A B C D E F G H I J K L M N O P Q R S T U V W X Y Z",
    "x",
    "I",
    "a.",
    "ok?",
    "hmm... well!? no!!",
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
    "Answer in one word: what colour is the sky?",
]

NUMBERS = [
    *("".join(str((i * 7 + k) % 10) for k in range(n)) for i, n in enumerate(range(1, 26))),
    "0",
    "00",
    "007",
    "1000000",
    "1,234,567",
    "1.234.567,89",
    "3.14159265358979",
    "-42",
    "+1 (555) 123-4567",
    "1e10 6.02e23 1E-9",
    "0x1F 0b1010 0o777",
    "v1.2.3-rc.4",
    "2024-01-31T23:59:59Z",
    "12:30:45.678",
    "abc123def456",
    "123abc",
    " 1",
    "  12",
    "   123",
    "\t1234",
    "\n12345",
    "1 2 3 4 5",
    "1  2   3",
    "10%",
    "$100.00",
    "€1.234,56",
    "#1",
    "No. 42",
    "\u0661\u0662\u0663 \u0967\u0968\u0969 \uff11\uff12\uff13",
    "\u00b2\u00b3\u00b9 \u00bd\u00be \u2160\u216b \u2460\u2461",
    "x\u00b2 + y\u00b2 = z\u00b2",
]

WHITESPACE = [
    " ",
    "  ",
    "   ",
    "\t",
    "\n",
    "\r\n",
    "\n\n",
    "\n\n\n",
    " \n",
    "\n ",
    " \n ",
    "\t\t",
    " \t",
    "\t ",
    "a b",
    "a  b",
    "a   b",
    "a    b",
    "a\tb",
    "a\t\tb",
    "a\nb",
    "a\n\nb",
    "a \nb",
    "a\n b",
    "a \n b",
    "a\r\nb",
    "a\rb",
    " leading",
    "  leading",
    "   leading",
    "trailing ",
    "trailing  ",
    "trailing   ",
    "trailing\n",
    "trailing \n",
    "\n\nparagraph\n\n\nparagraph\n",
    " \t \n \t \n",
    "x \t\n \t y",
    "a\u00a0b",
    "a\u3000b",
    "a\u2028b\u2029c",
    "a\u0085b",
    "a\u1680b\u2000c\u200ad",
    "a\u200bb",
    "a\u202fb\u205fc",
    " \u00a0 ",
    "\u3000\u3000x",
    "a\x0bb\x0cc",
    "a\x1cb\x1dc\x1ed\x1ff",
    "end with unicode space\u3000",
]

PUNCTUATION = [
    "!!!",
    "...",
    "?!?!",
    "---",
    "***bold***",
    "__init__",
    "a.b,c;d:e",
    "(x) [y] {z} <w>",
    "@user #tag $5 %20 ^_^ & * ~ ` |",
    "\"quoted\" 'single' `back`",
    "«guillemets» „German“ ‚single‘ “curly” ‘curly’",
    "— – ‐ … • · ¶ § † ‡",
    "!@#$%^&*()_+-=[]{}|;':\",./<>?",
    " !",
    "  !!",
    " ...\n",
    "a!\n\nb",
    "::\r\n",
    "/* */ // -- ## ==",
    "====\n----\n____",
]

CONTRACTIONS = [
    "'s 't 're 've 'm 'll 'd",
    "'S 'T 'RE 'VE 'M 'LL 'D",
    "'Re 'rE 'Ve 'vE 'Ll 'lL",
    "don't won't can't shouldn't",
    "DON'T WON'T CAN'T",
    "I'm I'M you're YOU'RE we've WE'VE they'll THEY'LL he'd HE'D it's IT'S",
    "'",
    "''",
    "'''",
    "'x",
    "''s",
    " 's",
    "  'll",
    "rock 'n' roll",
    "'tis the season",
    "the dogs' bones",
    "O'Brien's",
    "l'homme d'affaires",
    "'\u00e9",
    "'1",
    "' s",
    "'\ns",
]

SCRIPTS = [
    "café naïve façade Ångström jalapeño Œuvre Æsir",
    "cafe\u0301 nai\u0308ve fac\u0327ade A\u030angstro\u0308m",
    "e\u0301\u0301\u0301",
    "\u0301",
    "\u0301abc",
    "a\u0300b\u0301c\u0302",
    "Z\u0324\u0354\u0367\u0311\u0313a\u0316\u032d\u0308\u0307l\u036e\u0312\u036bg\u030c\u0317\u035a\u031ao",
    "中文文本测试，包括标点符号。",
    "日本語のテキストです。カタカナとひらがな、そして漢字。",
    "ｶﾀｶﾅ ＡＢＣ ｱｲｳ",
    "한국어 텍스트입니다. 안녕하세요!",
    "\u1100\u1161\u11a8 \u3131\u314f",
    "مرحبا بالعالم! كيف حالك؟",
    "\u0627\u0644\u0639\u064e\u0631\u064e\u0628\u0650\u064a\u064e\u0651\u0629",
    "שלום עולם! מה שלומך?",
    "\u05e9\u05b8\u05c1\u05dc\u05d5\u05b9\u05dd",
    "नमस्ते दुनिया। आप कैसे हैं?",
    "\u0915\u094d\u0937 \u0924\u094d\u0930 \u091c\u094d\u091e",
    "สวัสดีชาวโลก ภาษาไทย",
    "Привет, мир! Как дела?",
    "Γειά σου Κόσμε! αβγδε ΑΒΓΔΕ",
    "გამარჯობა მსოფლიო",
    "Բարեւ աշխարհ",
    "ሰላም ልዑል",
    "வணக்கம் உலகம்",
    "ওহে বিশ্ব",
    "ជំរាបសួរ ពិភពលោក",
    "བཀྲ་ཤིས་བདེ་ལེགས།",
    "ᠰᠠᠢᠨ ᠪᠠᠢᠨ᠎ᠠ ᠤᠤ",
    "ᚠᛇᚻ᛫ᛒᛦᚦ",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕳𝖊𝖑𝖑𝖔 𝐀𝐁𝐂 𝟏𝟐𝟑",
    "∑∫√∞≠≤≥±×÷∂∇∈∉⊂⊃∪∩",
    "€£¥₹₿¢ ©®™ °C °F µm Ω",
    "←↑→↓↔ ⇒⇔ ★☆♠♣♥♦ ♪♫",
    "ﬁ ﬂ ﬀ ǅ ǈ ǋ",
    "İstanbul ıi KELVIN \u212a ſ ß ẞ",
]

EMOJI = [
    "😀",
    "😀😃😄😁",
    "a😀b",
    " 😀 ",
    "👍🏽",
    "👍🏻👍🏼👍🏽👍🏾👍🏿",
    "👨‍👩‍👧‍👦",
    "👩🏽‍💻 🧑🏿‍🚀",
    "🏳️‍🌈 🏴‍☠️",
    "🇫🇷🇺🇸🇯🇵",
    "🇫🇷 🇺🇸",
    "❤️ ♥️ ✔️",
    "1️⃣ #️⃣ *️⃣",
    "🏴\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f",
    "I ❤️ NY! 🎉🎉",
    "\U0001fae8 \U0001faf7 \U0001fa75",
    "\U0001fadc \U0001fa89 \U0001fadf",
]

CODE = [
    "def f(x):\n    return x ** 2  # square\n",
    'if __name__ == "__main__":\n\tmain()\n',
    "class Foo(Bar):\n    def __init__(self, *args, **kwargs) -> None:\n        super().__init__()\n",
    "for (int i = 0; i < n; ++i) {\n    sum += a[i] * b[i];\n}\n",
    '#include <stdio.h>\nint main(void) { printf("%d\\n", 42); return 0; }',
    '{"key": "value", "n": [1, 2, 3.5e-3], "nested": {"ok": true, "none": null}}',
    '<!DOCTYPE html>\n<html><body><p class="x">Hi &amp; bye</p></body></html>',
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;",
    "$ ls -la | grep '^d' && echo \"done\" > /dev/null 2>&1",
    "x = [i**2 for i in range(10) if i % 2 == 0]",
    "    indented four\n        indented eight\n\tand a tab",
    "fn main() -> Result<(), Box<dyn Error>> { Ok(()) }",
    "const f = async (a, b) => { await g(a ?? b); };",
    "regex: ^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\\.[a-z]{2,}$",
    "# Title\n\n* item one\n* item two\n\n```python\nprint('hi')\n```\n",
    "a<b>c</b>d",
    "key=value&other=1;flag",
    "C:\\Users\\Name\\file.txt",
    "0.1 + 0.2 != 0.3  # floating point",
]

URLS = [
    "https://example.com/path/to/page?q=1&r=two#frag",
    "http://user:pass@host.example.org:8080/a/b.html",
    "mailto:someone@example.com",
    "ftp://files.example.net/pub/file-1.2.3.tar.gz",
    "www.example.co.uk/index.php?id=12345",
    "https://en.wikipedia.org/wiki/Unicode_(disambiguation)",
    "Visit https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct now!",
]

SPECIAL = [
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n",
    "Hello<|im_end|>world",
    "Hello <|im_end|> world",
    "Hello  <|im_end|>  world",
    "x<|endoftext|>y<|endoftext|>z",
    "<|endoftext|><|endoftext|>",
    "<|im_end|><|im_start|>",
    "<|im_start",
    "im_start|>",
    "<|im_start|",
    "<<|im_end|>>",
    "<|im_<|im_end|>end|>",
    "text <|endoftext|>\n\nmore",
    "\n<|im_start|>\n",
    " <|im_start|> ",
    "<repo_name>repo<file_sep>path<filename>f.py<gh_stars>10",
    "<reponame>x<jupyter_code>y<jupyter_output>z<empty_output>",
    "<issue_start>title<issue_comment>body<issue_closed>",
    "<|im_start|>user\nWhat's 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n<|endoftext|>",
]

EDGE = [
    "",
    "a",
    "\x00",
    "a\x00b",
    "\x01\x02\x1f\x7f",
    "\ufeffBOM",
    "\ufffd",
    "\ue000\uf8ff",
    "\U000f0000\U0010fffd",
    "\uffff\ufffe",
    "\U0010ffff",
    "\u0378\u0379",
    "\u2fe0\u2fef",
    "\U000e0001\U000e0020",
    "\ufe0f\ufe0e",
    "\u200d\u200c",
    "\u200e\u200f\u202a\u202e",
    "\u00ad",
    "\u034f",
    "\U00031350\U0003134a",
    "\U00010d40\U00010d4a",
    "\U0001cc00\U0001cc20",
    "\u1c89\u1c8a",
    "\U00011f00\U00011f50",
]

LONG = [
    "9" * 300,
    " " * 300,
    "\n" * 100,
    "ab" * 400,
    "=" * 257,
    "The quick brown fox. " * 50,
    "日本" * 150,
    "😀" * 100,
    "a" * 600,
]

HAND_PICKED = [
    *SENTENCES,
    *NUMBERS,
    *WHITESPACE,
    *PUNCTUATION,
    *CONTRACTIONS,
    *SCRIPTS,
    *EMOJI,
    *CODE,
    *URLS,
    *SPECIAL,
    *EDGE,
    *LONG,
]

# Code point ranges the random text draws from: scripts, symbols, emoji, private use, unassigned
# and noncharacters in several planes (never surrogates).
RANDOM_RANGES = [
    (0x0020, 0x007E),
    (0x0000, 0x001F),
    (0x0080, 0x00FF),
    (0x0100, 0x024F),
    (0x0300, 0x036F),
    (0x0370, 0x03FF),
    (0x0400, 0x04FF),
    (0x0530, 0x058F),
    (0x0590, 0x05FF),
    (0x0600, 0x06FF),
    (0x0900, 0x097F),
    (0x0980, 0x09FF),
    (0x0B80, 0x0BFF),
    (0x0E00, 0x0E7F),
    (0x10A0, 0x10FF),
    (0x1100, 0x11FF),
    (0x1780, 0x17FF),
    (0x1E00, 0x1EFF),
    (0x2000, 0x206F),
    (0x2070, 0x209F),
    (0x20A0, 0x20CF),
    (0x2100, 0x214F),
    (0x2150, 0x218F),
    (0x2190, 0x21FF),
    (0x2200, 0x22FF),
    (0x2460, 0x24FF),
    (0x2500, 0x257F),
    (0x2600, 0x26FF),
    (0x2E00, 0x2E7F),
    (0x2FE0, 0x2FEF),
    (0x3000, 0x303F),
    (0x3040, 0x30FF),
    (0x3400, 0x4DBF),
    (0x4E00, 0x9FFF),
    (0xA000, 0xA4CF),
    (0xAC00, 0xD7A3),
    (0xE000, 0xF8FF),
    (0xF900, 0xFAFF),
    (0xFB00, 0xFB4F),
    (0xFE00, 0xFE0F),
    (0xFE70, 0xFEFF),
    (0xFF00, 0xFFEF),
    (0xFFF0, 0xFFFF),
    (0x10000, 0x1007F),
    (0x10D40, 0x10D8F),
    (0x11F00, 0x11F5F),
    (0x1CC00, 0x1CEBF),
    (0x1D400, 0x1D7FF),
    (0x1F000, 0x1F0FF),
    (0x1F300, 0x1F6FF),
    (0x1F900, 0x1FAFF),
    (0x20000, 0x2A6DF),
    (0x30000, 0x3134F),
    (0x31350, 0x323AF),
    (0x3FFF0, 0x3FFFF),
    (0xE0000, 0xE007F),
    (0xE0100, 0xE01EF),
    (0xF0000, 0xFFFFD),
    (0x100000, 0x10FFFF),
]


def random_unicode(length: int, seed: int) -> str:
    """``length`` code points from :data:`RANDOM_RANGES`, with ASCII letters, digits and spaces mixed in."""
    rng = random.Random(seed)
    out: list[str] = []
    for _ in range(length):
        pick = rng.random()
        if pick < 0.15:
            out.append(rng.choice(" \t\n  "))
        elif pick < 0.25:
            out.append(rng.choice("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789'.,!?"))
        else:
            low, high = rng.choice(RANDOM_RANGES)
            cp = rng.randint(low, high)
            out.append(chr(cp if not 0xD800 <= cp <= 0xDFFF else 0xFFFD))
    return "".join(out)


def _variations(texts: list[str]) -> list[str]:
    """Each text with a leading space, a leading newline, a trailing space and doubled."""
    out: list[str] = []
    for text in texts:
        if text and len(text) < 200:
            out += [" " + text, "\n" + text, text + " ", text + text]
    return out


def _mixtures(count: int, seed: int) -> list[str]:
    """Random joins of two to four hand-picked texts, separated by varied whitespace or nothing."""
    rng = random.Random(seed)
    pool = [t for t in HAND_PICKED if t and len(t) < 200]
    separators = ["", " ", "  ", "\n", " \n", "\t", "\u3000", "\u00a0"]
    return ["".join(rng.choice(pool) + rng.choice(separators) for _ in range(rng.randint(2, 4)))
            for _ in range(count)]  # fmt: skip


def parity_corpus() -> list[str]:
    """The full corpus: hand-picked texts, their variations, random mixtures and random Unicode."""
    corpus = [*HAND_PICKED, *_variations(HAND_PICKED), *_mixtures(150, seed=1)]
    corpus += [random_unicode(n, seed=100 + n) for n in (1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233)]
    corpus.append(random_unicode(20_000, seed=2024))
    return corpus


def small_corpus() -> list[str]:
    """A quick cross-section for checks repeated over many vocabularies."""
    return [*HAND_PICKED[::4], *SPECIAL, random_unicode(3000, seed=7)]


def random_token_sequences(
    n_vocab: int, count: int, seed: int, extra: list[int] | None = None
) -> list[list[int]]:
    """Random id sequences (for decoding), favouring low ids, where the special tokens live."""
    rng = random.Random(seed)
    favourites = list(range(min(n_vocab, 300))) + (extra or [])
    out = []
    for _ in range(count):
        length = rng.randint(0, 40)
        out.append(
            [rng.choice(favourites) if rng.random() < 0.4 else rng.randrange(n_vocab) for _ in range(length)]
        )
    return out
