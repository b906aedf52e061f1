"""Same inputs, same results as Data-Juicer: cases and expected outputs from Data-Juicer's own operator tests
(py-data-juicer 1.6 behaviour), run through our registry with the Data-Juicer parameters."""

import pytest

from operators import build_operator


@pytest.mark.parametrize(
    ("params", "text", "expected"),
    [
        (
            {},
            "我很开心 。但是你不开心  。我很开心 。\n你好呀！我很开心 。我好的。你好呀！",
            "我很开心 。但是你不开心  。\n你好呀！我好的。",
        ),
        (
            {},
            "默认配置下，长度低于2的句子不会被去重。去重？去重。去重！重。重...... 重! 1234？3215. 1234. 3. 3. 3",
            "默认配置下，长度低于2的句子不会被去重。去重？重。重...... 重! 1234？3215. 3. 3. 3",
        ),
        (
            {},
            "The quick brown fox jumps over the lazy dog. Isn't it amazing how a simple sentence can contain every "
            "letter of the alphabet? The quick brown fox jumps over the lazy dog. Speaking of weather, yesterday was "
            "quite dreary; however, today is absolutely delightful. Isn't it amazing how a simple sentence can "
            'contain every letter of the alphabet? "Let\'s seize the day," Tom exclaimed, full of enthusiasm. '
            '"Let\'s seize the day," Tom exclaimed, full of enthusiasm.',
            "The quick brown fox jumps over the lazy dog. Isn't it amazing how a simple sentence can contain every "
            "letter of the alphabet? Speaking of weather, yesterday was quite dreary; however, today is absolutely "
            'delightful. "Let\'s seize the day," Tom exclaimed, full of enthusiasm.',
        ),
        (
            {"lowercase": True, "ignore_special_character": False, "min_repeat_sentence_length": 5},
            "我很开心 。但是你不开心  。我很开心 。\n你好呀！我很开心 。我好的。你好呀！",
            "我很开心 。但是你不开心  。\n你好呀！我好的。你好呀！",
        ),
        (
            {"lowercase": True, "ignore_special_character": False, "min_repeat_sentence_length": 5},
            "去重？去重。去重！重。重...... 重! 1234？3215. 1234. 3. 3. 3",
            "去重？去重。去重！重。重...... 重! 1234？3215. 1234. 3. 3. 3",
        ),
    ],
)
def test_remove_repeat_sentences_mapper(params, text, expected):
    assert build_operator("remove_repeat_sentences_mapper", params).process_text(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("This paper proposed novel method LLM pretraining.", "This paper proposed novel method LLM pretraining."),
        ("This paper a novel eqeqweqwewqeqwe121e1 method on LLM pretrain.", "This paper novel method LLM pretrain."),
        (
            "Sur la plateforme MT4, manières à ces fonctionnalités sont conçu",
            "Sur plateforme MT4, manières ces fonctionnalités sont conçu",
        ),
        (
            "This paper proposed a novel eqeqweqwewqenhq😊😠 method on LLM.",
            "This paper proposed novel eqeqweqwewqenhq😊😠 method LLM.",
        ),
        ("The Mona Lisa doesnÃƒÂ¢Ã¢â€šÂ¬Ã¢â€žÂ¢t have eyebrows.", "The Mona Lisa have eyebrows."),
    ],
)
def test_remove_long_words_mapper(text, expected):
    assert build_operator("remove_long_words_mapper", {"min_len": 3, "max_len": 15}).process_text(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '<header><nav><ul><tile>测试</title><li><a href="#">Home</a></li><li><a href="#">About</a></li>'
            '<li><a href="#">Services</a></li><li><a href="#">Contact</a></li></ul></nav></header>'
            "<main><h1>Welcome to My Website</h1><p>Lorem ipsum dolor sit amet, consectetur adipiscing elit."
            "<button>Learn More</button></main><footer><p>&copy; 2021 My Website. All Rights Reserved.</p></footer>",
            "测试\n*Home\n*About\n*Services\n*ContactWelcome to My WebsiteLorem ipsum dolor sit amet, consectetur "
            "adipiscing elit.Learn More© 2021 My Website. All Rights Reserved.",
        ),
        ("<测试>这是个测试</测试>", "<测试>这是个测试"),
        ('<abc="https://www.example.com/file.html?name=Test">测试', "测试"),
        ("    This is a test  ", "This is a test  "),
        ("<ol>苹果</ol>", "*苹果"),
        ("12345678", "12345678"),
    ],
)
def test_clean_html_mapper(text, expected):
    assert build_operator("clean_html_mapper").process_text(text) == expected


def _kept(name, params, texts):
    op = build_operator(name, params)
    return [text for text in texts if op.keep(op.compute_stats(text))[0]]


def test_character_repetition_filter():
    texts = [
        "Today is Sund Sund Sund Sund Sund Sunda and it's a happy day!",
        "a v s e c s f e f g a a a a a a a a a a",
        "，。、„”“«»１」「《》´∶：？！（）；–—．～’…━〈〉【】％►",
        "中文也是一个字算一个长度",
    ]
    assert _kept("character_repetition_filter", {"rep_len": 5, "min_ratio": 0.0, "max_ratio": 0.4}, texts) == texts[2:]


def test_word_repetition_filter():
    texts = [
        "Today is Sunday Sunday Sunday Sunday Sunday and it's a happy day!",
        "Today is Sunday Sunday Sunday and it's a happy day!",
        "Today is Sund Sund Sund Sund Sund Sunda and it's a happy day!",
        "plusieurs èrdash@hqbchd.ckd d'accéder à ces wwwasdasd fonc",
        "This proposed a novel proposed pretraining proposed pretraining.",
    ]
    kept = _kept("word_repetition_filter", {"rep_len": 3, "min_ratio": 0.0, "max_ratio": 0.2}, texts)
    assert kept == [texts[1], texts[3], texts[4]]


def test_special_characters_filter_ignores_data_juicer_runtime_options():
    texts = [
        "Today is Sunday and it's a happy day!",
        "Today is Sund Sund Sund Sund Sunda and it's a happy day!",
        "a v s e c s f e f g a qkc",
        "，。、„”“«»１」「《》´∶：？！（）；–—．～’…━〈〉【】％►",
        "Do you need a cup of coffee?",
        "emoji表情测试下😊，😸31231",
    ]
    params = {"min_ratio": 0.0, "max_ratio": 0.25, "batch_size": 2, "num_proc": 4}
    assert _kept("special_characters_filter", params, texts) == [texts[0], texts[1], texts[4]]


def test_text_length_filter_bounds_are_closed_like_data_juicer():
    op = build_operator("text_length_filter", {"min_len": 10, "max_len": 20})
    assert [op.keep(op.compute_stats("x" * n))[0] for n in (9, 10, 20, 21)] == [False, True, True, False]
