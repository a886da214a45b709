"""pipeline("text-generation"), as in the transformers docs:

    pipe = pipeline("text-generation", model="path/or/repo")
    pipe("Once upon a time", max_new_tokens=40, do_sample=True, seed=0, stop_strings=["."])
    -> [{"generated_text": "Once upon a time ... ."}]

Defaults as transformers': the call's arguments, then the checkpoint's generation_config.json, then
the pipeline's own (256 new tokens, sampling at temperature 0.7). Sampled text differs from
transformers' (its draws come from torch's generator; ours from a seeded NumPy one: pass seed=).

A list of chat messages as input is rendered with the chat template and the reply comes back as the
conversation with the assistant's message appended, as transformers does.
"""
from __future__ import annotations

from ..errors import InputError
from ..hub import resolve_model
from ..model.causal_lm import LlamaForCausalLM
from ..tokenizer.auto import AutoTokenizer
from .stream import TextGeneration

# transformers' text-generation pipeline defaults (TextGenerationPipeline._default_generation_config):
# used for what neither the call nor the checkpoint's generation_config.json sets
PIPELINE_DEFAULTS = {"max_new_tokens": 256, "do_sample": True, "temperature": 0.7}


class TextGenerationPipeline:
    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    def __call__(self, text_inputs, return_full_text: bool = True, **generate_kwargs):
        if isinstance(text_inputs, str) or _is_chat(text_inputs):
            return self._one(text_inputs, return_full_text, generate_kwargs)
        if isinstance(text_inputs, (list, tuple)):
            return [self._one(t, return_full_text, generate_kwargs) for t in text_inputs]
        raise InputError("text-generation input: a string, a list of strings, or a list of chat messages")

    def _one(self, prompt, return_full_text, kwargs):
        tok = self.tokenizer
        if _is_chat(prompt):
            ids = tok.apply_chat_template(list(prompt), add_generation_prompt=True)
        elif isinstance(prompt, str):
            ids = tok.encode(prompt) or [tok.bos_token_id]
        else:
            raise InputError(f"text-generation input: expected a string, got {type(prompt).__name__}")
        from .generate import model_defaults

        kwargs = {**{k: v for k, v in PIPELINE_DEFAULTS.items() if k not in model_defaults(self.model)}, **kwargs}
        if kwargs.get("max_length") is not None and "max_new_tokens" not in kwargs:
            kwargs["max_new_tokens"] = max(0, kwargs["max_length"] - len(ids))
        kwargs.pop("max_length", None)
        if kwargs.get("num_beams", 1) > 1 or kwargs.get("num_return_sequences", 1) > 1:
            from .api import generate  # several sequences per prompt: one generate() call, not a stream

            rows = generate(self.model, [ids], tokenizer=tok, **kwargs)
            texts = [tok.decode(row[len(ids):], skip_special_tokens=True) for row in rows]
        else:
            texts = ["".join(TextGeneration(self.model, tok).stream(ids, **kwargs))]
        if _is_chat(prompt):
            return [{"generated_text": list(prompt) + [{"role": "assistant", "content": t}]} for t in texts]
        return [{"generated_text": (prompt + t) if return_full_text else t} for t in texts]


def _is_chat(x) -> bool:
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(m, dict) and "role" in m for m in x)


def pipeline(task: str, model=None, tokenizer=None, **load_kwargs) -> TextGenerationPipeline:
    """Only "text-generation". `model`: a path, repo id, or a loaded LlamaForCausalLM (then give
    `tokenizer` too, or a path it can be found at)."""
    if task != "text-generation":
        raise InputError(f"pipeline: only 'text-generation' is supported, got {task!r}")
    if isinstance(model, LlamaForCausalLM):
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(model.name_or_path)
        elif not hasattr(tokenizer, "encode"):
            tokenizer = AutoTokenizer.from_pretrained(resolve_model(tokenizer))
        return TextGenerationPipeline(model, tokenizer)
    path = resolve_model(model)
    lm = LlamaForCausalLM.from_pretrained(path, **load_kwargs)
    tok = tokenizer if hasattr(tokenizer, "encode") else AutoTokenizer.from_pretrained(resolve_model(tokenizer) if tokenizer else path)
    return TextGenerationPipeline(lm, tok)
