"""A model's answer read as the program it means, for every code benchmark.

Chat models answer in markdown: a fenced block, the whole function restated, example calls and prose around it.
The code is the answer's fenced Python blocks (or the whole answer), narrowed to the longest run of lines that
Python parses. Of its top-level statements only imports, definitions and the assignments they use are kept, so
example calls, prints, `if __name__ == "__main__":` blocks and prose never run. The cut is made on the syntax
tree, as evalplus's sanitizer does it, not with patterns. A bare body (a continuation) runs after the prompt as it
always did; an answer that defines the entry point runs as its own program, after the prompt's imports and the
helpers it does not redefine.
"""

import ast
import re
import warnings
from dataclasses import dataclass

ANSWER_MODES = ("auto", "raw")  # raw: the answer as it came, with no reading at all
FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
PYTHON_LABELS = ("python", "python3", "py")
CODE_START = re.compile(r"(?:async\s+def|def|class|import|from)\s|@")  # a line a program may start at
DEFINITIONS = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
ASSIGNMENTS = (ast.Assign, ast.AnnAssign)


def code_in(answer: str) -> str:
    """The answer's fenced Python blocks that parse, joined in order (the first block when none parses); the whole
    answer when it has no such fence. Unlabelled fences count only when no block is labelled Python; an empty one
    (a stray closing fence after a body) never does."""
    blocks = [(label, body) for label, body in FENCE.findall(answer) if body.strip()]
    python = [body for label, body in blocks if label.lower() in PYTHON_LABELS]
    python = python or [body for label, body in blocks if not label]
    if not python:
        return answer
    parsing = [body for body in python if parse(body) is not None]
    return "\n".join(parsing) if parsing else python[0]


def humaneval_program(prompt: str, answer: str, entry_point: str) -> str:
    """The program an answer to a HumanEval prompt means, before the tests: its own definition of `entry_point`
    with the prompt's imports and the helpers it does not redefine, or else the prompt continued by the answer."""
    code = code_in(answer)
    span = longest_span(code, entry_point)
    if span is None or entry_point not in defined_names(span.statements):
        return continuation(prompt, code)
    own = cut(span.statements)
    redefined = defined_names(own)
    context = [node for node in parse(prompt).body if getattr(node, "name", None) not in redefined]
    return "\n".join(part for part in (source_of(context, prompt), source_of(own, span.text)) if part)


def script_program(answer: str, entry_point: str | None) -> str:
    """The program a whole-program answer (LiveCodeBench) means: its code, and when the tests call `entry_point`
    rather than run the script, only what that needs (no example calls)."""
    code = code_in(answer)
    span = longest_span(code, entry_point)
    if span is None:
        return code
    return span.text if entry_point is None else source_of(cut(span.statements), span.text)


def continuation(prompt: str, code: str) -> str:
    """The prompt continued by the answer; what the answer adds after the function that runs code is cut. Text
    that does not parse past the prompt is left as it is, for the sandbox to report the error."""
    text = prompt + code
    prompt_lines = len(prompt.splitlines())
    lines = text.splitlines()
    end, tree = longest_parse(lines, 0)
    if tree is None or end <= prompt_lines:
        return text
    statements = cut(tree.body, prompt_lines)
    if end == len(lines) and len(statements) == len(tree.body):
        return text  # a clean continuation runs exactly as written
    # The prompt and the body that continues it stay as written, up to where the function ends.
    fixed = [node for node in statements if node.lineno <= prompt_lines]
    head = "\n".join(lines[: fixed[-1].end_lineno]) + "\n" if fixed else ""
    added = source_of([node for node in statements if node.lineno > prompt_lines], text)
    return "\n".join(part for part in (head, added) if part)


@dataclass(frozen=True)
class Span:
    """A run of an answer's lines that parses: its text and its top-level statements."""

    text: str
    statements: list[ast.stmt]


def longest_span(code: str, entry_point: str | None) -> Span | None:
    """The longest run of lines that parses, starting at the first line or at one a program may start at; a run
    that defines `entry_point` wins over a longer one that does not."""
    lines = code.splitlines()
    found: list[tuple[bool, int, Span]] = []
    covered = -1  # a run starting inside one already found cannot be longer than it
    for start, line in enumerate(lines):
        if start <= covered or not (start == 0 or CODE_START.match(line)):
            continue
        end, tree = longest_parse(lines, start)
        if tree is None or not tree.body:
            continue
        covered = end - 1
        span = Span("\n".join(lines[start:end]) + "\n", tree.body)
        found.append((entry_point in defined_names(span.statements), end - start, span))
    return max(found, key=lambda item: item[:2])[2] if found else None


def longest_parse(lines: list[str], start: int) -> tuple[int, ast.Module | None]:
    """(end, tree) of the longest run lines[start:end] that parses; (start, None) when none does."""
    end = len(lines)
    while end > start:
        try:
            return end, parse("\n".join(lines[start:end]), strict=True)
        except SyntaxError as err:
            # A run that keeps the offending line fails there too: go straight to the run that drops it.
            offending = start + (err.lineno or end - start) - 1
            end = min(end - 1, offending)
        except (ValueError, RecursionError, MemoryError):  # null bytes; nesting too deep for the parser
            end -= 1
    return start, None


def parse(text: str, strict: bool = False) -> ast.Module | None:
    """The syntax tree of `text`; None when it does not parse (the error itself when `strict`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SyntaxWarning on an invalid escape: the answer's business
        try:
            return ast.parse(text)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            if strict:
                raise
            return None


def cut(statements: list[ast.stmt], fixed_lines: int = 0) -> list[ast.stmt]:
    """The top-level statements that stay: those starting in the first `fixed_lines` lines (the prompt's), imports,
    definitions, and the assignments these use, directly or through one another. Every other statement (a call, a
    print, an `if __name__ == "__main__":` block, an assignment nothing uses) is cut."""
    kept = [node for node in statements if node.lineno <= fixed_lines or isinstance(node, DEFINITIONS)]
    used = {name for node in kept for name in names_read(node)}
    assignments = [node for node in statements if isinstance(node, ASSIGNMENTS) and node not in kept]
    while new := [node for node in assignments if node not in kept and assigned_names(node) & used]:
        kept += new
        used |= {name for node in new for name in names_read(node)}
    return [node for node in statements if node in kept]


def names_read(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def assigned_names(node: ast.Assign | ast.AnnAssign) -> set[str]:
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
    return {n.id for target in targets for n in ast.walk(target) if isinstance(n, ast.Name)}


def defined_names(statements: list[ast.stmt]) -> set[str]:
    """The names that top-level definitions and imports bind."""
    names = set()
    for node in statements:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    return names


def source_of(statements: list[ast.stmt], text: str) -> str:
    """The lines of `text` that hold the statements (decorators included), a blank line between statements."""
    lines = text.splitlines()
    parts = []
    for node in statements:
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        parts.append("\n".join(lines[first - 1 : node.end_lineno]))
    return "\n\n".join(parts) + "\n" if parts else ""
