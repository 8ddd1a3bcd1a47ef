import json
import logging

from app.telemetry.logs import JsonFormatter, TextFormatter


def record(**fields):
    rec = logging.LogRecord(
        "app.webhook.admission", logging.INFO, __file__, 1, "admission %s", ("x",), None
    )
    rec.fields = fields
    return rec


def test_json_lines_merge_fields():
    line = JsonFormatter().format(record(uid="u1", images=[{"verdict": "unknown"}], ms=0.4))
    data = json.loads(line)
    assert data["msg"] == "admission x" and data["level"] == "info"
    assert data["uid"] == "u1" and data["images"] == [{"verdict": "unknown"}] and data["ms"] == 0.4


def test_text_appends_key_values():
    line = TextFormatter().format(record(uid="u1", name="has space", n=3))
    assert line.endswith("admission x uid=u1 name='has space' n=3")
