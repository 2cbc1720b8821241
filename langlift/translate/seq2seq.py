"""The ``seq2seq`` backend: a transformers MT model (NLLB-200, M2M-100, MADLAD-400, Marian/opus-mt).

Texts are sorted by token length and generated in batches (greedy or beam search); the target
language is set the way each model family expects (see :data:`FAMILIES`). When ``ctranslate2`` is
configured (a converted model directory) and installed, CTranslate2 runs the generation instead.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

from langlift import modelref
from langlift.errors import LangliftError
from langlift.translate.base import Backend

log = logging.getLogger(__name__)

# FLORES individual-language codes whose OPUS-MT target tokens use the macrolanguage (>>aze_Latn<<).
_MACRO = {"azj": "aze", "pes": "fas", "prs": "fas", "khk": "mon", "arb": "ara", "lvs": "lav",
          "ekk": "est", "npi": "nep", "ory": "ori", "plt": "mlg", "uzn": "uzb", "ydd": "yid", "gaz": "orm",
          "swh": "swa", "als": "sqi", "quy": "que", "pbt": "pus", "kmr": "kur", "ckb": "kur"}

# How each model family names languages, from the params `language` block. `where` says how the
# target is selected: a forced first decoder token ("bos") or a token prepended to the source ("prefix").
FAMILIES: dict[str, dict[str, Any]] = {
    "nllb": {"src": lambda L: "eng_Latn", "tgt": lambda L: [L["flores"]], "where": "bos"},
    "m2m": {"src": lambda L: "en", "tgt": lambda L: [f"__{L['code']}__"], "where": "bos"},
    "madlad": {"src": lambda L: None, "tgt": lambda L: [f"<2{L['code']}>"], "where": "prefix"},
    "marian": {
        "src": lambda L: None,
        "tgt": lambda L: [f">>{c}<<" for c in (
            L["flores"], f"{_MACRO.get(L['flores'][:3], L['flores'][:3])}_{L['flores'][4:]}",
            L["flores"][:3], _MACRO.get(L["flores"][:3], L["flores"][:3]), L["code"])],
        "where": "prefix",
    },
    "plain": {"src": lambda L: None, "tgt": lambda L: [], "where": "none"},  # bilingual, e.g. opus-mt-en-az
}


def detect_family(model_type: str, vocab: dict[str, int], language: dict[str, str]) -> str:
    """The family of a loaded model, from its config type and the language tokens in its vocabulary."""
    if model_type == "marian":
        return "marian" if any(t.startswith(">>") and t.endswith("<<") for t in vocab) else "plain"
    if model_type == "m2m_100":
        return "nllb" if "eng_Latn" in vocab else "m2m"
    if model_type in ("t5", "mt5", "umt5") and f"<2{language['code']}>" in vocab:
        return "madlad"
    return "plain"


def target_code(family: str, vocab: dict[str, int], language: dict[str, str], override: str | None) -> str | None:
    """The target-language token of ``family`` present in ``vocab`` (or ``override``), else an error."""
    spec = FAMILIES[family]
    candidates = [override] if override else spec["tgt"](language)
    if spec["where"] == "none":
        return None
    for code in candidates:
        if code in vocab:
            return code
    near = sorted(t for t in vocab if language["code"] in t and len(t) < 16)[:10]
    raise LangliftError(
        f"translate.seq2seq: the {family} model has no target token for {language['name']} (tried {candidates}); "
        f"set translate.seq2seq.tgt_code to one of its language tokens{f', e.g. {near}' if near else ''}")


class Seq2SeqBackend(Backend):
    name = "seq2seq"

    def __init__(self, model: str, language: dict[str, str], *, family: str = "auto", tgt_code: str | None = None,
                 batch_size: int = 16, num_beams: int = 1, max_new_tokens: int = 256, max_input_tokens: int = 512,
                 device: str = "auto", dtype: str = "auto", ctranslate2: str | None = None):
        import torch
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        if ctranslate2 and importlib.util.find_spec("ctranslate2") is None:
            log.warning("seq2seq: ctranslate2 is configured but not installed (pip install ctranslate2); "
                        "using transformers generation")
            ctranslate2 = None
        if family not in ("auto", *FAMILIES):
            raise LangliftError(f"translate.seq2seq.family: {family!r} is not one of auto, {', '.join(FAMILIES)}")
        try:
            self.tok = AutoTokenizer.from_pretrained(model)
            config_model = None if ctranslate2 else AutoModelForSeq2SeqLM.from_pretrained(model)
        except OSError as e:
            raise LangliftError(f"translate.seq2seq.model: cannot load {model!r}: {e}") from None
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        vocab = self.tok.get_vocab()
        model_type = config_model.config.model_type if config_model is not None else _config_type(model)
        family = detect_family(model_type, vocab, language) if family == "auto" else family
        code = target_code(family, vocab, language, tgt_code)
        if dtype == "auto":
            dtype = "bf16" if self.device == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
        super().__init__(model, {"family": family, "tgt_code": code, "num_beams": num_beams,
                                 "max_new_tokens": max_new_tokens, "max_input_tokens": max_input_tokens,
                                 "engine": "ctranslate2" if ctranslate2 else "hf",
                                 "precision": f"auto-{self.device}" if ctranslate2 else dtype})
        self.refs = {k: modelref.resolve(v) for k, v in (("model", model), ("ctranslate2", ctranslate2)) if v}
        self.batch_size = batch_size
        self.chunk_size = batch_size * 4
        src = FAMILIES[family]["src"](language)
        if src and hasattr(self.tok, "src_lang"):
            self.tok.src_lang = src
        self.ct2 = None
        if ctranslate2:
            import ctranslate2 as ct2
            self.ct2 = ct2.Translator(ctranslate2, device=self.device, compute_type="auto")
            log.info("seq2seq: CTranslate2 model %s on %s", ctranslate2, self.device)
        else:
            torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
            self.model_ = config_model.to(self.device, torch_dtype).eval()
            log.info("seq2seq: %s (%s family, target %s) on %s in %s", model, family, code, self.device, dtype)

    def _inputs(self, texts: list[str]) -> list[str]:
        code, where = self.settings["tgt_code"], FAMILIES[self.settings["family"]]["where"]
        return [f"{code} {t}" for t in texts] if where == "prefix" else texts

    def translate(self, texts: list[str]) -> list[str | None]:
        inputs = self._inputs(texts)
        limit = self.settings["max_input_tokens"]
        lengths = [len(ids) for ids in self.tok(inputs, truncation=True, max_length=limit)["input_ids"]]
        order = sorted(range(len(texts)), key=lambda i: lengths[i])
        out: list[str | None] = [None] * len(texts)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            batch = [inputs[i] for i in idx]
            for i, text in zip(idx, self._generate_ct2(batch) if self.ct2 else self._generate_hf(batch)):
                out[i] = text.strip()
        return out

    def _generate_hf(self, batch: list[str]) -> list[str]:
        import torch

        enc = self.tok(batch, return_tensors="pt", padding=True, truncation=True,
                       max_length=self.settings["max_input_tokens"]).to(self.device)
        kwargs: dict[str, Any] = {"num_beams": self.settings["num_beams"], "do_sample": False,
                                  "max_new_tokens": self.settings["max_new_tokens"]}
        if FAMILIES[self.settings["family"]]["where"] == "bos":
            kwargs["forced_bos_token_id"] = self.tok.convert_tokens_to_ids(self.settings["tgt_code"])
        with torch.inference_mode():
            ids = self.model_.generate(**enc, **kwargs)
        return self.tok.batch_decode(ids, skip_special_tokens=True)

    def _generate_ct2(self, batch: list[str]) -> list[str]:
        limit = self.settings["max_input_tokens"]
        tokens = [self.tok.convert_ids_to_tokens(self.tok(t, truncation=True, max_length=limit)["input_ids"])
                  for t in batch]
        bos = FAMILIES[self.settings["family"]]["where"] == "bos"
        results = self.ct2.translate_batch(
            tokens, target_prefix=[[self.settings["tgt_code"]]] * len(batch) if bos else None,
            beam_size=self.settings["num_beams"], max_decoding_length=self.settings["max_new_tokens"],
            max_batch_size=self.batch_size)
        hyps = [r.hypotheses[0][1:] if bos else r.hypotheses[0] for r in results]
        return [self.tok.decode(self.tok.convert_tokens_to_ids(h), skip_special_tokens=True) for h in hyps]


def _config_type(model: str) -> str:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model).model_type
