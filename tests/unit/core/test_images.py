import pytest

from app.core.images import InvalidImageRef, host_of, parse_image

D = "sha256:" + "a" * 64

VALID = [
    ("nginx", "docker.io", "library/nginx", "latest", None),
    ("nginx:1.27", "docker.io", "library/nginx", "1.27", None),
    ("docker.io/library/nginx", "docker.io", "library/nginx", "latest", None),
    ("index.docker.io/library/nginx:1", "docker.io", "library/nginx", "1", None),
    ("bitnami/redis:7", "docker.io", "bitnami/redis", "7", None),
    ("host:5000/a/b:tag", "host:5000", "a/b", "tag", None),
    ("localhost/app", "localhost", "app", "latest", None),
    ("myreg.azurecr.io/team/web:v1", "myreg.azurecr.io", "team/web", "v1", None),
    (f"myreg.azurecr.io/web@{D}", "myreg.azurecr.io", "web", None, D),
    (f"myreg.azurecr.io/web:v1@{D}", "myreg.azurecr.io", "web", "v1", D),
    ("MyReg.AzureCR.io/web:v1", "myreg.azurecr.io", "web", "v1", None),
    ("127.0.0.1:25000/demo/streamable:v1", "127.0.0.1:25000", "demo/streamable", "v1", None),
    ("a/b__c/d-e.f:Tag_1.0-x", "docker.io", "a/b__c/d-e.f", "Tag_1.0-x", None),
]


@pytest.mark.parametrize(
    ("raw", "registry", "repo", "tag", "digest"), VALID, ids=[v[0] for v in VALID]
)
def test_parses_what_kubelet_accepts(raw, registry, repo, tag, digest):
    ref = parse_image(raw)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repo, tag, digest)
    assert ref.raw == raw
    assert ref.digest_pinned is (digest is not None)
    assert ref.reference == (digest or tag)


INVALID = [
    ("", "empty"),
    ("Nginx", "lower-case"),
    ("myreg.azurecr.io/Team/web:v1", "lower-case"),
    (" nginx", "spaces"),
    ("nginx:", "invalid tag"),
    ("nginx:bad tag", "invalid tag"),
    ("nginx@sha256:abc", "64"),
    ("nginx@md5", "invalid digest"),
    ("a//b", "invalid repository"),
    ("-a/b", "invalid repository"),
    (":tag", "no repository"),
    ("x" * 5000, "too long"),
    ("bad_host.io:99999x/a", "invalid"),
]


@pytest.mark.parametrize(("raw", "fragment"), INVALID, ids=[i[0][:20] or "empty" for i in INVALID])
def test_rejects_with_a_reason(raw, fragment):
    with pytest.raises(InvalidImageRef) as err:
        parse_image(raw)
    assert fragment in str(err.value)


def test_name_is_registry_and_repository():
    assert parse_image("myreg.azurecr.io/a/b:1").name == "myreg.azurecr.io/a/b"


@pytest.mark.parametrize(
    ("raw", "registry"),
    [
        ("myacr.azurecr.io:443/app:v1", "myacr.azurecr.io"),
        ("MyAcr.azurecr.io:443/app:v1", "myacr.azurecr.io"),
        ("reg.test:4430/app:v1", "reg.test:4430"),
        ("[::1]:443/app:v1", "[::1]"),
        ("[::1]:5000/app:v1", "[::1]:5000"),
    ],
)
def test_https_default_port_is_the_same_registry(raw: str, registry: str) -> None:
    """Issue 18 finding 5: `host:443/...` must not be a registry of its own (it escaped the
    realm check and acrRegistries entries). The image as written is kept."""
    ref = parse_image(raw)
    assert ref.registry == registry
    assert ref.raw == raw


@pytest.mark.parametrize(
    ("registry", "host"),
    [("a.b:5000", "a.b"), ("a.b", "a.b"), ("[::1]:5000", "[::1]"), ("[::1]", "[::1]")],
)
def test_host_of(registry: str, host: str) -> None:
    assert host_of(registry) == host


def test_long_references_are_parsed_without_filling_the_cache():
    from app.core import images

    images._parse_cached.cache_clear()
    long_ref = "myacr.azurecr.io/" + "a" * 1000 + ":1"
    assert images.parse_image(long_ref).repository == "a" * 1000
    assert images._parse_cached.cache_info().currsize == 0
    images.parse_image("myacr.azurecr.io/short:1")
    assert images._parse_cached.cache_info().currsize == 1
