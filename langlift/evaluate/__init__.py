"""The evaluate stage: every model measured the same way, with lm-evaluation-harness as the engine.

- :mod:`~langlift.evaluate.inputs`: the evaluation sets, checked (ids, schema, empty files), SIB-200
- :mod:`~langlift.evaluate.models`: base and fine-tuned (adapter or full) models
- :mod:`~langlift.evaluate.harness`: lm-eval tasks from ``tasks/*.yaml`` over this run's files
- :mod:`~langlift.evaluate.metrics`: BLEU/chrF++ (sacrebleu), EM/token F1, perplexity
- :mod:`~langlift.evaluate.timing`: tokens/s, time to first token, peak memory
- :mod:`~langlift.evaluate.report`: flat metrics with deltas and set sizes, every scored example, plots,
  the samples report
- :mod:`~langlift.evaluate.judge`: an LLM judge (pairwise, rubric scores, reference answers), cached
- :mod:`~langlift.evaluate.runner`: the stage's work, end to end
"""
