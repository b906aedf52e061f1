"""Each mapper on a real example document (edge cases for all operators are in test_registry.py)."""

import pytest

from operators import build_operator

CASES = [
    ("clean_email_mapper", {}, "Write to jane.doe+news@mail.example.com for details.", "Write to  for details."),
    ("clean_email_mapper", {"repl": "<EMAIL>"}, "Mail a_b@x.org!", "Mail <EMAIL>!"),
    (
        "clean_links_mapper", {"repl": "<URL>"},
        "See https://docs.python.org/3/library/re.html and www.example.com today.", "See <URL> and <URL> today.",
    ),
    (
        "clean_ip_mapper", {},
        "Server 192.168.1.10 and fe80:0:0:0:202:b3ff:fe1e:8329 are down.", "Server  and  are down.",
    ),
    (
        "clean_copyright_mapper", {},
        "/* Copyright 2024 ACME Corp. All rights reserved. */\nint main() { return 0; }", "\nint main() { return 0; }",
    ),
    ("clean_copyright_mapper", {}, "# Copyright (c) ACME\n# License: MIT\nimport os\n# stays", "import os\n# stays"),
    ("clean_copyright_mapper", {}, "/* just a comment */\ncode", "/* just a comment */\ncode"),
    ("clean_html_mapper", {}, "<ul><li>One</li><li>Two &amp; three</li></ul><p>End</p>", "\n*One\n*Two & threeEnd"),
    (
        "fix_unicode_mapper", {},
        "The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows. CafÃ©", "The Mona Lisa doesn't have eyebrows. Café",
    ),
    ("fix_unicode_mapper", {"normalization": "nfkc"}, "ﬁle №5 ①", "file No5 1"),
    ("punctuation_normalization_mapper", {}, "你好，世界。“引号”…【括号】", '你好,世界."引号"...[括号]'),
    ("whitespace_normalization_mapper", {}, "  a\u00a0b\u3000c\u200bd\te  ", "a b c d e"),
    (
        "remove_invisible_characters_mapper", {},
        "zero\u200bwidth\u200e soft\u00adhyphen\x07bell\ufeff\nline\ttab 👩\u200d💻",
        "zerowidth softhyphenbell\nline\ttab 👩\u200d💻",
    ),
    (
        "remove_invisible_characters_mapper", {"keep_newlines_and_tabs": False, "keep_zero_width_joiner": False},
        "a\nb\tc\u200dd", "abcd",
    ),
    ("fullwidth_to_halfwidth_mapper", {}, "ＡＢＣ\u3000１２３！（ｔｅｓｔ）", "ABC 123!(test)"),
    ("fullwidth_to_halfwidth_mapper", {"convert_space": False}, "Ａ\u3000Ｂ", "A\u3000B"),
    (
        "remove_emoji_mapper", {},
        "Great job 👍🏽! Flags 🇫🇷 and family 👨\u200d👩\u200d👧 ok", "Great job ! Flags  and family  ok",
    ),
    ("remove_emoji_mapper", {"repl": "?"}, "hi 😊", "hi ?"),
    ("remove_specific_chars_mapper", {}, "◆ Item one ● Item two ■", " Item one  Item two "),
    ("remove_specific_chars_mapper", {"chars_to_remove": ["#", "*"]}, "# Title *bold*", " Title bold"),
    (
        "replace_content_mapper", {"pattern": [r"\d{4}-\d{2}-\d{2}", r"r'\s+'"], "repl": ["<DATE>", " "]},
        "Born  1990-05-17,\n died 2020-01-01.", "Born <DATE>, died <DATE>.",
    ),
    ("replace_content_mapper", {"pattern": "colou?r", "repl": "hue"}, "color and colour", "hue and hue"),
    (
        "remove_words_with_incorrect_substrings_mapper", {},
        "Visit http://spam.com or www.site.org to buy, fine words stay", "Visit or to buy, fine words stay",
    ),
    ("remove_non_chinese_character_mapper", {}, "中文abc123，😊测试!@#", "中文abc123，测试!"),
    (
        "remove_non_chinese_character_mapper", {"keep_alphabet": False, "keep_number": False, "keep_punc": False},
        "中文abc123，😊测试!@#", "中文测试",
    ),
    (
        "remove_bibliography_mapper", {},
        "Intro text.\n\\section{Results}\nWe win.\n\\bibliography{refs}\nmore",
        "Intro text.\n\\section{Results}\nWe win.\n",
    ),
    (
        "remove_header_mapper", {},
        "\\documentclass{article}\n\\title{T}\n\\begin{document}\n\\section{Intro}\nBody text.",
        "\\section{Intro}\nBody text.",
    ),
    ("remove_header_mapper", {}, "no headers at all", ""),
    ("remove_header_mapper", {"drop_no_head": False}, "no headers at all", "no headers at all"),
    (
        "remove_comments_mapper", {},
        "% full comment line\nText here % trailing comment\n\\% escaped percent stays\n",
        "Text here\n\\% escaped percent stays\n",
    ),
    (
        "remove_table_text_mapper", {},
        "Intro line\nName Age City\nBob 25 Paris\nAnn 30 Rome\nThe end.", "Intro line\nThe end.",
    ),
    (
        "remove_repeat_sentences_mapper", {},
        "Buy now. Great deal! Buy now. Really.", "Buy now. Great deal! Really.",
    ),
    ("remove_long_words_mapper", {"max_len": 10},
        "short words and a supercalifragilistic one", "short words and a one",
    ),
    (
        "pii_mask_mapper", {},
        "Mail jane@ex.com, call +1 415-555-0132 or (555) 123-4567, card 4111 1111 1111 1111, not 4111 1111 1111 "
        "1112, SSN 123-45-6789, ID 11010519491231002X, ip 10.0.0.1, mobile 13812345678.",
        "Mail [EMAIL], call [PHONE] or [PHONE], card [CREDIT_CARD], not 4111 1111 1111 1112, SSN [ID_NUMBER], "
        "ID [ID_NUMBER], ip [IP], mobile [PHONE].",
    ),
    (
        "pii_mask_mapper", {"mask_phones": False, "mask_urls": True, "email_replacement": "<E>"},
        "See https://x.org/p?id=1 or write a@b.io, tel 555-123-4567", "See [URL] or write <E>, tel 555-123-4567",
    ),
    ("pii_mask_mapper", {},
        "Version 1.2.3 released in 2024 with 42 fixes.", "Version 1.2.3 released in 2024 with 42 fixes.",
    ),
    (
        "c4_line_filter_mapper", {},
        "Home | About\nThis site uses cookies to improve things.\nThe cat sat on the mat [1].\n"
        "Please enable JavaScript to view this page.\nShort line.\nAnother full sentence is here!",
        "The cat sat on the mat .\nAnother full sentence is here!",
    ),
    (
        "expand_macro_mapper", {},
        "\\newcommand{\\model}{GPT}\nWe train \\model. The \\model model\\modelx.",
        "\\newcommand{GPT}{GPT}\nWe train GPT. The GPT model\\modelx.",
    ),
    ("chinese_convert_mapper", {"mode": "t2s"}, "這是幾個繁體字", "这是几个繁体字"),
    ("python_lambda_mapper", {"lambda_str": "lambda d: {'text': d['text'].title()}"}, "war and peace", "War And Peace"),
    ("python_file_mapper", {}, "identity without a file", "identity without a file"),
    ("sentence_split_mapper", {}, "Dr. Smith went home. He was tired.", "Dr. Smith went home.\nHe was tired."),
]


@pytest.mark.parametrize(("name", "params", "text", "expected"), CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_mapper_on_real_example(name, params, text, expected):
    assert build_operator(name, params).process_text(text) == expected


def test_every_mapper_has_a_real_example():
    from operators.base import SplitMapper
    from operators.registry import registered

    # Tests register throw-away operators of their own; the library's live in the `operators` package.
    # Splitting mappers return several texts: their cases are in test_data_juicer_ops.py.
    mappers = {name for name, cls in registered().items()
               if cls.kind == "mapper" and cls.__module__.startswith("operators.") and not issubclass(cls, SplitMapper)}
    assert mappers <= {case[0] for case in CASES}
