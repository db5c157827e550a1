#!/usr/bin/env python3
"""make_corpus.py - writes tests/tokenizer/corpus.jsonl, the committed corpus
on which the C tokenizer must equal Hugging Face `tokenizers` id for id.

Deterministic (fixed seed): rerunning it rewrites the same file.  One JSON
string per line.  Categories: English prose, code, CJK, Arabic, Hindi and
other scripts, emoji and ZWJ sequences, numbers of many lengths, whitespace
runs, every kind of newline, every added token of the tokenizer inside
text, very long words, random mixes of code points.  NUL is left out (the
C helper reads the strings as C strings); invalid UTF-8 cannot be written
in JSON and is tested by test_tokenizer.c instead.

usage: make_corpus.py TOKENIZER.json OUT.jsonl
"""
import json
import random
import sys

R = random.Random(20260428)

WORDS = ("the of and to in is was that for it as with be on by at this had not are but from or "
         "have an they which one you were her all she there would their we him been has when who "
         "will more no if out so said what up its about into than them can only other new some "
         "could time these two may then do first any my now such like our over man me even most "
         "made after also did many before must through back years where much your way well down "
         "should because each just those people how too little state good very make world still "
         "own see men work long get here between both life being under never day same another "
         "know while last might us great old year off come since against go came right used take "
         "three don't it's I'm we've they'll she'd you're isn't O'Neil rock'n'roll").split()

SCRIPTS = {
    "zh": "我们今天讨论的是深度学习模型的推理效率问题以及如何在多个图形处理器上部署大型语言模型",
    "ja": "これは日本語のテキストですカタカナもひらがなも漢字も含まれていますコンピュータ",
    "ko": "안녕하세요오늘날씨가정말좋네요한국어텍스트입니다",
    "ar": "مرحبا بكم في هذا الاختبار للنصوص العربية مع التشكيل العَرَبِيَّة",
    "hi": "नमस्ते यह हिन्दी पाठ का परीक्षण है क्षत्रिय द्वितीय श्री",
    "ru": "Привет это тест русского текста с заглавными Буквами",
    "el": "Γειά σου κόσμε αυτό είναι ελληνικό κείμενο",
    "th": "สวัสดีครับนี่คือข้อความภาษาไทย",
    "he": "שלום עולם זהו טקסט בעברית",
    "vi": "Tiếng Việt có nhiều dấu thanh điệu",
}

EMOJI = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "❤️", "🇫🇷", "🇯🇵", "🧑🏿‍💻", "👩‍❤️‍💋‍👨", "✋🏻",
         "🤷‍♀️", "😂😂😂", "🐍", "🚀", "1️⃣", "©️", "™", "🫠", "🏴‍☠️", "👁️‍🗨️"]

CODE = [
    "int main(int argc, char **argv) {\n    return 0;\n}\n",
    "def f(x):\n\treturn [i**2 for i in range(x) if i % 3 == 0]\n",
    "for (size_t i = 0; i < n; i++) { a[i] += b[i] * 0.5f; }",
    "const x = await fetch(`https://example.com/api?q=${q}&n=10`);",
    "#include <stdio.h>\n#define MAX(a,b) ((a)>(b)?(a):(b))\n",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC;",
    "<div class=\"x\"><a href='#'>link</a></div>",
    "x = {'a': [1, 2.5, -3e10], \"b\": None, 'c': True}",
    "    if (!ptr) {\r\n        return -ENOMEM;\r\n    }\r\n",
    "fn main() -> Result<(), Box<dyn Error>> { println!(\"{:?}\", v); Ok(()) }",
    "$ grep -rn 'TODO' src/ | wc -l && echo \"done\" >> /tmp/log.txt",
    "λx.λy.x y ≠ ∀x∃y: x ≤ y ∧ y ≥ 0 → ∑ᵢ xᵢ² ∈ ℝ",
]

NEWLINES = ["\n", "\r\n", "\r", "\v", "\f", "\x85", "\u2028", "\u2029", "\n\n", "\r\r\n", "\n\r"]
SPACES = [" ", "  ", "   ", "\t", "\t\t", " \t ", "\u00a0", "\u3000", "\u2003", "\u200b", "\u180e",
          "\u2009", "\u202f", "\ufeff"]


def sentence():
    w = [R.choice(WORDS) for _ in range(R.randint(3, 25))]
    w[0] = w[0].capitalize()
    s = " ".join(w)
    return s + R.choice([".", "!", "?", "...", ";", ",", ":", " —", "\"", ")"])


def prose():
    return " ".join(sentence() for _ in range(R.randint(1, 6)))


def number():
    n = R.randint(1, 40)
    d = "".join(R.choice("0123456789") for _ in range(n))
    form = R.randint(0, 7)
    if form == 0:
        return d
    if form == 1:
        return "-" + d + "." + "".join(R.choice("0123456789") for _ in range(R.randint(1, 9)))
    if form == 2:
        return f"{int(d):,}"
    if form == 3:
        return "v" + ".".join(str(R.randint(0, 999)) for _ in range(R.randint(2, 4)))
    if form == 4:
        return "".join(chr(0x660 + int(c)) for c in d)  # Arabic-Indic digits
    if form == 5:
        return "".join(chr(0xff10 + int(c)) for c in d)  # fullwidth digits
    if form == 6:
        return "0x" + "".join(R.choice("0123456789abcdefABCDEF") for _ in range(n))
    return f"{d}e-{R.randint(1, 300)} ½ ² ⅷ ①"


def script_text():
    k = R.choice(list(SCRIPTS))
    t = SCRIPTS[k]
    a = R.randint(0, len(t) - 1)
    b = R.randint(a + 1, len(t))
    return t[a:b]


def random_codepoints():
    blocks = [(0x20, 0x7e), (0xa0, 0x24f), (0x370, 0x3ff), (0x400, 0x4ff), (0x590, 0x6ff),
              (0x900, 0x97f), (0xe00, 0xe7f), (0x1100, 0x11ff), (0x2000, 0x206f), (0x2190, 0x23ff),
              (0x3000, 0x30ff), (0x4e00, 0x9fff), (0xac00, 0xd7a3), (0xfe00, 0xfe0f),
              (0xff00, 0xffef), (0x1f300, 0x1faff), (0x10000, 0x1007f), (0x20000, 0x2a6df),
              (0xe000, 0xe0ff), (0x1, 0x1f)]
    out = []
    for _ in range(R.randint(1, 40)):
        lo, hi = R.choice(blocks)
        out.append(chr(R.randint(lo, hi)))
    return "".join(out)


def whitespace_mix():
    parts = []
    for _ in range(R.randint(1, 12)):
        r = R.random()
        if r < 0.3:
            parts.append(R.choice(SPACES) * R.randint(1, 20))
        elif r < 0.55:
            parts.append(R.choice(NEWLINES) * R.randint(1, 5))
        elif r < 0.8:
            parts.append(R.choice(WORDS))
        else:
            parts.append(R.choice(".,!?;:'\"()[]{}-_*#@$%^&+=<>/\\|~`"))
    return "".join(parts)


def long_word():
    k = R.randint(0, 5)
    n = R.choice([100, 300, 1000, 3000, 8000])
    if k == 0:
        return "".join(R.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(n))
    if k == 1:
        return "a" * n
    if k == 2:
        return "".join(R.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
                       for _ in range(n))
    if k == 3:
        return "https://example.com/" + "/".join(R.choice(WORDS) for _ in range(n // 8))
    if k == 4:
        return SCRIPTS["zh"] * (n // 40 + 1)
    return "".join(R.choice(["!", "=", "-", "*", "#", "😀", " ", "\n"]) for _ in range(n))


def main():
    tok = json.load(open(sys.argv[1], encoding="utf-8"))
    added = [a["content"] for a in tok["added_tokens"]]
    out = []
    # Fixed edge cases first.
    out += ["", " ", "  ", "\n", "\r\n", "a", "A", "I", "'s", " 's", "don't", "Hello, world!",
            "Hello world", " Hello world", "hello  world", "hello\n\nworld", "1", "12", "123",
            "1234", "12345", "1234567890", "3.14159", "1,000,000", "2026-04-28", "10:45:00",
            "<｜User｜>你好<｜Assistant｜><think>推理</think>答案<｜end▁of▁sentence｜>",
            "<|endoftext|>", "<s></s>", "＜｜User｜＞", "<｜User｜", "｜User｜>", "<<｜User｜>>",
            "<｜User｜><｜User｜>", " <｜User｜> ", "\t<｜Assistant｜>\n", "word<｜User｜>word"]
    for _ in range(500):
        out.append(prose())
    for _ in range(150):
        c = R.choice(CODE)
        out.append(c if R.random() < 0.5 else c.replace("    ", "\t") + R.choice(CODE))
    for _ in range(250):
        out.append(" ".join(script_text() for _ in range(R.randint(1, 4))))
    for _ in range(120):
        out.append(" ".join(R.choice(EMOJI) + R.choice(["", " ", "a", "。", "\n"])
                            for _ in range(R.randint(1, 8))))
    for _ in range(200):
        out.append(" ".join(number() for _ in range(R.randint(1, 5))))
    for _ in range(200):
        out.append(whitespace_mix())
    for _ in range(150):
        out.append(random_codepoints())
    for a in added:  # every added token, inside text
        ctx = R.choice(["", " ", "x", "你好", "\n", "  ", "1"])
        out.append(prose()[:40] + ctx + a + ctx + prose()[:40])
    for _ in range(150):
        out.append(R.choice(added) + R.choice(added) + " " + R.choice(added) + R.choice(["", " "]))
    for _ in range(60):
        out.append(long_word())
    for _ in range(120):
        out.append(prose() + R.choice(NEWLINES) + script_text() + R.choice(SPACES) + number() +
                   R.choice(EMOJI) + R.choice(CODE))
    with open(sys.argv[2], "w", encoding="utf-8", newline="\n") as f:
        for s in out:
            assert "\x00" not in s
            f.write(json.dumps(s, ensure_ascii=True) + "\n")
    print(f"{len(out)} strings", file=sys.stderr)


if __name__ == "__main__":
    main()
