"""Chat templates: the Jinja template a checkpoint carries (tokenizer_config.json or GGUF metadata),
rendered with jinja2 the way transformers renders it (sandboxed, trim_blocks, lstrip_blocks,
`raise_exception`, `strftime_now`), so the same messages give the same prompt text.

Checkpoints without a template get the Llama 2 chat format ([INST] ... [/INST], <<SYS>>), as Meta's
reference code builds it.
"""
from __future__ import annotations

from datetime import datetime
from functools import lru_cache

from ..errors import InputError, TokenizerError

# Meta's Llama 2 chat format (llama/generation.py), as the HF Llama 2 chat checkpoints template it.
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)


@lru_cache(maxsize=16)
def _compile(template: str):
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TokenizerError(f"chat template: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.TemplateError as e:
        raise TokenizerError(f"chat template does not compile: {e}") from None


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    import json

    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def render_chat(template: str | None, messages, add_generation_prompt: bool = False, **extra) -> str:
    """Render `messages` ([{"role": ..., "content": ...}, ...]) to the prompt text."""
    import jinja2

    if not isinstance(messages, (list, tuple)) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content", ""), str)
            for m in messages):
        raise InputError("messages: expected a list of {'role': str, 'content': str} dicts")
    try:
        return _compile(template or LLAMA2_CHAT_TEMPLATE).render(
            messages=list(messages), add_generation_prompt=add_generation_prompt, **extra)
    except TokenizerError:
        raise
    except jinja2.TemplateError as e:
        raise TokenizerError(f"chat template failed: {e}") from None


def apply_chat_template(tokenizer, messages, add_generation_prompt: bool = False, tokenize: bool = True,
                        chat_template: str | None = None, **extra):
    """transformers' apply_chat_template: -> ids (tokenize=True) or the prompt text. The template
    writes special tokens (BOS, <|im_start|>) itself, so the text is encoded without adding them."""
    template = chat_template or getattr(tokenizer, "chat_template", None)
    specials = {"bos_token": getattr(tokenizer, "bos_token", None) or "",
                "eos_token": getattr(tokenizer, "eos_token", None) or ""}
    specials.update(extra)
    text = render_chat(template, messages, add_generation_prompt=add_generation_prompt, **specials)
    if not tokenize:
        return text
    return tokenizer.encode(text, add_special_tokens=False)
