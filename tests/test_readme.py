"""The README's settings table lists every setting a user can change."""

from __future__ import annotations

from pathlib import Path

from polymicro.config import Config

README = Path(__file__).resolve().parents[1] / "README.md"
# flask-smorest's OpenAPI plumbing and Flask's TESTING: fixed by the code, not user settings.
INTERNAL = {
    "API_TITLE",
    "API_VERSION",
    "OPENAPI_JSON_PATH",
    "OPENAPI_REDOC_PATH",
    "OPENAPI_SWAGGER_UI_PATH",
    "OPENAPI_URL_PREFIX",
    "OPENAPI_VERSION",
    "TESTING",
}


def test_every_setting_has_a_row_in_the_readme():
    text = README.read_text(encoding="utf-8")
    settings = {key for key in dir(Config) if key.isupper()} - INTERNAL
    missing = sorted(key for key in settings if f"`POLYMICRO_{key}`" not in text)
    assert missing == []
