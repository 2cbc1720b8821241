"""Templates: response-only labels ending in EOS, per-language markers, and clear errors for bad templates."""

from __future__ import annotations

import pytest

from conftest import CHAT_TEMPLATE, build_tokenizer
from langlift import templates as T
from langlift.errors import LangliftError
from langlift.params import Finetune

AZ = {"instruction": "### Təlimat:\n", "input": "### Giriş:\n", "response": "### Cavab:\n"}
UZ = {"instruction": "### Ko'rsatma:\n", "input": "### Kirish:\n", "response": "### Natija:\n"}


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def rec(instruction="Paytaxt hansıdır?", inp="", output="Bakı şəhəridir."):
    return {"id": "x", "instruction": instruction, "input": inp, "output": output, "lang": "az", "source": "t"}


def response_text(tok, ids, labels):
    return tok.decode([i for i, lab in zip(ids, labels) if lab != T.IGNORE])


def test_params_template_labels_only_the_response_and_its_eos(tok):
    template = T.resolve(tok, Finetune(template="params", templates={"uz": UZ}), "uz")
    assert template.source == "params:uz"
    ids, labels, inserted = T.encode(tok, T.to_messages(rec(inp="qısa"), template), template)
    assert not inserted
    text = tok.decode(ids)
    assert "### Ko'rsatma:" in text and "### Kirish:\nqısa" in text and "### Natija:" in text
    assert response_text(tok, ids, labels) == "Bakı şəhəridir.</s>"
    last = max(k for k, lab in enumerate(labels) if lab != T.IGNORE)
    assert labels[last] == ids[last] == tok.eos_token_id
    # the generation prompt ends with the response marker, so the model answers where training taught it to
    prompt = tok.apply_chat_template(T.prompt_messages("Salam"), chat_template=template.chat_template,
                                     add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("### Natija:\n")


def test_auto_uses_the_models_own_template_else_the_languages(tok):
    assert T.resolve(tok, Finetune(template="auto", templates={"az": AZ}), "az").source == "model"
    bare = build_tokenizer()
    bare.chat_template = None
    assert T.resolve(bare, Finetune(template="auto", templates={"az": AZ}), "az").source == "params:az"
    with pytest.raises(LangliftError, match="no entry for language 'kk'"):
        T.resolve(bare, Finetune(template="auto", templates={"az": AZ}), "kk")


def test_template_without_a_response_marker_is_refused(tok):
    with pytest.raises(LangliftError, match="finetune.templates.az: no 'response' marker"):
        T.resolve(tok, Finetune(template="params", templates={"az": {**AZ, "response": "\n"}}), "az")
    unmarked = build_tokenizer()
    unmarked.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    with pytest.raises(LangliftError, match="no \\{% generation %\\} markers"):
        T.resolve(unmarked, Finetune(template="model"), "az")


def test_eos_is_inserted_and_labelled_when_the_template_leaves_it_out(tok):
    no_eos = build_tokenizer()
    no_eos.chat_template = CHAT_TEMPLATE.replace("{{ eos_token }}{% endgeneration %}", "{% endgeneration %}")
    template = T.resolve(no_eos, Finetune(template="model"), "az")
    ids, labels, inserted = T.encode(no_eos, T.to_messages(rec(), template), template)
    assert inserted
    assert response_text(no_eos, ids, labels) == "Bakı şəhəridir.</s>"
    rows, stats = T.encode_records([rec(), rec(output="Gəncə.")], no_eos, template, 512, "drop", "t")
    assert stats.eos_inserted == 2 and len(rows) == 2


def test_overlong_examples_are_dropped_or_truncated_and_counted(tok):
    template = T.resolve(tok, Finetune(template="params", templates={"az": AZ}), "az")
    short, long_answer = rec(), rec(output=" ".join(["uzun cavab"] * 60))
    long_prompt = rec(instruction=" ".join(["uzun sual"] * 80))
    n = len(T.encode(tok, T.to_messages(short, template), template)[0])

    rows, stats = T.encode_records([short, long_answer, long_prompt], tok, template, n + 5, "drop", "t")
    assert (stats.kept, stats.dropped_overlong, stats.truncated) == (1, 2, 0)

    rows, stats = T.encode_records([short, long_answer, long_prompt], tok, template, n + 5, "truncate", "t")
    # the long answer is cut (its EOS lost); the long prompt leaves no response token, so it is dropped
    assert (stats.kept, stats.truncated, stats.dropped_overlong) == (2, 1, 1)
    assert max(len(r["input_ids"]) for r in rows) == n + 5
    assert stats.tokens == sum(len(r["input_ids"]) for r in rows)

    with pytest.raises(LangliftError, match="overlong"):
        T.encode_records([short], tok, template, 64, "wrap", "t")


# a model template that keeps only the final answer of a reasoning trace, as reasoning models' templates do
THINKING = ("{% for m in messages %}{% if m['role'] == 'user' %}### Təlimat:\n{{ m['content'] }}\n\n"
            "{% else %}### Cavab:\n{% generation %}{{ m['content'].split('</think>')[-1] | trim }}{% endgeneration %}"
            "{{ eos_token }}\n\n{% endif %}{% endfor %}{% if add_generation_prompt %}### Cavab:\n{% endif %}")


def test_examples_without_response_tokens_are_dropped_and_counted():
    thinking = build_tokenizer()
    thinking.chat_template = THINKING
    template = T.resolve(thinking, Finetune(template="model"), "az")
    empty = dict(rec(output="<think>Paytaxt Bakıdır.</think>"), id="empty")
    rows, stats = T.encode_records([rec(), empty, rec(output="Gəncə.")], thinking, template, 512, "drop", "t")
    assert (stats.examples, stats.kept, stats.dropped_no_response, stats.dropped_overlong) == (3, 2, 1, 0)
    answers = [response_text(thinking, r["input_ids"], r["labels"]) for r in rows]
    assert answers == ["Bakı şəhəridir.</s>", "Gəncə.</s>"]
    with pytest.raises(LangliftError, match=r"t: no example left: 1 of 1 have no response tokens \(e.g. record id "
                                            r"'empty'\).*chat template \(model\) renders their 'output' empty"):
        T.encode_records([empty], thinking, template, 512, "drop", "t")

    # a template that labels only EOS for an empty response teaches nothing but stopping: dropped too
    eos_only = build_tokenizer()
    eos_only.chat_template = CHAT_TEMPLATE.replace("{{ m['content'] }}{{ eos_token }}",
                                                   "{{ m['content'].split('</think>')[-1] | trim }}{{ eos_token }}")
    template = T.resolve(eos_only, Finetune(template="model"), "az")
    rows, stats = T.encode_records([rec(), empty], eos_only, template, 512, "truncate", "t")
    assert (stats.kept, stats.dropped_no_response) == (1, 1)
