"""The page's CSV button on the very CSV a table model was trained on, label column included, in a real
headless Chromium (Debian's, driven by Playwright) against a real `python -m service`: the rows score, the
label column is shown and not scored, and the AUROC the page shows is scikit-learn's for the same rows.

UI_SCREENSHOTS=docs/ui writes the screenshot into the docs; otherwise it goes to the test's temporary folder."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from sklearn.metrics import roc_auc_score

from service import labels
from tests.deploy.tools import find_tool
from tests.service.labelled import ANOMALOUS, FEATURES, LABEL, MODEL, train
from tests.service.servers import running_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # a browser


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, Path]]:
    root = tmp_path_factory.mktemp("labelled-page")
    models, data = train(root)
    with running_server(models, root / "server.log") as client:
        yield client, data


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = find_tool("chromium", "run `make system-deps` (apt-get install chromium)")
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, served: tuple[httpx.Client, Path]) -> Iterator[Page]:
    """/ui on the labelled model, failing the test on any script error."""
    server, _ = served
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=str(server.base_url))
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto("/ui")
    page.wait_for_selector("#table-panel:not([hidden])")  # the only model: chosen at once
    yield page
    context.close()
    assert errors == []


def test_the_training_csv_scores_with_its_auroc(page: Page, served: tuple[httpx.Client, Path], tmp_path: Path) -> None:
    server, data = served
    assert LABEL in (page.locator("#csv-label").text_content() or "")
    page.set_input_files("#csv-file", str(data))
    page.wait_for_selector("[data-testid=auroc]")

    expected = server.post(f"/models/{MODEL}/score", content=data.read_bytes(), headers={"content-type": "text/csv"})
    assert expected.status_code == 200, expected.text
    answer = expected.json()
    rows = page.locator("#rows-table tr")
    assert rows.count() == 1 + len(answer["scores"])
    headings = page.locator("#rows-table th").all_text_contents()
    assert headings == ["row", "score", "percentile", "verdict", LABEL, *FEATURES]
    shown = np.array([float(text) for text in page.locator("#rows-table tr td:nth-child(2)").all_text_contents()])
    np.testing.assert_allclose(shown, answer["scores"], rtol=1e-3)  # shown to 4 digits
    y = page.locator("#rows-table tr td:nth-child(5)").all_text_contents()
    auroc = float(page.locator("[data-testid=auroc]").get_attribute("data-value") or "nan")
    assert auroc == pytest.approx(roc_auc_score(np.array(y) == ANOMALOUS, answer["scores"]), abs=1e-12)
    assert page.locator("[data-testid=auroc]").text_content() == f"{auroc:.4f}"
    normal, anomalous = y.count("B"), y.count(ANOMALOUS)
    assert f"{normal} normal and {anomalous} anomalous rows" in (page.locator("#label-result").text_content() or "")
    shots = Path(os.environ.get("UI_SCREENSHOTS", tmp_path))
    page.screenshot(path=str(shots / "labels.png"), full_page=True, clip=_top_of_panel(page))


def test_a_few_labelled_rows_say_so_instead_of_a_number(page: Page, served: tuple[httpx.Client, Path]) -> None:
    _, data = served
    lines = data.read_text().splitlines()[:6]  # the header and five rows
    page.fill("#csv", "\n".join(lines))
    page.click("#score-rows")
    page.wait_for_selector("[data-testid=auroc-note]")
    note = page.locator("[data-testid=auroc-note]").text_content() or ""
    assert note.startswith("too few") and f"it needs {labels.MIN_PER_CLASS} of each" in note
    assert (page.locator("#label-result").text_content() or "").endswith(f"No AUROC: {note}.")
    assert page.locator("#rows-table tr").count() == 6
    # Rows without the label column leave no label line from the rows before.
    page.fill("#csv", "\n".join([",".join(FEATURES), ",".join(["3"] * len(FEATURES))]))
    page.click("#score-rows")
    page.wait_for_function("document.querySelectorAll('#rows-table tr').length === 2")
    assert not page.locator("#label-result").is_visible()


def test_a_typo_in_the_header_is_still_an_error(page: Page) -> None:
    header = ",".join([LABEL, *FEATURES[:-1], "symetry"])
    page.fill("#csv", f"{header}\nB,{','.join(['1'] * len(FEATURES))}")
    page.click("#score-rows")
    error = page.locator("#error").text_content() or ""
    assert 'unknown ["symetry"]' in error and 'missing ["symmetry"]' in error
    assert page.locator("#rows-table tr").count() == 0


def _top_of_panel(page: Page, height: int = 720) -> dict[str, float]:
    """The table panel from its heading down to the label line and the first rows (page coordinates)."""
    box = page.evaluate(
        "(() => { const r = document.getElementById('table-panel').getBoundingClientRect();"
        " return {x: r.left + window.scrollX, y: r.top + window.scrollY, width: r.width}; })()"
    )
    return {"x": box["x"], "y": box["y"], "width": box["width"], "height": height}
