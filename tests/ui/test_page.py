"""The browser page (GET /ui) and the offline API docs, in a real headless Chromium (Debian's, driven by
Playwright) against a real `python -m service` on a copy of the committed models. The numbers the page
shows are checked against the REST routes for the same pixels and rows.

UI_SCREENSHOTS=docs/ui writes the README's screenshots; otherwise they go to the test's temporary folder."""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from tests.deploy.tools import find_tool
from tests.service.servers import running_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # a browser

ROOT = Path(__file__).resolve().parents[2]
FEATURES = 21  # the committed cardio model's
KEY = "ui-test-key"  # the service asks for it, as an exposed one should; the page sends what is typed in


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, Path]]:
    """The service on a copy of the committed models (the registry tests publish into it)."""
    root = tmp_path_factory.mktemp("ui")
    models = root / "models"
    shutil.copytree(ROOT / "models", models)
    flags = ("--reload-interval", "0.5")
    with running_server(models, root / "server.log", *flags, env={"AE_API_KEYS": KEY}) as client:
        client.headers["X-API-Key"] = KEY
        yield client, models


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    chromium = find_tool("chromium", "run `make system-deps` (apt-get install chromium)")
    browser = playwright.chromium.launch(executable_path=chromium)
    yield browser
    browser.close()


@pytest.fixture
def page(browser: Browser, served: tuple[httpx.Client, Path]) -> Iterator[Page]:
    """A page on /ui at 1280 px that fails the test on any script error or request to another host."""
    server, _ = served
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=str(server.base_url))
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("request", lambda request: errors.extend(_elsewhere(request.url, str(server.base_url))))
    page.goto("/ui")
    page.wait_for_selector("#error:has-text('401')")  # no key yet: the API's own message, not a broken page
    page.fill("#api-key", KEY)
    page.dispatch_event("#api-key", "change")
    page.wait_for_selector("#model option", state="attached")
    yield page
    context.close()
    assert errors == []


def _elsewhere(url: str, base: str) -> list[str]:
    parsed = urlparse(url)
    if parsed.scheme in ("data", "blob") or parsed.netloc == urlparse(base).netloc:
        return []
    return [f"request to another host: {url}"]


def screenshot(page: Page, name: str, tmp_path: Path, full_page: bool = True) -> None:
    folder = Path(os.environ.get("UI_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=full_page)


def choose(page: Page, model: str) -> None:
    label = page.locator("#model option", has_text=f"{model} v").first.text_content()
    page.select_option("#model", label=label)


def shown_score(page: Page) -> float:
    page.wait_for_selector("[data-testid=score]")
    return float(page.locator("[data-testid=score]").get_attribute("data-value") or "nan")


def test_a_drawn_stroke_scores_what_post_score_gives_for_its_pixels(
    page: Page, served: tuple[httpx.Client, Path], tmp_path: Path
) -> None:
    server, _ = served
    choose(page, "mnist-dense")
    box = page.locator("#draw").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + 90, box["y"] + 70)
    page.mouse.down()
    for step in range(25):
        page.mouse.move(box["x"] + 90 + 4 * step, box["y"] + 70 + 6 * step)
    page.mouse.up()

    score = shown_score(page)

    pixels = page.evaluate("drawingPixels()")
    assert np.asarray(pixels).shape == (28, 28) and np.asarray(pixels).max() > 200
    expected = server.post("/models/mnist-dense/score", json={"inputs": [pixels]}).json()["scores"][0]
    assert score == pytest.approx(expected, rel=1e-6)
    percentile = server.post("/models/mnist-dense/score", json={"inputs": [pixels]}).json()["percentiles"][0]
    shown = float(page.locator("[data-testid=percentile]").text_content() or "nan")
    assert shown == pytest.approx(percentile, abs=0.05)  # shown to one decimal
    assert page.locator("#latent").text_content().count(".") == 32  # the latent vector, 32 numbers
    page.wait_for_selector("#sliders input[type=range]")
    assert page.locator("#sliders input[type=range]").count() == 8
    assert "z0\u2013z7, 8 of the 32 latent dimensions" in (page.locator("#latent-shown").text_content() or "")

    # The heat map's legend runs from 0 to the largest squared error of a pixel.
    errors = server.post("/models/mnist-dense/score", json={"inputs": [pixels], "return_sq_err": True}).json()
    largest = float(np.max(errors["sq_err"][0]))
    assert float(page.locator("#heat-scale").get_attribute("data-max") or "nan") == pytest.approx(largest, rel=1e-5)
    ticks = page.locator("#heat-scale .ticks span").all_text_contents()
    assert ticks[0] == "0" and float(ticks[-1]) == pytest.approx(largest, rel=1e-3)  # shown to 4 digits
    screenshot(page, "image-model", tmp_path)

    page.select_option("#latent-dims", label="z24\u2013z31")
    page.wait_for_selector("#latent-24")
    assert page.locator("#sliders input[type=range]").count() == 8
    assert "z24\u2013z31" in (page.locator("#latent-shown").text_content() or "")


def test_an_uploaded_png_scores_what_the_upload_route_gives(
    page: Page, served: tuple[httpx.Client, Path], tmp_path: Path
) -> None:
    server, _ = served
    image = np.zeros((56, 56), np.uint8)
    image[10:46, 24:32] = 255  # a thick "1", twice MNIST's size: the service resizes it
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    choose(page, "mnist-conv")

    page.set_input_files(
        "#image-file", files=[{"name": "one.png", "mimeType": "image/png", "buffer": buffer.getvalue()}]
    )

    expected = server.post("/models/mnist-conv/score", files={"file": ("one.png", buffer.getvalue(), "image/png")})
    assert shown_score(page) == pytest.approx(expected.json()["scores"][0], rel=1e-6)


def test_pasted_rows_are_scored_marked_and_mapped(
    page: Page, served: tuple[httpx.Client, Path], tmp_path: Path
) -> None:
    server, _ = served
    normal, odd = [0.0] * FEATURES, [5.0] * FEATURES
    names = [f"f{i}" for i in range(FEATURES)]
    choose(page, "cardio")
    # A header in another order than the model's: the page maps the columns by name.
    header = list(reversed(names))
    csv = "\n".join([",".join(header), ",".join(map(str, reversed(normal))), ",".join(map(str, reversed(odd)))])
    page.fill("#csv", csv)
    page.click("#score-rows")
    page.wait_for_selector("#rows-table td")

    expected = server.post("/models/cardio/score", json={"inputs": [normal, odd], "return_sq_err": True}).json()
    rows = page.locator("#rows-table tr")
    assert rows.count() == 3  # the header and two rows
    assert [page.locator("#rows-table th").nth(4 + i).text_content() for i in range(FEATURES)] == names
    shown = [float(rows.nth(r).locator("td").nth(2).text_content() or "nan") for r in (1, 2)]
    np.testing.assert_allclose(shown, expected["percentiles"], atol=0.05)  # shown to one decimal
    marked = [rows.nth(r).get_attribute("class") == "anomaly" for r in (1, 2)]
    assert marked == expected["is_anomaly"] == [False, True]
    for r in (1, 2):
        shares = [
            float(s) for s in rows.nth(r).locator("td.heat").evaluate_all("cells => cells.map(c => c.dataset.share)")
        ]
        errors = np.asarray(expected["sq_err"][r - 1])
        np.testing.assert_allclose(shares, errors / errors.sum(), atol=1e-4)
    assert "1 above the threshold" in (page.locator("#table-result").text_content() or "")
    screenshot(page, "table-model", tmp_path)
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than a phone
    screenshot(page, "phone", tmp_path)


def test_errors_are_shown_as_messages_with_no_old_result_under_them(page: Page) -> None:
    choose(page, "cardio")
    page.fill("#csv", ",".join(["0"] * FEATURES))
    page.click("#score-rows")
    page.wait_for_selector("#rows-table td")
    assert page.locator("#table-scale").is_visible()
    page.fill("#csv", "1,2,3")
    page.click("#score-rows")
    assert page.locator("#error").text_content() == "row 1 has 3 values; this model takes 21"
    assert page.locator("#rows-table tr").count() == 0
    assert page.locator("#table-result").text_content() == ""
    assert not page.locator("#table-scale").is_visible()
    page.fill("#csv", ",".join(["1e999"] * FEATURES))  # Infinity in the browser, null in JSON
    page.click("#score-rows")
    page.wait_for_selector("#error:has-text('422')")
    assert "inputs must hold numbers only" in (page.locator("#error").text_content() or "")
    assert page.locator("#table-panel").is_visible()


def test_a_failed_image_leaves_no_old_result(page: Page) -> None:
    choose(page, "mnist-conv")
    page.click("#use-sample")
    assert shown_score(page) > 0
    assert page.locator("#heat-scale").is_visible()
    broken = {"name": "broken.png", "mimeType": "image/png", "buffer": b"not a png"}
    page.set_input_files("#image-file", files=[broken])
    page.wait_for_selector("#error", state="visible")
    assert page.locator("[data-testid=score]").count() == 0
    assert page.locator("#latent").text_content() == ""
    assert page.locator("#sliders input").count() == 0
    assert not page.locator("#heat-scale").is_visible()


@pytest.mark.parametrize("width", [1280, 390])
def test_facts_break_between_words_never_inside_one(page: Page, width: int) -> None:
    choose(page, "mnist-dense")
    page.set_viewport_size({"width": width, "height": 900})
    provider = page.locator("#facts [data-fact='execution provider'] dd")
    assert provider.text_content() == "CPUExecutionProvider"
    # Each word (a text node between <wbr>s) sits on one line: the tops of its letters are one value.
    lines_per_word = provider.evaluate(
        """dd => [...dd.childNodes].filter((n) => n.nodeType === Node.TEXT_NODE).map((word) => {
             const tops = new Set();
             for (let i = 0; i < word.length; i++) {
               const letter = document.createRange();
               letter.setStart(word, i);
               letter.setEnd(word, i + 1);
               tops.add(Math.round(letter.getBoundingClientRect().top));
             }
             return tops.size;
           })"""
    )
    assert lines_per_word == [1, 1, 1]  # CPU, Execution, Provider


def test_every_control_works_from_the_keyboard(page: Page) -> None:
    choose(page, "mnist-conv")
    page.focus("#use-sample")
    page.keyboard.press("Enter")
    assert shown_score(page) > 0
    page.focus("#latent-0")
    page.keyboard.press("ArrowRight")
    unlabelled = page.evaluate(
        """[...document.querySelectorAll('input, select, textarea')]
             .filter(e => !e.labels || e.labels.length === 0).map(e => e.id)"""
    )
    assert unlabelled == []


def test_the_canvas_draws_from_the_keyboard(page: Page, served: tuple[httpx.Client, Path]) -> None:
    server, _ = served
    choose(page, "mnist-dense")
    help_id = page.locator("#draw").get_attribute("aria-describedby")
    assert "the arrow keys move the pen" in (page.locator(f"#{help_id}").text_content() or "")
    page.focus("#draw")
    page.keyboard.press("ArrowUp")
    assert page.locator("#pen").is_visible()
    assert np.asarray(page.evaluate("drawingPixels()")).max() == 0  # the pen's ring is not in the drawing

    page.keyboard.press("Space")
    assert page.locator("#pen-state").text_content() == "Pen down: the arrow keys draw."
    for key in ["ArrowDown"] * 8 + ["Shift+ArrowLeft"] * 2:
        page.keyboard.press(key)
    page.keyboard.press("Space")  # lifting the pen scores the stroke, as releasing the mouse does

    score = shown_score(page)
    assert page.locator("#pen-state").text_content() == "Pen up."
    pixels = page.evaluate("drawingPixels()")
    assert np.asarray(pixels).max() > 200
    drawn = np.count_nonzero(np.asarray(pixels) > 128)
    assert drawn > 10  # a line down and a line left, not one dot
    expected = server.post("/models/mnist-dense/score", json={"inputs": [pixels]}).json()["scores"][0]
    assert score == pytest.approx(expected, rel=1e-6)

    shown = page.locator("[data-testid=score]").get_attribute("data-value")
    page.keyboard.press("Delete")
    page.keyboard.press("Enter")
    page.wait_for_function("v => document.querySelector('[data-testid=score]').dataset.value !== v", arg=shown)
    blank = np.zeros((28, 28)).tolist()
    assert np.asarray(page.evaluate("drawingPixels()")).max() == 0
    expected = server.post("/models/mnist-dense/score", json={"inputs": [blank]}).json()["scores"][0]
    assert shown_score(page) == pytest.approx(expected, rel=1e-6)


def test_a_published_model_appears_in_the_picker(page: Page, served: tuple[httpx.Client, Path]) -> None:
    _, models = served
    choose(page, "mnist-conv")
    staging = models / "cardio-copy" / ".tmp-1"
    shutil.copytree(models / "cardio" / "1", staging)
    manifest = json.loads((staging / "manifest.json").read_text())
    (staging / "manifest.json").write_text(json.dumps(manifest | {"name": "cardio-copy"}))
    staging.rename(models / "cardio-copy" / "1")

    page.wait_for_selector("#model option:has-text('cardio-copy v1')", state="attached", timeout=20_000)
    selected = page.evaluate("document.getElementById('model').selectedOptions[0].dataset.key")
    assert selected == "mnist-conv/1"  # the refresh keeps the user's choice
    assert page.locator("#image-panel").is_visible()


def test_docs_work_offline_and_the_score_example_answers(
    browser: Browser, served: tuple[httpx.Client, Path], tmp_path: Path
) -> None:
    server, _ = served
    context = browser.new_context(
        viewport={"width": 1280, "height": 900}, base_url=str(server.base_url), extra_http_headers={"X-API-Key": KEY}
    )
    page = context.new_page()
    elsewhere: list[str] = []
    page.on("request", lambda request: elsewhere.extend(_elsewhere(request.url, str(server.base_url))))
    page.goto("/docs")
    operation = page.locator("#operations-inference-score_default")
    operation.locator(".opblock-summary").click()
    operation.get_by_role("button", name="Execute").click()  # "Try it out" is on from the start
    status = operation.locator(".live-responses-table tbody .response-col_status").first
    status.wait_for()
    assert (status.text_content() or "").strip().startswith("200")
    page.set_viewport_size({"width": 1280, "height": 700})
    operation.locator(".live-responses-table").first.scroll_into_view_if_needed()
    screenshot(page, "docs", tmp_path, full_page=False)
    page.goto("/redoc")
    page.wait_for_selector("text=Autoencoder service")
    context.close()
    assert elsewhere == []


def test_the_monitoring_panel_shows_the_window_the_api_reports(
    page: Page, served: tuple[httpx.Client, Path], tmp_path: Path
) -> None:
    server, _ = served
    choose(page, "mnist-dense")
    page.wait_for_selector("#monitoring-panel", state="visible")
    # Noise is nothing like the digits the model was calibrated on: the window turns to drift.
    noise = np.random.default_rng(7).integers(0, 256, size=(400, 28, 28)).tolist()
    assert server.post("/models/mnist-dense/score", json={"inputs": noise}).status_code == 200
    page.wait_for_selector("#monitor-status.drift", timeout=15_000)  # the panel polls every 5 s
    expected = server.get("/models/mnist-dense/monitoring").json()
    assert expected["status"] == "drift"
    rows = page.locator("#monitor-facts [data-fact='rows in the window'] dd").text_content() or ""
    assert rows.startswith(f"{expected['window']['rows_seen']} of ")
    assert "PSI" in (page.locator("#monitor-reasons").text_content() or "")
    for chart in ("#monitor-histogram", "#monitor-rate"):  # both charts drew something
        drawn = page.evaluate(
            "(id) => { const c = document.querySelector(id); const d = c.getContext('2d')"
            ".getImageData(0, 0, c.width, c.height).data; return d.some((v, i) => i % 4 === 3 && v > 0); }",
            chart,
        )
        assert drawn, chart
    page.locator("#monitoring-panel").screenshot(path=str(_screenshots(tmp_path) / "monitoring.png"))


def _screenshots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("UI_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder
