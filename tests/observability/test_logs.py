"""Structured logs: one JSON object per line, the fields every record has, the extra keys Berth's records
carry (pod, node, team, verb, reason), and exceptions."""

import logging
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from scheduler.observability import logs
from scheduler.observability.logs import JsonLines


def record(
    msg: str = "bound %s to %s",
    args: tuple[Any, ...] = ("ml/job-0", "n1"),
    level: int = logging.INFO,
    extra: dict[str, Any] | None = None,
    exc: bool = False,
) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("no such node")
        except ValueError:
            exc_info = sys.exc_info()
    rec = logging.getLogger("berth.binder").makeRecord(
        "berth.binder", level, __file__, 1, msg, args, exc_info, extra=extra
    )
    return rec


def formatted(rec: logging.LogRecord) -> dict[str, Any]:
    out = JsonLines().format(rec)
    assert "\n" not in out, "one record, one line"
    parsed: dict[str, Any] = orjson.loads(out)
    return parsed


def test_every_record_has_time_level_logger_and_the_formatted_message() -> None:
    rec = record(level=logging.WARNING)
    rec.created, rec.msecs = 1714521600.25, 250.0  # 2024-05-01T00:00:00.250 UTC
    assert formatted(rec) == {
        "ts": "2024-05-01T00:00:00.250Z",
        "level": "warning",
        "logger": "berth.binder",
        "msg": "bound ml/job-0 to n1",
    }


def test_the_timestamp_is_utc_with_milliseconds() -> None:
    rec = record()
    ts = formatted(rec)["ts"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", ts)
    parsed = datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs(parsed.timestamp() - rec.created) < 0.002


def test_the_extra_keys_berth_uses_are_fields_and_others_are_not() -> None:
    extra = {
        "pod": "ml/job-0",
        "node": "n1",
        "team": "training",
        "verb": "bind",
        "reason": "quota",
        "password": "hunter2",
    }
    out = formatted(record(extra=extra))
    assert {k: out[k] for k in ("pod", "node", "team", "verb", "reason")} == {
        k: extra[k] for k in extra if k != "password"
    }
    assert "password" not in out


def test_only_the_extras_a_record_has_appear() -> None:
    out = formatted(record(extra={"pod": "ml/job-0"}))
    assert set(out) == {"ts", "level", "logger", "msg", "pod"}


def test_an_exception_is_the_error_field_with_its_traceback() -> None:
    out = formatted(record("bind failed", (), logging.ERROR, exc=True))
    assert out["msg"] == "bind failed" and out["level"] == "error"
    assert out["error"].startswith("Traceback (most recent call last):")
    assert out["error"].endswith("ValueError: no such node")


def test_an_extra_json_cannot_encode_is_written_as_text_not_lost() -> None:
    class Node:
        def __str__(self) -> str:
            return "n1"

    out = formatted(record(extra={"node": Node(), "reason": ValueError("bad")}))
    assert (out["node"], out["reason"]) == ("n1", "bad")


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    access = logging.getLogger("aiohttp.access").level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(access)


def test_setup_writes_json_lines_to_stderr_at_the_level(
    root_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.setup("warning")
    assert len(root_logger.handlers) == 1 and isinstance(root_logger.handlers[0].formatter, JsonLines)
    log = logging.getLogger("berth.test")
    log.info("not shown")
    log.warning("shown %d", 1, extra={"team": "t"})
    logs.setup("debug")
    assert len(root_logger.handlers) == 1, "setup replaces the handlers, it does not add one"
    log.debug("shown %d", 2)
    logging.getLogger("aiohttp.access").info("GET /healthz")  # access lines stay out even at debug
    lines = [orjson.loads(x) for x in capsys.readouterr().err.splitlines()]
    assert [(x["level"], x["msg"]) for x in lines] == [("warning", "shown 1"), ("debug", "shown 2")]
    assert lines[0]["team"] == "t"
