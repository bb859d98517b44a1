"""The MLflow UI in a real headless Chromium: the registered model page shows the champion
alias, the run page shows the run's metrics. Screenshots go to test-artifacts/.

Needs the Debian package ``chromium`` (/usr/bin/chromium) and the PyPI package ``playwright``
(its bundled browsers are not used: they cannot be downloaded here)."""

from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers_mlflow import (  # noqa: F401
    PROJECT_ROOT,
    champion,
    client_for,
    free_port,
    mlflow_env,
    start,
    stop,
    wait_http,
)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = PROJECT_ROOT / "test-artifacts"
TIMEOUT_MS = 90_000


@pytest.fixture(scope="module")
def ui(champion, tmp_path_factory) -> Iterator[str]:  # noqa: F811
    port = free_port()
    artifacts = Path(champion.tracking_uri.removeprefix("sqlite:///")).parent / "artifacts"
    log_path = tmp_path_factory.mktemp("ui") / "server.log"
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--backend-store-uri", champion.tracking_uri, "--artifacts-destination", str(artifacts)]
    cmd += ["--workers", "1"]
    proc = start(cmd, log_path, env=mlflow_env(champion.tracking_uri))
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/health", proc, log_path)
        yield url
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def page() -> Iterator:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium not found: apt-get update && apt-get install -y chromium")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, chromium_sandbox=False
        )
        try:
            tab = browser.new_page(viewport={"width": 1400, "height": 1200})
            tab.set_default_timeout(TIMEOUT_MS)
            yield tab
        finally:
            browser.close()


def shot(tab, name: str) -> Path:
    SHOTS.mkdir(exist_ok=True)
    path = SHOTS / name
    tab.screenshot(path=str(path))
    return path


def test_registered_model_page_shows_champion(ui, page, champion):  # noqa: F811
    page.goto(f"{ui}/#/models/{champion.registered_model}")
    page.get_by_text(champion.registered_model).first.wait_for()
    page.get_by_text(re.compile(r"^@\s*champion$")).first.wait_for()  # the alias tag
    aliases = set(re.findall(r"@\s*(champion|challenger)", page.inner_text("body")))
    assert aliases == {"champion", "challenger"}
    page.get_by_text("Version 1").first.scroll_into_view_if_needed()
    assert shot(page, "mlflow_registered_model.png").stat().st_size > 0
    page.goto(f"{ui}/#/models/{champion.registered_model}/versions/{champion.version}")
    page.get_by_text(re.compile(r"^@\s*champion$")).first.wait_for()
    shot(page, "mlflow_model_version.png")


def test_run_page_shows_metrics(ui, page, champion):  # noqa: F811
    run = client_for(champion.tracking_uri).get_run(champion.run_id)
    page.goto(f"{ui}/#/experiments/{run.info.experiment_id}/runs/{champion.run_id}")
    page.get_by_text("test_ctcvr_auc", exact=True).first.wait_for()
    body = page.inner_text("body")
    for name in ("test_ctr_auc", "test_cvr_auc", "test_ctcvr_auc", "train_loss", "valid_ctr_auc"):
        value = run.data.metrics[name]
        shown = re.search(rf"\b{name}\s+([0-9.e-]+)", body)
        assert shown, f"{name} not on the run page"
        assert float(shown.group(1)) == pytest.approx(value, abs=1e-4), (name, shown.group(1))
    assert "samples@v0" in body  # the logged Delta input
    page.get_by_text("test_ctcvr_auc", exact=True).first.scroll_into_view_if_needed()
    shot(page, "mlflow_run.png")


def test_experiment_link_opens_runs_with_description(ui, page, champion):  # noqa: F811
    """The printed link (train/tracking/store.py) opens the runs table, not the GenAI
    overview, and the experiment's description is shown."""
    from train.tracking.store import runs_page

    run = client_for(champion.tracking_uri).get_run(champion.run_id)
    page.goto(runs_page(run.info.experiment_id, ui))
    page.get_by_text(run.info.run_name).first.wait_for()
    page.get_by_text("isrec trainings", exact=False).first.wait_for()
    assert "workflowType=machine_learning" in page.url
    shot(page, "mlflow_runs.png")


def test_run_page_params_and_dataset_drawer(ui, page, champion):  # noqa: F811
    run = client_for(champion.tracking_uri).get_run(champion.run_id)
    page.goto(f"{ui}/#/experiments/{run.info.experiment_id}/runs/{champion.run_id}")
    page.get_by_text("test_ctcvr_auc", exact=True).first.wait_for()
    body = page.inner_text("body")
    assert "model_resolved.gru_hidden" in body or "epochs" in body
    for plumbing in ("hook_pid_file", "ray_address", "hook_at"):
        assert plumbing not in body, plumbing
    page.get_by_text("samples@v0").first.click()  # opens the dataset drawer
    samples = str((champion.lake / "samples").resolve())
    page.get_by_text(f"path: {samples}").first.wait_for()  # the drawer's profile
    drawer = page.inner_text("body")
    assert re.search(rf"num[ _]rows[\s:]*{len(champion.frame)}\b", drawer), drawer[-3000:]
    assert re.search(r"delta[ _]version[\s:]*0\b", drawer), drawer[-3000:]
    for column in ("hist_cate", "price", "click"):  # the schema
        assert column in drawer, column
    shot(page, "mlflow_dataset_drawer.png")


def test_model_version_shows_few_tags(ui, page, champion):  # noqa: F811
    version = client_for(champion.tracking_uri).get_model_version(
        champion.registered_model, champion.version
    )
    assert len(version.tags) <= 8, sorted(version.tags)
    page.goto(f"{ui}/#/models/{champion.registered_model}/versions/{champion.version}")
    page.get_by_text("isrec.data.samples.version").first.wait_for()
    body = page.inner_text("body")
    assert "isrec.env." not in body and "isrec.role" not in body
    shot(page, "mlflow_version_tags.png")
