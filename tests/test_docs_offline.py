"""/docs and /redoc work offline: assets from pinned packages, a CSP that allows only them.

The browser tests serve the app on a free port of 127.0.0.1 (werkzeug, in a thread) and
load the pages in headless Chromium with every host name but 127.0.0.1 unresolvable, so
anything a page tried to fetch from the internet fails.  Chromium's console (on stderr
with ``--enable-logging``) reports every Content-Security-Policy violation.  A browser
is required: .ci/run installs Debian's ``chromium``; without one these tests fail, they
never skip.  ``POLYMICRO_TEST_CHROMIUM`` names another binary (e.g. google-chrome).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess
import threading
from importlib.metadata import version
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from polymicro import create_app
from polymicro.docs import _package_dir
from polymicro.extensions import close_db
from tests.conftest import make_config

SWAGGER_UI = version("flask-swagger-ui")
REDOC = version("flask-openapi3-redoc")
SWAGGER_UI_DIR = _package_dir("flask_swagger_ui") / "dist"
REDOC_FILE = (
    _package_dir("flask_openapi3_redoc") / "templates" / "redoc" / "js" / "redoc.standalone.js"
)
CDN_SWAGGER_UI = "https://cdn.jsdelivr.net/npm/swagger-ui-dist/"
CDN_REDOC = "https://cdn.jsdelivr.net/npm/redoc/bundles/redoc.standalone.js"
METHODS = ("get", "post", "put", "patch", "delete")
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# ReDoc 2's sidebar shows a "Redocly" logo from its CDN; the CSP blocks it on purpose.
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


def _csp(response) -> dict[str, list[str]]:
    directives = {}
    for part in response.headers["Content-Security-Policy"].split(";"):
        name, *values = part.split()
        directives[name] = values
    return directives


def _sha256(text: str) -> str:
    return f"'sha256-{base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()}'"


def _asset_urls(page: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', page)


# --- the pages and the assets, over the test client ----------------------------------


def test_the_pages_load_versioned_assets_from_polymicro_only(anon_client):
    docs = anon_client.get("/docs").get_data(as_text=True)
    redoc = anon_client.get("/redoc").get_data(as_text=True)
    assert sorted(_asset_urls(docs)) == [
        f"/docs/assets/swagger-ui/{SWAGGER_UI}/swagger-ui-bundle.js",
        f"/docs/assets/swagger-ui/{SWAGGER_UI}/swagger-ui-standalone-preset.js",
        f"/docs/assets/swagger-ui/{SWAGGER_UI}/swagger-ui.css",
    ]
    assert _asset_urls(redoc) == [f"/docs/assets/redoc/{REDOC}/redoc.standalone.js"]
    assert "://" not in docs
    assert "://" not in redoc


@pytest.mark.parametrize(
    ("url", "path", "mimetype"),
    [
        (
            f"/docs/assets/swagger-ui/{SWAGGER_UI}/swagger-ui-bundle.js",
            SWAGGER_UI_DIR / "swagger-ui-bundle.js",
            "text/javascript",
        ),
        (
            f"/docs/assets/swagger-ui/{SWAGGER_UI}/swagger-ui.css",
            SWAGGER_UI_DIR / "swagger-ui.css",
            "text/css",
        ),
        (f"/docs/assets/redoc/{REDOC}/redoc.standalone.js", REDOC_FILE, "text/javascript"),
    ],
)
def test_assets_are_the_packaged_files_cached_for_a_year(anon_client, url, path, mimetype):
    response = anon_client.get(url)
    assert response.status_code == 200
    assert response.mimetype == mimetype
    assert response.get_data() == path.read_bytes()
    cache_control = response.headers["Cache-Control"]
    for part in ("public", "max-age=31536000", "immutable"):
        assert part in cache_control
    revalidated = anon_client.get(url, headers={"If-None-Match": response.headers["ETag"]})
    assert revalidated.status_code == 304


@pytest.mark.parametrize(
    "url",
    [
        "/docs/assets/swagger-ui/0.0.1/swagger-ui.css",  # another version
        f"/docs/assets/redoc/{SWAGGER_UI}/redoc.standalone.js",
        f"/docs/assets/swagger-ui/{SWAGGER_UI}/no-such-file.js",
        f"/docs/assets/swagger-ui/{SWAGGER_UI}/../flask_swagger_ui.py",  # outside the bundle
        f"/docs/assets/swagger-ui/{SWAGGER_UI}/%2e%2e/flask_swagger_ui.py",
        f"/docs/assets/redoc/{REDOC}/../../plugins.py",
    ],
)
def test_other_versions_and_paths_outside_the_bundles_are_404(anon_client, url):
    assert anon_client.get(url).status_code == 404


def test_swagger_ui_csp_allows_its_one_inline_script_by_hash_and_nothing_else(anon_client):
    response = anon_client.get("/docs")
    page = response.get_data(as_text=True)
    inline = re.findall(r"<script>(.*?)</script>", page, re.DOTALL)
    assert len(inline) == 1
    assert _csp(response) == {
        "default-src": ["'none'"],
        "script-src": ["'self'", _sha256(inline[0])],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "base-uri": ["'none'"],
        "form-action": ["'none'"],
        "frame-ancestors": ["'none'"],
    }


def test_redoc_csp_adds_only_inline_styles_and_its_search_worker(anon_client):
    response = anon_client.get("/redoc")
    assert "<script>" not in response.get_data(as_text=True)
    assert _csp(response) == {
        "default-src": ["'none'"],
        "script-src": ["'self'"],
        # styled-components inserts <style> elements; the search index runs in a blob worker
        "style-src": ["'self'", "'unsafe-inline'"],
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "worker-src": ["blob:"],
        "base-uri": ["'none'"],
        "form-action": ["'none'"],
        "frame-ancestors": ["'none'"],
    }


def test_the_api_keeps_its_own_csp(client):
    csp = _csp(client.get("/api/health/live"))
    assert csp["default-src"] == ["'none'"]
    assert "script-src" not in csp


@pytest.fixture
def cdn_app(mongodb_uri, redis_url):
    """The app configured as before: the assets come from a CDN."""
    config = make_config(
        mongodb_uri, redis_url, OPENAPI_SWAGGER_UI_URL=CDN_SWAGGER_UI, OPENAPI_REDOC_URL=CDN_REDOC
    )
    yield create_app(config)
    close_db()


def test_an_external_asset_url_is_kept_and_its_origin_allowed(cdn_app):
    client = cdn_app.test_client()
    docs = client.get("/docs")
    assert f'href="{CDN_SWAGGER_UI}swagger-ui.css"' in docs.get_data(as_text=True)
    csp = _csp(docs)
    assert csp["script-src"][:2] == ["'self'", "https://cdn.jsdelivr.net"]
    assert csp["style-src"] == ["'self'", "https://cdn.jsdelivr.net"]
    redoc = client.get("/redoc")
    assert f'src="{CDN_REDOC}"' in redoc.get_data(as_text=True)
    assert _csp(redoc)["script-src"] == ["'self'", "https://cdn.jsdelivr.net"]


# --- in a real browser, with the network off -----------------------------------------


def _browser() -> str:
    named = os.environ.get("POLYMICRO_TEST_CHROMIUM")
    found = shutil.which(named) if named else next(filter(None, map(shutil.which, BROWSERS)), None)
    if not found:
        pytest.fail(
            "no Chromium found (apt-get install chromium, or set POLYMICRO_TEST_CHROMIUM): "
            "the offline docs are tested in a real browser"
        )
    return found


@pytest.fixture
def serve():
    """serve(app) -> base URL of a werkzeug server on a free port; stopped after the test."""
    servers = []

    def start(app) -> str:
        server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _load(url: str, profile: Path) -> tuple[str, list[str]]:
    """The DOM of ``url`` after the page settled, and the console lines it logged."""
    result = subprocess.run(  # noqa: S603 - a browser binary and fixed flags
        [
            _browser(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            f"--user-data-dir={profile}",
            # The network is off: no host name resolves, except the server's address.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--enable-logging=stderr",
            "--v=0",
            # Swagger UI renders only the operations in the window (a virtualised list,
            # with this many operations): a window tall enough to hold all of them.
            "--window-size=1280,40000",
            "--virtual-time-budget=20000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    return result.stdout, console


def _operations(spec: dict) -> set[tuple[str, str]]:
    return {
        (method, path)
        for path, item in spec["paths"].items()
        for method in item
        if method in METHODS
    }


def test_swagger_ui_lists_every_operation_offline_without_csp_violations(app, serve, tmp_path):
    base = serve(app)
    dom, console = _load(f"{base}/docs", tmp_path / "profile")
    shown = {
        (method.lower(), path)
        for method, path in re.findall(
            r'opblock-summary-method">(\w+)<.*?class="opblock-summary-path" data-path="([^"]+)"',
            dom,
            re.DOTALL,
        )
    }
    expected = _operations(app.test_client().get("/openapi.json").json)
    assert len(expected) > 40
    assert shown == expected
    assert [line for line in console if "Content Security Policy" in line] == []
    assert [line for line in console if "Failed to load resource" in line] == []


def test_redoc_lists_every_operation_offline_and_blocks_only_its_logo(app, serve, tmp_path):
    base = serve(app)
    dom, console = _load(f"{base}/redoc", tmp_path / "profile")
    shown = {
        (method, path.replace("~1", "/").replace("~0", "~"))
        for path, method in re.findall(r'id="tag/[^/"]+/paths/([^"]+)/(\w+)"', dom)
    }
    assert shown == _operations(app.test_client().get("/openapi.json").json)
    violations = [line for line in console if "Content Security Policy" in line]
    assert len(violations) == 1
    assert f"Loading the image '{REDOC_LOGO}'" in violations[0]


def test_the_cdn_pages_stay_blank_in_the_same_offline_browser(cdn_app, serve, tmp_path):
    """The control: the old configuration fails in this browser, so the network is off."""
    dom, console = _load(f"{serve(cdn_app)}/docs", tmp_path / "profile")
    assert 'id="swagger-ui-container"' in dom
    assert "opblock-summary-path" not in dom
    assert any("SwaggerUIBundle is not defined" in line for line in console)
