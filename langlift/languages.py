"""Adding a language: ``python -m langlift new-language CODE --flores FLORES --name NAME`` writes the folder
``languages/<code>/`` that ``language: <code>`` in params.yaml switches the whole pipeline to.

The folder starts with English markers and empty data files, each marked for the user to fill in; the
codes are checked first, against FLORES-200 (NLLB's list) and the offline language-ID model.
"""

from __future__ import annotations

import re
from pathlib import Path

from langlift import langid
from langlift.errors import LangliftError
from langlift.io import write_text
from langlift.params import LANGUAGES_DIR, language_file


def flores_codes() -> list[str]:
    """The FLORES-200 codes (``xxx_Scrp``), as NLLB's tokenizer lists them."""
    from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES

    return list(FAIRSEQ_LANGUAGE_CODES)


def check_codes(code: str, flores: str) -> list[str]:
    """Refuse codes that cannot be right; return warnings for what works with a caveat."""
    if not re.fullmatch(r"[a-z]{2,3}", code):
        raise LangliftError(f"language code {code!r}: expected an ISO 639-1 code such as 'he' (or 639-3, 'kin')")
    known = flores_codes()
    if flores not in known:
        near = [f for f in known if f.startswith(flores.split("_")[0])]
        hint = f" (did you mean {', '.join(near)}?)" if near else " (see the FLORES-200 list: eng_Latn, heb_Hebr, ...)"
        raise LangliftError(f"FLORES-200 code {flores!r} is unknown{hint}")
    if langid.supported(code):
        return []
    return [f"the offline language-ID model has no '{code}': the language filters are set to 0 (off) in "
            f"languages/{code}/language.yaml; add a language-ID model that knows it to filter by language"]


def scaffold(code: str, flores: str, name: str, root: Path = Path(".")) -> tuple[Path, list[str]]:
    """Write ``languages/<code>/`` for a new language; return its language.yaml and the warnings."""
    warnings = check_codes(code, flores)
    target = language_file(code, root)
    if target.exists():
        raise LangliftError(f"{target} exists already: edit it, or remove the folder to start again")
    folder = target.parent
    (folder / "data").mkdir(parents=True)
    params = ("{translate: {quality: {min_lang_score: 0}}, dedupe: {quality: {min_lang_score: 0}}, "
              "generate: {filters: {min_lang_score: 0}}}" if warnings else "{}")
    write_text(target, TEMPLATE.format(name=name, code=code, flores=flores, script=flores.split("_")[1], params=params))
    for data in ("translation_memory.jsonl", "prompts.jsonl", "seed_tasks.jsonl"):
        write_text(folder / data, "")
    write_text(folder / "README.md", README.format(name=name, code=code, dir=LANGUAGES_DIR))
    return target, warnings


TEMPLATE = """\
# {name}: everything language-specific for `language: {code}` in params.yaml (docs/params.md#language).
# To do before the first run: the sources and their files in data/, the markers and keyword lists in {name},
# direction and normalize if the language needs them, translation_memory.jsonl (or another translate
# backend), prompts.jsonl and seed_tasks.jsonl.
code: {code}
flores: {flores}
name: {name}
script: {script}
direction: ltr            # rtl for a right-to-left script
normalize: {{}}             # niqqud, geresh, apostrophes, other_script: see docs/params.md
sources: []               # the corpus (kind: corpus) and a held-out parallel test set (kind: parallel) in data/
template:                 # prompt markers for models without a chat template: write them in {name}
  instruction: "### Instruction:\\n"
  input: "### Input:\\n"
  response: "### Response:\\n"
chat:                     # turn markers of the pretrained tokenizer's chat template: in {name} too
  user: "### Instruction:"
  assistant: "### Response:"
blocked_keywords: []      # generate: tasks a text model cannot do, in {name} ("word", "word*")
refusals: []              # generate: phrases of an assistant refusing, in {name}
params: {params}
"""

README = """\
# {name} (`{code}`)

Data and settings for `language: {code}`. For each file in `data/`, record here where it comes from
(repository, path, commit), how many records it has and its license; the fetch stage copies each source's
license from `language.yaml` into the manifest and the model card.

| file | what | records | source | license |
|---|---|---|---|---|
| `translation_memory.jsonl` | `{{"en": ..., "{code}": ...}}` per English segment | 0 | | |
| `prompts.jsonl` | review prompts `{{"id", "prompt"}}` written in the language | 0 | | |
| `seed_tasks.jsonl` | self-instruct seed tasks (Alpaca format) | 0 | | |
"""
