"""Known answers for the evaluate stage's scores: EM/F1 worked out by hand, BLEU/chrF++ against
sacrebleu's own command line on the same files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import az_sentences, en_sentences
from langlift.evaluate.metrics import (
    exact_match,
    instruction_scores,
    normalize_answer,
    token_f1,
    translation_scores,
)


@pytest.mark.parametrize(
    ("text", "lang", "tokens"),
    [
        # punctuation of every Unicode kind goes (guillemets, em dash, apostrophe inside a word)
        ("«Bakı» — Azərbaycanın paytaxtıdır!", "az", ["bakı", "azərbaycanın", "paytaxtıdır"]),
        ("don't", "en", ["dont"]),
        # Azerbaijani casing: İ -> i and I -> ı (plain casefold would give i + U+0307 and i)
        ("İŞIQ", "az", ["işıq"]),
        ("İŞIQ", "en", ["i\u0307şiq"]),
        # symbols go too; English articles only for English
        ("the 5$ cat", "en", ["5", "cat"]),
        ("the 5$ cat", "az", ["the", "5", "cat"]),
        ("  \t ", "az", []),
    ],
)
def test_normalize_answer(text, lang, tokens):
    assert normalize_answer(text, lang) == tokens


@pytest.mark.parametrize(
    ("pred", "ref", "lang", "em", "f1"),
    [
        ("Bakı Azərbaycanın paytaxtıdır.", "bakı azərbaycanın paytaxtıdır", "az", 1.0, 1.0),
        ("İŞIQ", "işıq", "az", 1.0, 1.0),
        ("İŞIQ", "işıq", "en", 0.0, 0.0),
        # 1 common token of 2 predicted and 2 reference: P = R = 1/2, F1 = 1/2
        ("qırmızı alma", "alma qırmızıdır", "az", 0.0, 0.5),
        # articles: dropped for English ([cat] == [cat]), kept otherwise ([the, cat] vs [a, cat]: 1/2, 1/2)
        ("the cat", "a cat", "en", 1.0, 1.0),
        ("the cat", "a cat", "az", 0.0, 0.5),
        # bag of tokens: 3 x "da" against 1 overlap once: P = 1/3, R = 1, F1 = 2PR/(P+R) = 1/2
        ("da da da", "da", "az", 0.0, 0.5),
        # P = 2/2, R = 2/3: F1 = 2 * 1 * 2/3 / (5/3) = 4/5
        ("çay içdim", "mən çay içdim", "az", 0.0, 0.8),
        # empty after normalisation: equal only to empty
        ("!!!", "...", "az", 1.0, 1.0),
        ("", "salam", "az", 0.0, 0.0),
        ("salam", "dünya", "az", 0.0, 0.0),
    ],
)
def test_exact_match_and_f1_by_hand(pred, ref, lang, em, f1):
    assert exact_match(pred, ref, lang) == em
    assert token_f1(pred, ref, lang) == pytest.approx(f1)


def test_instruction_scores_are_percent_means():
    preds = ["Bakı", "qırmızı alma", "çay içdim"]
    refs = ["bakı.", "alma qırmızıdır", "mən çay içdim"]
    scores = instruction_scores(preds, refs, "az")
    assert scores["em"] == pytest.approx(100 / 3)
    assert scores["f1"] == pytest.approx(100 * (1 + 0.5 + 0.8) / 3)
    assert 0 < scores["chrf"] < 100


def _sacrebleu_cli(hyp_file, ref_file, pair) -> list[dict]:
    out = subprocess.run(
        [sys.executable, "-m", "sacrebleu", str(ref_file), "-i", str(hyp_file), "-l", pair, "-m", "bleu", "chrf",
         "--chrf-word-order", "2", "-w", "6"],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)


@pytest.mark.parametrize("direction", ["en_az", "az_en", "en_zh"])
def test_translation_scores_equal_sacrebleu_cli(tmp_path, direction):
    refs = {"az": az_sentences(40)[-12:], "en": en_sentences(40)[-12:],
            # Chinese has no spaces: sacrebleu picks its "zh" tokeniser for the target language
            "zh": ["我们明天去北京。", "他喜欢喝绿茶。", "今天天气很好。", "这本书很有意思。"] * 3}[direction.split("_")[1]]
    # hypotheses of mixed quality: exact copies, word-dropped, case-changed and unrelated lines
    hyps = []
    for i, r in enumerate(refs):
        words = r.split()
        hyps.append([r, " ".join(words[: len(words) // 2]), r.lower(), refs[(i + 5) % len(refs)]][i % 4])
    hyp_file, ref_file = tmp_path / "hyp.txt", tmp_path / "ref.txt"
    hyp_file.write_text("\n".join(hyps) + "\n", encoding="utf-8")
    ref_file.write_text("\n".join(refs) + "\n", encoding="utf-8")

    scores, signatures = translation_scores(hyps, refs, direction.split("_")[1])
    bleu, chrf = _sacrebleu_cli(hyp_file, ref_file, direction.replace("_", "-"))

    assert bleu["name"] == "BLEU" and chrf["name"] == "chrF2++"
    assert round(scores["bleu"], 6) == pytest.approx(bleu["score"], abs=1e-6)
    assert round(scores["chrf"], 6) == pytest.approx(chrf["score"], abs=1e-6)
    assert signatures == {"bleu": bleu["signature"], "chrf": chrf["signature"]}
    assert 0 < scores["bleu"] < 100 and 0 < scores["chrf"] < 100
    assert ("tok:zh" in signatures["bleu"]) == direction.endswith("zh")
