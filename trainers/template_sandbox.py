"""The sandbox a model's chat template runs in: Jinja's own sandbox, plus limits on size and time.

A chat template is code that comes with a model file, i.e. from whoever made the file. Jinja's
``ImmutableSandboxedEnvironment`` already refuses attribute tricks (``__class__``, ``mro``) and caps
``range`` at 100,000 items. It does not stop a template from building a huge string (``'x' * 10**10``, a
doubling ``namespace`` loop, ``'x'.ljust(10**10)``, ``'%9999999999s' % 1``) or looping for minutes, which
would take the studio's memory or its chat down. Here every operation that can make a string or a list
grow is checked *before* it runs (when its size can be known) or right after (when its inputs were already
within the limit, so the result is at most a few times the limit), the output is streamed and cut off past
``MAX_RENDERED_CHARS``, and a render gives up after ``MAX_RENDER_SECONDS``.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any, TypeVar

import jinja2
import jinja2.ext
from jinja2.compiler import CodeGenerator, Frame
from jinja2.filters import do_center, do_format, do_indent, do_replace, do_wordwrap, sync_do_join
from jinja2.nodes import Concat, EvalContext, Node
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

_T = TypeVar("_T")

# A rendered prompt must fit a model's context; even a 256k-token context is about a million characters.
MAX_RENDERED_CHARS = 1_000_000
MAX_RENDER_SECONDS = 5.0
# Integers a template may raise to a power: enough for any arithmetic a chat template does.
_MAX_POWER_BITS = 4096

_budget = threading.local()  # the deadline of the render in progress on this thread


class TemplateLimitError(jinja2.TemplateRuntimeError):
    """The template went past a size or time limit."""


def _check_time() -> None:
    deadline = getattr(_budget, "deadline", None)
    if deadline is not None and time.monotonic() > deadline:
        raise TemplateLimitError(f"rendering took longer than {MAX_RENDER_SECONDS:g} s; the template is stopped")


def _refuse_size(n: int, what: str) -> None:
    if n > MAX_RENDERED_CHARS:
        raise TemplateLimitError(
            f"{what} would build {n:,} characters (or items); the limit is {MAX_RENDERED_CHARS:,}")


def _checked(value: _T, what: str) -> _T:
    if isinstance(value, str | list | tuple | bytes):
        _refuse_size(len(value), what)
    return value


def _refuse_widths(ints: Iterable[object], what: str) -> None:
    for value in ints:
        if isinstance(value, int) and not isinstance(value, bool):
            _refuse_size(abs(value), what)


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\d+|\*)?(?:\.(\d+|\*))?")
_BRACE_FIELD = re.compile(r"\{[^{}]*\}")
_DIGITS = re.compile(r"\d+")


def _check_format_string(fmt: str, args: Iterable[object], what: str) -> None:
    """A width or precision in ``%`` or ``{}`` formatting pads the result to that many characters."""
    widths = [int(g) for m in _PERCENT_SPEC.finditer(fmt) for g in m.groups() if g and g.isdigit()]
    widths += [int(d) for field in _BRACE_FIELD.findall(fmt) for d in _DIGITS.findall(field.partition(":")[2])]
    _refuse_widths(widths, what)
    _refuse_widths(args, what)  # a ``*`` width, or a nested ``{:{}}`` one, comes from the arguments


def _join_size(items: list[object], separator: str) -> int:
    return sum(len(str(x)) for x in items) + len(separator) * max(len(items) - 1, 0)


def _replace_size(text: str, old: str, new: str, count: int | None) -> int:
    hits = text.count(old) if old else len(text) + 1
    if count is not None and count >= 0:
        hits = min(hits, count)
    return len(text) + hits * (len(new) - len(old))


# --- filters that can make a string grow -----------------------------------------------------------------

def _center(value: str, width: int = 80) -> str:
    _refuse_widths([width], "the center filter")
    return do_center(value, width)


def _indent(s: str, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
    _refuse_widths([width], "the indent filter")
    if isinstance(width, str):
        _refuse_size(len(width), "the indent filter")
    n_lines = str(s).count("\n") + 1
    _refuse_size(len(str(s)) + n_lines * (width if isinstance(width, int) else len(width)), "the indent filter")
    return do_indent(s, width, first, blank)


@jinja2.pass_environment
def _wordwrap(environment: jinja2.Environment, s: str, width: int = 79, *args: Any, **kwargs: Any) -> str:
    _refuse_widths([width], "the wordwrap filter")
    return _checked(do_wordwrap(environment, s, width, *args, **kwargs), "the wordwrap filter")


def _format(value: str, *args: Any, **kwargs: Any) -> str:
    _check_format_string(str(value), [*args, *kwargs.values()], "the format filter")
    return _checked(do_format(value, *args, **kwargs), "the format filter")


@jinja2.pass_eval_context
def _join(eval_ctx: EvalContext, value: Iterable[object], d: str = "", attribute: str | int | None = None) -> str:
    items = list(value)
    if attribute is None:
        _refuse_size(_join_size(items, str(d)), "the join filter")
    return _checked(sync_do_join(eval_ctx, items, d, attribute), "the join filter")


@jinja2.pass_eval_context
def _replace(eval_ctx: EvalContext, s: str, old: str, new: str, count: int | None = None) -> str:
    _refuse_size(_replace_size(str(s), str(old), str(new), count), "the replace filter")
    return do_replace(eval_ctx, s, old, new, count)


_CAPPED_FILTERS = {"center": _center, "indent": _indent, "wordwrap": _wordwrap, "format": _format,
                   "join": _join, "replace": _replace}

# str methods a template can call that make a string longer than their inputs.
_PADDING_METHODS = frozenset({"ljust", "rjust", "center", "zfill"})


def _precheck_str_method(text: str, name: str, args: tuple, kwargs: dict) -> None:
    what = f"str.{name}()"
    if name in _PADDING_METHODS:
        _refuse_widths([*args[:1], *kwargs.values()], what)
    elif name == "expandtabs":
        tabsize = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(tabsize, int):
            _refuse_size(len(text) * max(tabsize, 1), what)
    elif name == "replace" and len(args) >= 2:
        count = args[2] if len(args) > 2 else kwargs.get("count")
        _refuse_size(_replace_size(text, str(args[0]), str(args[1]), count), what)
    elif name == "join" and args:
        items = list(args[0])
        _refuse_size(_join_size(items, text), what)
    elif name in ("format", "format_map"):
        _check_format_string(text, [*args, *kwargs.values()], what)


class _CappedCodeGenerator(CodeGenerator):
    """Compiles ``a ~ b`` to a checked join: Jinja's own concatenation cannot be intercepted otherwise."""

    def visit_Concat(self, node: Concat, frame: Frame) -> None:
        self.write("environment.capped_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class CappedSandboxedEnvironment(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox with size and time limits on everything that makes text grow."""

    code_generator_class = _CappedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self) -> None:
        # The environment transformers and llama-cpp-python render chat templates in: blocks trimmed, break /
        # continue, the generation tag, tojson, strftime_now; so a template renders here as it does there.
        super().__init__(trim_blocks=True, lstrip_blocks=True,
                         extensions=[_IgnoreGenerationTags, jinja2.ext.loopcontrols])
        self.globals["raise_exception"] = _raise_exception
        self.globals["strftime_now"] = _strftime_now
        self.filters.update(_CAPPED_FILTERS)
        self.filters["tojson"] = _tojson

    def capped_concat(self, parts: tuple) -> str:
        _check_time()
        texts = [str(p) for p in parts]
        _refuse_size(sum(map(len, texts)), "the ~ operator")
        return "".join(texts)

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: object, right: object) -> object:
        _check_time()
        what = f"the {operator} operator"
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(n, int):
                    _refuse_size(len(seq) * n, what)
        elif operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0:
            if left.bit_length() * right > _MAX_POWER_BITS:
                raise TemplateLimitError(f"{left} ** {right} is too large a number for a chat template")
        elif operator == "%" and isinstance(left, str):
            args = right if isinstance(right, tuple) else (right,)
            _check_format_string(left, args, what)
        return _checked(super().call_binop(context, operator, left, right), what)

    def call(__self, __context: jinja2.runtime.Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        _check_time()
        # The sandbox hands out str.format wrapped (functools.update_wrapper), so look through the wrapper.
        method = getattr(__obj, "__wrapped__", __obj)
        owner = getattr(method, "__self__", None)
        if isinstance(owner, str):
            _precheck_str_method(owner, getattr(method, "__name__", ""), args, kwargs)
        return _checked(super().call(__context, __obj, *args, **kwargs), "a call")


class _IgnoreGenerationTags(jinja2.ext.Extension):
    """HF's ``{% generation %}…{% endgeneration %}`` (marks assistant text for training masks) renders its body
    as is, as transformers and llama-cpp-python's ``Jinja2ChatFormatter`` do."""

    tags = {"generation"}

    def parse(self, parser: Parser) -> list[Node]:
        parser.stream.skip(1)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


# Indentation a template may ask ``tojson`` for: ample for pretty-printing a tool schema, far from a gigabyte.
_MAX_JSON_INDENT = 64


def _tojson(value: object, ensure_ascii: bool = False, indent: int | str | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    """transformers' ``tojson``: plain ``json.dumps``, non-ASCII kept (Jinja's own escapes ``<`` and ``'`` for
    HTML, which would change the prompt). The indent is checked first: it multiplies the output's size."""
    width = len(indent) if isinstance(indent, str) else indent or 0
    if width > _MAX_JSON_INDENT:
        raise TemplateLimitError(f"tojson(indent={width}) is wider than {_MAX_JSON_INDENT}")
    return _checked(json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                               sort_keys=sort_keys), "the tojson filter")


def _strftime_now(fmt: str) -> str:
    # Llama 3.x templates write today's date into the system turn.
    return datetime.now().strftime(fmt)


def _raise_exception(message: str) -> None:
    # Templates call raise_exception() to reject, e.g., a system turn they do not support.
    raise jinja2.TemplateError(message)


_environment = CappedSandboxedEnvironment()


def compile_template(source: str) -> jinja2.Template:
    """Compile a chat template in the capped sandbox (jinja2.TemplateSyntaxError for a broken one)."""
    return _environment.from_string(source)


def render_capped(template: jinja2.Template, **context: Any) -> str:
    """Render ``template``, streaming its output and stopping at the size and time limits."""
    previous = getattr(_budget, "deadline", None)
    _budget.deadline = time.monotonic() + MAX_RENDER_SECONDS
    try:
        pieces: list[str] = []
        total = 0
        for piece in template.generate(**context):
            total += len(piece)
            if total > MAX_RENDERED_CHARS:
                raise TemplateLimitError(
                    f"the rendered prompt passed {MAX_RENDERED_CHARS:,} characters; rendering was stopped")
            pieces.append(piece)
            _check_time()
        return "".join(pieces)
    finally:
        _budget.deadline = previous
