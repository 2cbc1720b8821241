"""The ``llm`` backend: a causal LLM prompted to translate through its chat template (DictaLM's method).

The prompt comes from params (one per language); generation runs with transformers, batched with
left padding and sorted by length, or with vLLM when it is installed and a GPU is present.
"""

from __future__ import annotations

import importlib.util
import logging

from langlift import modelref
from langlift.errors import LangliftError
from langlift.translate.base import PromptedBackend

log = logging.getLogger(__name__)


class LLMBackend(PromptedBackend):
    name = "llm"

    def __init__(self, model: str, template: str, language: dict[str, str], *, engine: str = "auto",
                 batch_size: int = 8, max_new_tokens: int = 512, temperature: float = 0.0,
                 device: str = "auto", dtype: str = "auto"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        super().__init__(model, template, language, {"max_new_tokens": max_new_tokens, "temperature": temperature})
        if engine not in ("auto", "transformers", "vllm"):
            raise LangliftError(f"translate.llm.engine: {engine!r} is not one of auto, transformers, vllm")
        has_vllm = importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()
        if engine == "vllm" and not has_vllm:
            raise LangliftError("translate.llm.engine: vllm needs the vllm package and a GPU")
        self.engine = "vllm" if engine == "vllm" or (engine == "auto" and has_vllm) else "transformers"
        self.batch_size, self.chunk_size = batch_size, batch_size * 4
        try:
            self.tok = AutoTokenizer.from_pretrained(model)
        except OSError as e:
            raise LangliftError(f"translate.llm.model: cannot load {model!r}: {e}") from None
        self.refs = {"model": modelref.resolve(model)}
        if not self.tok.chat_template:
            raise LangliftError(f"translate.llm.model: {model} has no chat template; use an instruction-tuned "
                                "model (or one whose tokenizer_config.json carries a chat_template)")
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        if dtype == "auto":
            dtype = "bf16" if self.device == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
        self.settings["precision"] = "vllm-auto" if self.engine == "vllm" else dtype   # changes the output too
        if self.engine == "vllm":
            from vllm import LLM

            self.vllm = LLM(model=model, dtype="auto")
            log.info("llm: %s with vLLM", model)
            return
        torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.model_ = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype).to(self.device).eval()
        log.info("llm: %s on %s in %s (prompt %s)", model, self.device, dtype, self.prompt_version)

    def translate(self, texts: list[str]) -> list[str | None]:
        conversations = [self.messages(t) for t in texts]
        replies = self._vllm(conversations) if self.engine == "vllm" else self._hf(conversations)
        return [self.clean(t, r) for t, r in zip(texts, replies)]

    def _vllm(self, conversations: list[list[dict[str, str]]]) -> list[str]:
        from vllm import SamplingParams

        params = SamplingParams(temperature=self.settings["temperature"], max_tokens=self.settings["max_new_tokens"])
        return [o.outputs[0].text for o in self.vllm.chat(conversations, params, use_tqdm=False)]

    def _hf(self, conversations: list[list[dict[str, str]]]) -> list[str]:
        import torch

        prompts = [self.tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]
        lengths = [len(ids) for ids in self.tok(prompts, add_special_tokens=False)["input_ids"]]
        order = sorted(range(len(prompts)), key=lambda i: lengths[i])
        replies = [""] * len(prompts)
        temperature = self.settings["temperature"]
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            enc = self.tok([prompts[i] for i in idx], return_tensors="pt", padding=True,
                           add_special_tokens=False).to(self.device)
            with torch.inference_mode():
                ids = self.model_.generate(**enc, max_new_tokens=self.settings["max_new_tokens"],
                                           pad_token_id=self.tok.pad_token_id, **sampling)
            new = ids[:, enc["input_ids"].shape[1]:]
            for i, text in zip(idx, self.tok.batch_decode(new, skip_special_tokens=True)):
                replies[i] = text
        return replies
