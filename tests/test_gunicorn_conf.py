"""gunicorn.conf.py's listening choices: the worker class and reuse_port (see its comments).

The end-to-end check is `make faults`' worker scenario: a worker killed mid-request, and
every request after the kill must succeed."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

CONF = Path(__file__).resolve().parents[1] / "gunicorn.conf.py"


@pytest.fixture
def conf(monkeypatch, tmp_path):
    # Loading the file sets PROMETHEUS_MULTIPROC_DIR when unset: give it a private one.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "prometheus"))
    monkeypatch.delenv("POLYMICRO_GUNICORN_REUSE_PORT", raising=False)
    spec = importlib.util.spec_from_file_location("polymicro_gunicorn_conf", CONF)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("migrate", "expected"), [("1\n", True), ("0\n", False)])
def test_auto_uses_reuse_port_only_where_the_kernel_migrates_queued_connections(
    conf, monkeypatch, tmp_path, migrate, expected
):
    sysctl = tmp_path / "tcp_migrate_req"
    sysctl.write_text(migrate)
    monkeypatch.setattr(conf, "_MIGRATE_REQ", sysctl)
    assert conf._reuse_port("auto") is expected


def test_the_default_is_one_shared_socket_with_the_balancing_worker(conf, monkeypatch, tmp_path):
    sysctl = tmp_path / "tcp_migrate_req"
    sysctl.write_text("1\n")
    monkeypatch.setattr(conf, "_MIGRATE_REQ", sysctl)
    assert conf._reuse_port("") is False  # unset or empty is false, whatever the kernel
    assert conf.reuse_port is False
    assert conf.worker_class == "polymicro.serving.BalancedThreadWorker"


def test_auto_without_the_sysctl_keeps_the_shared_socket(conf, monkeypatch, tmp_path):
    monkeypatch.setattr(conf, "_MIGRATE_REQ", tmp_path / "absent")
    assert conf._reuse_port("auto") is False


def test_explicit_choices_win_over_the_kernel(conf, monkeypatch, tmp_path):
    sysctl = tmp_path / "tcp_migrate_req"
    sysctl.write_text("0\n")
    monkeypatch.setattr(conf, "_MIGRATE_REQ", sysctl)
    assert conf._reuse_port(" TRUE ") is True
    sysctl.write_text("1\n")
    assert conf._reuse_port("false") is False


def test_a_misspelt_choice_stops_the_start_naming_the_setting(conf):
    with pytest.raises(RuntimeError, match="POLYMICRO_GUNICORN_REUSE_PORT"):
        conf._reuse_port("yes please")


def test_the_setting_is_read_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "prometheus"))
    monkeypatch.setenv("POLYMICRO_GUNICORN_REUSE_PORT", "true")
    spec = importlib.util.spec_from_file_location("polymicro_gunicorn_conf_env", CONF)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.reuse_port is True


def test_the_benchmarks_report_the_listening_mode_gunicorn_will_use(monkeypatch):
    from polymicro_dev import listens_with_reuse_port

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    before = dict(os.environ)
    assert listens_with_reuse_port({"POLYMICRO_GUNICORN_REUSE_PORT": "true"}) is True
    assert listens_with_reuse_port({"POLYMICRO_GUNICORN_REUSE_PORT": "false"}) is False
    # Reading gunicorn.conf.py leaves this process's environment as it was.
    assert dict(os.environ) == before
