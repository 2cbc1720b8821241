"""lm-evaluation-harness as the engine: the task YAMLs in ``tasks/`` rendered over this run's files,
run offline against an in-memory model through lm-eval's ``HFLM``; built-in lm-eval tasks on request.

The harness produces the model outputs, its own perplexity metrics and the SIB-200 accuracy; langlift
scores the generated text (sacrebleu BLEU/chrF++ with signatures, EM/F1) in :mod:`langlift.evaluate.metrics`
and keeps every scored example (id, hypothesis, reference) for the files that let anyone recompute them.
"""

from __future__ import annotations

import functools
import logging
import string
from pathlib import Path
from typing import Any

from langlift import hide_log_messages
from langlift.errors import LangliftError
from langlift.evaluate import metrics
from langlift.evaluate.inputs import EvalSets, Sib200
from langlift.evaluate.models import LoadedModel
from langlift.io import write_jsonl
from langlift.params import Evaluate, Language

log = logging.getLogger(__name__)
# lm-eval warns twice whenever HFLM is given a loaded model rather than a name; that is deliberate here (each model
# is loaded once, adapter applied, for every task).
hide_log_messages("lm_eval.models.huggingface", "is not of type `str`", "Passed an already-initialized model")

TASKS_DIR = Path(__file__).parent / "tasks"
CORE_TASKS = ("langlift_perplexity", "langlift_translate", "langlift_instructions",  # always run, scored here
              "langlift_sib200")  # when the language has SIB-200 data
Examples = dict[str, list[dict[str, Any]]]  # per task: the scored examples, {id, source, hypothesis, reference}


def local_task_names() -> list[str]:
    """The other YAMLs in ``tasks/``: run when listed in ``evaluate.lm_eval_tasks``, scored by lm-eval."""
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml") if p.stem not in CORE_TASKS)


def render_task(template: str, **values: Any) -> dict[str, Any]:
    """A task config from ``tasks/<template>.yaml`` with its ``${name}`` placeholders filled.

    A string that is exactly one placeholder takes the value as is (numbers stay numbers)."""
    from lm_eval.tasks._yaml_loader import load_yaml  # lm-eval's loader: `!function` tags work

    path = TASKS_DIR / f"{template}.yaml"
    config = load_yaml(path, resolve_func=True)

    def fill(node: Any) -> Any:
        if isinstance(node, dict):
            return {fill(k): fill(v) for k, v in node.items()}
        if isinstance(node, list):
            return [fill(v) for v in node]
        if isinstance(node, str) and "$" in node:
            name = node[2:-1]
            if node == f"${{{name}}}" and name in values:
                return values[name]
            try:
                return string.Template(node).substitute({k: str(v) for k, v in values.items()})
            except (KeyError, ValueError) as e:
                raise LangliftError(f"{path}: placeholder {e} has no value") from None
        return node

    return fill(config)


class Harness:
    """This run's lm-eval tasks over the evaluation sets, written once to ``workdir``."""

    def __init__(
        self, sets: EvalSets, language: Language, cfg: Evaluate, workdir: Path, seed: int,
        input_marker: str = "",
    ):
        """``input_marker`` goes before an instruction's ``input``, as the finetune stage formatted it."""
        self.sets, self.cfg, self.seed = sets, cfg, seed
        self.lang = language.code
        files = {name: workdir / f"{name}.jsonl" for name in ("texts", "pairs", "instructions")}
        write_jsonl(files["texts"], sets.texts)
        write_jsonl(files["pairs"], sets.pairs)
        write_jsonl(files["instructions"], sets.instructions)
        common = {"cache_dir": str(workdir / "datasets_cache"), "max_new_tokens": cfg.max_new_tokens}
        names = {"en": "English", "xx": language.name}
        self.ppl_task = render_task("langlift_perplexity", data_file=str(files["texts"]), **common)
        self.translate_tasks = {
            f"{a}_{b}".replace("xx", self.lang): render_task(
                "langlift_translate", direction=f"{a}_{b}".replace("xx", self.lang), data_file=str(files["pairs"]),
                source_name=names[a], target_name=names[b], source_field=a, target_field=b, **common,
            )
            for a, b in (("en", "xx"), ("xx", "en"))
        }
        self.instructions_task = render_task(
            "langlift_instructions", data_file=str(files["instructions"]), input_marker=input_marker, **common
        )
        self.sib200_task = _sib200_task(sets.sib200, workdir, cfg.sib200_shots, common) if sets.sib200 else None
        self.signatures: dict[str, str] = {}  # sacrebleu's, set by generations()
        # listed tasks: a YAML of tasks/ (placeholders below) or one of lm-eval's own
        placeholders = {
            **common, "texts_file": str(files["texts"]), "pairs_file": str(files["pairs"]),
            "instructions_file": str(files["instructions"]), "input_marker": input_marker,
            "language_code": self.lang, "language_name": names["xx"],
        }
        listed, local = cfg.lm_eval_tasks, set(local_task_names())
        self.local_tasks = [render_task(name, **placeholders) for name in listed if name in local]
        self.builtin_tasks = [name for name in listed if name not in local]
        self.manager = self._builtin_manager() if self.builtin_tasks else None

    def _evaluate(self, lm: Any, tasks: list[Any], task_manager: Any = None, **kwargs: Any) -> dict[str, Any]:
        from lm_eval import simple_evaluate
        from lm_eval.tasks import TaskManager

        results = simple_evaluate(
            lm, tasks=tasks, task_manager=task_manager or TaskManager(include_defaults=False),
            bootstrap_iters=0, log_samples=True, random_seed=self.seed, numpy_random_seed=self.seed,
            torch_random_seed=self.seed, fewshot_random_seed=self.seed, **kwargs,
        )
        if results is None:  # only rank 0 gets results; evaluation runs in one process here
            raise LangliftError("lm-eval returned no results (is this a multi-process launch?)")
        return results

    def _lm(self, loaded: LoadedModel, add_bos_token: bool | None = False) -> Any:
        """lm-eval's HF model over the loaded one. ``add_bos_token=False``: text is encoded without
        special tokens, so a chat-templated prompt gets exactly the tokens training saw
        (``apply_chat_template(tokenize=True)``, where the template itself carries any BOS)."""
        from lm_eval.models.huggingface import HFLM

        return HFLM(
            pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=self.cfg.batch_size,
            add_bos_token=add_bos_token,
        )

    def perplexity(self, loaded: LoadedModel) -> dict[str, float]:
        """Token, word and byte perplexity and bits per byte of the held-out texts.

        The text is encoded without special tokens, so BOS is only the first window's context, never a
        scored token. ``ppl`` is per token of this model's tokenizer (not comparable across tokenizers),
        computed here from lm-eval's summed log-likelihoods; ``word_ppl`` (per whitespace word),
        ``byte_ppl`` and ``bits_per_byte`` (per UTF-8 byte, comparable across tokenizers) are lm-eval's."""
        results = self._evaluate(self._lm(loaded), [self.ppl_task])
        task = self.ppl_task["task"]
        scores, samples = results["results"][task], results["samples"][task]
        sum_ll = sum(float(s["filtered_resps"][0]) for s in samples)
        n_tokens = sum(len(loaded.tokenizer.encode(s["doc"]["text"], add_special_tokens=False)) for s in samples)
        return {
            "ppl": metrics.perplexity(sum_ll, n_tokens),
            "word_ppl": float(scores["word_perplexity,none"]),
            "byte_ppl": float(scores["byte_perplexity,none"]),
            "bits_per_byte": float(scores["bits_per_byte,none"]),
        }

    def task_names(self) -> list[str]:
        """Every lm-eval task this run evaluates."""
        local = [self.ppl_task, *self.translate_tasks.values(), self.instructions_task]
        local += [self.sib200_task] if self.sib200_task else []
        return [t["task"] for t in local + self.local_tasks] + self.builtin_tasks

    def generations(self, loaded: LoadedModel) -> tuple[dict[str, float], Examples]:
        """Translation (both directions) and instruction answers through the chat template, scored
        here: BLEU/chrF++ per direction (signatures in ``self.signatures``), EM/F1/chrF++ for the
        instructions; and the scored examples (``translate_<src>_<tgt>``, ``instructions``), answers and
        references on one line each (:func:`~langlift.evaluate.metrics.one_line`) as they were scored."""
        tasks = [*self.translate_tasks.values(), self.instructions_task]
        results = self._evaluate(self._lm(loaded), tasks, apply_chat_template=True)
        out: dict[str, float] = {}
        examples: Examples = {}
        by_id = {p["id"]: p for p in self.sets.pairs}
        for direction, task in self.translate_tasks.items():
            source, target = ("xx", "en") if direction.endswith("_en") else ("en", "xx")
            rows = _examples(_outputs(results, task["task"], list(by_id)),
                             {i: (p[source], p[target]) for i, p in by_id.items()})
            hyps, refs = [r["hypothesis"] for r in rows], [r["reference"] for r in rows]
            scores, self.signatures = metrics.translation_scores(hyps, refs, direction.split("_")[1])
            out[f"bleu_{direction}"], out[f"chrf_{direction}"] = scores["bleu"], scores["chrf"]
            examples[f"translate_{direction}"] = rows
        by_id = {r["id"]: r for r in self.sets.instructions}
        rows = _examples(_outputs(results, self.instructions_task["task"], list(by_id)),
                         {i: (_user_turn(r), r["output"]) for i, r in by_id.items()})
        scores = metrics.instruction_scores([r["hypothesis"] for r in rows], [r["reference"] for r in rows], self.lang)
        out.update({f"instr_{k}": v for k, v in scores.items()})
        examples["instructions"] = rows
        return out, examples

    def sib200(self, loaded: LoadedModel) -> tuple[dict[str, float], Examples]:
        """SIB-200 accuracy (percent; lm-eval's multiple-choice ``acc``: the label of highest log-likelihood
        after the prompt is the prediction) and each test sentence's prediction, with every label's
        log-likelihood. Nothing when the language has no SIB-200 data."""
        if self.sib200_task is None:
            return {}, {}
        task = self.sib200_task["task"]
        results = self._evaluate(self._lm(loaded, add_bos_token=None), [self.sib200_task])
        labels = self.sets.sib200.labels
        lls = {s["doc"]["id"]: [float(r[0]) for r in s["filtered_resps"]] for s in results["samples"][task]}
        rows = []
        for doc in self.sets.sib200.test:
            scores = lls[doc["id"]]
            best = scores.index(max(scores))  # the first of equals, as numpy's argmax in lm-eval
            rows.append({"id": doc["id"], "source": doc["text"], "hypothesis": labels[best], "reference": doc["label"],
                         "loglikelihoods": dict(zip(labels, scores, strict=True))})
        return {"sib200_acc": 100 * float(results["results"][task]["acc,none"])}, {"sib200": rows}

    def _builtin_manager(self) -> Any:
        """lm-eval's task index, once the listed built-in tasks are known to exist and to load."""
        names = self.builtin_tasks
        manager = _builtin_index()
        unknown = [n for n in names if n not in manager.all_tasks]
        if unknown:
            raise LangliftError(f"params.yaml: evaluate.lm_eval_tasks: unknown lm-eval task(s) {unknown}")
        try:  # loading fetches the datasets: fail before any model is evaluated when that cannot work
            manager.load(list(names))
        except OSError as e:  # datasets' ConnectionError and the hub's offline errors are OSErrors
            raise LangliftError(
                f"lm-eval tasks {names}: cannot load their data ({type(e).__name__}: {str(e).splitlines()[0]}); "
                "built-in tasks download datasets from the Hugging Face hub: run with network access "
                "(HF_DATASETS_OFFLINE unset) or remove them from evaluate.lm_eval_tasks"
            ) from None
        return manager

    def listed(self, loaded: LoadedModel) -> dict[str, float]:
        """The tasks listed in ``evaluate.lm_eval_tasks``, scored by lm-eval's own metrics, flattened to
        ``<task>.<metric>`` (``_<filter>`` appended when the filter is not ``none``)."""
        if not (self.local_tasks or self.builtin_tasks):
            return {}
        results = self._evaluate(  # the tokenizer's own special tokens, as lm-eval runs tasks by default
            self._lm(loaded, add_bos_token=None), [*self.local_tasks, *self.builtin_tasks], task_manager=self.manager,
            apply_chat_template=self.cfg.lm_eval_chat_template,
        )
        flat: dict[str, float] = {}
        for task, scores in results["results"].items():
            for key, value in scores.items():
                metric, _, filt = key.partition(",")
                if isinstance(value, (int, float)) and not metric.endswith("_stderr") and filt:
                    flat[f"{task}.{metric}" + ("" if filt == "none" else f"_{filt}")] = float(value)
        return flat


def _sib200_task(sib: Sib200, workdir: Path, shots: int, common: dict[str, Any]) -> dict[str, Any]:
    """The SIB-200 task over this run's train and test sentences."""
    files = {split: workdir / f"sib200_{split}.jsonl" for split in ("train", "test")}
    write_jsonl(files["train"], sib.train)
    write_jsonl(files["test"], sib.test)
    return render_task("langlift_sib200", train_file=str(files["train"]), test_file=str(files["test"]),
                       labels=sib.labels, label_list=", ".join(sib.labels), num_fewshot=shots, **common)


def _user_turn(rec: dict[str, Any]) -> str:
    """An instruction record's instruction and (when there is one) input, as a reader sees the task."""
    return rec["instruction"].strip() + (f"\n\n{rec['input'].strip()}" if rec.get("input", "").strip() else "")


def _examples(answers: dict[str, str], texts: dict[str, tuple[str, str]]) -> list[dict[str, Any]]:
    """``{id, source, hypothesis, reference}`` per answer, hypothesis and reference each on one line."""
    return [{"id": i, "source": texts[i][0], "hypothesis": metrics.one_line(a), "reference": metrics.one_line(texts[i][1])}
            for i, a in answers.items()]


@functools.cache
def _builtin_index() -> Any:
    """lm-eval's index of its own task YAMLs (thousands of files: built once per process)."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


def _outputs(results: dict[str, Any], task: str, ids: list[str]) -> dict[str, str]:
    """The model's answer per record id, in the order of ``ids``; every id must have one."""
    got = {s["doc"]["id"]: str(s["filtered_resps"][0]).strip() for s in results["samples"][task]}
    missing = [i for i in ids if i not in got]
    if missing:
        raise LangliftError(f"lm-eval task {task}: no output for {len(missing)} record(s), e.g. id {missing[0]}")
    return {i: got[i] for i in ids}
