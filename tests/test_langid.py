"""langlift.langid: the vectorised identifier scores exactly as py3langid's own byte-by-byte walk."""

from __future__ import annotations

import pytest
from conftest import az_sentences, en_sentences
from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier

from langlift import langid
from langlift.errors import LangliftError


def test_scores_equal_py3langid():
    reference = LanguageIdentifier.from_modelpath(MODEL_DIR / MODEL_FILE, norm_probs=True)
    texts = az_sentences(150) + en_sentences(50) + ["", "a", "ok", "😀 ə", "שלום עולם", "Bu kitob juda qiziq, oʻqib chiqdim."]
    for t in texts:
        expected = reference._decide(t)[reference.nb_classes.index("az")]
        assert langid.score(t, "az") == pytest.approx(float(expected), abs=1e-5), t
        assert langid.detect(t)[0] == reference.classify(t)[0]


def test_detects_the_default_languages():
    assert langid.detect("Ölkənin paytaxtı Bakıdır və orada çoxlu insan yaşayır.")[0] == "az"
    assert langid.detect("Bu kitob juda qiziq, oʻqib chiqdim.")[0] == "uz"
    assert all(langid.supported(code) for code in ("az", "uz", "he", "rw"))


def test_unknown_language_is_a_clear_error():
    with pytest.raises(LangliftError, match="no 'xx'"):
        langid.score("text", "xx")
