"""Language is one switch: every seed language runs the data stages from its folder, and a fifth language
added with the scaffold command runs them too."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from langlift import params as P
from langlift.errors import LangliftError
from langlift.languages import scaffold

DATA_STAGES = ("fetch", "translate", "generate", "dedupe", "split")
FIXTURE = Path(__file__).parent / "fixtures" / "tr"


def project(tmp_path: Path, language: str) -> Path:
    """A scratch project: the repository's params (language switched), English sample and languages."""
    root = tmp_path / "project"
    (root / "data" / "samples").mkdir(parents=True)
    shutil.copytree(REPO / "data" / "samples" / "instructions", root / "data" / "samples" / "instructions")
    shutil.copytree(REPO / "languages", root / "languages")
    text = (REPO / "params.yaml").read_text(encoding="utf-8")
    (root / "params.yaml").write_text(text.replace("\nlanguage: az\n", f"\nlanguage: {language}\n"), encoding="utf-8")
    return root


def run_stages(root: Path, stages=DATA_STAGES) -> None:
    for stage in stages:
        done = subprocess.run([sys.executable, str(REPO / "stages" / f"{stage}.py")], cwd=root, capture_output=True,
                              text=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
        assert done.returncode == 0, f"{stage}: {done.stderr[-2000:]}"


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("code", ["az", "he", "uz", "rw"])
def test_every_seed_language_runs_the_data_stages_by_one_switch(tmp_path, code):
    root = project(tmp_path, code)
    run_stages(root)
    manifest = read_json(root / "data" / "raw" / "manifest.json")
    assert manifest["language"] == code
    sources = {s["name"] for s in manifest["sources"]}
    own = {s["name"] for s in yaml.safe_load((REPO / "languages" / code / "language.yaml").read_text())["sources"]}
    assert own <= sources and "alpaca_en" in sources
    data = read_json(root / "metrics" / "data.json")
    assert data[f"corpus.kept_{code}"] == data["corpus.kept"] > 0
    if code != "rw":  # clean sources (UD, news): the filters drop under 15%; rw's corpus is tweets
        assert data["corpus.kept"] >= 0.85 * data["corpus.in"], data
    split = read_json(root / "metrics" / "split.json")["instructions"]
    assert split["target_lang"] == code and split[f"test_{code}"] >= 8 and split[f"val_{code}"] >= 8
    assert 0.05 <= split["train_english_share"] <= 0.15
    translated = [json.loads(x) for x in (root / "data" / "translated" / "instructions.jsonl").open(encoding="utf-8")]
    assert translated and all(r["lang"] == code for r in translated)


def test_switching_language_changes_every_language_specific_setting():
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    az, he = P.validate(raw), P.validate({**raw, "language": "he"})
    assert (he.language.code, he.language.flores, he.language.direction) == ("he", "heb_Hebr", "rtl")
    assert he.pretrain.chat.user == "### הוראה:" and az.pretrain.chat.user == "### Təlimat:"
    assert set(he.finetune.templates) == {"he"} and he.finetune.templates["he"].response == "### תשובה:\n"
    assert he.translate.memory.paths == ["languages/he/translation_memory.jsonl"]
    assert he.evaluate.prompts == "languages/he/prompts.jsonl" and he.generate.seeds == "languages/he/seed_tasks.jsonl"
    assert "he" in he.generate.filters.blocked_keywords and "az" not in he.generate.filters.blocked_keywords
    assert he.language.normalize.niqqud == "strip" and he.translate.limit == 80 and az.translate.limit is None


def test_params_yaml_wins_over_the_language_and_says_so(caplog):
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    raw["translate"]["limit"] = 5
    raw["pretrain"]["chat"] = {"user": "U:", "assistant": "A:"}
    he = P.validate({**raw, "language": "he"})
    assert he.translate.limit == 5 and he.pretrain.chat.user == "U:"
    assert "languages/he/language.yaml sets translate.limit, and params.yaml sets it too: params.yaml wins" in caplog.text


def test_an_unknown_language_names_the_ones_there_are():
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    with pytest.raises(LangliftError, match=r"no languages/xx/language.yaml \(languages here: az, he, rw, uz"):
        P.validate({**raw, "language": "xx"})


def test_a_typo_in_a_language_file_names_the_file_and_the_key(tmp_path, monkeypatch):
    monkeypatch.chdir(project(tmp_path, "he"))
    path = Path("languages/he/language.yaml")
    path.write_text(path.read_text(encoding="utf-8").replace("direction:", "directoin:"), encoding="utf-8")
    with pytest.raises(LangliftError, match=r"languages/he/language.yaml: unknown key directoin \(did you mean "
                                            r"direction\?\)"):
        P.load("params.yaml")


def test_a_fifth_language_from_the_scaffold_runs_the_data_stages(tmp_path):
    root = project(tmp_path, "tr")
    done = subprocess.run([sys.executable, "-m", "langlift", "new-language", "tr", "--flores", "tur_Latn",
                           "--name", "Turkish"], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    folder = root / "languages" / "tr"
    for name in ("corpus.txt", "tatoeba.en.txt", "tatoeba.tr.txt"):
        shutil.copy(FIXTURE / name, folder / "data" / name)
    shutil.copy(FIXTURE / "translation_memory.jsonl", folder / "translation_memory.jsonl")
    settings = (folder / "language.yaml").read_text(encoding="utf-8")
    settings = settings.replace("sources: []", """sources:
  - {name: tr_corpus, kind: corpus, uri: languages/tr/data/corpus.txt, license: CC0}
  - {name: tr_pairs, kind: parallel, uri: languages/tr/data/tatoeba.en.txt, tgt_uri: languages/tr/data/tatoeba.tr.txt,
     src_lang: en, tgt_lang: tr, license: CC0}""")
    settings = settings.replace("params: {}", "params: {translate: {limit: 12}}")
    (folder / "language.yaml").write_text(settings, encoding="utf-8")
    params = (root / "params.yaml").read_text(encoding="utf-8")  # 12 records: smaller held-out sets, by params
    params = params.replace("  min_val: 8 ", "  min_val: 2 ").replace("  min_test: 8\n", "  min_test: 2\n")
    (root / "params.yaml").write_text(params, encoding="utf-8")
    run_stages(root)
    split = read_json(root / "metrics" / "split.json")
    assert split["instructions"]["train_tr"] >= 6 and split["instructions"]["test_tr"] == 2
    assert split["corpus"]["train"] + split["corpus"]["val"] >= 25 and split["parallel_test"] == 10


@pytest.mark.parametrize(("code", "flores", "message"), [
    ("tr", "tur_Latm", r"FLORES-200 code 'tur_Latm' is unknown \(did you mean tur_Latn\?\)"),
    ("Turkish", "tur_Latn", "expected an ISO 639-1 code"),
])
def test_the_scaffold_refuses_unknown_codes(tmp_path, code, flores, message):
    with pytest.raises(LangliftError, match=message):
        scaffold(code, flores, "Turkish", tmp_path)
    assert not (tmp_path / "languages").exists()


def test_the_scaffold_turns_language_id_off_for_a_language_it_does_not_know(tmp_path):
    path, warnings = scaffold("ast", "ast_Latn", "Asturian", tmp_path)
    assert warnings and "no 'ast'" in warnings[0]
    settings = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert settings["params"]["dedupe"]["quality"]["min_lang_score"] == 0
    assert (path.parent / "data").is_dir() and (path.parent / "README.md").exists()


def test_review_samples_of_a_right_to_left_language_are_laid_out_right_to_left():
    from langlift.evaluate.report import samples_markdown

    prompts = [{"id": "he-01", "prompt": "מהי בירת ישראל?"}]
    timing = {"base": {"gen_tokens_per_s": 1.0, "ttft_s": 0.1}}
    md = samples_markdown(prompts, {"base": ["ירושלים."]}, {"base": {"path": "models/base"}}, timing, "Hebrew", 8, 1,
                          direction="rtl")
    assert '<div dir="rtl">\n\n> מהי בירת ישראל?\n\n</div>' in md and '<div dir="rtl">\n\n> ירושלים.\n\n</div>' in md
    ltr = samples_markdown(prompts, {"base": ["x"]}, {"base": {"path": "m"}}, timing, "Azerbaijani", 8, 1)
    assert "dir=" not in ltr
