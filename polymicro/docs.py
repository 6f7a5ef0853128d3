"""/docs and /redoc that work offline: Swagger UI and ReDoc served by polymicro itself.

flask-smorest renders the two pages and loads their scripts from ``OPENAPI_SWAGGER_UI_URL``
and ``OPENAPI_REDOC_URL``.  Those used to point at an unpinned CDN: a blank page without
internet, and whatever version the CDN served that day.  Left empty (the default), they
now point at the routes below, which serve the files bundled in two pinned PyPI packages
(pyproject.toml pins them exactly; each one's version is the version of what it ships):

- Swagger UI: ``flask-swagger-ui`` (its ``dist/`` is the ``swagger-ui-dist`` build, and its
  only dependency is Flask).
- ReDoc: ``flask-openapi3-redoc`` ships ``redoc.standalone.js``.  No PyPI package ships
  ReDoc alone: every bundle comes with a framework it plugs into (this one with
  flask-openapi3 and pydantic; drf-spectacular-sidecar with Django; fastapi-offline with
  FastAPI).  This one has the smallest and least scanner-noisy baggage, and its files are
  located with ``find_spec``, which does not import it (nor pydantic).

The asset URLs carry the package version (``/docs/assets/swagger-ui/5.34.0/…``), so the
files are cached for a year as immutable and an upgrade changes the URL.

The pages get a Content-Security-Policy that allows only what they load (``docs_csp``):
scripts and styles from this origin (plus the origin of a configured external URL), the
Swagger page's one inline script by its SHA-256 hash, images from this origin and
``data:``, and fetches of the OpenAPI document from this origin.  ReDoc also needs
``style-src 'unsafe-inline'`` (its styled-components insert ``<style>`` elements at run
time, with no way to pass a nonce through flask-smorest's page) and ``worker-src blob:``
(its search index runs in a Web Worker built from a blob).  The hashes are computed from
the page as rendered, once per distinct page: the pages are built from settings only,
never from request input.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
from functools import lru_cache
from html.parser import HTMLParser
from importlib.metadata import version
from pathlib import Path
from urllib.parse import urlsplit

from flask import Blueprint, Flask, abort, current_app, request, send_from_directory

# The pages are flask-smorest's (endpoints of its "api-docs" blueprint).
SWAGGER_UI_PAGE = "api-docs.openapi_swagger_ui"
REDOC_PAGE = "api-docs.openapi_redoc"

ONE_YEAR = 365 * 24 * 3600

blp = Blueprint("docs_assets", __name__, url_prefix="/docs/assets")


class _Assets:
    """Where each bundle's files are, and which version they are (set by init_docs)."""

    swagger_ui_dir: Path
    swagger_ui_version: str
    redoc_dir: Path
    redoc_version: str


assets = _Assets()


def init_docs(app: Flask) -> None:
    """Serve the bundled assets and point flask-smorest's pages at them.

    Call before ``api.init_app`` (flask-smorest reads the two URLs when it registers the
    pages).  A non-empty ``OPENAPI_SWAGGER_UI_URL`` / ``OPENAPI_REDOC_URL`` is kept as
    given (an external copy); the docs CSP then allows that origin too.
    """
    assets.swagger_ui_dir = _package_dir("flask_swagger_ui") / "dist"
    assets.swagger_ui_version = version("flask-swagger-ui")
    assets.redoc_dir = _package_dir("flask_openapi3_redoc") / "templates" / "redoc" / "js"
    assets.redoc_version = version("flask-openapi3-redoc")
    if not app.config.get("OPENAPI_SWAGGER_UI_URL"):
        app.config["OPENAPI_SWAGGER_UI_URL"] = (
            f"{blp.url_prefix}/swagger-ui/{assets.swagger_ui_version}/"
        )
    if not app.config.get("OPENAPI_REDOC_URL"):
        app.config["OPENAPI_REDOC_URL"] = (
            f"{blp.url_prefix}/redoc/{assets.redoc_version}/redoc.standalone.js"
        )
    app.register_blueprint(blp)
    app.after_request(docs_csp)


def _package_dir(name: str) -> Path:
    """The folder of an installed package, without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the package {name} is missing: reinstall polymicro")
    return Path(next(iter(spec.submodule_search_locations)))


@blp.route("/swagger-ui/<string:release>/<path:filename>")
def swagger_ui_asset(release: str, filename: str):
    return _send(assets.swagger_ui_dir, assets.swagger_ui_version, release, filename)


@blp.route("/redoc/<string:release>/<path:filename>")
def redoc_asset(release: str, filename: str):
    return _send(assets.redoc_dir, assets.redoc_version, release, filename)


def _send(folder: Path, current: str, release: str, filename: str):
    if release != current:
        abort(404)  # another version's URL: never answer it with this version's file
    # send_from_directory refuses paths that leave the folder (404).
    response = send_from_directory(folder, filename, max_age=ONE_YEAR)
    response.cache_control.public = True
    response.cache_control.immutable = True
    return response


def docs_csp(response):
    """``after_request``: the Content-Security-Policy of /docs and /redoc.

    Set (not ``setdefault``) on those two pages only, whatever ran before; every other
    response is left to the security headers.
    """
    if request.endpoint == SWAGGER_UI_PAGE:
        response.headers["Content-Security-Policy"] = _policy(
            _page_hashes(response.get_data()), "OPENAPI_SWAGGER_UI_URL", redoc=False
        )
    elif request.endpoint == REDOC_PAGE:
        response.headers["Content-Security-Policy"] = _policy(
            _page_hashes(response.get_data()), "OPENAPI_REDOC_URL", redoc=True
        )
    return response


def _policy(hashes: tuple[tuple[str, ...], tuple[str, ...]], url_setting: str, redoc: bool):
    script_hashes, style_hashes = hashes
    origins = ["'self'"]
    external = _origin(current_app.config.get(url_setting, ""))
    if external:
        origins.append(external)
    # A hash in style-src would switch 'unsafe-inline' off, so ReDoc lists none.
    styles = [*origins, "'unsafe-inline'"] if redoc else [*origins, *style_hashes]
    directives = [
        "default-src 'none'",
        f"script-src {' '.join([*origins, *script_hashes])}",
        f"style-src {' '.join(styles)}",
        "img-src 'self' data:",
        "connect-src 'self'",
        *(["worker-src blob:"] if redoc else []),
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
    return "; ".join(directives)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""


class _InlineCode(HTMLParser):
    """Collects the text of inline ``<script>`` (no ``src``) and ``<style>`` elements."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self._into: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "script" and not dict(attrs).get("src"):
            self.scripts.append("")
            self._into = self.scripts
        elif tag == "style":
            self.styles.append("")
            self._into = self.styles

    def handle_endtag(self, tag):
        if tag in {"script", "style"}:
            self._into = None

    def handle_data(self, data):
        if self._into is not None:
            self._into[-1] += data


@lru_cache(maxsize=8)
def _page_hashes(body: bytes) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """CSP source expressions (``'sha256-…'``) of the inline scripts and styles of a page."""
    parser = _InlineCode()
    parser.feed(body.decode("utf-8"))
    parser.close()
    return _hashes(parser.scripts), _hashes(parser.styles)


def _hashes(blocks: list[str]) -> tuple[str, ...]:
    return tuple(
        f"'sha256-{base64.b64encode(hashlib.sha256(block.encode()).digest()).decode()}'"
        for block in dict.fromkeys(blocks)
    )
