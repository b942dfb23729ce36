"""`rosetta compare`: the side-by-side pages, built from the tree at the time of the call and checked
in a real browser (headless Chromium from the system packages, driven by Selenium with the packaged
chromedriver). .ci/run installs Chromium when it is missing; elsewhere the browser tests skip with
the install command, except under CI=true, where a missing browser fails them."""

from __future__ import annotations

import os
import pkgutil
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tasks import compare, sidebyside
from tasks.cli import app
from tasks.registry import FRAMEWORKS, MODELS

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
SCREENSHOTS = sidebyside.ROOT / "runs" / "screenshots"  # the test output folder (git-ignored)


# ----------------------------------------------------------------------------- generated, not typed
def copy_tree(root: Path) -> Path:
    for part in (*FRAMEWORKS, "docs", "parity_tests"):
        shutil.copytree(
            sidebyside.ROOT / part, root / part, ignore=shutil.ignore_patterns("__pycache__")
        )
    return root


def test_the_page_shows_the_code_as_it_is_now(tmp_path):
    root = copy_tree(tmp_path)
    path = root / "torch_impl" / "mlp.py"
    marker = "# a line written by test_the_page_shows_the_code_as_it_is_now"
    path.write_text(path.read_text().replace("def loss_fn(", f"{marker}\ndef loss_fn(", 1))
    page = compare.build("mlp", root)
    assert marker in page.rows["loss"]["torch_impl"].text
    assert marker not in compare.build("mlp").rows["loss"]["torch_impl"].text
    assert "a line written by" in compare.render(page, root)


def test_every_model_has_every_section_in_every_framework():
    for model in MODELS:
        page = compare.build(model)
        assert list(page.rows) == list(compare.ROWS), model
        for section, cells in page.rows.items():
            assert set(cells) == set(FRAMEWORKS), (model, section)
            assert all(cell.text.strip() for cell in cells.values()), (model, section)
        assert page.porting_tables and all(len(t) > 1 for t in page.porting_tables), model


def test_cli_writes_every_page_and_an_index(tmp_path):
    result = CliRunner().invoke(app, ["compare", "--all", "--out", str(tmp_path / "pages")])
    assert result.exit_code == 0, result.output
    assert sorted(p.stem for p in (tmp_path / "pages").glob("*.html")) == sorted([*MODELS, "index"])
    two = CliRunner().invoke(app, ["compare", "lenet5", "torch", "jax"])
    assert two.exit_code == 0 and "PyTorch" in two.stdout and "nnx.Conv" in two.stdout, two.output
    for args, said in (
        (["compare", "nope", "--html", "x.html"], "unknown model 'nope'"),
        (["compare", "mlp", "torch"], "give two frameworks"),
        (
            ["compare", "mlp", "--html", str(tmp_path / "p.html"), "--parity", str(tmp_path)],
            "--parity",
        ),
    ):
        bad = CliRunner().invoke(app, args)
        assert bad.exit_code == 2 and said in bad.output, (args, bad.output)


# ----------------------------------------------------------------------------- in a real browser
@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    """Every page, the perceptron's with its parity records computed now (the cheapest model)."""
    records = compare.parity_records("perceptron")
    out = tmp_path_factory.mktemp("pages")
    compare.write_all(out, records=records)
    return out, records


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        message = "no chromium/chromedriver: apt-get install chromium chromium-driver"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1600,1000",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


# What the assertions read off a page, gathered in one script (a WebDriver round trip per row and
# cell cost ~3 s a page). Text is an element's innerText when Selenium's own isDisplayed atom (what
# WebElement.is_displayed runs) says it is shown, else "" (as WebElement.text is for a hidden one).
PAGE_FACTS = """
const shown = el => (%s).apply(null, [el]);
const text = el => (el && shown(el) ? el.innerText.trim() : null);
const all = (css, root = document) => [...root.querySelectorAll(css)];
const parity = document.getElementById('parity');
return {
  heads: all('thead th.fw').map(th => text(th) || ''),
  rows: all('tr.section-row').map(r => ({
    id: r.id, cells: all('td.fw', r).map(c => Boolean(text(c))),
  })),
  porting: all('#porting table.md tbody tr').length,
  parity_rows: all('#parity table.parity tbody tr').length,
  parity_text: parity && (text(parity) || ''),
  dangling: all('a[href^="#"]').map(a => a.getAttribute('href').slice(1))
    .filter(id => !document.getElementById(id)),
};
"""
SHOWN_IN_SECOND_ROW = """
const shown = el => (%s).apply(null, [el]);
return [...document.querySelectorAll('tr.section-row')[1].querySelectorAll('td.fw')]
  .filter(shown).map(c => c.getAttribute('class').split(/\\s+/).filter(Boolean).pop());
"""


@pytest.fixture(scope="module")
def scripts():
    atom = pkgutil.get_data("selenium.webdriver.remote", "isDisplayed.js").decode()
    return PAGE_FACTS % atom, SHOWN_IN_SECOND_ROW % atom


@pytest.mark.parametrize("model", list(MODELS))
def test_page_in_a_browser(pages, browser, scripts, model):
    from selenium.webdriver.common.by import By

    out, records = pages
    page_facts, shown_in_second_row = scripts
    page = compare.build(model, records=records if model == "perceptron" else None)
    browser.get((out / f"{model}.html").as_uri())
    facts = browser.execute_script(page_facts)
    assert facts["heads"] == [compare.TITLES[fw] for fw in FRAMEWORKS]
    rows = facts["rows"]
    assert [r["id"] for r in rows] == [f"sec-{compare.slug(s)}" for s in page.rows]
    for row in rows:  # four framework cells, each shown with text in it
        assert len(row["cells"]) == 4 and all(row["cells"]), row["id"]
    # the PORTING tables, row for row
    assert facts["porting"] == sum(len(t) - 1 for t in page.porting_tables) > 0
    # the parity table: a row per (check, dtype)
    if model == "perceptron":
        assert facts["parity_rows"] == len(compare.parity_table(page.parity)) - 1 > 0
        assert facts["parity_text"] is not None, "no #parity section"
        assert f"{len(page.parity)} records, all passed" in facts["parity_text"]
    # every in-page link lands on an anchor that exists
    assert facts["dangling"] == []
    # the column toggle: any two of the four (clicked as a user does)
    boxes = {
        fw: browser.find_element(By.CSS_SELECTOR, f'#toggles input[data-fw="{fw}"]')
        for fw in ("scratch", "tf_impl")
    }
    for box in boxes.values():
        box.click()
    shown = browser.execute_script(shown_in_second_row)
    assert shown == ["fw-torch_impl", "fw-jax_impl"]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / f"{model}-torch-vs-flax.png"))
    for box in boxes.values():
        box.click()
    assert len(browser.execute_script(shown_in_second_row)) == 4
    browser.save_screenshot(str(SCREENSHOTS / f"{model}.png"))
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors


def test_notes_stand_beside_the_code_they_concern():
    """A default difference goes beside the section whose code names it; a rule PORTING states for
    every model shows only on the pages whose code names its subject."""

    def sections_with(model, words):
        notes = compare.build(model).notes
        return {s for s, found in notes.items() for n in found if words in n["cells"][0]}

    assert sections_with("mlp", "LeakyReLU default slope") == {"layers"}  # make_activation
    assert sections_with("perceptron", "LeakyReLU") == set()  # no leaky ReLU anywhere in it
    assert sections_with("lenet5", "`nnx.Conv` defaults") == {"layers"}  # make_conv
    assert sections_with("mlp", "float `learning_rate`") == {"train step"}  # make_optimizer
