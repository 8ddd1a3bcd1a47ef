"""The local registry set-up is real and behaves as the other integration tests assume.

Run: .venv/bin/pytest tests/integration -q   (starts hack/registries.sh up when needed)
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.acr_front import b64url_decode, decode_jwt_unverified, make_aad_token
from tests.support.registries import (
    ACCEPT_MANIFESTS,
    OCI_INDEX,
    STREAMING_TYPE,
    AcrFront,
    Registry,
    RegistryEnv,
    Seeded,
    count_requests,
    parse_log_line,
    run_seeder,
)

pytestmark = pytest.mark.registry

SBOM_TYPE = "application/spdx+json"
STREAMING_ANNOTATIONS = {
    "streaming.format": "overlaybd",
    "streaming.version": "v1",
    "streaming.platform.os": "linux",
}


def fallback_tag(digest: str) -> str:
    return digest.replace(":", "-", 1)


def referrers_pages(
    client: httpx.Client, repo: str, digest: str, **params: str
) -> list[httpx.Response]:
    """GET the referrers API and follow Link rel=next; every page's response."""
    pages: list[httpx.Response] = []
    url: str | None = f"/v2/{repo}/referrers/{digest}"
    while url:
        resp = client.get(url, params=params if not pages else None)
        pages.append(resp)
        link = resp.headers.get("link")
        url = None
        if resp.status_code == 200 and link and "next" in link:
            url = urljoin(str(resp.request.url), link.split(";")[0].strip().strip("<>"))
    return pages


def manifests_of(resp: httpx.Response) -> list[dict[str, Any]]:
    return list(resp.json().get("manifests") or [])


def bearer_token(front: AcrFront, client: httpx.Client, scope: str, aad_token: str) -> str:
    ex = client.post(
        "/oauth2/exchange",
        data={"grant_type": "access_token", "service": front.service, "access_token": aad_token},
    )
    assert ex.status_code == 200, ex.text
    tok = client.post(
        "/oauth2/token",
        data={
            "grant_type": "refresh_token",
            "service": front.service,
            "scope": scope,
            "refresh_token": ex.json()["refresh_token"],
        },
    )
    assert tok.status_code == 200, tok.text
    return str(tok.json()["access_token"])


# --------------------------------------------------------------------------- every registry


def test_each_registry_answers_v2(registry_env: RegistryEnv, acr_front: AcrFront) -> None:
    basic_registry, token_registry = registry_env.basic, registry_env.token_registry
    for reg in (registry_env.olareg, registry_env.olareg_paged, registry_env.distribution):
        with reg.client() as c:
            assert c.get("/v2/").status_code == 200, reg.name

    with basic_registry.client(auth=False) as c:
        r = c.get("/v2/")
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Basic ")

    with token_registry.client() as c:
        r = c.get("/v2/")
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Bearer ")

    with acr_front.client() as c:
        r = c.get("/v2/")
        assert r.status_code == 401
        challenge = r.headers["www-authenticate"]
        # as ACR: realm on the login server itself, service = the login server
        assert f'realm="https://{acr_front.host}/oauth2/token"' in challenge
        assert f'service="{acr_front.host}"' in challenge


def test_env_lists_addresses_and_logs(registry_env: RegistryEnv) -> None:
    for key in (
        "STREAMGATE_OLAREG",
        "STREAMGATE_DISTRIBUTION",
        "STREAMGATE_BASIC",
        "STREAMGATE_TOKEN_REGISTRY",
        "STREAMGATE_ACR_FRONT",
    ):
        assert registry_env[key].startswith("127.0.0.1:")
    assert registry_env.olareg.log_path.exists()
    assert registry_env.distribution.log_path.exists()


# --------------------------------------------------------------------------- olareg


def test_olareg_referrers_api_returns_the_streaming_referrer(
    olareg: Registry, seeded: Seeded
) -> None:
    s = seeded["olareg"]
    assert s.referrers_api is True
    assert s.oci_subject_header is True  # olareg answers the manifest PUT with OCI-Subject
    digest = s.digest("demo/streamable:v1")
    expected = s.streaming_referrers("demo/streamable:v1")[0]["digest"]
    with olareg.client() as c:
        r = c.get(f"/v2/demo/streamable/referrers/{digest}")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith(OCI_INDEX)
        (desc,) = manifests_of(r)
        assert desc["digest"] == expected
        assert desc["artifactType"] == STREAMING_TYPE
        assert desc["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
        assert STREAMING_ANNOTATIONS.items() <= desc["annotations"].items()
        assert desc["annotations"]["streaming.platform.arch"] == "amd64"

        # the referrer itself as ACR makes it
        m = c.get(f"/v2/demo/streamable/manifests/{expected}", headers={"Accept": ACCEPT_MANIFESTS})
        body = m.json()
        assert body["artifactType"] == STREAMING_TYPE
        assert body["config"]["mediaType"] == "application/vnd.oci.empty.v1+json"
        assert body["subject"]["digest"] == digest


def test_olareg_applies_the_artifact_type_filter(olareg: Registry, seeded: Seeded) -> None:
    s = seeded["olareg"]
    with olareg.client() as c:
        d = s.digest("demo/many-referrers:v1")
        r = c.get(f"/v2/demo/many-referrers/referrers/{d}")
        assert len(manifests_of(r)) == 31
        assert "oci-filters-applied" not in r.headers
        # olareg 0.1.2 filters, but says so (OCI-Filters-Applied) only when it computes the
        # answer, not when it serves the same filtered list again from its 5-minute page cache:
        # clients must filter themselves whenever the header is missing.
        for _ in range(2):
            r = c.get(
                f"/v2/demo/many-referrers/referrers/{d}", params={"artifactType": STREAMING_TYPE}
            )
            assert r.headers.get("oci-filters-applied") in ("artifactType", None)
            assert [m["artifactType"] for m in manifests_of(r)] == [STREAMING_TYPE]
        assert "oci-filters-applied" not in r.headers  # the repeat came from the cache

        d = s.digest("demo/other-referrer:v1")
        r = c.get(f"/v2/demo/other-referrer/referrers/{d}", params={"artifactType": STREAMING_TYPE})
        assert manifests_of(r) == []
        r = c.get(f"/v2/demo/other-referrer/referrers/{d}")
        assert [m["artifactType"] for m in manifests_of(r)] == [SBOM_TYPE]


def test_olareg_no_referrers_is_an_empty_index_and_may_be_null(
    olareg: Registry, seeded: Seeded
) -> None:
    d = seeded["olareg"].digest("demo/plain:v1")
    with olareg.client() as c:
        r = c.get(f"/v2/demo/plain/referrers/{d}")
    assert r.status_code == 200
    # olareg 0.1.2 answers "manifests": null for a subject that never had referrers
    assert not r.json().get("manifests")


def test_olareg_config_form_reports_config_media_type_as_artifact_type(
    olareg: Registry, seeded: Seeded
) -> None:
    s = seeded["olareg"]
    d = s.digest("demo/config-form:v1")
    with olareg.client() as c:
        (desc,) = manifests_of(c.get(f"/v2/demo/config-form/referrers/{d}"))
        assert desc["artifactType"] == STREAMING_TYPE
        body = c.get(
            f"/v2/demo/config-form/manifests/{desc['digest']}", headers={"Accept": ACCEPT_MANIFESTS}
        ).json()
    assert "artifactType" not in body
    assert body["config"]["mediaType"] == STREAMING_TYPE


def test_olareg_multiarch_and_docker_v2_subjects(olareg: Registry, seeded: Seeded) -> None:
    s = seeded["olareg"]
    with olareg.client() as c:
        # referrer on the linux/amd64 manifest, none on the index or on arm64
        amd = s.platform_digest("demo/multiarch:v1", "linux/amd64")
        arm = s.platform_digest("demo/multiarch:v1", "linux/arm64")
        assert len(manifests_of(c.get(f"/v2/demo/multiarch/referrers/{amd}"))) == 1
        assert manifests_of(c.get(f"/v2/demo/multiarch/referrers/{arm}")) == []
        idx = s.digest("demo/multiarch:v1")
        assert manifests_of(c.get(f"/v2/demo/multiarch/referrers/{idx}")) == []
        # referrer on the index itself
        idx = s.digest("demo/multiarch-index:v1")
        (desc,) = manifests_of(c.get(f"/v2/demo/multiarch-index/referrers/{idx}"))
        assert desc["artifactType"] == STREAMING_TYPE
        # Docker v2 subject
        d = s.digest("demo/docker-v2:v1")
        head = c.head("/v2/demo/docker-v2/manifests/v1", headers={"Accept": ACCEPT_MANIFESTS})
        assert (
            head.headers["content-type"] == "application/vnd.docker.distribution.manifest.v2+json"
        )
        assert head.headers["docker-content-digest"] == d
        (desc,) = manifests_of(c.get(f"/v2/demo/docker-v2/referrers/{d}"))
        assert desc["artifactType"] == STREAMING_TYPE


def test_olareg_paged_splits_long_referrer_lists(olareg_paged: Registry, seeded: Seeded) -> None:
    s = seeded["olareg_paged"]
    d = s.digest("demo/many-referrers:v1")
    with olareg_paged.client() as c:
        pages = referrers_pages(c, "demo/many-referrers", d)
        assert len(pages) > 1
        assert all(p.status_code == 200 for p in pages)
        assert "rel=next" in pages[0].headers["link"]
        assert pages[0].headers["link"].startswith("</v2/")  # a relative link
        found = [m for p in pages for m in manifests_of(p)]
        assert len(found) == 31
        assert len({m["digest"] for m in found}) == 31
        assert [m["artifactType"] for m in found].count(STREAMING_TYPE) == 1
        # a single referrer is one page
        pages = referrers_pages(c, "demo/streamable", s.digest("demo/streamable:v1"))
        assert len(pages) == 1 and "link" not in pages[0].headers


# --------------------------------------------------------------------------- docker-registry 2.8


def test_distribution_has_no_referrers_api_but_the_fallback_tag(
    distribution: Registry, seeded: Seeded
) -> None:
    s = seeded["distribution"]
    assert s.referrers_api is False
    assert s.oci_subject_header is False
    d = s.digest("demo/streamable:v1")
    ref = s.streaming_referrers("demo/streamable:v1")[0]["digest"]
    with distribution.client() as c:
        assert c.get(f"/v2/demo/streamable/referrers/{d}").status_code == 404
        r = c.get(
            f"/v2/demo/streamable/manifests/{fallback_tag(d)}", headers={"Accept": ACCEPT_MANIFESTS}
        )
        assert r.status_code == 200
        assert r.headers["content-type"] == OCI_INDEX
        (desc,) = manifests_of(r)
        assert desc["digest"] == ref
        assert desc["artifactType"] == STREAMING_TYPE
        assert STREAMING_ANNOTATIONS.items() <= desc["annotations"].items()
        # distribution 2.8 stores a manifest with subject/artifactType as pushed (bytes unchanged)
        m = c.get(f"/v2/demo/streamable/manifests/{ref}", headers={"Accept": ACCEPT_MANIFESTS})
        assert m.status_code == 200
        assert m.headers["docker-content-digest"] == ref
        assert m.json()["subject"]["digest"] == d
        assert m.json()["artifactType"] == STREAMING_TYPE

        # many referrers: one fallback index with all 31
        d = s.digest("demo/many-referrers:v1")
        r = c.get(
            f"/v2/demo/many-referrers/manifests/{fallback_tag(d)}", headers={"Accept": OCI_INDEX}
        )
        assert len(manifests_of(r)) == 31
        # the multi-arch referrer hangs off the amd64 manifest
        amd = s.platform_digest("demo/multiarch:v1", "linux/amd64")
        r = c.get(
            f"/v2/demo/multiarch/manifests/{fallback_tag(amd)}", headers={"Accept": OCI_INDEX}
        )
        assert [m["artifactType"] for m in manifests_of(r)] == [STREAMING_TYPE]
        # no referrer, no fallback tag
        d = s.digest("demo/plain:v1")
        assert (
            c.get(
                f"/v2/demo/plain/manifests/{fallback_tag(d)}", headers={"Accept": OCI_INDEX}
            ).status_code
            == 404
        )


def test_reseeding_adds_no_duplicates(
    distribution: Registry, olareg: Registry, seeded: Seeded
) -> None:
    first = seeded["distribution"]
    again = run_seeder(distribution.seeder_args())
    assert again.images["demo/many-referrers:v1"]["digest"] == first.digest(
        "demo/many-referrers:v1"
    )
    d = first.digest("demo/many-referrers:v1")
    with distribution.client() as c:
        r = c.get(
            f"/v2/demo/many-referrers/manifests/{fallback_tag(d)}", headers={"Accept": OCI_INDEX}
        )
        assert len(manifests_of(r)) == 31
    seeded["olareg"]
    run_seeder(olareg.seeder_args())
    d = seeded["olareg"].digest("demo/streamable:v1")
    with olareg.client() as c:
        assert len(manifests_of(c.get(f"/v2/demo/streamable/referrers/{d}"))) == 1


# --------------------------------------------------------------------------- basic auth


def test_basic_registry_wants_credentials(basic_registry: Registry, seeded: Seeded) -> None:
    s = seeded["basic"]
    with basic_registry.client(auth=False) as c:
        r = c.get("/v2/demo/streamable/manifests/v1", headers={"Accept": ACCEPT_MANIFESTS})
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == 'Basic realm="streamgate-basic"'
        r = c.get("/v2/demo/streamable/manifests/v1", auth=("sg-user", "wrong"))
        assert r.status_code == 401
    with basic_registry.client() as c:
        r = c.head("/v2/demo/streamable/manifests/v1", headers={"Accept": ACCEPT_MANIFESTS})
        assert r.status_code == 200
        assert r.headers["docker-content-digest"] == s.digest("demo/streamable:v1")
        assert (
            c.get(f"/v2/demo/streamable/referrers/{s.digest('demo/streamable:v1')}").status_code
            == 404
        )


# --------------------------------------------------------------------------- ACR front


def test_acr_front_exchange_token_and_pull(acr_front: AcrFront, seeded: Seeded) -> None:
    s = seeded["acr_front"]
    assert s.referrers_api is False  # docker-registry 2.8 behind it
    digest = s.digest("demo/streamable:v1")
    upstream = acr_front.upstream
    since = upstream.offset()
    acr_front.reset_stats()
    with acr_front.client() as c:
        r = c.get("/v2/demo/streamable/manifests/v1", headers={"Accept": ACCEPT_MANIFESTS})
        assert r.status_code == 401
        assert 'scope="repository:demo/streamable:pull"' in r.headers["www-authenticate"]

        token = bearer_token(acr_front, c, "repository:demo/streamable:pull", acr_front.aad_token)
        auth = {"Authorization": f"Bearer {token}", "Accept": ACCEPT_MANIFESTS}
        r = c.get("/v2/demo/streamable/manifests/v1", headers=auth)
        assert r.status_code == 200
        assert r.headers["docker-content-digest"] == digest
        assert r.headers["content-type"] == "application/vnd.oci.image.manifest.v1+json"
        r = c.get(f"/v2/demo/streamable/manifests/{fallback_tag(digest)}", headers=auth)
        assert r.status_code == 200
        assert [m["artifactType"] for m in manifests_of(r)] == [STREAMING_TYPE]
        # a blob comes through too (distribution serves it itself, no redirect)
        cfg = c.get(f"/v2/demo/streamable/manifests/{digest}", headers=auth).json()["config"]
        blob = c.get(f"/v2/demo/streamable/blobs/{cfg['digest']}", headers=auth)
        assert blob.status_code == 200 and len(blob.content) == cfg["size"]
        # the token is for pull on demo/streamable only
        assert c.get("/v2/demo/plain/manifests/v1", headers=auth).status_code == 401

    assert acr_front.count("POST", "/oauth2/exchange") == 1
    assert acr_front.count("POST", "/oauth2/token") == 1
    assert acr_front.stats()["events"]["refresh_token_issued"] == 1
    # what the registry behind it saw
    assert (
        upstream.count(since, "GET", r"^/v2/demo/streamable/manifests/", status=200, expect=3) == 3
    )
    assert upstream.count(since, "GET", r"^/v2/demo/plain/manifests/v1$", status=401, expect=1) == 1


def test_acr_front_refuses_bad_aad_tokens(acr_front: AcrFront, tmp_path: Any) -> None:
    def exchange(token: str, tenant: str | None = None) -> httpx.Response:
        form = {"grant_type": "access_token", "service": acr_front.service, "access_token": token}
        if tenant:
            form["tenant"] = tenant
        with acr_front.client() as c:
            return c.post("/oauth2/exchange", data=form)

    assert exchange("not-a-known-token").status_code == 401
    assert exchange(acr_front.aad_token).status_code == 200
    # JWT "AAD" tokens signed by the tests' AAD key
    good = acr_front.mint_aad_token()
    assert exchange(good, tenant=acr_front.tenant).status_code == 200
    assert exchange(good, tenant="another-tenant").status_code == 401
    assert exchange(acr_front.mint_aad_token(lifetime=-3600)).status_code == 401
    assert exchange(acr_front.mint_aad_token(audience="https://vault.azure.net")).status_code == 401
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert exchange(make_aad_token(other_key)).status_code == 401
    # wrong service
    with acr_front.client() as c:
        r = c.post(
            "/oauth2/exchange",
            data={
                "grant_type": "access_token",
                "service": "elsewhere.io",
                "access_token": acr_front.aad_token,
            },
        )
        assert r.status_code == 400


def test_acr_front_access_token_is_what_distribution_verifies(
    acr_front: AcrFront, registry_env: RegistryEnv
) -> None:
    with acr_front.client() as c:
        token = bearer_token(
            acr_front, c, "repository:demo/late:pull,push", acr_front.mint_aad_token()
        )
    header, claims = decode_jwt_unverified(token)
    assert header["alg"] == "RS256"
    cert = x509.load_der_x509_certificate(base64.b64decode(header["x5c"][0]))
    pem = (registry_env.pki / "token-signing.crt").read_bytes()
    assert cert == x509.load_pem_x509_certificate(pem)
    assert claims["aud"] == registry_env["STREAMGATE_TOKEN_SERVICE"]
    assert claims["iss"] == registry_env["STREAMGATE_TOKEN_ISSUER"]
    assert claims["access"] == [
        {"type": "repository", "name": "demo/late", "actions": ["pull", "push"]}
    ]
    assert 74 * 60 <= claims["exp"] - claims["iat"] <= 76 * 60
    assert {"nbf", "jti", "sub"} <= claims.keys()
    # and a tampered token is refused by the registry itself
    head, payload, sig = token.split(".")
    forged = json.loads(b64url_decode(payload))
    forged["access"][0]["name"] = "demo/plain"
    bad = ".".join(
        [head, base64.urlsafe_b64encode(json.dumps(forged).encode()).decode().rstrip("="), sig]
    )
    with acr_front.client() as c:
        r = c.get("/v2/demo/plain/manifests/v1", headers={"Authorization": f"Bearer {bad}"})
        assert r.status_code == 401


def test_acr_front_basic_variants_and_lifetimes(acr_front: AcrFront) -> None:
    with acr_front.client() as c:
        ex = c.post(
            "/oauth2/exchange",
            data={
                "grant_type": "access_token",
                "service": acr_front.service,
                "access_token": acr_front.aad_token,
            },
        )
        refresh = ex.json()["refresh_token"]
        params = {"service": acr_front.service, "scope": "repository:demo/plain:pull"}
        # GET /oauth2/token: anonymous is refused, the null GUID + refresh token works
        assert c.get("/oauth2/token", params=params).status_code == 401
        r = c.get(
            "/oauth2/token", params=params, auth=("00000000-0000-0000-0000-000000000000", refresh)
        )
        assert r.status_code == 200 and "access_token" in r.json()

        # exp is whole seconds (int(now + lifetime)): a 1 s lifetime can end at once.
        with acr_front.configured(access_token_lifetime=5, refresh_token_lifetime=3, clock_skew=0):
            ex = c.post(
                "/oauth2/exchange",
                data={
                    "grant_type": "access_token",
                    "service": acr_front.service,
                    "access_token": acr_front.aad_token,
                },
            )
            short_refresh = ex.json()["refresh_token"]
            form = {
                "grant_type": "refresh_token",
                "service": acr_front.service,
                "scope": "repository:demo/plain:pull",
                "refresh_token": short_refresh,
            }
            r = c.post("/oauth2/token", data=form)
            assert r.status_code == 200
            _, claims = decode_jwt_unverified(r.json()["access_token"])
            assert claims["exp"] - claims["iat"] == 5
            _, refresh_claims = decode_jwt_unverified(short_refresh)
            time.sleep(max(0.0, refresh_claims["exp"] + 0.2 - time.time()))
            r = c.post("/oauth2/token", data=form)
            assert r.status_code == 401  # expired refresh token: the client must exchange again
        assert acr_front.get_config()["access_token_lifetime"] == 75 * 60


def test_acr_front_with_referrers_api(acr_front_referrers: AcrFront, seeded: Seeded) -> None:
    front = acr_front_referrers
    s = seeded["acr_front_referrers"]
    assert s.referrers_api is True
    assert s.oci_subject_header is True
    digest = s.digest("demo/streamable:v1")
    since = front.upstream.offset()
    with front.client() as c:
        r = c.get(f"/v2/demo/streamable/referrers/{digest}")
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == (
            f'Bearer realm="https://{front.host}/oauth2/token",service="{front.host}",'
            'scope="repository:demo/streamable:pull"'
        )
        token = bearer_token(front, c, "repository:demo/streamable:pull", front.mint_aad_token())
        auth = {"Authorization": f"Bearer {token}"}
        r = c.get(
            f"/v2/demo/streamable/referrers/{digest}",
            headers=auth,
            params={"artifactType": STREAMING_TYPE},
        )
        assert r.status_code == 200
        assert [m["artifactType"] for m in manifests_of(r)] == [STREAMING_TYPE]
        # the front checks scope as docker-registry would
        r = c.get("/v2/demo/plain/manifests/v1", headers=auth)
        assert r.status_code == 401
        assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
        r = c.delete(f"/v2/demo/streamable/manifests/{digest}", headers=auth)
        assert r.status_code == 401
        r = c.get(
            "/v2/demo/streamable/manifests/v1",
            headers={"Authorization": f"Bearer {token[:-4]}AAAA"},
        )
        assert r.status_code == 401
        assert 'error="invalid_token"' in r.headers["www-authenticate"]
    # the authorised request reached olareg, the refused ones did not
    assert front.upstream.count(since, "GET", r"^/v2/demo/streamable/referrers/", expect=1) >= 1
    assert front.upstream.count(since, "DELETE", r"^/v2/demo/streamable/") == 0


# --------------------------------------------------------------------------- add-referrer


@pytest.mark.parametrize("name", ["olareg", "distribution", "acr_front", "acr_front_referrers"])
def test_add_referrer_makes_a_referrer_appear(name: str, seeded: Seeded) -> None:
    s = seeded[name]
    target = seeded.target(name)
    args = target.seeder_args()
    digest = s.digest("demo/late:v1")
    assert s.referrers("demo/late:v1") == []

    def referrers() -> list[dict[str, Any]]:
        res = run_seeder(args, "add-referrer", "demo/late:v1", "--arch", "amd64")
        return [r for r in res.images["demo/late:v1"]["referrers"]]

    with target.client() as c:
        headers = {}
        if isinstance(target, AcrFront):
            token = bearer_token(target, c, "repository:demo/late:pull", target.aad_token)
            headers["Authorization"] = f"Bearer {token}"

        def listed() -> list[dict[str, Any]]:
            if s.referrers_api:
                return manifests_of(c.get(f"/v2/demo/late/referrers/{digest}", headers=headers))
            r = c.get(
                f"/v2/demo/late/manifests/{fallback_tag(digest)}",
                headers={**headers, "Accept": OCI_INDEX},
            )
            return manifests_of(r) if r.status_code == 200 else []

        assert listed() == []
        try:
            added = referrers()
            assert [r["artifactType"] for r in added] == [STREAMING_TYPE]
            now = listed()
            assert [m["digest"] for m in now] == [added[0]["digest"]]
            assert now[0]["artifactType"] == STREAMING_TYPE
            referrers()  # again: still one
            assert len(listed()) == 1
        finally:
            run_seeder(args, "remove-referrers", "demo/late:v1")
        assert listed() == []


# --------------------------------------------------------------------------- request counting


def test_log_lines_parse() -> None:
    access = (
        '127.0.0.1 - - [27/Nov/2026:18:31:24 +0000] "HEAD /v2/a/manifests/v1 HTTP/1.1" 200 0 "" "x"'
    )
    trace = (
        "time=2026-11-27T18:29:40.873Z level=DEBUG-4 msg=ServeHTTP duration=12µs method=GET "
        'url=/v2/a/referrers/sha256:00?artifactType=x status=200 req-headers="map[]"'
    )
    a = parse_log_line(access)
    assert a is not None and (a.method, a.path, a.status) == ("HEAD", "/v2/a/manifests/v1", 200)
    t = parse_log_line(trace)
    assert t is not None and (t.method, t.path, t.status) == (
        "GET",
        "/v2/a/referrers/sha256:00?artifactType=x",
        200,
    )
    assert (
        parse_log_line('time=... level=info msg="response completed" http.request.method=GET')
        is None
    )


@pytest.mark.parametrize("name", ["olareg", "olareg_paged", "distribution", "basic"])
def test_request_counting_from_the_registry_log(name: str, seeded: Seeded) -> None:
    seeded[name]
    reg = seeded.target(name)
    assert isinstance(reg, Registry)
    since = reg.offset()
    with reg.client() as c:
        for _ in range(3):
            assert (
                c.get(
                    "/v2/demo/plain/manifests/v1", headers={"Accept": ACCEPT_MANIFESTS}
                ).status_code
                == 200
            )
        assert (
            c.head("/v2/demo/plain/manifests/v1", headers={"Accept": ACCEPT_MANIFESTS}).status_code
            == 200
        )
        c.get("/v2/demo/nothing-here/manifests/v1")
    assert reg.count(since, "GET", r"^/v2/demo/plain/manifests/v1$", expect=3) == 3
    assert reg.count(since, "HEAD", r"/manifests/", expect=1) == 1
    assert reg.count(since, None, r"nothing-here", status=404, expect=1) == 1
    assert count_requests(reg.log_path, since, "GET", r"/v2/demo/plain/") == 3
    assert reg.count(reg.offset()) == 0
