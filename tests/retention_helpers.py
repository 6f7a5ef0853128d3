"""Fixtures shared by the retention tests (tests/test_retention_api.py and
tests/test_retention_service.py), imported by name so pytest finds them:

- ``ctx``: an app context whose logs are kept 7 days and CPU points 5 (TestingConfig
  keeps everything: its retention days are 0);
- ``manual``: the injectable clock replaced by a ManualClock, so rows age because the
  clock moves, not because the test sleeps.
"""

from __future__ import annotations

import pytest

from polymicro.common import clock


@pytest.fixture
def ctx(app):
    app.config.update(RETENTION_LOGS_DAYS=7, RETENTION_POINTS_DAYS=5)
    with app.app_context():
        yield app


@pytest.fixture
def manual(ctx):
    with clock.use(clock.ManualClock()) as manual_clock:
        yield manual_clock
