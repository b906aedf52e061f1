"""Each filter on real example documents: a clean article is kept, spam and boilerplate are dropped."""

import pytest

from operators import build_operator

ARTICLE = (
    "The history of the printing press is one of the most important stories of the modern world. "
    "Before Johannes Gutenberg built his machine in the middle of the fifteenth century, books had to be copied by "
    "hand, which made them rare and expensive. With movable type, a workshop could produce hundreds of copies of the "
    "same text in the time that a scribe needed to finish one. Ideas that had been shared among a few scholars began "
    "to travel across Europe, and the cost of learning to read fell for ordinary people.\n\n"
    "Historians still argue about how quickly these changes happened. Some point to the rapid spread of printed "
    "pamphlets during the Reformation, while others stress that most people continued to rely on sermons and "
    "conversation for news. What is clear is that the press changed the way that knowledge was stored and checked, "
    "because identical copies made it possible to compare and correct texts."
)
SPAM = "BUY NOW!!! $$$ CHEAP CHEAP CHEAP ### best price ### click ### " * 5
BULLETS = "\n".join(f"- item {i} ..." for i in range(30))


def check(name, text, params=None):
    op = build_operator(name, params or {})
    stats = op.compute_stats(text)
    return (*op.keep(stats), stats)


@pytest.mark.parametrize(
    ("name", "params", "text", "stat", "value"),
    [
        ("text_length_filter", {}, ARTICLE, "text_len", 903),
        ("words_num_filter", {}, ARTICLE, "num_words", 155),
        ("average_line_length_filter", {}, ARTICLE, "avg_line_length", 301.0),
        ("maximum_line_length_filter", {}, ARTICLE, "max_line_length", 509),
        ("alphanumeric_filter", {}, "ab12!!", "alnum_ratio", 4 / 6),
        ("special_characters_filter", {}, "ab12!!", "special_char_ratio", 4 / 6),
        ("word_repetition_filter", {}, ARTICLE, "word_rep_ratio", 0.0),
        ("stopwords_filter", {}, ARTICLE, "stopwords_ratio", 0.6),
        ("flagged_words_filter", {}, "what the fuck is this shit man", "flagged_words_ratio", 2 / 7),
        ("token_num_filter", {}, "hello world", "num_token", 2),
        ("gopher_quality_filter", {}, ARTICLE, "gopher_words", 155),
        ("c4_quality_filter", {}, ARTICLE, "c4_sentences", 7),
    ],
)
def test_filter_stats_on_real_text(name, params, text, stat, value):
    assert check(name, text, params)[2][stat] == pytest.approx(value)


@pytest.mark.parametrize(
    "name",
    [
        "text_length_filter", "words_num_filter", "average_line_length_filter", "maximum_line_length_filter",
        "alphanumeric_filter", "special_characters_filter", "character_repetition_filter", "word_repetition_filter",
        "stopwords_filter", "flagged_words_filter", "language_id_score_filter", "gopher_quality_filter",
        "gopher_repetition_filter", "c4_quality_filter", "token_num_filter",
    ],
)
def test_clean_article_is_kept_with_defaults(name):
    kept, reason, _ = check(name, ARTICLE)
    assert kept, reason


@pytest.mark.parametrize(
    ("name", "text", "reason"),
    [
        ("special_characters_filter", SPAM, "special_char_ratio 0.4355 > 0.25"),
        ("word_repetition_filter", SPAM, "word_rep_ratio 1 > 0.5"),
        ("stopwords_filter", BULLETS, "stopwords_ratio 0 < 0.3"),
        ("gopher_quality_filter", SPAM, "gopher_short_doc (gopher_words 40)"),
        ("gopher_quality_filter", BULLETS, "gopher_below_avg_threshold (gopher_avg_word_length 2.833)"),
        ("gopher_repetition_filter", SPAM, "top_2_gram_char_frac 0.355 > 0.2"),
        ("c4_quality_filter", SPAM, "too_few_sentences (c4_sentences 0 < 5)"),
        ("flagged_words_filter", "what the fuck is this shit man", "flagged_words_ratio 0.2857 > 0.045"),
        ("text_length_filter", "tiny", "text_len 4 < 10"),
        ("words_num_filter", "three small words", "num_words 3 < 10"),
        ("token_num_filter", "hello world", "num_token 2 < 10"),
    ],
)
def test_bad_documents_are_dropped_with_a_reason(name, text, reason):
    kept, why, _ = check(name, text)
    assert not kept and why == reason


def test_character_repetition_catches_repeated_boilerplate():
    kept, reason, stats = check("character_repetition_filter", "Loading" + "." * 300 + " please wait")
    assert not kept and stats["char_rep_ratio"] > 0.5 and reason.startswith("char_rep_ratio")


def test_c4_document_rules():
    lorem = "\nLorem ipsum dolor sit amet, consectetur adipiscing."
    assert check("c4_quality_filter", ARTICLE + lorem)[1] == "lorem_ipsum"
    assert check("c4_quality_filter", ARTICLE + "\nThe function body is { return x; } as shown.")[1] == "curly_bracket"
    assert check("c4_quality_filter", "One line only.", {"min_num_sentences": -1})[0]


def test_gopher_repetition_catches_duplicate_lines():
    kept, reason, stats = check("gopher_repetition_filter", "Same line here.\n" * 5 + "A different line.")
    assert not kept and reason.startswith("dup_line_frac") and stats["dup_line_frac"] == pytest.approx(4 / 6)


LANGUAGE_SAMPLES = {
    "fr": "Le chat est assis sur le tapis et regarde les oiseaux qui chantent dans le jardin.",
    "de": "Die Katze sitzt auf der Matte und beobachtet die Vögel, die im Garten singen.",
    "zh": "今天天气很好，我们一起去公园散步吧。",
}


def test_language_id_identifies_language_with_confidence():
    op = build_operator("language_id_score_filter", {"lang": "fr", "min_score": 0.8})
    stats = op.compute_stats_batch(list(LANGUAGE_SAMPLES.values()))
    assert [s["lang"] for s in stats] == ["fr", "de", "zh"]
    assert all(0.8 <= s["lang_score"] <= 1.0 for s in stats)
    assert op.keep(stats[0]) == (True, "")
    assert op.keep(stats[1]) == (False, "lang de not in ['fr']")
    assert op.compute_stats("12345 !!!") == {"lang": "unknown", "lang_score": 0.0}


def test_language_id_min_score_without_language():
    op = build_operator("language_id_score_filter", {"min_score": 0.99})
    kept, reason = op.keep({"lang": "en", "lang_score": 0.5})
    assert not kept and reason == "lang_score 0.5 < 0.99 (lang en)"


def test_word_list_filters_reject_unsupported_configuration():
    from operators import OperatorConfigError

    with pytest.raises(OperatorConfigError, match="parameter 'lang'.*no stop-word list"):
        build_operator("stopwords_filter", {"lang": "xx"})
    with pytest.raises(OperatorConfigError, match="parameter 'tokenization'.*Hugging Face"):
        build_operator("alphanumeric_filter", {"tokenization": True})
    with pytest.raises(OperatorConfigError, match="parameter 'encoding'.*offline"):
        build_operator("token_num_filter", {"encoding": "cl100k_base"})


def test_stopwords_in_other_languages_and_word_augmentation():
    assert check("stopwords_filter", LANGUAGE_SAMPLES["fr"], {"lang": "fr"})[0]
    aug = {"lang": "zh", "use_words_aug": True, "words_aug_group_sizes": [2]}
    stats = check("stopwords_filter", "我 的 书", aug)[2]
    assert stats["stopwords_ratio"] > 0
