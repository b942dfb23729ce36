"""The four files of a model, cut at their section rulers and compared after mapping framework names.

Every model file has the same rulers (`# ---...--- layers`, `model`, `canonical weights`, `loss`,
`train step`, `evaluation`), so the same concern can be read side by side. `differing_lines`
measures how far two framework versions drift apart: the lines a diff marks once the framework's
own names (`torch`/`jnp`, `nn`/`nnx`, the package names) are mapped to neutral ones.

    python -m tasks.sidebyside lenet5 recurrent            # torch_impl vs jax_impl, working tree
    python -m tasks.sidebyside lenet5 --rev ce7c330 --a torch_impl --b tf_impl
"""

from __future__ import annotations

import argparse
import difflib
import io
import re
import subprocess
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RULER = re.compile(r"^# -{20,} (?P<name>.+)$")
SECTIONS = ("layers", "model", "canonical weights", "loss", "train step", "evaluation")

# each framework's own names -> one neutral name, so a diff shows structure, not vocabulary
NAME_MAPS = {
    "scratch": {"scratch": "IMPL", "np": "ARRAY"},
    "torch_impl": {"torch_impl": "IMPL", "torch": "ARRAY", "nn": "NN", "F": "FN"},
    "tf_impl": {"tf_impl": "IMPL", "ops": "ARRAY", "tf": "ARRAY", "keras": "NN"},
    "jax_impl": {"jax_impl": "IMPL", "jnp": "ARRAY", "jax": "ARRAY", "nnx": "NN", "optax": "OPT"},
}


def read(framework: str, model_file: str, rev: str | None = None) -> str:
    """A model file's text in the working tree, or at a git revision."""
    path = f"{framework}/{model_file}.py"
    if rev is None:
        return (ROOT / path).read_text()
    return subprocess.run(
        ["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout


def sections(text: str) -> dict[str, tuple[int, list[str]]]:
    """Section name -> (first line number, lines), cut at the rulers; "header" is what precedes the
    first ruler (docstring and imports)."""
    out: dict[str, tuple[int, list[str]]] = {"header": (1, [])}
    current = "header"
    for number, line in enumerate(text.splitlines(), start=1):
        match = RULER.match(line)
        if match:
            current = match["name"].strip()
            out[current] = (number, [])
        else:
            out[current][1].append(line)
    return out


def logical_lines(text: str) -> list[str]:
    """One line per Python statement (and per comment), however the formatter wrapped it: tokens
    joined by single spaces, a trailing comma before a closing bracket dropped, indentation kept as a
    depth prefix. Line wrapping depends on name lengths, so it would otherwise count as drift."""
    lines, current, depth, previous = [], [], 0, None
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        kind, string = token.type, token.string
        if kind == tokenize.INDENT:
            depth += 1
        elif kind == tokenize.DEDENT:
            depth -= 1
        elif kind == tokenize.COMMENT:
            lines.append("  " * depth + string)
        elif kind == tokenize.NEWLINE:
            lines.append("  " * depth + " ".join(current))
            current = []
        elif kind not in (tokenize.NL, tokenize.ENDMARKER):
            if string in (")", "]", "}") and previous == ",":
                current.pop()
            current.append(string)
        previous = string if kind not in (tokenize.NL, tokenize.COMMENT) else previous
    return lines


def neutral(text: str, framework: str) -> list[str]:
    """The logical lines with the framework's own names mapped (NAME_MAPS)."""
    names = NAME_MAPS[framework]
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
    return [pattern.sub(lambda m: names[m[1]], line) for line in logical_lines(text)]


def differing_lines(text_a: str, framework_a: str, text_b: str, framework_b: str) -> int:
    """Lines a diff of the two mapped texts marks as removed or added."""
    diff = difflib.ndiff(neutral(text_a, framework_a), neutral(text_b, framework_b))
    return sum(line.startswith(("- ", "+ ")) for line in diff)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+", help="model file names: lenet5, recurrent, ...")
    parser.add_argument("--a", default="torch_impl")
    parser.add_argument("--b", default="jax_impl")
    parser.add_argument("--rev", default=None, help="a git revision instead of the working tree")
    args = parser.parse_args(argv)
    for model in args.models:
        a, b = read(args.a, model, args.rev), read(args.b, model, args.rev)
        count = differing_lines(a, args.a, b, args.b)
        print(
            f"{model}.py  {args.a} vs {args.b}  {count} differing lines  ({args.rev or 'working tree'})"
        )


if __name__ == "__main__":
    main()
