"""The typed schema of ``params.yaml``: the one way every stage reads its settings.

``load()`` validates the whole file up front: an unknown key is a one-line error naming the nearest
valid key, values are coerced where that is safe (YAML reads ``3e-3`` as a string) and refused where
not, ranges are checked. Every default lives here and nowhere else.
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from langlift.errors import LangliftError

log = logging.getLogger(__name__)

DEFAULT_PATH = Path("params.yaml")
LANGUAGES_DIR = "languages"  # one folder per language: language.yaml and its data

PositiveInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
Share = Annotated[float, Field(ge=0.0, lt=1.0)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveFloat = Annotated[float, Field(gt=0.0)]
Auto = Literal["auto"]


class Section(BaseModel):
    """A params section: unknown keys are errors, values are validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ------------------------------------------------------------------ fetch

class FetchSource(Section):
    """One entry of ``fetch.sources``."""

    name: str = Field(min_length=1)
    kind: Literal["instructions", "corpus", "parallel"]
    uri: str = Field(min_length=1, description="local file or folder, hf:<dataset id>, or http(s) URL")
    license: str = "unknown"
    lang: str | None = None
    src_lang: str | None = None
    tgt_lang: str | None = None
    tgt_uri: str | None = None
    format: str | None = None
    fields: dict[str, str] = Field(default_factory=dict)
    limit: PositiveInt | None = None
    unit: Literal["line", "paragraph", "file"] = "line"
    detokenize: bool = False
    split: str = "train"
    config: str | None = None
    revision: str | None = None
    streaming: bool = False

    @model_validator(mode="after")
    def _parallel_langs(self) -> FetchSource:
        if self.kind == "parallel" and not (self.src_lang and self.tgt_lang):
            raise ValueError("parallel sources need src_lang and tgt_lang")
        return self


class Fetch(Section):
    strict: bool = True
    sources: list[FetchSource] = Field(default_factory=list)


# ------------------------------------------------------------------ translate

class Segment(Section):
    max_chars: PositiveInt = 400
    protect: list[Literal["code", "url", "email", "placeholder", "number"]] = ["code", "url", "email",
                                                                               "placeholder", "number"]
    mask: str = "<x{i}>"


class Quality(Section):
    """The checks of one translation (``translate.quality`` without the action)."""

    length_ratio: tuple[PositiveFloat, PositiveFloat] = (0.5, 2.5)
    ratio_min_chars: NonNegInt = 20
    min_lang_score: Probability = 0.5
    lang_min_chars: NonNegInt = 30
    untranslated_min_words: PositiveInt = 4
    max_repeats: PositiveInt = 4

    @model_validator(mode="after")
    def _ordered_ratio(self) -> Quality:
        if self.length_ratio[0] >= self.length_ratio[1]:
            raise ValueError(f"length_ratio: need min < max, got {list(self.length_ratio)}")
        return self


class TranslateQuality(Quality):
    action: Literal["drop", "keep"] = "drop"
    retry: dict[str, Any] | None = None


class Pairs(Section):
    enabled: bool = False
    fields: list[Literal["instruction", "input", "output"]] = ["output"]
    max_chars: PositiveInt = 1000
    to_target: str = "Translate the following text from English into {name}."
    to_english: str = "Translate the following text from {name} into English."


class Memory(Section):
    paths: list[str] = ["languages/{lang}/translation_memory.jsonl"]
    source_key: str = "en"


class Seq2Seq(Section):
    model: str = "facebook/nllb-200-distilled-600M"
    family: Literal["auto", "nllb", "m2m", "madlad", "marian", "plain"] = "auto"
    tgt_code: str | None = None
    batch_size: PositiveInt = 32
    num_beams: PositiveInt = 1
    max_new_tokens: PositiveInt = 256
    ctranslate2: str | None = None


class Llm(Section):
    model: str = "Qwen/Qwen2.5-7B-Instruct"
    engine: Literal["auto", "transformers", "vllm"] = "auto"
    batch_size: PositiveInt = 16
    max_new_tokens: PositiveInt = 512
    temperature: Annotated[float, Field(ge=0.0)] = 0.0


class Client(Section):
    """An OpenAI-compatible HTTP client's limits."""

    concurrency: PositiveInt = 8
    requests_per_minute: PositiveFloat | None = None
    max_retries: NonNegInt = 5
    timeout: PositiveFloat = 60


class Api(Client):
    base_url: str = "http://localhost:11434/v1"
    model: str = "qwen2.5:7b-instruct"
    api_key_env: str | None = "OPENAI_API_KEY"  # null: no key (a local server)
    max_requests: PositiveInt | None = None
    max_tokens: PositiveInt | None = None
    temperature: Annotated[float, Field(ge=0.0)] = 0.0
    backoff: PositiveFloat = 1.0  # seconds before the first retry, doubled on each next one


class Translate(Section):
    backend: Literal["memory", "seq2seq", "llm", "api"] = "memory"
    fallback: list[Literal["memory", "seq2seq", "llm", "api"]] = Field(default_factory=list)
    cache: str = ".cache/translate/segments.sqlite"
    limit: PositiveInt | None = None
    segment: Segment = Segment()
    quality: TranslateQuality = TranslateQuality()
    pairs: Pairs = Pairs()
    prompts: dict[str, str] = {"default": "Translate the following text from English into {name}. Keep every tag "
                                          "like <x0> exactly as it is, keep the formatting, and reply with the "
                                          "translation only.\n\n{text}"}
    memory: Memory = Memory()
    seq2seq: Seq2Seq = Seq2Seq()
    llm: Llm = Llm()
    api: Api = Api()


# ------------------------------------------------------------------ generate

class GenerateClient(Client):
    concurrency: PositiveInt = 4
    timeout: PositiveFloat = 120


class Budget(Section):
    max_requests: PositiveInt = 300
    max_tokens: PositiveInt = 2_000_000


class JudgeClient(Client):
    concurrency: PositiveInt = 4


class JudgeBudget(Budget):
    max_requests: PositiveInt = 1000


class Prices(Section):
    input_per_1m: Annotated[float, Field(ge=0.0)] = 0.15
    output_per_1m: Annotated[float, Field(ge=0.0)] = 0.60


class GenerateFilters(Section):
    min_instruction_words: NonNegInt = 3
    max_instruction_words: PositiveInt = 150
    max_input_words: PositiveInt = 500
    max_output_words: PositiveInt = 1000
    min_lang_score: Probability = 0.5
    blocked_keywords: dict[str, list[str]] = Field(default_factory=dict)
    refusals: dict[str, list[str]] = Field(default_factory=dict)


class ChatPrompt(Section):
    system: str = ""
    user: str = Field(pattern=r"\{examples\}", description="must contain {examples}")


class Generate(Section):
    enabled: bool = False
    base_url: str = ""
    model: str = "gpt-4o-mini"
    api_key_env: str | None = "OPENAI_API_KEY"
    seeds: str = "languages/{lang}/seed_tasks.jsonl"
    target: PositiveInt = 1000
    per_request: PositiveInt = 10
    seeds_per_prompt: NonNegInt = 3
    generated_per_prompt: NonNegInt = 2
    batch_size: PositiveInt = 8
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    max_tokens: PositiveInt = 4096
    response_format: Literal["json_object", "json_schema", "none"] = "json_object"
    rouge_threshold: Probability = 0.7
    cache_dir: str = ".cache/generate"
    client: GenerateClient = GenerateClient()
    budget: Budget = Budget()
    prices: Prices = Prices()
    removed_sample: NonNegInt = 20
    filters: GenerateFilters = GenerateFilters()
    prompt_version: str = "v1"
    prompts: dict[str, ChatPrompt] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _endpoint(self) -> Generate:
        if self.enabled and not self.base_url:
            raise ValueError("enabled is true but base_url is empty: set it to an OpenAI-compatible endpoint "
                             "(e.g. https://api.openai.com/v1 or http://localhost:8000/v1)")
        if self.enabled and "default" not in self.prompts:
            raise ValueError("prompts needs a 'default' entry ({system, user})")
        return self


# ------------------------------------------------------------------ dedupe, split

class DedupeInputs(Section):
    instructions: list[str] = ["data/raw/instructions.jsonl", "data/translated/instructions.jsonl",
                               "data/generated/instructions.jsonl"]
    corpus: list[str] = ["data/raw/corpus.jsonl"]


class MinHash(Section):
    threshold: Annotated[float, Field(gt=0.0, le=1.0)] = 0.8
    num_perm: PositiveInt = 128
    shingle: PositiveInt = 5


class DedupeQuality(Section):
    min_words: NonNegInt = 3
    max_words: PositiveInt = 10_000
    char_ngram: PositiveInt = 10
    max_char_repetition: Probability = 0.2
    word_ngram: PositiveInt = 3
    max_word_repetition: Probability = 0.3
    max_special_ratio: Probability = 0.3
    max_social_ratio: Probability = 1.0   # handles, hashtags, URLs, emoji: 1 is off; rw (tweets) sets 0.3
    min_lang_score: Probability = 0.5


class EvalSet(Section):
    path: str
    fields: list[str] = Field(min_length=1)


class Decontaminate(Section):
    ngram: PositiveInt = 13
    min_words: PositiveInt = 4
    eval_sets: list[EvalSet] = [EvalSet(path="data/raw/parallel.jsonl", fields=["src", "tgt"]),
                                 EvalSet(path="languages/{lang}/prompts.jsonl", fields=["prompt"]),
                                 EvalSet(path="data/samples/eval/sib200/{flores}/*.tsv", fields=["text"]),
                                 EvalSet(path="data/samples/eval/sib200/eng_Latn/*.tsv", fields=["text"])]


class Dedupe(Section):
    inputs: DedupeInputs = DedupeInputs()
    normalize: Literal["NFC", "NFKC", "none"] = "NFC"
    exact: bool = True
    minhash: MinHash = MinHash()
    quality: DedupeQuality = DedupeQuality()
    decontaminate: Decontaminate = Decontaminate()
    removed_sample: NonNegInt = 20
    workers: NonNegInt = 1


class Split(Section):
    val: Share = 0.05
    test: Share = 0.05
    min_val: NonNegInt = 8          # target-language instruction groups in val at least
    min_test: NonNegInt = 8         # and in test: a small language still gets a test set worth scoring
    english_share: Share = 0.10
    corpus_val: Share = 0.05
    parallel_test_max: NonNegInt = 200

    @model_validator(mode="after")
    def _room_for_train(self) -> Split:
        if self.val + self.test >= 1.0:
            raise ValueError("val + test must leave a share for train")
        return self


# ------------------------------------------------------------------ pretrain, hardware

class TokenizerParams(Section):
    vocab_size: PositiveInt | None = None
    min_frequency: PositiveInt = 2
    reference: str | None = None


class ModelShape(Section):
    layers: PositiveInt | None = None
    hidden: PositiveInt | None = None
    heads: PositiveInt | None = None
    kv_heads: PositiveInt | None = None
    intermediate: PositiveInt | None = None
    context: PositiveInt | None = None
    tie_embeddings: bool | None = None
    rope_theta: PositiveFloat | None = None


class ChatMarkers(Section):
    user: str = Field(min_length=1)
    assistant: str = Field(min_length=1)


class Pretrain(Section):
    preset: Literal["tiny", "az150m"] = "tiny"
    init: str | None = None
    extend_vocab: NonNegInt = 0
    tokenizer: TokenizerParams = TokenizerParams()
    model: ModelShape = ModelShape()
    chat: ChatMarkers = ChatMarkers(user="### Instruction:", assistant="### Response:")  # the language's, see LanguageFile
    steps: PositiveInt = 300
    batch_size: PositiveInt = 8
    grad_accum: PositiveInt = 1
    lr: PositiveFloat = 6.0e-3
    min_lr_ratio: Probability = 0.1
    warmup_steps: NonNegInt = 20
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.1
    betas: tuple[Probability, Probability] = (0.9, 0.95)
    grad_clip: Annotated[float, Field(ge=0.0)] = 1.0
    log_every: PositiveInt = 10
    eval_every: PositiveInt = 50
    eval_batches: PositiveInt = 8
    checkpoint_every: PositiveInt = 50
    keep_checkpoints: PositiveInt = 2
    checkpoint_dir: str = "checkpoints/pretrain"


class Hardware(Section):
    device: Auto | Literal["cpu", "cuda", "mps"] = "auto"
    precision: Auto | Literal["fp32", "bf16", "fp16"] = "auto"
    gradient_checkpointing: Auto | bool = "auto"
    attn_implementation: Auto | Literal["sdpa", "flash_attention_2", "eager"] = "auto"
    num_threads: Auto | PositiveInt = "auto"
    dataloader_workers: Auto | NonNegInt = "auto"
    padding_free: Auto | bool = "auto"
    processes: PositiveInt = 1
    accelerate_config: str | None = None


# ------------------------------------------------------------------ finetune, evaluate

class Lora(Section):
    r: PositiveInt = 16
    alpha: PositiveInt = 32
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.05
    target_modules: Literal["all-linear"] | list[str] = "all-linear"
    use_dora: bool = False
    use_rslora: bool = False


class PromptTemplate(Section):
    instruction: str = Field(min_length=1)
    input: str = Field(min_length=1)
    response: str = Field(min_length=1)


class MatrixEntry(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    base_model: str = Field(min_length=1)


class Finetune(Section):
    method: Literal["full", "lora", "qlora", "lora-8bit"] = "lora"
    lora: Lora = Lora()
    batch_size: PositiveInt = 4
    gradient_accumulation: PositiveInt = 2
    max_seq_length: PositiveInt = 256
    overlong: Literal["drop", "truncate"] = "drop"
    packing: bool = False
    fused_lm_head: Auto | bool = "auto"
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup", "cosine_with_min_lr"] = "cosine"
    warmup_ratio: Share = 0.03
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0
    max_grad_norm: Annotated[float, Field(ge=0.0)] = 1.0
    max_steps: Annotated[int, Field(ge=-1)] = -1
    logging_steps: PositiveInt = 5
    eval_steps: PositiveInt = 25
    checkpoint_steps: PositiveInt = 50
    resume: bool = True
    merge: bool = False
    template: Literal["auto", "model", "params"] = "auto"
    templates: dict[str, PromptTemplate] = Field(default_factory=dict)
    matrix: list[MatrixEntry] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_matrix_names(self) -> Finetune:
        names = [e.name for e in self.matrix]
        if len(names) != len(set(names)):
            raise ValueError(f"matrix: entry names must be unique, got {names}")
        return self


class MinExamples(Section):
    """Fewer scored examples than these flag a set of metrics as not reliable (0: never flagged)."""

    perplexity: NonNegInt = 10    # held-out documents
    translation: NonNegInt = 50   # pairs per direction: BLEU, chrF++
    instructions: NonNegInt = 20  # target-language instructions: EM, F1, chrF++
    sib200: NonNegInt = 100       # SIB-200 test sentences: accuracy


class JudgePrompts(Section):
    """The judge's prompts; ``{name}`` is the language's name, ``{rubric}`` ``evaluate.judge.rubric``."""

    pairwise: str = ("You are judging two assistants' answers to a user's request written in {name}.\n{rubric}\n"
                     "Compare the answers on these criteria; do not let their order, length or the assistants' "
                     "names sway you. Explain briefly, then end with exactly one line: 'Verdict: A', "
                     "'Verdict: B' or 'Verdict: tie'.\n\n[Question]\n{question}\n[End of Question]\n\n"
                     "[Answer A]\n{answer_a}\n[End of Answer A]\n\n[Answer B]\n{answer_b}\n[End of Answer B]")
    score: str = ("You are judging an assistant's answer to a user's request written in {name}.\n{rubric}\n"
                  "Rate the answer from 1 (useless) to 10 (excellent) on these criteria. Explain briefly, "
                  "then end with exactly one line: 'Score: N'.\n\n[Question]\n{question}\n"
                  "[End of Question]\n\n[Answer]\n{answer}\n[End of Answer]")
    reference: str = ("Answer the following request in {name}, well and concisely, as an expert native speaker "
                      "would. Reply with the answer only.\n\n{question}")

    @model_validator(mode="after")
    def _placeholders(self) -> JudgePrompts:
        needs = {"pairwise": ("{question}", "{answer_a}", "{answer_b}"), "score": ("{question}", "{answer}"),
                 "reference": ("{question}",)}
        for key, names in needs.items():
            missing = [n for n in names if n not in getattr(self, key)]
            if missing:
                raise ValueError(f"{key}: the prompt must contain {', '.join(missing)}")
        return self


class Judge(Section):
    """An LLM judge through an OpenAI-compatible endpoint (docs/judge.md); off by default."""

    enabled: bool = False
    base_url: str = ""
    model: str = "gpt-4o"
    api_key_env: str | None = "OPENAI_API_KEY"
    sets: list[Literal["prompts", "instructions"]] = ["prompts", "instructions"]
    modes: list[Literal["pairwise", "score", "reference"]] = ["pairwise", "score", "reference"]
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 0.0
    max_tokens: PositiveInt = 512
    cache_dir: str = ".cache/judge"
    client: JudgeClient = JudgeClient()
    budget: JudgeBudget = JudgeBudget()
    rubric: str = ("Criteria: (1) fluency: natural, grammatical {name}; (2) correctness of the content; "
                   "(3) it does what the request asks; (4) it is written in {name}, in the {script} script "
                   "(an answer in another language or script is a bad answer).")
    prompts: JudgePrompts = JudgePrompts()

    @model_validator(mode="after")
    def _endpoint(self) -> Judge:
        if self.enabled and not self.base_url:
            raise ValueError("enabled is true but base_url is empty: set it to an OpenAI-compatible endpoint")
        return self


class Evaluate(Section):
    finetuned: str = "models/finetuned"
    corpus: str = "data/split/corpus_val.jsonl"
    parallel: str = "data/split/parallel_test.jsonl"
    test: str = "data/split/test.jsonl"
    prompts: str = "languages/{lang}/prompts.jsonl"
    max_docs: PositiveInt = 100
    max_pairs: PositiveInt = 50
    max_instructions: PositiveInt = 50
    max_prompts: PositiveInt = 20
    timing_prompts: PositiveInt = 5
    max_new_tokens: PositiveInt = 48
    batch_size: PositiveInt = 8
    lm_eval_tasks: list[str] = Field(default_factory=list)
    lm_eval_chat_template: bool = False
    sib200: str | None = "data/samples/eval/sib200/{flores}"  # null: no SIB-200 topic classification
    sib200_shots: NonNegInt = 0
    max_sib200: PositiveInt = 204
    min_examples: MinExamples = MinExamples()
    judge: Judge = Judge()


# ------------------------------------------------------------------ generation

class Generation(Section):
    """How the models answer (chat, evaluate's samples, exports): written into each saved model's
    ``generation_config.json`` by pretrain and finetune (:mod:`langlift.generation`)."""

    do_sample: bool = True                                         # false: greedy (temperature, top_p, top_k unused)
    temperature: PositiveFloat = 0.7                               # AzLlama's app: 0.9 (docs/chat.md: measured)
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 0.95
    top_k: NonNegInt = 50                                          # 0: no top-k cut
    repetition_penalty: Annotated[float, Field(ge=1.0)] = 1.2     # 1: none
    no_repeat_ngram_size: NonNegInt = 4                            # n: no n-gram twice (no token n+1 times in a row); 0: off
    max_new_tokens: PositiveInt = 256                              # capped by the context minus the prompt
    seed: NonNegInt = 1234                                         # sampling seed of the chat and evaluate's samples


# ------------------------------------------------------------------ language

class Normalization(Section):
    """The language's text normalisation rules (:func:`langlift.text.normalize`), applied by dedupe."""

    niqqud: Literal["keep", "strip"] = "keep"          # Hebrew points and cantillation marks
    geresh: Literal["keep", "fold"] = "keep"           # ASCII ' and " between Hebrew letters -> ׳ ״
    apostrophes: Literal["keep", "uz"] = "keep"        # Uzbek oʻ gʻ (U+02BB) and tutuq belgisi (U+02BC)
    other_script: Literal["keep", "convert", "drop"] = "keep"  # documents in another script than language.script


class Language(Section):
    """The target language as the stages see it."""

    code: str = Field(pattern=r"^[a-z]{2,3}$", description="ISO 639-1 (the language-ID label, `lang` of records)")
    flores: str = Field(pattern=r"^[a-z]{3}_[A-Z][a-z]{3}$", description="FLORES-200 code (NLLB, lm-eval task names)")
    name: str = Field(min_length=1)
    script: str = Field(pattern=r"^[A-Z][a-z]{3}$", description="ISO 15924 script code")
    direction: Literal["ltr", "rtl"] = "ltr"
    normalize: Normalization = Normalization()

    def text_options(self) -> dict[str, str]:
        """Keyword arguments of :func:`langlift.text.normalize` for text in this language."""
        rules = self.normalize
        options = {"niqqud": rules.niqqud, "geresh": rules.geresh, "apostrophes": rules.apostrophes}
        if rules.other_script == "convert":
            options["convert"] = f"{self.code}-{self.script}"
        return options


class LanguageFile(Language):
    """``languages/<code>/language.yaml``: everything language-specific, read when ``language: <code>``.

    ``sources`` are appended to ``fetch.sources``; ``template``, ``chat``, ``blocked_keywords`` and
    ``refusals`` become ``finetune.templates.<code>``, ``pretrain.chat`` and ``generate.filters.*.<code>``;
    ``params`` holds any other params defaults for this language. params.yaml wins over all of them.
    """

    sources: list[FetchSource] = Field(default_factory=list)
    template: PromptTemplate
    chat: ChatMarkers
    blocked_keywords: list[str] = Field(default_factory=list)
    refusals: list[str] = Field(default_factory=list)
    generation: Generation = Generation()  # only the keys written here override params' generation
    params: dict[str, Any] = Field(default_factory=dict)


# ------------------------------------------------------------------ the file

class Params(Section):
    """The whole of ``params.yaml``."""

    seed: NonNegInt = 1234
    lr: PositiveFloat = 3.0e-3
    epochs: PositiveFloat = 3
    base_model: str = "models/base"
    language: Language
    fetch: Fetch = Fetch()
    translate: Translate = Translate()
    generate: Generate = Generate()
    dedupe: Dedupe = Dedupe()
    split: Split = Split()
    pretrain: Pretrain = Pretrain()
    hardware: Hardware = Hardware()
    finetune: Finetune = Finetune()
    evaluate: Evaluate = Evaluate()
    generation: Generation = Generation()


# ------------------------------------------------------------------ loading and errors

def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names valid at ``loc`` (the path of an unknown key, without the key itself)."""
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        model = _model_in(field.annotation)
    return list(model.model_fields) if model else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The Section type inside an annotation like ``Lora``, ``list[EvalSet]`` or ``dict[str, ChatPrompt]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found:
            return found
    return None


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# common names from other tools for our keys: the nearest-key hint cannot guess these by spelling
SYNONYMS = {"rank": "r", "lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout",
            "learning_rate": "lr", "num_epochs": "epochs", "num_train_epochs": "epochs"}


TYPE_TAGS = {"int", "float", "str", "bool", "none", "list", "dict", "tuple"}


def _strip_branches(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """``loc`` without pydantic's union-branch tags (``int``, ``literal['auto']``, ``constrained-int``…)."""
    return tuple(p for p in loc if isinstance(p, int) or not ("[" in p or p in TYPE_TAGS or p.startswith("constrained-")))


def describe(error: ValidationError, path: str | Path = DEFAULT_PATH, model: type[BaseModel] | None = None) -> str:
    """One line for the first problem in ``error``: where, what, and the nearest valid key for a typo."""
    errors = error.errors()
    loc = _strip_branches(tuple(errors[0]["loc"]))
    key = _dotted(loc)
    if errors[0]["type"] == "extra_forbidden":
        valid = _fields_at(model or Params, loc[:-1])
        name = str(loc[-1])
        near = [SYNONYMS[name]] if SYNONYMS.get(name) in valid else difflib.get_close_matches(name, valid, 1, 0.5)
        hint = f" (did you mean {_dotted(loc[:-1] + (near[0],))}?)" if near else ""
        return f"{path}: unknown key {key}{hint}"
    same = [e for e in errors if _strip_branches(tuple(e["loc"])) == loc]
    msgs = list(dict.fromkeys(e["msg"].removeprefix("Value error, ") for e in same))
    msgs = msgs[:1] + [m.removeprefix("Input should be ") for m in msgs[1:]]
    shown = "" if errors[0]["type"] in ("missing", "value_error") else f" (got {errors[0].get('input')!r})"
    more = f"; {len(errors) - len(same)} more problem(s)" if len(errors) > len(same) else ""
    return f"{path}: {key}: {' or '.join(msgs)}{shown}{more}"


def validate(raw: dict[str, Any], path: str | Path = DEFAULT_PATH) -> Params:
    """Validate a params mapping (as read from YAML); a problem is a one-line :class:`LangliftError`.

    ``language`` is a code (read from ``languages/<code>/language.yaml`` beside the params file) or the same
    mapping inline; its settings are defaults that the params mapping overrides, and ``{lang}`` in any string
    becomes the language code.
    """
    raw = with_language(raw, Path(path).parent)
    try:
        params = Params.model_validate(raw)
    except ValidationError as e:
        raise LangliftError(describe(e, path)) from None
    # defaults hold {lang} and {flores} too
    return Params.model_validate(_fill(params.model_dump(), params.language.code, params.language.flores))


def language_file(code: str, root: Path = Path(".")) -> Path:
    """Where the settings of language ``code`` live."""
    return root / LANGUAGES_DIR / code / "language.yaml"


def with_language(raw: dict[str, Any], root: Path = Path(".")) -> dict[str, Any]:
    """``raw`` with its language resolved: the language's params under it, ``{lang}`` filled in."""
    spec = raw.get("language")
    if isinstance(spec, str):
        where = language_file(spec, root)
        if not where.is_file():
            known = sorted(p.parent.name for p in (root / LANGUAGES_DIR).glob("*/language.yaml"))
            raise LangliftError(f"params.yaml: language: no {where} (languages here: {', '.join(known)}; "
                                f"add one with `python -m langlift new-language {spec} ...`)")
        spec = _read_yaml(where)
    elif isinstance(spec, dict) and set(spec) - set(Language.model_fields):
        where = "params.yaml: language"  # the language written inline
    else:
        return raw  # already resolved (a dumped Params validates again as it is), or an error for the schema
    try:
        lang = LanguageFile.model_validate(spec)
    except ValidationError as e:
        raise LangliftError(describe(e, where, LanguageFile)) from None
    layer = _deep_merge({
        "pretrain": {"chat": lang.chat.model_dump()},
        "finetune": {"templates": {lang.code: lang.template.model_dump()}},
        "generate": {"filters": {"blocked_keywords": {lang.code: lang.blocked_keywords},
                                 "refusals": {lang.code: lang.refusals}}},
        "generation": lang.generation.model_dump(exclude_unset=True),
    }, lang.params)
    own = {k: v for k, v in raw.items() if k != "language"}
    overrides = _leaves({**lang.params, "generation": lang.generation.model_dump(exclude_unset=True)})
    for key in sorted(overrides & _leaves(own)):
        log.warning("%s sets %s, and params.yaml sets it too: params.yaml wins", where, key)
    merged = _deep_merge(layer, own)
    fetch = merged.setdefault("fetch", {})
    fetch["sources"] = [*(fetch.get("sources") or []), *(src.model_dump(exclude_unset=True) for src in lang.sources)]
    merged["language"] = lang.model_dump(include=set(Language.model_fields))
    return merged


def _leaves(node: Any, prefix: str = "") -> set[str]:
    """The dotted keys of the non-mapping values in ``node``."""
    if not isinstance(node, dict):
        return {prefix} if prefix else set()
    return set().union(*(_leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"}
                         for k, v in node.items()))


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: mappings merge key by key, anything else in ``over`` replaces."""
    out = dict(base)
    for key, value in over.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _fill(node: Any, code: str, flores: str) -> Any:
    """``{lang}`` replaced by ``code`` and ``{flores}`` by ``flores`` in every string of ``node``."""
    if isinstance(node, str):
        return node.replace("{lang}", code).replace("{flores}", flores)
    if isinstance(node, dict):
        return {k: _fill(v, code, flores) for k, v in node.items()}
    if isinstance(node, list):
        return [_fill(v, code, flores) for v in node]
    return node


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LangliftError(f"{path}: not found (run from the repository root)") from None
    except yaml.YAMLError as e:
        raise LangliftError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise LangliftError(f"{path}: expected a mapping at the top level")
    return raw


def load(path: str | Path = DEFAULT_PATH) -> Params:
    """Read and validate the params file; a missing, malformed or invalid file is a :class:`LangliftError`."""
    path = Path(path)
    if not path.is_file():
        raise LangliftError(f"{path}: params file not found (run from the repository root)")
    return validate(_read_yaml(path), path)
