"""Tiny models built from test text, for the operators that need model files (no download).

A SentencePiece model and a KenLM bigram ARPA model (absolute discounting with back-off), written under
Data-Juicer's file names (`{lang}.sp.model`, `{lang}.arpa.bin`; KenLM reads ARPA text under any name).
"""

from __future__ import annotations

import io
import math
from collections import Counter
from pathlib import Path

import sentencepiece

CORPUS = """Today is Sunday and it's a happy day!
Today is Monday and it is a busy day at work.
It is a sunny day and we are happy to be outside.
Do you need a cup of coffee?
Do you want a cup of tea or a glass of water?
We need a cup of coffee every morning before work.
The weather is nice today and the park is full of people.
People like to walk in the park on a happy Sunday.
I need to finish my work before the end of the day.
Would you like to have coffee with me on Sunday?
The children are playing in the park and they are happy.
A cup of coffee and a good book make a happy morning.
"""


def write_sentencepiece(path: Path, text: str = CORPUS, vocab_size: int = 200) -> None:
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(text.splitlines()), model_writer=model, vocab_size=vocab_size,
        hard_vocab_limit=False, model_type="unigram", minloglevel=2,
    )
    path.write_bytes(model.getvalue())


def write_bigram_arpa(path: Path, sentences: list[list[str]], discount: float = 0.5) -> None:
    unigrams = Counter(token for sentence in sentences for token in [*sentence, "</s>"])
    bigrams = Counter(pair for s in sentences for pair in zip(["<s>", *s], [*s, "</s>"], strict=True))
    vocabulary = ["<unk>", "<s>", *sorted(unigrams)]
    total = sum(unigrams.values()) + len(vocabulary)
    p_unigram = {w: (unigrams.get(w, 0) + 1) / total for w in vocabulary if w != "<s>"}
    history_counts = Counter()
    followers: dict[str, list[str]] = {}
    for (a, b), count in bigrams.items():
        history_counts[a] += count
        followers.setdefault(a, []).append(b)
    lines = ["\\data\\", f"ngram 1={len(vocabulary)}", f"ngram 2={len(bigrams)}", "", "\\1-grams:"]
    for word in vocabulary:
        log_p = -99.0 if word == "<s>" else math.log10(p_unigram[word])
        if word in followers:
            left = discount * len(followers[word]) / history_counts[word]
            backoff = math.log10(left / (1 - sum(p_unigram[b] for b in followers[word])))
            lines.append(f"{log_p:.6f}\t{word}\t{backoff:.6f}")
        else:
            lines.append(f"{log_p:.6f}\t{word}")
    lines += ["", "\\2-grams:"]
    for (a, b), count in sorted(bigrams.items()):
        lines.append(f"{math.log10((count - discount) / history_counts[a]):.6f}\t{a} {b}")
    lines += ["", "\\end\\", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def build_models(directory: Path, lang: str = "en", text: str = CORPUS) -> Path:
    """`{lang}.sp.model` and `{lang}.arpa.bin` (bigrams over the SentencePiece pieces of `text`) in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    write_sentencepiece(directory / f"{lang}.sp.model", text)
    pieces = sentencepiece.SentencePieceProcessor(model_file=str(directory / f"{lang}.sp.model"))
    write_bigram_arpa(directory / f"{lang}.arpa.bin", [pieces.encode_as_pieces(line) for line in text.splitlines()])
    return directory
