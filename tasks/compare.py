"""`rosetta compare`: the four implementations of a model side by side, section by section.

Everything on the page is read at the time of the call: the model files (cut at their section
rulers, tasks/sidebyside.py), the model's tables in docs/PORTING.md, its "default differences"
rows (each shown as a note beside the section whose code names the function it concerns), and the
parity records (computed on the spot, or read from a `rosetta parity --json` file). Nothing is
typed twice: change a line of a model file and the page shows it.

The HTML page is self-contained (CSS and script inline, no network): four columns, one row per
section, Pygments highlighting with line numbers, a column toggle, an anchor per section.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from tasks import sidebyside
from tasks.registry import FRAMEWORKS, MODELS

ROOT = sidebyside.ROOT
TITLES = {
    "scratch": "scratch (NumPy)",
    "torch_impl": "PyTorch",
    "tf_impl": "Keras 3 (TensorFlow)",
    "jax_impl": "JAX + Flax NNX",
}
ROWS = ("header", *sidebyside.SECTIONS)  # docstring and imports first, then the ruler sections
LABELS = {"header": "docstring and imports"}
# the perceptron has no loss: its "prediction" section stands in that row
ALIASES = {"prediction": "loss"}
CHECKS = ("forward", "grad", "roundtrip", "sgd", "trajectory", "rule")


# ----------------------------------------------------------------------------- reading the sources
@dataclass
class Cell:
    """One framework's code for one section: where it comes from and its text."""

    path: Path
    first_line: int
    text: str


@dataclass
class Page:
    """What a page shows for one model, read from the tree at `root`."""

    model: str
    files: list[str]
    rows: dict[str, dict[str, Cell]]  # section -> framework -> code
    porting_title: str = ""
    porting_tables: list[list[list[str]]] = field(default_factory=list)
    notes: dict[str, list[dict]] = field(default_factory=dict)  # section -> notes
    parity: list[dict] | None = None  # records


def files_of(model: str) -> list[str]:
    """The model's file names; the Transformer's file holds its layers and model and shares the
    rest with attention.py, which fills the remaining rows."""
    if model not in MODELS:
        return [model]
    return [MODELS[model].file, *MODELS[model].shared_files]


def read_rows(model: str, root: Path = ROOT) -> dict[str, dict[str, Cell]]:
    rows: dict[str, dict[str, Cell]] = {}
    for name in files_of(model):
        for framework in FRAMEWORKS:
            path = root / framework / f"{name}.py"
            for section, (first, lines) in sidebyside.sections(path.read_text()).items():
                section = ALIASES.get(section, section)
                if section in ROWS and framework not in rows.setdefault(section, {}):
                    rows[section][framework] = Cell(
                        path, first + (section != "header"), "\n".join(lines).strip("\n")
                    )
    return {s: rows[s] for s in ROWS if s in rows}


def porting_section(model: str, root: Path = ROOT) -> tuple[str, list[str]]:
    """The `## ...` section of docs/PORTING.md whose heading names the model's file."""
    lines = (root / "docs" / "PORTING.md").read_text().splitlines()
    name = files_of(model)[0]
    start = next(
        (i for i, line in enumerate(lines) if line.startswith("## ") and f"`{name}.py`" in line),
        None,
    )
    if start is None:
        return "", []
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start][3:].strip(), lines[start:end]


def markdown_tables(lines: list[str]) -> list[list[list[str]]]:
    """Every markdown table in `lines`, as rows of cells (the header first, the rule row dropped)."""
    tables, current = [], []
    for line in [*lines, ""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(re.fullmatch(r":?-{3,}:?", c) for c in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


def slug(title: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def attach_notes(
    rows: dict[str, dict[str, Cell]], differences: list[list[str]], anchor: str, only_matched=False
) -> dict[str, list[dict]]:
    """Each "difference" row goes beside the section whose code names most of the row's backticked
    identifiers (a function, a layer, a file's helper); a word named by most sections says nothing
    about where the row belongs and is not counted. A row no section names goes beside the model,
    or is left out with `only_matched` (the rules PORTING states for every model: only those this
    model's code names, by the identifiers of the row's first column)."""
    sections = [s for s in rows if s != "header"]
    notes: dict[str, list[dict]] = {}
    for row in differences:
        text = " ".join(row)
        words = {
            w
            for code in re.findall(r"`([^`]+)`", text)
            for w in re.findall(r"[A-Za-z_][\w]{3,}", code)
        }
        tests = sorted({w for w in words if w.startswith("test_")})
        words -= GENERIC
        named = {
            s: {
                w
                for w in words
                if any(re.search(rf"\b{re.escape(w)}\b", cell.text) for cell in rows[s].values())
            }
            for s in sections
        }
        common = {
            w for w in words if sum(w in found for found in named.values()) > len(sections) / 2
        }
        score = {s: len(named[s] - common) for s in sections}
        best = max(sections, key=lambda s: score[s]) if sections else "model"
        # a rule stated for every model shows only where the code names what its first column names
        subject = {
            w
            for code in re.findall(r"`([^`]+)`", row[0])
            for w in re.findall(r"[A-Za-z_]\w{3,}", code)
        }
        if only_matched and not any(subject & found for found in named.values()):
            continue
        if score.get(best, 0) == 0:
            best = "model"
        notes.setdefault(best, []).append({"cells": row, "tests": tests, "anchor": anchor})
    return notes


COMMON_SECTION = "Rules that hold for every model"
# names every framework file is full of: they place a note nowhere in particular
GENERIC = {
    "keras", "torch", "layers", "jax", "nnx", "optax", "numpy", "ops", "float", "float32",
    "float64", "dtype", "model", "self", "tasks", "weights", "scratch", "torch_impl", "tf_impl",
    "jax_impl", "functional", "initializers", "None", "True", "False",
}  # fmt: skip


def test_locations(names: list[str], root: Path = ROOT) -> dict[str, tuple[Path, int]]:
    """Where each named test is defined under parity_tests/."""
    found = {}
    for path in sorted((root / "parity_tests").glob("test_*.py")):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            match = re.match(r"def (test_\w+)\(", line)
            if match and match[1] in names:
                found.setdefault(match[1], (path, number))
    return found


def build(model: str, root: Path = ROOT, records: list[dict] | None = None) -> Page:
    rows = read_rows(model, root)
    title, lines = porting_section(model, root)
    tables = markdown_tables(lines)
    porting = [t for t in tables if t[0][0].lower().startswith("canonical")]
    differences = [r for t in tables if t[0][0].lower() == "difference" for r in t[1:]]
    notes = attach_notes(rows, differences, slug(title))
    # the default differences PORTING states once for every model, where this model's code meets them
    lines = (root / "docs" / "PORTING.md").read_text().splitlines()
    start = lines.index(f"## {COMMON_SECTION}")
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("## "))
    common = [
        r
        for t in markdown_tables(lines[start:end])
        if t[0][0].lower() == "difference"
        for r in t[1:]
    ]
    for section, found in attach_notes(
        rows, common, slug(COMMON_SECTION), only_matched=True
    ).items():
        notes.setdefault(section, []).extend(found)
    page = Page(model, files_of(model), rows, title, porting, notes)
    page.parity = [r for r in records if r["model"] == model] if records is not None else None
    return page


def parity_records(model: str) -> list[dict]:
    """`rosetta parity MODEL --json`, computed now (imports every framework; seconds to minutes)."""
    from tasks import parity

    cases = parity.CASES.get(model, []) + parity.OPTIMIZER_CASES.get(model, [])
    return [r for case in cases for r in parity.records(case)]


def load_records(path: Path) -> list[dict]:
    records = json.loads(Path(path).read_text())
    if not isinstance(records, list) or not all(
        isinstance(r, dict) and {"model", "framework", "dtype", "tensor", "rel_error"} <= set(r)
        for r in records
    ):
        raise ValueError(f"{path}: not a list of parity records (rosetta parity --json)")
    return records


def parity_table(records: list[dict]) -> list[list[str]]:
    """Worst relative error against scratch per check and dtype (rows) and framework (columns)."""
    worst: dict[tuple[str, str], dict[str, tuple[float, bool]]] = {}
    for r in records:
        if r.get("reference") not in ("scratch", None):
            continue
        check = r["tensor"].split(".")[0] if r["tensor"].split(".")[0] in CHECKS else "forward"
        cell = worst.setdefault((check, r["dtype"]), {})
        previous = cell.get(r["framework"], (-1.0, True))
        cell[r["framework"]] = (max(previous[0], r["rel_error"]), previous[1] and r["passed"])
    others = [fw for fw in FRAMEWORKS if fw != "scratch"]
    table = [["check", "dtype", *[TITLES[fw] for fw in others]]]
    for check, dtype in sorted(worst, key=lambda k: (CHECKS.index(k[0]), k[1] != "float64", k[1])):
        cells = [
            f"{worst[check, dtype][fw][0]:.1e}" + ("" if worst[check, dtype][fw][1] else " FAILED")
            if fw in worst[check, dtype]
            else "—"
            for fw in others
        ]
        table.append([check, dtype, *cells])
    return table


# ----------------------------------------------------------------------------- HTML
STYLE = """
body { font-family: system-ui, sans-serif; margin: 0; color: #1b1f24; }
header { position: sticky; top: 0; background: #f6f8fa; border-bottom: 1px solid #d0d7de; padding: 8px 16px; z-index: 2; }
h1 { font-size: 20px; margin: 4px 0; }
nav a { margin-right: 12px; font-size: 13px; }
#toggles label { margin-right: 14px; font-size: 14px; }
table.code { border-collapse: collapse; width: 100%; table-layout: fixed; }
table.code th, table.code td { border: 1px solid #d0d7de; vertical-align: top; padding: 4px 6px; }
tr.section-row, tr.wide-row { scroll-margin-top: 120px; }  /* below the sticky header */
table.code th.section { width: 150px; text-align: left; background: #f6f8fa; font-size: 13px; }
td.fw { overflow-x: auto; font-size: 12px; }
.path { font-size: 12px; color: #57606a; margin-bottom: 2px; }
.highlight pre { margin: 0; line-height: 1.35; white-space: pre-wrap; overflow-wrap: anywhere; }
.linenos { color: #8c959f; padding-right: 6px; user-select: none; }
.note { overflow-wrap: anywhere; font-weight: normal; font-size: 12px; margin-top: 8px; border-left: 3px solid #bf8700; padding-left: 5px; }
table.md { border-collapse: collapse; font-size: 12px; margin: 6px 0 10px; }
table.md th, table.md td { border: 1px solid #d0d7de; padding: 3px 6px; text-align: left; }
table.md th { background: #f6f8fa; }
td.wide { background: #fbfcfd; }
code { background: #eff1f3; padding: 0 3px; border-radius: 3px; }
"""
for _fw in FRAMEWORKS:
    STYLE += f"body.hide-{_fw} .fw-{_fw} {{ display: none; }}\n"

SCRIPT = """
document.querySelectorAll('#toggles input').forEach(function (box) {
  box.addEventListener('change', function () {
    document.body.classList.toggle('hide-' + box.dataset.fw, !box.checked);
    // the full-width rows span the framework columns still shown
    var shown = document.querySelectorAll('#toggles input:checked').length;
    document.querySelectorAll('td.wide').forEach(function (td) { td.colSpan = Math.max(shown, 1); });
  });
});
"""


def inline(markdown: str) -> str:
    """A markdown table cell as HTML: `code` and **bold**, everything else escaped."""
    text = html.escape(markdown)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


def table_html(rows: list[list[str]], css: str = "md") -> str:
    head = "".join(f"<th>{inline(c)}</th>" for c in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{inline(c)}</td>" for c in row) + "</tr>" for row in rows[1:]
    )
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def code_html(framework: str, cell: Cell, root: Path) -> str:
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer

    stem = cell.path.stem
    formatter = HtmlFormatter(
        linenos="inline",
        linenostart=cell.first_line,
        lineanchors=f"{framework}-{stem}-L",
        anchorlinenos=True,
    )
    where = f"{cell.path.relative_to(root)}:{cell.first_line}"
    link = (
        f'<div class="path"><a href="{cell.path.resolve().as_uri()}">{html.escape(where)}</a></div>'
    )
    return link + (
        highlight(cell.text, PythonLexer(), formatter) if cell.text.strip() else "<pre></pre>"
    )


def note_html(note: dict, porting_href: str, locations: dict, root: Path) -> str:
    difference, *rest = note["cells"]
    tests = " ".join(
        f'<a class="test" href="{locations[t][0].resolve().as_uri()}">{html.escape(t)} ({locations[t][0].relative_to(root)}:{locations[t][1]})</a>'
        for t in note["tests"]
        if t in locations
    )
    more = "".join(f"<div>{inline(c)}</div>" for c in rest)
    href = porting_href.split("#")[0] + "#" + note["anchor"]  # the PORTING section the row is in
    return (
        f'<div class="note"><a href="{href}">PORTING</a>: {inline(difference)}{more}{tests}</div>'
    )


def render(page: Page, root: Path = ROOT) -> str:
    from pygments.formatters import HtmlFormatter

    porting_href = (
        (root / "docs" / "PORTING.md").resolve().as_uri() + "#" + slug(page.porting_title)
    )
    locations = test_locations(
        [t for notes in page.notes.values() for n in notes for t in n["tests"]], root
    )
    nav = "".join(
        f'<a href="#sec-{slug(s)}">{html.escape(LABELS.get(s, s))}</a>' for s in page.rows
    )
    nav += '<a href="#porting">porting table</a>' + (
        '<a href="#parity">parity</a>' if page.parity is not None else ""
    )
    toggles = "".join(
        f'<label><input type="checkbox" data-fw="{fw}" checked> {TITLES[fw]}</label>'
        for fw in FRAMEWORKS
    )
    head = "".join(f'<th class="fw fw-{fw}">{TITLES[fw]}</th>' for fw in FRAMEWORKS)
    body = []
    for section, cells in page.rows.items():
        notes = "".join(
            note_html(n, porting_href, locations, root) for n in page.notes.get(section, [])
        )
        label = (
            f'<a href="#sec-{slug(section)}">{html.escape(LABELS.get(section, section))}</a>{notes}'
        )
        tds = "".join(
            f'<td class="fw fw-{fw}">{code_html(fw, cells[fw], root) if fw in cells else "<pre></pre>"}</td>'
            for fw in FRAMEWORKS
        )
        body.append(
            f'<tr id="sec-{slug(section)}" class="section-row"><th class="section">{label}</th>{tds}</tr>'
        )
        if section == "canonical weights":
            tables = (
                "".join(table_html(t) for t in page.porting_tables)
                or "<p>No canonical tensor table in PORTING.md.</p>"
            )
            title = (
                f'<a href="{porting_href}">docs/PORTING.md: {html.escape(page.porting_title)}</a>'
            )
            body.append(
                f'<tr id="porting" class="wide-row"><th class="section">porting table</th><td class="wide" colspan="4">{title}{tables}</td></tr>'
            )
    if page.parity is not None:
        table = parity_table(page.parity)
        summary = f"{len(page.parity)} records, " + (
            "all passed"
            if all(r["passed"] for r in page.parity)
            else f"{sum(not r['passed'] for r in page.parity)} failed"
        )
        body.append(
            f'<tr id="parity" class="wide-row"><th class="section">parity (worst relative error vs scratch)</th>'
            f'<td class="wide" colspan="4"><p>{summary}</p>{table_html(table, "md parity")}</td></tr>'
        )
    css = STYLE + HtmlFormatter().get_style_defs(".highlight")
    title = f"nn-rosetta: {page.model} in four frameworks"
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{css}</style></head><body>'
        f"<header><h1>{html.escape(title)}</h1><div>files: {', '.join(f'<code>{f}.py</code>' for f in page.files)}</div>"
        f'<nav>{nav}</nav><div id="toggles">show: {toggles}</div></header>'
        f'<table class="code"><thead><tr><th class="section">section</th>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
        f"<script>{SCRIPT}</script></body></html>"
    )


def write_all(out_dir: Path, root: Path = ROOT, records: list[dict] | None = None) -> list[Path]:
    """A page per model and an index page linking them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for model in MODELS:
        path = out_dir / f"{model}.html"
        path.write_text(render(build(model, root, records), root))
        written.append(path)
    items = "".join(
        f'<li><a href="{model}.html">{model}</a>: {html.escape(entry.summary)}</li>'
        for model, entry in MODELS.items()
    )
    index = out_dir / "index.html"
    index.write_text(
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>nn-rosetta: side by side</title></head>'
        f"<body><h1>nn-rosetta: every model in four frameworks, side by side</h1><ul>{items}</ul></body></html>"
    )
    return [index, *written]


# ----------------------------------------------------------------------------- terminal
def print_two(model: str, a: str, b: str, console, root: Path = ROOT) -> None:
    """Two frameworks side by side, a table row per section (rich)."""
    from rich.syntax import Syntax
    from rich.table import Table

    page = build(model, root)
    table = Table(title=f"{model}: {TITLES[a]} | {TITLES[b]}", show_lines=True, expand=True)
    table.add_column("section", no_wrap=True)
    table.add_column(TITLES[a], ratio=1)
    table.add_column(TITLES[b], ratio=1)
    for section, cells in page.rows.items():
        shown = [
            Syntax(
                cells[fw].text,
                "python",
                line_numbers=True,
                start_line=cells[fw].first_line,
                word_wrap=True,
            )
            if fw in cells
            else ""
            for fw in (a, b)
        ]
        table.add_row(LABELS.get(section, section), *shown)
    console.print(table)
