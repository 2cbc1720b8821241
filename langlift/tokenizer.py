"""Tokenizers for the target language: train a byte-fallback BPE, measure fertility, extend an
existing vocabulary for continued pretraining.

The trained tokenizer is Llama-style: SentencePiece-like ``▁`` word boundaries (no normaliser, so
every text round-trips exactly) and the 256 byte tokens ``<0x00>``…``<0xFF>`` as ordinary vocabulary
entries, so a character never seen in training (Hebrew, emoji, ``ʻ``) is spelled out in bytes
instead of becoming ``<unk>``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from langlift.errors import LangliftError

log = logging.getLogger(__name__)

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
SPECIALS = (PAD, BOS, EOS)
BYTE_TOKENS = tuple(f"<0x{i:02X}>" for i in range(256))


def chat_template(user: str, assistant: str) -> str:
    """A Jinja chat template with the given turn markers (AzLlama: ``### Təlimat:`` / ``### Cavab:``).

    The assistant turn and its EOS sit inside ``{% generation %}`` so TRL can train on them alone.
    """
    return (
        "{% for m in messages %}"
        "{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
        f"{{% elif m['role'] == 'user' %}}{user}\n{{{{ m['content'] }}}}\n\n"
        f"{{% else %}}{assistant}\n{{% generation %}}{{{{ m['content'] }}}}{{{{ eos_token }}}}{{% endgeneration %}}\n\n"
        "{% endif %}"
        "{% endfor %}"
        f"{{% if add_generation_prompt %}}{assistant}\n{{% endif %}}"
    )


def train(
    texts: Iterable[str], vocab_size: int, min_frequency: int = 2, length: int | None = None, exact: bool = True
) -> PreTrainedTokenizerFast:
    """Train a byte-fallback BPE with ``vocab_size`` entries (specials and 256 byte tokens included).

    When the texts are too few to learn that many merges: with ``exact`` (a size the user chose) a
    :class:`LangliftError`; without (a preset's default), the tokenizer keeps what the texts support, logged.
    """
    floor = len(SPECIALS) + len(BYTE_TOKENS) + 1
    if vocab_size < floor + 64:
        raise LangliftError(f"tokenizer vocab_size {vocab_size} is too small: it needs at least {floor + 64} "
                            f"({len(SPECIALS)} special and {len(BYTE_TOKENS)} byte tokens plus merges)")
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token=None, fuse_unk=False))
    # no prefix space is invented, so none has to be guessed away when decoding: exact round-trips
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace(prepend_scheme="never")])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(BYTE_TOKENS), min_frequency=min_frequency,
        special_tokens=list(SPECIALS), initial_alphabet=["\n"], show_progress=False,
    )
    tok.train_from_iterator(texts, trainer, length=length)
    learned = tok.get_vocab_size()
    if learned < vocab_size - len(BYTE_TOKENS):
        short = (f"the corpus supports only {learned + len(BYTE_TOKENS)} tokens at min_frequency {min_frequency}, "
                 f"not vocab_size {vocab_size}")
        if exact:
            raise LangliftError(f"{short}: lower pretrain.tokenizer.vocab_size or add text")
        log.warning("%s: the tokenizer keeps %d (set pretrain.tokenizer.vocab_size to choose)", short,
                    learned + len(BYTE_TOKENS))
        vocab_size = learned + len(BYTE_TOKENS)
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    for b in BYTE_TOKENS:  # as in Llama: byte tokens are ordinary entries that byte fallback emits
        vocab[b] = len(vocab)
    hf = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
                                 bos_token=BOS, eos_token=EOS, pad_token=PAD)
    if len(hf) != vocab_size:
        raise LangliftError(f"tokenizer ended with {len(hf)} entries instead of vocab_size {vocab_size}")
    return hf


def fertility(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> float:
    """Tokens per whitespace-separated word over ``texts`` (lower is better; no special tokens)."""
    words = sum(len(t.split()) for t in texts)
    if not words:
        raise LangliftError("fertility: the held-out texts contain no words")
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return sum(len(x) for x in ids) / words


def load_reference(name: str | None) -> PreTrainedTokenizerBase | None:
    """The reference tokenizer named in params, or None when it is unset or cannot be loaded (offline)."""
    if not name:
        return None
    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as e:
        log.warning("reference tokenizer %s is not available, its fertility is skipped: %s", name, e)
        return None


def finalize(tokenizer: PreTrainedTokenizerBase, template: str, context: int) -> PreTrainedTokenizerBase:
    """Make sure EOS and PAD exist (reusing EOS as PAD only if there is no pad) and set the chat template.

    BOS is optional: without one (Qwen2, GPT-2 families) documents are separated by EOS alone, as those
    models were pretrained (see :func:`langlift.packing.tokenize`).
    """
    if tokenizer.eos_token is None:
        raise LangliftError("tokenizer has no eos_token; pretraining separates documents with it")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.chat_template = template
    tokenizer.model_max_length = context
    return tokenizer


# ---------------------------------------------------------------- vocabulary extension


def _merges(model: dict[str, Any]) -> list[tuple[str, str]]:
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]


def extend(
    tokenizer: PreTrainedTokenizerFast, texts: Sequence[str], new_tokens: int, min_frequency: int = 2
) -> tuple[PreTrainedTokenizerFast, list[str]]:
    """Append up to ``new_tokens`` target-language BPE tokens to an existing BPE tokenizer.

    A BPE with the tokenizer's own normaliser and pre-tokeniser is trained on ``texts``; its merges
    are replayed in order and every one producing a token the old vocabulary lacks is appended (new
    alphabet symbols first) after all existing ids, merges at the lowest priority. Every old token
    keeps its id, and text is still tokenised by the old merges first. Returns the new tokenizer and
    the added token strings in id order.
    """
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec["model"]
    if model.get("type") != "BPE":
        raise LangliftError(f"vocabulary extension needs a BPE tokenizer, this one is {model.get('type')}")
    budget = new_tokens + len(tokenizer)  # the trainer's vocab counts alphabet and merges it shares with us
    trained = tokenizer.train_new_from_iterator(texts, vocab_size=budget, min_frequency=min_frequency,
                                                show_progress=False)
    tmodel = json.loads(trained.backend_tokenizer.to_str())["model"]
    vocab, merges = model["vocab"], _merges(model)
    known = set(vocab) | {t.content for t in tokenizer.added_tokens_decoder.values()}
    next_id = max([len(tokenizer), *(i + 1 for i in vocab.values())])
    added: list[str] = []
    new_merges: list[tuple[str, str]] = []

    def add(token: str) -> None:
        nonlocal next_id
        vocab[token] = next_id
        known.add(token)
        added.append(token)
        next_id += 1

    merged = {a + b for a, b in _merges(tmodel)}
    alphabet = [t for t, _ in sorted(tmodel["vocab"].items(), key=lambda kv: kv[1]) if t not in merged]
    for symbol in alphabet:
        if len(added) < new_tokens and symbol not in known and symbol not in trained.all_special_tokens:
            add(symbol)
    for a, b in _merges(tmodel):
        if len(added) >= new_tokens:
            break
        if a + b not in known and a in known and b in known:
            add(a + b)
            new_merges.append((a, b))
    as_strings = isinstance(model["merges"][0], str) if model["merges"] else False
    model["merges"] = [f"{a} {b}" if as_strings else [a, b] for a, b in merges + new_merges]
    extended = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
                                       **{k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)})
    extended.chat_template = tokenizer.chat_template
    log.info("vocabulary extension: %d new tokens (ids %d-%d), e.g. %s",
             len(added), next_id - len(added), next_id - 1, added[-5:])
    return extended, added


def old_pieces(tokenizer: PreTrainedTokenizerFast, token: str) -> list[int]:
    """Ids of the old tokenizer's model-level pieces for one (pre-tokenised) token string."""
    return [t.id for t in tokenizer.backend_tokenizer.model.tokenize(token)]


QWEN2_EOS = "<|endoftext|>"  # Qwen2's document separator, EOS and pad; Qwen2 tokenizers have no BOS


def train_qwen2(texts: Iterable[str], vocab_size: int):
    """A Qwen2Tokenizer (byte-level BPE, no BOS) trained with Qwen's own pipeline on ``texts``.

    A ``qwen2`` model folder is always loaded with ``Qwen2Tokenizer``, which rebuilds Qwen's byte-level
    pre-tokeniser around the saved vocabulary: only a vocabulary trained with that pipeline (every byte in
    the alphabet, so every text round-trips) survives it. For stand-ins of Qwen-family models.
    """
    from transformers import Qwen2Tokenizer

    pipeline = Qwen2Tokenizer()._tokenizer  # Qwen's normaliser, pre-tokeniser and decoder
    bpe = Tokenizer(models.BPE())
    bpe.normalizer, bpe.pre_tokenizer, bpe.decoder = pipeline.normalizer, pipeline.pre_tokenizer, pipeline.decoder
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[QWEN2_EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(texts, trainer)
    spec = json.loads(bpe.to_str())["model"]
    return Qwen2Tokenizer(vocab=spec["vocab"], merges=[tuple(m) for m in spec["merges"]])
