"""The dedupe steps, MinHash, fast language ID and the stage script, on the shipped samples."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from conftest import REPO, SAMPLES, az_sentences, en_sentences, link_languages, write_jsonl
from datasketch import MinHash

from langlift import records
from langlift.dedupe.minhash import LSH, MinHasher, jaccard, lsh_params, shingle_hashes, shingles
from langlift.dedupe.steps import (
    CORPUS, INSTRUCTIONS, Collector, Decontaminate, ExactDedupe, InProcesses, NearDedupe, Normalize, QualityFilter,
    chain,
)
from langlift.errors import DataError
from langlift.params import DedupeQuality, Language


def corpus(text: str, lang: str = "az") -> dict:
    return records.make("corpus", "test", text=text, lang=lang)


def instruction(instr: str, out: str, inp: str = "", lang: str = "az") -> dict:
    return records.make("instructions", "test", instruction=instr, input=inp, output=out, lang=lang)


def run(step, recs: list[dict]) -> tuple[list[dict], Collector]:
    removed = Collector("corpus", step.reasons, sample=100)
    return list(chain(recs, [step], removed)), removed


def paragraph(i: int, n: int = 6) -> str:
    return " ".join(az_sentences(2000)[i * n : (i + 1) * n])


# --- MinHash and LSH -------------------------------------------------------------------------------

def test_signature_equals_datasketch_minhash():
    hasher = MinHasher(num_perm=128)
    for doc in (paragraph(0), paragraph(1), "qısa", "ə"):
        hashes = shingle_hashes(doc, 5)
        reference = MinHash(num_perm=128, seed=1, hashfunc=int)
        reference.update_batch(hashes.tolist())
        np.testing.assert_array_equal(hasher(hashes), reference.hashvalues)


def test_shingle_hashes_tell_shingles_apart():
    doc = " ".join(az_sentences(300))
    distinct = shingles(doc, 5)
    assert len(set(shingle_hashes(doc, 5).tolist())) == len(distinct)  # no 32-bit collision on real text
    assert len(shingle_hashes("abc", 5)) == 1  # shorter than a shingle: the whole text


def test_lsh_params_find_pairs_at_the_threshold():
    bands, rows = lsh_params(0.8, 128)
    assert bands * rows <= 128 and 1 - (1 - 0.8**rows) ** bands >= 0.99
    lsh, hasher = LSH(bands, rows), MinHasher(128)
    lsh.insert(lsh.keys(hasher(shingle_hashes(paragraph(0), 5))), 0)
    assert lsh.query(lsh.keys(hasher(shingle_hashes(paragraph(0) + " Son.", 5)))) == {0}
    assert lsh.query(lsh.keys(hasher(shingle_hashes(paragraph(5), 5)))) == set()


# --- steps ------------------------------------------------------------------------------------------

def test_exact_duplicates_after_normalisation():
    first = corpus(paragraph(0))
    copy = corpus(paragraph(0).replace(" ", "\u00a0", 3) + "\u200b  ")
    other_lang = corpus(paragraph(0), lang="tr")
    removed = Collector("corpus", ["empty", "exact_duplicate"], sample=10)
    kept = list(chain([first, copy, other_lang], [Normalize(CORPUS), ExactDedupe(CORPUS)], removed))
    assert [r["id"] for r in kept] == [first["id"], other_lang["id"]]
    assert removed.counts == {"empty": 0, "exact_duplicate": 1}
    assert removed.samples[0]["duplicate_of"] == first["id"] and removed.samples[0]["reason"] == "exact_duplicate"


def test_near_duplicate_removed_and_distinct_kept():
    base = paragraph(0)
    words = base.split()
    near = " ".join(words[:-1] + ["dəyişdi."])  # one word changed
    far = " ".join(random.Random(0).sample(words, len(words)))  # same words, another order
    recs = [corpus(base), corpus(paragraph(1)), corpus(near), corpus(far), corpus(near, lang="tr")]
    kept, removed = run(NearDedupe(CORPUS, threshold=0.8), recs)
    assert jaccard(shingles(base, 5), shingles(near, 5)) >= 0.8 > jaccard(shingles(base, 5), shingles(far, 5))
    assert [r["id"] for r in kept] == [recs[0]["id"], recs[1]["id"], recs[3]["id"], recs[4]["id"]]
    (sample,) = removed.samples
    assert sample["id"] == recs[2]["id"] and sample["duplicate_of"] == recs[0]["id"] and sample["similarity"] >= 0.8


def test_instructions_dedupe_on_all_fields():
    a = instruction("Siyahı yaz.", "1. Alma\n2. Armud\n3. Heyva\n4. Nar\n5. Üzüm")
    b = instruction("Siyahı yaz.", "1. Alma\n2. Armud\n3. Heyva\n4. Nar\n5. Gilas")  # near
    c = instruction("Siyahı yaz.", "Bu tamamilə başqa bir cavabdır, siyahı deyil.")  # same instruction only
    kept, removed = run(NearDedupe(INSTRUCTIONS, threshold=0.7), [a, b, c])
    assert [r["id"] for r in kept] == [a["id"], c["id"]] and removed.counts["near_duplicate"] == 1


@pytest.mark.parametrize("doc, reason", [
    ("Salam dünya", "too_few_words"),
    (" ".join(["söz"] * 150), "too_many_words"),
    ("Bu gün ## $$ %% ** @@ !! ?? ~~ ^^ && gözəl cümlə yazdım @@ ## $$ %% **", "special_chars"),
    ("Xeyr, xeyr, xeyr. Xeyr, xeyr, xeyr. Xeyr, xeyr, xeyr.", "word_repetition"),
    ("Bakıda yaşayıram. " + "abcdefghijk" * 12 + " son", "char_repetition"),
    ("The committee said the new rules would come into force next year.", "lang_score"),
])
def test_each_quality_filter(doc, reason):
    good = corpus(paragraph(2, 3))
    kept, removed = run(QualityFilter(CORPUS, "az", DedupeQuality(max_words=120)), [good, corpus(doc)])
    assert [r["id"] for r in kept] == [good["id"]]
    assert removed.counts[reason] == 1 and sum(removed.counts.values()) == 1
    assert removed.samples[0]["reason"] == reason and "value" in removed.samples[0]


def test_worker_processes_give_the_same_result():
    docs = [corpus(s) for s in az_sentences(600)] + [corpus("Ok."), corpus("The weather is nice today in London.")]
    docs.insert(100, corpus(az_sentences(600)[3] + "\u200b"))
    results = []
    for workers in (0, 1):
        step = InProcesses([Normalize(CORPUS), QualityFilter(CORPUS, "az")], workers=workers, chunk=64)
        kept, removed = run(step, [dict(d) for d in docs])
        results.append(([r["id"] for r in kept], [r["text"] for r in kept], removed.counts, removed.samples))
    assert results[0] == results[1]
    assert results[0][2]["too_few_words"] >= 1 and results[0][2]["lang_score"] >= 1


def test_quality_filter_rejects_unknown_language():
    with pytest.raises(Exception, match="no 'xx'"):
        QualityFilter(CORPUS, "xx")
    QualityFilter(CORPUS, "xx", DedupeQuality(min_lang_score=0))  # the check can be turned off


def test_decontamination():
    eval_long = " ".join(paragraph(4).split()[:20])  # longer than the 13-gram
    eval_short = "Mən hər gün kitab oxuyuram."  # 5 words: the whole text is the n-gram
    evals = {"eval.jsonl": [eval_long, eval_short, "Bəli."]}
    step = Decontaminate(CORPUS, evals, ngram=13, min_words=4)
    leaked_long = corpus("Giriş. " + " ".join(eval_long.split()[3:16]) + " son.")  # 13 words of it
    leaked_short = corpus("Dedi ki, MƏN hər gün kitab oxuyuram və sonra yatıram.")
    only_12 = corpus("Giriş. " + " ".join(eval_long.split()[3:15]) + " son.")
    common_word = corpus("Bəli, bu gün hava çox gözəldir və biz gəzməyə gedirik.")
    exactly_short = corpus("Bəli!")
    kept, removed = run(step, [leaked_long, leaked_short, only_12, common_word, exactly_short])
    assert [r["id"] for r in kept] == [only_12["id"], common_word["id"]]
    assert removed.counts == {"contaminated": 3}
    assert {s["eval_set"] for s in removed.samples} == {"eval.jsonl"}
    assert removed.samples[1]["ngram"] == "mən hər gün kitab oxuyuram"


def test_the_language_rules_apply_to_its_own_records_only():
    """Uzbek (Tatoeba): Cyrillic becomes Latin, apostrophe variants one form; English is left alone."""
    uz = Language(code="uz", flores="uzn_Latn", name="Uzbek", script="Latn",
                  normalize={"apostrophes": "uz", "other_script": "convert"})
    recs = [corpus("Бу китоб жуда қизиқарли.", "uz"), corpus("Bu kitob juda qiziqarli.", "uz"),
            corpus("O'zbekiston go`zal mamlakat.", "uz"), corpus("Don't touch it.", "en")]
    kept, _ = run(Normalize(CORPUS, "NFC", "uz", "Latn", uz.text_options()), [dict(r) for r in recs])
    assert [r["text"] for r in kept] == ["Bu kitob juda qiziqarli.", "Bu kitob juda qiziqarli.",
                                         "Oʻzbekiston goʻzal mamlakat.", "Don't touch it."]
    kept, removed = run(Normalize(CORPUS, "NFC", "uz", "Latn", drop_other=True), [dict(r) for r in recs])
    assert [r["text"] for r in kept][:2] == ["Bu kitob juda qiziqarli.", "O'zbekiston go`zal mamlakat."]
    assert removed.counts["other_script"] == 1
    hebrew = corpus('בְּרֵאשִׁית בָּרָא אֱלֹהִים; צה"ל', "he")
    kept, _ = run(Normalize(CORPUS, "NFC", "he", "Hebr", {"niqqud": "strip", "geresh": "fold"}), [hebrew])
    assert kept[0]["text"] == "בראשית ברא אלהים; צה״ל"


def test_tweets_that_are_mostly_handles_urls_and_emoji_are_removed_as_social_noise():
    """Real AfriSenti Kinyarwanda tweets (languages/rw/data): handles, hashtags, URLs and emoji are counted."""
    noisy = corpus("@user @user @user @user @user @user @user Hhhhhh ntabyihogoza, ubu x abo yishe bangana ik", "rw")
    clean = corpus("@user Amahano?! Ni impanuka, inkangu, inzara.... Muyite izina rikwiye.", "rw")
    emoji = corpus("Murakoze cyane 🙏🙏 #Rwanda https://t.co/x", "rw")
    kept, removed = run(QualityFilter(CORPUS, "rw", DedupeQuality(max_social_ratio=0.3, min_lang_score=0)), [noisy, clean, emoji])
    assert [r["text"] for r in kept] == [clean["text"]] and removed.counts["social_noise"] == 2


# --- the stage --------------------------------------------------------------------------------------

def _project(tmp_path, monkeypatch, corpus_rows=None, instruction_rows=None):
    """A temp project: params pointing at the repo's dedupe params, with small real inputs."""
    monkeypatch.chdir(tmp_path)
    link_languages(tmp_path)
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    alpaca = json.loads((SAMPLES / "instructions" / "alpaca_5000.en.json").read_text(encoding="utf-8"))
    if instruction_rows is None:
        picks = [r for r in alpaca if "\n1. " in r["output"] or "\n    " in r["output"]][:40] + alpaca[:40]
        instruction_rows = [instruction(r["instruction"], r["output"], r["input"], lang="en") for r in picks]
        instruction_rows.append(dict(instruction_rows[0], id="copy-of-first"))  # an exact duplicate
    translated = [instruction(f"{s} Bunu izah et.", s) for s in az_sentences(60)[:30]]
    if corpus_rows is None:
        corpus_rows = [corpus(s) for s in az_sentences(300)]
        corpus_rows += [corpus(az_sentences(300)[5] + "\u200b"), corpus("Ok."), corpus("This is not Azerbaijani at all, it is English.")]
    write_jsonl(tmp_path / "in" / "instructions.jsonl", instruction_rows)
    write_jsonl(tmp_path / "in" / "translated.jsonl", translated)
    write_jsonl(tmp_path / "in" / "corpus.jsonl", corpus_rows)
    eval_rows = [{"src": en, "tgt": az} for en, az in zip(en_sentences(20), az_sentences(20))]
    write_jsonl(tmp_path / "in" / "parallel.jsonl", eval_rows)
    write_jsonl(tmp_path / "in" / "prompts.jsonl", [{"prompt": "Xəzər dənizi haqqında dörd misralıq qısa bir şeir yaz."}])
    params["dedupe"]["inputs"] = {"instructions": ["in/instructions.jsonl", "in/translated.jsonl"],
                                  "corpus": ["in/corpus.jsonl"]}
    params["dedupe"]["decontaminate"]["eval_sets"] = [{"path": "in/parallel.jsonl", "fields": ["src", "tgt"]},
                                                      {"path": "in/prompts.jsonl", "fields": ["prompt"]}]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    from stages.dedupe import main

    return lambda: CliRunner().invoke(main, ["--params", "params.yaml"])


def test_stage_end_to_end(tmp_path, monkeypatch):
    result = _project(tmp_path, monkeypatch)()
    assert result.exit_code == 0, result.output
    m = json.loads((tmp_path / "metrics" / "data.json").read_text())
    for kind in ("instructions", "corpus"):
        removed = {k: v for k, v in m.items() if k.startswith(f"{kind}.removed.")}
        assert m[f"{kind}.in"] == m[f"{kind}.kept"] + sum(removed.values())
    assert set(k.split(".")[-1] for k in m if k.startswith("corpus.removed.")) == {
        "empty", "too_few_words", "too_many_words", "char_repetition", "word_repetition", "special_chars",
        "lang_score", "exact_duplicate", "near_duplicate", "contaminated", "other_script", "social_noise"}
    assert m["instructions.removed.exact_duplicate"] >= 1 and m["corpus.removed.exact_duplicate"] >= 1
    assert m["corpus.removed.contaminated"] >= 20  # the 20 evaluation sentences are in the corpus
    assert m["corpus.removed.lang_score"] >= 1 and m["corpus.removed.too_few_words"] >= 1
    assert m["instructions.kept_en"] + m["instructions.kept_az"] == m["instructions.kept"]

    removed = [json.loads(line) for line in (tmp_path / "data" / "clean" / "removed.jsonl").open()]
    assert {r["reason"] for r in removed} >= {"exact_duplicate", "contaminated", "lang_score", "too_few_words"}
    assert all(r["duplicate_of"] for r in removed if r["reason"].endswith("duplicate"))
    kept = [json.loads(line) for line in (tmp_path / "data" / "clean" / "instructions.jsonl").open()]
    assert len(kept) == m["instructions.kept"]
    assert any("\n1. " in r["output"] for r in kept) and any("\n    " in r["output"] for r in kept)
    corpus_kept = [json.loads(line) for line in (tmp_path / "data" / "clean" / "corpus.jsonl").open()]
    assert not any("\u200b" in r["text"] for r in corpus_kept)


def test_stage_reports_bad_line(tmp_path, monkeypatch):
    invoke = _project(tmp_path, monkeypatch)
    with open(tmp_path / "in" / "corpus.jsonl", "a", encoding="utf-8") as f:
        f.write('{"id": "x", "text": "yarım\n')
    result = invoke()
    assert result.exit_code == 1
    assert "in/corpus.jsonl:304: malformed JSON" in result.output
    assert not (tmp_path / "data" / "clean" / "corpus.jsonl").exists()  # nothing half-written


def test_bad_field_and_missing_input_are_clear_errors(tmp_path, monkeypatch):
    invoke = _project(tmp_path, monkeypatch, corpus_rows=[corpus("Bir iki üç dörd."), {"id": "y", "text": 7, "lang": "az"}])
    result = invoke()
    assert result.exit_code == 1 and "in/corpus.jsonl:2: field 'text': expected a string" in result.output
    (tmp_path / "in" / "translated.jsonl").unlink()
    result = invoke()
    assert result.exit_code == 1 and "dedupe.inputs.instructions: in/translated.jsonl not found" in result.output
    with pytest.raises(DataError):
        list(__import__("langlift.dedupe.pipeline", fromlist=["x"]).read_records(["in/corpus.jsonl"], CORPUS))
