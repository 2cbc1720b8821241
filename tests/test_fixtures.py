from transformers import AutoModelForCausalLM, AutoTokenizer


def test_tiny_llama_round_trips_azerbaijani(tiny_llama_dir):
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    text = "Gözəl şəhər: ə ğ ı ö ü ç ş 😀"
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    out = model(**tok(text, return_tensors="pt"))
    assert out.logits.shape[-1] == len(tok)
