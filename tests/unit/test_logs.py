"""proxydhcp.logs: one line per record, JSON fields, journald detection and priorities,
event lines, start-up holding."""

from __future__ import annotations

import io
import json
import logging
import os

from proxydhcp import logs


def record(msg="hello %s", args=("world",), level=logging.INFO, name="proxydhcp.tftp", exc=None, fields=None):
    r = logging.LogRecord(name, level, __file__, 1, msg, args, exc)
    if fields is not None:
        r.fields = fields
    return r


def test_json_line_has_level_logger_message_and_fields():
    line = logs.JSONFormatter().format(record(fields={"kind": "tftp.transfer", "file": "a b", "size": 3,
                                                       "level": "not this"}))
    assert "\n" not in line
    out = json.loads(line)
    assert out["level"] == "info" and out["logger"] == "proxydhcp.tftp" and out["message"] == "hello world"
    assert out["kind"] == "tftp.transfer" and out["file"] == "a b" and out["size"] == 3
    assert out["time"].endswith("Z")


def test_json_exception_stays_on_one_line():
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        import sys
        line = logs.JSONFormatter().format(record(exc=sys.exc_info()))
    assert "\n" not in line and "ValueError" in json.loads(line)["exception"]


def test_text_is_one_line_and_journal_mode_has_priority_and_no_time():
    r = record(msg="first\nsecond", args=())
    plain = logs.TextFormatter().format(r)
    assert plain.endswith("INFO proxydhcp.tftp: first | second") and "\n" not in plain
    assert logs.TextFormatter(journal=True).format(r) == "<6>proxydhcp.tftp: first | second"
    assert logs.TextFormatter(journal=True).format(record(level=logging.WARNING)).startswith("<4>")
    assert logs.TextFormatter(journal=True).format(record(level=logging.ERROR)).startswith("<3>")
    assert logs.TextFormatter(journal=True).format(record(level=logging.DEBUG)).startswith("<7>")


def test_journal_stream_must_name_our_stderr(tmp_path):
    f = open(tmp_path / "x", "w")
    st = os.fstat(f.fileno())
    assert logs.stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, f.fileno())
    assert not logs.stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, f.fileno())
    assert not logs.stderr_is_journal({}, f.fileno())
    assert not logs.stderr_is_journal({"JOURNAL_STREAM": "garbage"}, f.fileno())
    f.close()


def test_event_logger_one_line_with_fields():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JSONFormatter())
    logger = logging.getLogger(logs.EVENT_LOGGER)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    on = [True]
    try:
        observe = logs.event_logger(lambda: on[0])
        observe({"kind": "dhcp.reply", "mac": "52:54:00:00:00:01", "boot_file": "ipxe.efi", "uuid": None})
        on[0] = False
        observe({"kind": "dhcp.reply", "mac": "52:54:00:00:00:02"})
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    [line] = stream.getvalue().splitlines()
    out = json.loads(line)
    assert out["kind"] == "dhcp.reply" and out["mac"] == "52:54:00:00:00:01"
    assert out["message"] == "event dhcp.reply mac=52:54:00:00:00:01 boot_file=ipxe.efi"


def test_start_up_records_are_held_then_written_or_dropped(capsys):
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.setup("info", "text", hold=True)
        logging.getLogger("proxydhcp.x").info("held line")
        assert capsys.readouterr().err == ""
        logs.release(emit=True)
        assert "held line" in capsys.readouterr().err
        logs.setup("info", "text", hold=True)
        logging.getLogger("proxydhcp.x").info("dropped line")
        logs.release(emit=False)
        logging.getLogger("proxydhcp.x").info("after")
        err = capsys.readouterr().err
        assert "dropped line" not in err and "after" in err
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
