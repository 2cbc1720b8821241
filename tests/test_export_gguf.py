"""GGUF export: the merged model written with the gguf package, loaded back by transformers (``gguf_file=``),
gives the Hugging Face model's next-token logits on the review prompts, and its chat template and EOS stop
generation.

Tolerances, over the 20 review prompts of languages/az/prompts.jsonl: f16 max |logit diff| < 0.01 and the same
top-1 token on every prompt (measured: 0.0008, 20/20); q8_0 max |diff| < 0.1 and the same top-1 token on at least
90% of them (measured: 0.028, 20/20).
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import REPO, REVIEW_ANSWERS

from langlift.errors import LangliftError
from langlift.export import gguf as G
from langlift.export.model import load_merged, load_tokenizer

TOLERANCE = {"f16": (0.01, 1.0), "q8_0": (0.1, 0.9)}  # quant: (max abs logit diff, top-1 agreement)
PROMPTS = [json.loads(line) for line in (REPO / "languages/az/prompts.jsonl").open(encoding="utf-8")]


@pytest.fixture(scope="module")
def exported(tiny_finetuned_dir, tmp_path_factory):
    """The fine-tuned tiny model exported as f16 and q8_0 GGUF files."""
    out = tmp_path_factory.mktemp("gguf")
    files = G.export(tiny_finetuned_dir, out, ("f16", "q8_0"))
    return {f.stem.rsplit("-", 1)[1]: f for f in files}


def _gguf_model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


def _prompt_ids(tokenizer, prompt: str) -> torch.Tensor:
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         return_tensors="pt", return_dict=True)["input_ids"]


@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_next_token_logits_match_the_hf_model(exported, tiny_finetuned_dir, quant):
    tokenizer = load_tokenizer(tiny_finetuned_dir)
    reference = load_merged(tiny_finetuned_dir, dtype=torch.float32).eval()
    loaded = _gguf_model(exported[quant])
    max_diff, agree = 0.0, 0
    with torch.inference_mode():
        for row in PROMPTS:
            ids = _prompt_ids(tokenizer, row["prompt"])
            want, got = reference(ids).logits[0, -1], loaded(ids).logits[0, -1]
            max_diff = max(max_diff, (want - got).abs().max().item())
            agree += int(want.argmax() == got.argmax())
    limit, min_agree = TOLERANCE[quant]
    print(f"{quant}: max |logit diff| {max_diff:.5f}, top-1 agreement {agree}/{len(PROMPTS)}")
    assert len(PROMPTS) == 20
    assert max_diff < limit, f"{quant}: max |logit diff| {max_diff:.4f} over {len(PROMPTS)} review prompts"
    assert agree / len(PROMPTS) >= min_agree, f"{quant}: top-1 agreement {agree}/{len(PROMPTS)}"


def test_q8_0_is_smaller_than_f16(exported):
    assert exported["q8_0"].stat().st_size < 0.75 * exported["f16"].stat().st_size


def test_metadata_and_tokenizer_round_trip(exported, tiny_finetuned_dir):
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    ours = load_tokenizer(tiny_finetuned_dir)
    fields = GGUFReader(exported["f16"]).fields
    template = fields["tokenizer.chat_template"].contents()
    assert "{% generation %}" in AutoTokenizer.from_pretrained(tiny_finetuned_dir).chat_template  # as trained
    assert "generation %}" not in template and "{{ eos_token }}" in template
    assert fields["tokenizer.ggml.eos_token_id"].contents() == ours.eos_token_id
    assert fields["tokenizer.ggml.add_bos_token"].contents() is False
    assert fields["tokenizer.ggml.model"].contents() == "llama"

    theirs = AutoTokenizer.from_pretrained(exported["f16"].parent, gguf_file=exported["f16"].name)
    assert (theirs.eos_token_id, theirs.bos_token_id, theirs.pad_token_id) == (
        ours.eos_token_id, ours.bos_token_id, ours.pad_token_id)
    assert all(theirs.convert_ids_to_tokens(i) == ours.convert_ids_to_tokens(i) for i in range(len(ours)))
    text = ours.apply_chat_template([{"role": "user", "content": PROMPTS[0]["prompt"]}], add_generation_prompt=True,
                                    tokenize=False)
    want = ours(text, add_special_tokens=False)["input_ids"]
    got = theirs(text, add_special_tokens=False)["input_ids"]
    # transformers builds a LlamaTokenizer for a `llama` vocabulary, which always prepends "▁" (it does not read
    # tokenizer.ggml.add_space_prefix = false, which llama.cpp honours); past that one token the ids are ours
    assert got[0] == ours.convert_tokens_to_ids("▁") and got[1:] == want


def test_generation_stops_at_eos_with_the_exported_template(exported):
    from transformers import AutoTokenizer

    path = exported["f16"]
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = _gguf_model(path)
    prompts = {r["id"]: r["prompt"] for r in PROMPTS}
    for key, answer in REVIEW_ANSWERS.items():
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": prompts[key]}],
                                                 add_generation_prompt=True, tokenize=False)
        ids = _gguf_ids(rendered, tokenizer)
        out = model.generate(ids, max_new_tokens=40, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)[0, ids.shape[1]:]
        assert out[-1].item() == tokenizer.eos_token_id and len(out) < 40
        assert tokenizer.decode(out, skip_special_tokens=True) == answer


def _gguf_ids(rendered: str, tokenizer) -> torch.Tensor:
    """The GGUF tokenizer's ids for ``rendered``, without the "▁" transformers prepends (see above)."""
    ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    return torch.tensor([ids[1:] if tokenizer.convert_ids_to_tokens(ids[0]) == "▁" else ids])


def test_refuses_a_model_it_cannot_write_faithfully(tiny_qwen2_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir)
    with pytest.raises(LangliftError, match="supports Llama models; this one is 'qwen2'"):
        G.write(model, AutoTokenizer.from_pretrained(tiny_qwen2_dir), tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()
    with pytest.raises(LangliftError, match="--quant q4_k"):
        G.export(tiny_qwen2_dir, tmp_path, ("q4_k",))


def test_ollama_modelfile_renders_what_the_chat_template_does(exported, tiny_finetuned_dir):
    modelfile = exported["q8_0"].with_suffix(".Modelfile").read_text(encoding="utf-8")
    head, template, tail = modelfile.split('"""')
    assert head == f"FROM ./{exported['q8_0'].name}\nTEMPLATE " and tail == '\nPARAMETER stop "</s>"\n'
    tokenizer = load_tokenizer(tiny_finetuned_dir)
    chat = [{"role": "user", "content": PROMPTS[0]["prompt"]}, {"role": "assistant", "content": "Cavab."}]
    want = tokenizer.apply_chat_template(chat, tokenize=False)
    assert template.replace("{{ .Prompt }}", chat[0]["content"]).replace("{{ .Response }}", "Cavab.") == want
