"""Prompt templates: instruction records become chat turns, and chat turns become token ids whose labels
cover the response and its EOS only.

The model's own chat template is used when it has one (``finetune.template: auto``); otherwise the
per-language template in params (``finetune.templates.<language.code>``), e.g. AzLlama's
``### Təlimat:`` / ``### Cavab:``, is compiled into a chat template with ``{% generation %}`` markers, so
both paths share one tokenizer call: ``apply_chat_template(..., return_assistant_tokens_mask=True)``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from tqdm import tqdm

from langlift.errors import LangliftError
from langlift.params import Finetune

log = logging.getLogger(__name__)

OVERLONG = ("drop", "truncate")
IGNORE = -100  # label of tokens that carry no loss
_PROBE = [{"role": "user", "content": "1 + 1?"}, {"role": "assistant", "content": "2"}]


@dataclass(frozen=True)
class Template:
    """The chat template training uses, where it came from, and how an ``input`` field joins the instruction."""

    source: str  # "model" (the tokenizer's own) or "params:<lang>"
    chat_template: str
    input_marker: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _literal(text: str) -> str:
    """A Jinja string literal (JSON strings are valid Jinja literals)."""
    return json.dumps(text, ensure_ascii=False)


def compile_template(spec: dict[str, Any], where: str) -> str:
    """A chat template with generation markers from ``{system, instruction, response}`` markers.

    The response marker is required: without it the model cannot tell where its answer starts.
    """
    response = spec.get("response")
    if not isinstance(response, str) or not response.strip():
        raise LangliftError(f"{where}: no 'response' marker (e.g. '### Cavab:\\n'); the template needs one")
    instruction = spec.get("instruction") or ""
    system = spec.get("system") or ""
    return (
        (f"{{{{ {_literal(system)} }}}}" if system else "")
        + "{% for m in messages %}"
        "{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
        f"{{% elif m['role'] == 'user' %}}{{{{ {_literal(instruction)} }}}}{{{{ m['content'] }}}}\n\n"
        f"{{% else %}}{{{{ {_literal(response)} }}}}"
        "{% generation %}{{ m['content'] }}{{ eos_token }}{% endgeneration %}\n\n"
        "{% endif %}{% endfor %}"
        f"{{% if add_generation_prompt %}}{{{{ {_literal(response)} }}}}{{% endif %}}"
    )


def resolve(tokenizer: Any, ft: Finetune, lang: str) -> Template:
    """Pick the training template: the model's own (made maskable) or the language's from params."""
    source = ft.template
    spec = ft.templates.get(lang)
    input_marker = spec.input if spec else ""
    own = getattr(tokenizer, "chat_template", None)
    if source == "model" or (source == "auto" and own):
        if not own:
            raise LangliftError(
                "params.yaml: finetune.template is 'model' but the base model's tokenizer has no chat template"
            )
        template = Template("model", _maskable(tokenizer, own), input_marker)
    else:
        if spec is None:
            raise LangliftError(
                f"params.yaml: finetune.templates has no entry for language '{lang}' and the base model has no "
                "chat template; add finetune.templates." + lang + " with instruction/response markers"
            )
        where = f"params.yaml: finetune.templates.{lang}"
        template = Template(f"params:{lang}", compile_template(spec.model_dump(), where), input_marker)
    _check_masks(tokenizer, template)
    return template


def _maskable(tokenizer: Any, chat_template: str) -> str:
    """The model's template with ``{% generation %}`` markers, patched by TRL for known families if missing."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    if has_generation_markers(chat_template):
        return chat_template
    try:
        patched = get_training_chat_template(tokenizer)
    except ValueError as e:
        raise LangliftError(
            f"the base model's chat template has no {{% generation %}} markers and TRL cannot patch it ({e}); "
            "set finetune.template: params to use the language's template from params.yaml"
        ) from None
    log.info("the model's chat template had no generation markers: using TRL's training version of it")
    return patched


def _check_masks(tokenizer: Any, template: Template) -> None:
    """Fail early when the template marks no response tokens or never emits a response marker."""
    enc = tokenizer.apply_chat_template(
        _PROBE, chat_template=template.chat_template, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    if 1 not in enc["assistant_masks"]:
        raise LangliftError(f"chat template ({template.source}) marks no response tokens; it needs a response marker")


def to_messages(rec: dict[str, Any], template: Template) -> list[dict[str, str]]:
    """An instruction record as a user turn and an assistant turn."""
    user = rec["instruction"].strip()
    if (rec.get("input") or "").strip():
        user += "\n\n" + template.input_marker + rec["input"].strip()
    return [{"role": "user", "content": user}, {"role": "assistant", "content": rec["output"].strip()}]


def prompt_messages(prompt: str) -> list[dict[str, str]]:
    """A single user turn for generation."""
    return [{"role": "user", "content": prompt}]


def encode(tokenizer: Any, messages: list[dict[str, str]], template: Template) -> tuple[list[int], list[int], bool]:
    """Token ids and labels (response tokens only, ending in EOS); also whether EOS had to be inserted.

    A template that ends the response with another end-of-turn token, or with none, gets the tokenizer's
    EOS inserted right after the response, labelled, so the model always learns to stop.
    """
    enc = tokenizer.apply_chat_template(
        messages, chat_template=template.chat_template, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = list(enc["input_ids"]), enc["assistant_masks"]
    labels = [i if m else IGNORE for i, m in zip(ids, mask, strict=True)]
    if 1 not in mask:
        return ids, labels, False  # no response tokens: encode_records drops and counts it
    last = max(k for k, m in enumerate(mask) if m)
    if ids[last] == tokenizer.eos_token_id:
        return ids, labels, False
    eos = tokenizer.eos_token_id
    return ids[: last + 1] + [eos] + ids[last + 1 :], labels[: last + 1] + [eos] + labels[last + 1 :], True


def has_response(tokenizer: Any, labels: list[int]) -> bool:
    """Whether the labelled tokens hold any response text (not only EOS or other special tokens)."""
    labelled = [x for x in labels if x != IGNORE]
    return bool(labelled) and bool(tokenizer.decode(labelled, skip_special_tokens=True).strip())


@dataclass
class EncodeStats:
    """What happened to each example on the way to token ids."""

    examples: int = 0
    kept: int = 0
    truncated: int = 0
    dropped_overlong: int = 0
    dropped_no_response: int = 0  # the template rendered the response empty: nothing to learn
    eos_inserted: int = 0
    tokens: int = 0
    response_tokens: int = 0


def encode_records(
    records: Iterable[dict[str, Any]], tokenizer: Any, template: Template, max_length: int, overlong: str, desc: str
) -> tuple[list[dict[str, list[int]]], EncodeStats]:
    """Encode records for SFT; examples over ``max_length`` are dropped or truncated, examples whose
    response the template renders empty are dropped (both counted); an error if none is left."""
    if overlong not in OVERLONG:
        raise LangliftError(f"params.yaml: finetune.overlong: {overlong!r} is not one of {OVERLONG}")
    if tokenizer.eos_token_id is None:
        raise LangliftError("the base model's tokenizer has no eos_token; set one so the model can learn to stop")
    out, stats, empty_ids = [], EncodeStats(), []
    for rec in tqdm(records, desc=f"encoding {desc}", unit="ex", leave=False):
        stats.examples += 1
        ids, labels, inserted = encode(tokenizer, to_messages(rec, template), template)
        if not has_response(tokenizer, labels):
            stats.dropped_no_response += 1
            empty_ids.append(rec.get("id"))
            continue
        stats.eos_inserted += inserted
        if len(ids) > max_length:
            if overlong == "drop" or not has_response(tokenizer, labels[:max_length]):
                stats.dropped_overlong += 1
                continue
            ids, labels = ids[:max_length], labels[:max_length]
            stats.truncated += 1
        out.append({"input_ids": ids, "labels": labels})
        stats.kept += 1
        stats.tokens += len(ids)
        stats.response_tokens += sum(x != IGNORE for x in labels)
    if stats.eos_inserted:
        log.info("%s: the template ended %d responses without EOS; EOS inserted and labelled", desc, stats.eos_inserted)
    if stats.truncated or stats.dropped_overlong:
        log.warning(
            "%s: %d of %d examples longer than %d tokens: %d truncated, %d dropped (finetune.overlong: %s)",
            desc, stats.truncated + stats.dropped_overlong, stats.examples, max_length,
            stats.truncated, stats.dropped_overlong, overlong,
        )
    if stats.dropped_no_response:
        _no_response(desc, stats, empty_ids, template)
    return out, stats


def _no_response(desc: str, stats: EncodeStats, ids: list[Any], template: Template) -> None:
    """Warn about examples dropped for an empty response; an error when they leave nothing to train on."""
    hint = (f"the chat template ({template.source}) renders their 'output' empty: fix those records, or the "
            "template's {% generation %} block (finetune.template: params uses the language's markers)")
    if not stats.kept:
        raise LangliftError(
            f"{desc}: no example left: {stats.dropped_no_response} of {stats.examples} have no response tokens "
            f"(e.g. record id {ids[0]!r}) and {stats.dropped_overlong} are over-long; {hint}"
        )
    log.warning("%s: %d of %d examples dropped with no response tokens (e.g. record id %r); %s",
                desc, stats.dropped_no_response, stats.examples, ids[0], hint)
