"""Chat templates: the Jinja template a checkpoint carries (tokenizer_config.json or GGUF metadata),
rendered with jinja2 the way transformers renders it (sandboxed, trim_blocks, lstrip_blocks,
`raise_exception`, `strftime_now`), so the same messages give the same prompt text.

Checkpoints without a template get the Llama 2 chat format ([INST] ... [/INST], <<SYS>>), as Meta's
reference code builds it.
"""
from __future__ import annotations

import re
import sys
import time
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


# Limits on rendering: a template is code from the checkpoint. The sandbox stops it reaching Python
# internals; these stop it spending unbounded time or memory (a loop of 10**10 steps, a string doubled
# forty times). Real templates render in milliseconds and write kilobytes.
RENDER_TIME_LIMIT = 5.0  # seconds
MAX_OUTPUT_CHARS = 8 << 20  # characters of rendered text, and of any one string or list the template builds


class TemplateLimitError(TokenizerError):
    """A chat template exceeded RENDER_TIME_LIMIT or MAX_OUTPUT_CHARS."""


def _too_big(n: int, what: str):
    return TemplateLimitError(f"chat template: {what} of {n} items exceeds the limit of {MAX_OUTPUT_CHARS} "
                              f"(llamacpu.tokenizer.chat.MAX_OUTPUT_CHARS)")


def _check_size(value, what: str = "a value"):
    if isinstance(value, (str, list, tuple)) and len(value) > MAX_OUTPUT_CHARS:
        raise _too_big(len(value), what)
    return value


_WIDTH = re.compile(r"\d+")


def _environment_class():
    import operator

    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class LimitedEnvironment(ImmutableSandboxedEnvironment):
        """The sandbox transformers renders in, with the operators and calls that can build a huge value
        in one step (`'x' * 10**10`, `2 ** 10**9`, `'%0999999999d' % 1`, `'x'.ljust(10**10)`) bounded."""

        intercepted_binops = frozenset(["*", "**", "+", "%"])

        def call_binop(self, context, op, left, right):
            if op == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_OUTPUT_CHARS:
                        raise _too_big(len(seq) * n, "a repeated string or list")
            elif op == "**":
                if isinstance(left, int) and isinstance(right, int) and right > 0 and \
                        abs(left) > 1 and right * abs(left).bit_length() > 8 * MAX_OUTPUT_CHARS:
                    raise _too_big(right * abs(left).bit_length(), "a power (bits)")
            elif op == "%" and isinstance(left, str):
                _check_format(left, right)
            result = {"*": operator.mul, "**": operator.pow, "+": operator.add, "%": operator.mod}[op](left, right)
            return _check_size(result, "a string or list")

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja's own signature)
            if getattr(__obj, "__self__", None).__class__ is str:  # 'x'.ljust(n), .center, .zfill, .expandtabs
                for a in list(args) + list(kwargs.values()):
                    if isinstance(a, int) and a > MAX_OUTPUT_CHARS:
                        raise _too_big(a, f"str.{getattr(__obj, '__name__', '?')} width")
                method, text = getattr(__obj, "__name__", ""), __obj.__self__
                if method == "replace" and len(args) >= 2 and all(isinstance(a, str) for a in args[:2]):
                    old, new = args[:2]
                    _check_size_bound(len(text) + (text.count(old) if old else len(text) + 1) * len(new),
                                      "a replaced string")
                elif method == "join" and args and isinstance(args[0], (list, tuple)):
                    _check_size_bound(sum(len(x) for x in args[0] if isinstance(x, str)) + len(text) * len(args[0]),
                                      "a joined string")
            return _check_size(super().call(__context, __obj, *args, **kwargs), "a call's result")

    return LimitedEnvironment


def _check_format(fmt: str, args):
    """`fmt % args` and the format filter: a width or precision beyond the limit allocates it."""
    values = args if isinstance(args, tuple) else (args,)
    if any(int(w) > MAX_OUTPUT_CHARS for w in _WIDTH.findall(fmt)) or (
            "*" in fmt and any(isinstance(v, int) and v > MAX_OUTPUT_CHARS for v in values)):
        raise _too_big(MAX_OUTPUT_CHARS + 1, "a format width")


@lru_cache(maxsize=16)
def _compile(template: str):
    import jinja2

    def raise_exception(message):
        raise TokenizerError(f"chat template: {message}")

    env = _environment_class()(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    for name in ("center", "indent", "format", "join", "replace", "truncate", "wordwrap"):
        env.filters[name] = _bounded_filter(env.filters[name], name)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        compiled = env.from_string(template)
    except jinja2.TemplateError as e:
        raise TokenizerError(f"chat template does not compile: {e}") from None
    except (RecursionError, MemoryError, ValueError, TypeError) as e:  # pathological nesting in the source
        raise TokenizerError(f"chat template does not compile: {type(e).__name__}: {e}") from None
    # `a ~ b` compiles to a call of str_join/markup_join from the template's module namespace, outside
    # the sandbox's operator hooks: bound it there (`{% set ns.s = ns.s ~ ns.s %}` doubles a string)
    names = compiled.root_render_func.__globals__
    for join in ("str_join", "markup_join"):
        if join in names:
            names[join] = _bounded_concat(names[join])
    return compiled


def _bounded_concat(join):
    def bounded(seq):
        parts = list(seq)
        _check_size_bound(sum(len(p) if isinstance(p, str) else 0 for p in parts), "a ~ concatenation")
        return join(parts)

    return bounded


def _bounded_filter(f, name):
    """A jinja2 filter whose result size is checked before it is built (from its arguments)."""
    import functools

    @functools.wraps(f)
    def bounded(*args, **kwargs):
        first = next((i for i, a in enumerate(args) if not hasattr(a, "environment")), None)  # skip the context
        if name == "join" and first is not None and not isinstance(args[first], (str, list, tuple)):
            args = args[:first] + (list(args[first]),) + args[first + 1:]  # a range or generator: measure it
        values = list(args[first:] if first is not None else ()) + list(kwargs.values())
        if name == "format" and values and isinstance(values[0], str):
            _check_format(values[0], tuple(values[1:]))
        elif name == "join" and values:
            items = values[0]
            if isinstance(items, (list, tuple, str)):
                sep = values[1] if len(values) > 1 and isinstance(values[1], str) else ""
                _check_size_bound(sum(len(str(x)) for x in items) + len(sep) * len(items), "a joined string")
        elif name == "replace" and len(values) >= 3 and all(isinstance(v, str) for v in values[:3]):
            s, old, new = values[:3]
            _check_size_bound(len(s) + (s.count(old) if old else len(s) + 1) * len(new), "a replaced string")
        else:
            for v in values[1:]:
                if isinstance(v, int) and v > MAX_OUTPUT_CHARS:
                    raise _too_big(v, f"the {name} filter's width")
        return _check_size(f(*args, **kwargs), f"the {name} filter's result")

    return bounded


def _check_size_bound(n: int, what: str):
    if n > MAX_OUTPUT_CHARS:
        raise _too_big(n, what)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    import json

    if isinstance(indent, int) and indent > 64:
        raise TemplateLimitError(f"chat template: tojson indent {indent} is larger than 64")
    try:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    except (TypeError, ValueError, RecursionError) as e:
        raise TokenizerError(f"chat template: tojson cannot serialize {type(x).__name__} ({e})") from None


class _Deadline:
    """A trace function that stops a template's Python frames once the time limit has passed.

    Jinja compiles a template to Python code (file name "<template>"); the per-line trace of those frames
    and the call events of everything they call check the clock, so loops, recursion through macros and
    filters all stop. Only this thread is traced; a tracer already installed (a debugger) is restored."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds

    def __call__(self, frame, event, arg):
        if event == "call":
            self.check_time()
            return self.local if frame.f_code.co_filename == "<template>" else None
        return None

    def check_time(self):
        if time.monotonic() > self.deadline:
            raise TemplateLimitError(f"chat template: rendering took longer than {self.seconds:g} s "
                                     f"(llamacpu.tokenizer.chat.RENDER_TIME_LIMIT)")

    def local(self, frame, event, arg):
        if event == "line":
            self.check_time()
        return self.local


def resolve_template(template, name: str | None = None) -> str | None:
    """The template text: `template` is a string, a list of named templates as tokenizer_config.json may
    hold them ([{"name": "default", "template": ...}, {"name": "tool_use", ...}]), or a dict of them.
    `name` picks one (transformers' apply_chat_template(chat_template="tool_use")); else "default"."""
    if template is None or isinstance(template, str):
        return template
    if isinstance(template, list):
        named = {}
        for t in template:
            if not (isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("template"), str)):
                raise TokenizerError(f"chat_template: a list of templates must hold {{'name': str, 'template': str}} "
                                     f"objects, found {t!r:.80}")
            named[t["name"]] = t["template"]
        template = named
    if isinstance(template, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in template.items()):
        key = name or "default"
        if key not in template:
            raise TokenizerError(f"chat_template: no template named {key!r}; this tokenizer has "
                                 f"{sorted(template)} (pass chat_template=<name>)")
        return template[key]
    raise TokenizerError(f"chat_template: expected a string or a list of named templates, "
                         f"found {type(template).__name__}")


def render_chat(template: str | None, messages, add_generation_prompt: bool = False, **extra) -> str:
    """Render `messages` ([{"role": ..., "content": ...}, ...]) to the prompt text. Every failure of the
    template (its own raise_exception, a Python error inside it, a limit) is a TokenizerError."""
    import jinja2

    if not isinstance(messages, (list, tuple)) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content", ""), str)
            for m in messages):
        raise InputError("messages: expected a list of {'role': str, 'content': str} dicts")
    template = resolve_template(template)
    compiled = _compile(template or LLAMA2_CHAT_TEMPLATE)
    previous = sys.gettrace()
    sys.settrace(_Deadline(RENDER_TIME_LIMIT))
    pieces, total = [], 0
    try:
        for piece in compiled.generate(messages=list(messages), add_generation_prompt=add_generation_prompt, **extra):
            total += len(piece)
            if total > MAX_OUTPUT_CHARS:
                raise _too_big(total, "the rendered prompt")
            pieces.append(piece)
    except TokenizerError:
        raise
    except jinja2.TemplateError as e:
        raise TokenizerError(f"chat template failed: {e}") from None
    except MemoryError:
        raise TemplateLimitError("chat template: rendering ran out of the memory this process may use") from None
    except RecursionError:
        raise TemplateLimitError("chat template: recursion too deep while rendering") from None
    except Exception as e:  # ZeroDivisionError, TypeError... raised by the template's own code
        raise TokenizerError(f"chat template failed: {type(e).__name__}: {e}") from None
    finally:
        sys.settrace(previous)
    return "".join(pieces)


def apply_chat_template(tokenizer, messages, add_generation_prompt: bool = False, tokenize: bool = True,
                        chat_template: str | None = None, return_dict: bool = False,
                        return_tensors: str | None = None, **extra):
    """transformers' apply_chat_template: -> ids (tokenize=True) or the prompt text. The template
    writes special tokens (BOS, <|im_start|>) itself, so the text is encoded without adding them.
    return_dict=True gives a BatchEncoding (input_ids, attention_mask), return_tensors="np" arrays
    [1, T] (transformers 5 returns the BatchEncoding by default; llamacpu keeps 4.x's list of ids)."""
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(chat_template, str) and not isinstance(own, (str, type(None))) and "{" not in chat_template:
        template = resolve_template(own, chat_template)  # a template's name, as transformers allows
    else:
        template = resolve_template(chat_template or own)
    specials = {"bos_token": getattr(tokenizer, "bos_token", None) or "",
                "eos_token": getattr(tokenizer, "eos_token", None) or ""}
    specials.update(extra)
    text = render_chat(template, messages, add_generation_prompt=add_generation_prompt, **specials)
    if not tokenize:
        return text
    if return_tensors is None and not return_dict:
        return tokenizer.encode(text, add_special_tokens=False)
    enc = tokenizer([text] if return_tensors else text, add_special_tokens=False, return_tensors=return_tensors)
    return enc if return_dict else enc["input_ids"]
