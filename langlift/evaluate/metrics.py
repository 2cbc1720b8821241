"""Scores computed from model outputs: translation (sacrebleu), instruction answers (EM, token F1,
chrF++) and perplexity from summed log-likelihoods.

Scales: BLEU, chrF++, EM and F1 are percentages (0-100); a perplexity is ``exp`` of a mean negative
log-likelihood (natural log).
"""

from __future__ import annotations

import math
import unicodedata
from collections import Counter
from collections.abc import Sequence

from sacrebleu.metrics import BLEU, CHRF

# Languages whose Latin-script casing maps I <-> ı and İ <-> i (Unicode SpecialCasing, tr/az).
# Python's casefold() would turn "I" into "i" and "İ" into "i" + U+0307 in these languages.
DOTTED_I_LANGS = frozenset({"az", "tr", "crh", "gag", "tt"})
ENGLISH_ARTICLES = frozenset({"a", "an", "the"})


def normalize_answer(text: str, lang: str) -> list[str]:
    """SQuAD-style normalisation, language-agnostic: tokens of ``text`` after NFKC, casefolding
    (Turkic dotted/dotless i for az/tr/...), removing every Unicode punctuation (P*) and symbol (S*)
    character, and dropping English articles only when ``lang`` is ``en``."""
    text = unicodedata.normalize("NFKC", text)
    if lang in DOTTED_I_LANGS:
        text = text.replace("I", "ı").replace("İ", "i")
    text = text.casefold()
    text = "".join(c for c in text if unicodedata.category(c)[0] not in "PS")
    tokens = text.split()
    if lang == "en":
        tokens = [t for t in tokens if t not in ENGLISH_ARTICLES]
    return tokens


def exact_match(prediction: str, reference: str, lang: str) -> float:
    """1.0 when both normalise to the same tokens, else 0.0."""
    return float(normalize_answer(prediction, lang) == normalize_answer(reference, lang))


def token_f1(prediction: str, reference: str, lang: str) -> float:
    """Harmonic mean of token precision and recall over normalised tokens (bag of tokens, as SQuAD).
    If either side is empty after normalisation, 1.0 when both are, else 0.0."""
    pred, ref = normalize_answer(prediction, lang), normalize_answer(reference, lang)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) one space, stripped: one line of a
    sacrebleu file. Answers and references are scored in this form, so the saved files hold exactly what
    was scored; it changes no chrF++, EM or F1, and BLEU only where 13a would join a word hyphenated
    across a line break."""
    return " ".join(text.split())


def chrf_pp() -> CHRF:
    """chrF++: character 6-grams plus word 2-grams, beta 2 (Popović, 2017), sacrebleu defaults otherwise."""
    return CHRF(word_order=2)


def translation_scores(
    hypotheses: Sequence[str], references: Sequence[str], target_lang: str
) -> tuple[dict[str, float], dict[str, str]]:
    """Corpus BLEU and chrF++ with their signatures. sacrebleu defaults: mixed case, BLEU's 13a
    tokenisation unless ``target_lang`` (ISO 639-1) needs its own (zh, ja, ko)."""
    bleu, chrf = BLEU(trg_lang=target_lang), chrf_pp()
    scores = {
        "bleu": bleu.corpus_score(list(hypotheses), [list(references)]).score,
        "chrf": chrf.corpus_score(list(hypotheses), [list(references)]).score,
    }
    return scores, {"bleu": str(bleu.get_signature()), "chrf": str(chrf.get_signature())}


def instruction_scores(predictions: Sequence[str], references: Sequence[str], lang: str) -> dict[str, float]:
    """Mean exact match and token F1 (percent) and corpus chrF++ of answers against references."""
    n = len(predictions)
    return {
        "em": 100 * sum(exact_match(p, r, lang) for p, r in zip(predictions, references, strict=True)) / n,
        "f1": 100 * sum(token_f1(p, r, lang) for p, r in zip(predictions, references, strict=True)) / n,
        "chrf": chrf_pp().corpus_score(list(predictions), [list(references)]).score,
    }


def perplexity(sum_loglikelihood: float, count: int) -> float:
    """``exp(-sum_loglikelihood / count)``: per token, word or byte depending on what ``count`` counts."""
    return math.exp(-sum_loglikelihood / count)

