"""Export of a fine-tuned model to where it is used: the Hugging Face hub (:mod:`.hub`) and GGUF for
llama.cpp / Ollama (:mod:`.gguf`). Both start from :mod:`.model`: the adapter or the merged model, a
tokenizer whose chat template loads outside TRL, and a checked generation config.
"""
