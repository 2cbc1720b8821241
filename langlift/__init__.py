"""langlift: turn an English instruction set and a monolingual corpus into an instruction-following
LLM for a low-resource language, as a DVC pipeline."""

__version__ = "0.1.0"
