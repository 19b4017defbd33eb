"""geomtrace's user-facing lines go through logging and still reach the user by default."""

from __future__ import annotations

import io
import logging

from geomtrace._log import get_logger


def test_lines_reach_stderr_without_any_setup(capsys, caplog):
    get_logger("test").info("[geomtrace] a note")
    assert capsys.readouterr().err == "[geomtrace] a note\n"  # plain %(message)s on stderr
    assert "a note" in caplog.text  # and through logging, for whoever listens


def test_an_application_handler_takes_the_lines_over(capsys):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        get_logger("test").info("configured")
    finally:
        root.removeHandler(handler)
    assert stream.getvalue() == "geomtrace.test INFO configured\n"
    assert capsys.readouterr().err == ""  # never twice


def test_the_level_silences_them(capsys):
    logger = logging.getLogger("geomtrace")
    logger.setLevel(logging.WARNING)
    try:
        get_logger("test").info("quiet")
    finally:
        logger.setLevel(logging.INFO)
    assert capsys.readouterr().err == ""


def test_only_rank_zero_speaks(capsys, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    get_logger("test").info("from rank 1")
    monkeypatch.setenv("RANK", "0")
    get_logger("test").info("from rank 0")
    assert capsys.readouterr().err == "from rank 0\n"


def test_the_memorization_reporter_logs(capsys):
    from geomtrace.memorization._io import Reporter

    Reporter(True)("index ready")
    assert capsys.readouterr().err == "geomtrace: index ready\n"
