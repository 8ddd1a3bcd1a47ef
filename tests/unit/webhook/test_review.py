import base64

import orjson
import pytest

from app.webhook.review import AdmissionAnswer, ReviewError, parse_review, render


def body(**request):
    req = {
        "uid": "u-1",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "operation": "CREATE",
        "object": {"spec": {}},
    }
    req.update(request)
    return orjson.dumps(
        {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req}
    )


def test_parses_the_envelope():
    req = parse_review(
        body(
            namespace="ns",
            name="p",
            dryRun=True,
            userInfo={"username": "alice"},
            subResource="ephemeralcontainers",
        )
    )
    assert (req.uid, req.kind, req.group, req.namespace, req.name) == ("u-1", "Pod", "", "ns", "p")
    assert req.dry_run and req.user == "alice" and req.sub_resource == "ephemeralcontainers"


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"", "empty body"),
        (b"{not json", "not valid UTF-8 JSON"),
        (b"\xff\xfe\x00", "not valid UTF-8 JSON"),
        (b"[1,2]", "not a JSON object"),
        (b'{"apiVersion":"admission.k8s.io/v1","kind":"Pod"}', "expected 'AdmissionReview'"),
        (b'{"apiVersion":"v2","kind":"AdmissionReview","request":{}}', "not supported"),
        (b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}', "request is missing"),
        (body(uid=""), "request.uid"),
        (body(uid=None), "request.uid"),
        (body(kind="Pod"), "request.kind"),
        (body(object=None), "request.object is missing"),
        (body(object=[1]), "request.object"),
        (body(operation=7), "request.operation"),
    ],
    ids=[
        "empty",
        "json",
        "utf8",
        "array",
        "kind",
        "version",
        "no-request",
        "empty-uid",
        "null-uid",
        "kind-type",
        "no-object",
        "object-type",
        "operation-type",
    ],
)
def test_malformed_reviews_say_why(raw, fragment):
    with pytest.raises(ReviewError) as err:
        parse_review(raw)
    assert fragment in str(err.value)


def test_delete_needs_no_object():
    assert parse_review(body(operation="DELETE", object=None)).obj is None


def test_render_echoes_and_encodes_patch():
    req = parse_review(body())
    out = orjson.loads(
        render(
            req,
            AdmissionAnswer(
                allowed=False,
                message="no",
                warnings=("w",),
                patch=({"op": "add", "path": "/a", "value": 1},),
            ),
        )
    )
    assert out["apiVersion"] == "admission.k8s.io/v1" and out["kind"] == "AdmissionReview"
    r = out["response"]
    assert r["uid"] == "u-1" and r["allowed"] is False
    assert r["status"] == {"code": 403, "reason": "Forbidden", "message": "no"}
    assert r["warnings"] == ["w"]
    assert r["patchType"] == "JSONPatch"
    assert orjson.loads(base64.b64decode(r["patch"])) == [{"op": "add", "path": "/a", "value": 1}]
    plain = orjson.loads(render(req, AdmissionAnswer(allowed=True)))["response"]
    assert plain == {"uid": "u-1", "allowed": True}
