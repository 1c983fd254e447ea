"""The OpenAPI document: generated, valid OpenAPI 3.1, complete, checked in, served without a key.

The document is checked three ways: by openapi-spec-validator (a tool nobody here wrote), against
the contract's list of codes per operation (written out again here, independently of the
generator), and against the app's own routes, schemas and errors. The live conformance run is
tests/test_schemathesis.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import fakeredis
import jsonschema
import pytest
from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate as validate_openapi

from tevo_hold import HoldService, KeySpace, Ledger, TevoHold, build_service, create_app, errors
from tevo_hold import openapi as oa
from tevo_hold.models import HoldStatus
from tevo_hold.schemas import (
    MAX_ORDER_NUMBER,
    HoldRequestSchema,
    InvoiceRequestSchema,
    ReleaseRequestSchema,
)
from tevo_hold.settings import Settings
from tevo_hold.validation import check_order_id
from tevo_hold.web import SERVER_PROBLEMS

from .test_http import StubPos

ROOT = Path(__file__).resolve().parents[1]
CHECKED_IN = ROOT / "docs" / "openapi.json"
KEY = "openapi-test-key"

#: The contract, as the issue states it: every status each operation answers, with its codes.
#: Written out by hand on purpose: the generated document must say exactly this.
CONTRACT: dict[tuple[str, str], dict[int, set[str]]] = {
    ("post", "/v1/holds"): {
        201: set(),
        400: {"invalid_request", "malformed_json"},
        401: {"unauthorized", "invalid_signature"},
        429: {"rate_limited"},
        404: {"listing_not_found"},
        409: {"insufficient_quantity", "global_id_conflict", "request_in_progress"},
        413: {"payload_too_large"},
        415: {"unsupported_media_type"},
        500: {"internal_error"},
        502: {"pos_error"},
        503: {"unavailable"},
        504: {"pos_timeout"},
    },
    ("post", "/v1/releases"): {
        200: set(),
        400: {"invalid_request", "malformed_json"},
        401: {"unauthorized", "invalid_signature"},
        429: {"rate_limited"},
        404: {"hold_not_found"},
        409: {"hold_already_invoiced", "request_in_progress"},
        413: {"payload_too_large"},
        415: {"unsupported_media_type"},
        500: {"internal_error"},
        502: {"pos_error"},
        503: {"unavailable"},
        504: {"pos_timeout"},
    },
    ("post", "/v1/invoices"): {
        201: set(),
        400: {"invalid_request", "malformed_json"},
        401: {"unauthorized", "invalid_signature"},
        429: {"rate_limited"},  # never for a hold's first invoice (its buyer has paid)
        # a POS that knows no such listing fails the sale, kept and retried: 502, never 404
        404: {"hold_not_found"},
        409: {"hold_released", "order_id_conflict", "request_in_progress"},
        410: {"hold_expired"},
        413: {"payload_too_large"},
        415: {"unsupported_media_type"},
        500: {"internal_error"},
        502: {"pos_error"},
        503: {"unavailable"},
        504: {"pos_timeout"},
    },
    ("get", "/v1/holds/{global_id}"): {
        200: set(),
        # a global_id longer than 255 characters; an empty one does not reach the view
        400: {"invalid_request"},
        401: {"unauthorized", "invalid_signature"},
        429: {"rate_limited"},
        404: {"hold_not_found", "not_found"},
        500: {"internal_error"},
        503: {"unavailable"},
    },
    ("get", "/healthz"): {200: set()},
    ("get", "/readyz"): {200: set(), 503: {"unavailable"}},
    ("get", "/metrics"): {200: set()},
    ("get", "/v1/openapi.json"): {200: set()},
    ("get", "/docs"): {200: set()},
    ("get", "/docs/{asset}"): {200: set(), 404: {"not_found"}},
}
#: The paths that need no API key.
PUBLIC = {"/healthz", "/readyz", "/metrics", "/v1/openapi.json", "/docs", "/docs/{asset}"}


def _app(**config: Any) -> Flask:
    settings = Settings(redis_url="redis://unused", api_keys=(KEY,))
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    return create_app(
        {"TEVO_HOLD_API_KEYS": KEY, "TESTING": True, **config},
        service=build_service(settings, client=client),
    )


@pytest.fixture(scope="module")
def http() -> FlaskClient:
    return _app().test_client()


@pytest.fixture(scope="module")
def spec(http: FlaskClient) -> dict[str, Any]:
    response = http.get("/v1/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.get_json()
    return document


def _operations(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method, path): operation
        for path, item in spec["paths"].items()
        for method, operation in item.items()
    }


def _validator(schema: dict[str, Any], spec: dict[str, Any]) -> jsonschema.Draft202012Validator:
    """A JSON Schema 2020-12 validator of ``schema``, whose ``#/components/...`` refs resolve."""
    return jsonschema.Draft202012Validator({**schema, "components": spec["components"]})


# -- served, checked in -------------------------------------------------------------------------


def test_the_checked_in_document_is_what_the_app_serves(http: FlaskClient) -> None:
    response = http.get("/v1/openapi.json")  # no API key
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_data(as_text=True) == CHECKED_IN.read_text("utf-8"), (
        "docs/openapi.json differs from what the app generates: run `make docs` and commit it"
    )


def test_python_m_tevo_hold_openapi_writes_the_same(tmp_path: Path) -> None:
    target = tmp_path / "openapi.json"
    assert oa.main([str(target)]) == 0
    assert target.read_text("utf-8") == CHECKED_IN.read_text("utf-8")


def test_it_is_valid_openapi_3_1(spec: dict[str, Any]) -> None:
    assert spec["openapi"] == "3.1.0"
    validate_openapi(spec)  # raises on any violation of the OpenAPI 3.1 schema


def test_under_a_prefix_the_server_url_is_the_prefix() -> None:
    app = Flask("vendor")
    settings = Settings(redis_url="redis://unused", api_keys=(KEY,))
    service = build_service(settings, client=fakeredis.FakeRedis(server=fakeredis.FakeServer()))
    TevoHold(app, service=service, settings=settings, url_prefix="/tevo")
    http = app.test_client()
    document = http.get("/tevo/v1/openapi.json").get_json()
    assert document["servers"][0]["url"] == "/tevo"
    assert document["paths"] == json.loads(CHECKED_IN.read_text("utf-8"))["paths"]
    page = http.get("/tevo/docs").get_data(as_text=True)
    assert 'data-spec-url="/tevo/v1/openapi.json"' in page
    assert 'src="/tevo/docs/swagger-ui-bundle.js"' in page


# -- complete: every route, every code ----------------------------------------------------------


def test_every_route_is_documented_and_every_documented_operation_is_routed(
    spec: dict[str, Any],
) -> None:
    routed = set()
    for rule in _app().url_map.iter_rules():
        if not rule.endpoint.startswith("tevo_hold."):
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        routed |= {(m.lower(), path) for m in rule.methods or () if m not in ("HEAD", "OPTIONS")}
    assert routed == set(_operations(spec))
    assert {op.view for op in oa.OPERATIONS} == {
        rule.endpoint.rpartition(".")[2]
        for rule in _app().url_map.iter_rules()
        if rule.endpoint.startswith("tevo_hold.")
    }


def test_allow_lists_exactly_the_documented_methods_and_options_is_not_one(
    spec: dict[str, Any], http: FlaskClient
) -> None:
    """Every path answers OPTIONS (a method the document does not give it) with the 405 problem,
    whose Allow lists the documented methods, and HEAD with GET (as the description says)."""
    assert "also answers `HEAD`" in spec["info"]["description"]
    for path, item in spec["paths"].items():
        methods = {method.upper() for method in item}
        if "GET" in methods:
            methods.add("HEAD")
        response = http.open(path.replace("{global_id}", "g1"), method="OPTIONS")
        assert response.status_code == 405, path
        assert response.mimetype == "application/problem+json"
        assert response.get_json()["code"] == "method_not_allowed"
        assert response.headers["Allow"] == ", ".join(sorted(methods)), path
    for rule in _app().url_map.iter_rules():
        assert "OPTIONS" not in (rule.methods or ()), rule


def test_each_operation_answers_exactly_the_contracts_statuses_and_codes(
    spec: dict[str, Any],
) -> None:
    documented = {
        key: {
            int(status): set(response.get("x-problem-codes", []))
            for status, response in operation["responses"].items()
        }
        for key, operation in _operations(spec).items()
    }
    assert documented == CONTRACT


def test_every_code_the_api_can_answer_is_documented(spec: dict[str, Any]) -> None:
    def subclasses(cls: type[errors.TevoHoldError]) -> list[type[errors.TevoHoldError]]:
        return [c for sub in cls.__subclasses__() for c in (sub, *subclasses(sub))]

    answered = {c.code for c in subclasses(errors.TevoHoldError)} - {"configuration_error"}
    answered -= {"conflict"}  # the abstract base of the 409s
    in_operations = {
        code
        for operation in _operations(spec).values()
        for response in operation["responses"].values()
        for code in response.get("x-problem-codes", [])
    }
    # The two routing answers belong to no operation: the description states them.
    description = spec["info"]["description"]
    assert "`404 not_found`" in description
    assert "`405 method_not_allowed`" in description
    assert answered - in_operations == {"method_not_allowed"}
    # What the HTTP server answers by itself (before any operation): the description lists it.
    for problem in SERVER_PROBLEMS:
        assert f"- `{problem.status} {problem.code}`: " in description


# -- every answer explained, typed and exemplified ----------------------------------------------


@pytest.mark.parametrize("key", sorted(CONTRACT))
def test_every_error_answer_is_a_typed_explained_problem(
    spec: dict[str, Any], key: tuple[str, str]
) -> None:
    operation = _operations(spec)[key]
    for status, response in operation["responses"].items():
        if int(status) < 400:
            continue
        codes = response["x-problem-codes"]
        content = response["content"]
        assert list(content) == ["application/problem+json"]
        schema = content["application/problem+json"]["schema"]
        assert schema["properties"]["code"]["enum"] == codes
        assert schema["properties"]["status"]["const"] == int(status)
        for code in codes:
            # a sentence on what it means, and what to do
            assert re.search(rf"- `{code}`: .+\. \*\*What to do:\*\* .+", response["description"])
            example = content["application/problem+json"]["examples"][code]["value"]
            _validator(schema, spec).validate(example)
            assert example["code"] == code
            assert example["type"] == "urn:tevo-hold:problem:" + code
        headers = response.get("headers", {})
        retried = {"request_in_progress", "unavailable", "rate_limited"}
        assert ("Retry-After" in headers) == bool(retried & {*codes})
        assert ("WWW-Authenticate" in headers) == (status == "401")


#: The answers that carry Retry-After, as the app sends them (tests/test_ratelimit.py checks 429's).
RETRY_AFTER = {"409 request_in_progress", "429 rate_limited", "503 unavailable"}


def test_the_document_says_which_answers_carry_retry_after_429_included(
    spec: dict[str, Any],
) -> None:
    """The description and the header's own text once named 409 and 503 only, so a client
    reading them would not wait out a 429 before retrying it."""
    retries = spec["info"]["description"].split("**Retries.**")[1].split("\n\n")[0]
    header = spec["components"]["headers"]["Retry-After"]["description"]
    for answer in RETRY_AFTER:
        assert f"`{answer}`" in retries, retries
        assert f"`{answer}`" in header, header


def test_errors_explanations_come_from_errors_py() -> None:
    answers = {a.error: a for op in oa.OPERATIONS for a in op.answers if a.meaning is None}
    for cls, answer in answers.items():
        first_line = (cls.__doc__ or "").strip().splitlines()[0].replace("``", "`")
        assert answer.explain().startswith(first_line.rstrip()), cls


@pytest.mark.parametrize("key", sorted(CONTRACT))
def test_success_answers_have_schema_example_and_replay_header(
    spec: dict[str, Any], key: tuple[str, str]
) -> None:
    operation = _operations(spec)[key]
    (status,) = [s for s in operation["responses"] if int(s) < 300]
    response = operation["responses"][status]
    first, *others = response["content"].values()
    _validator(first["schema"], spec).validate(first["example"])
    assert all(media["schema"] == first["schema"] for media in others)
    replays = key[1] in ("/v1/holds", "/v1/releases", "/v1/invoices")
    assert ("Idempotent-Replayed" in response.get("headers", {})) == replays


@pytest.mark.parametrize(
    ("path", "schema"),
    [
        ("/v1/holds", HoldRequestSchema),
        ("/v1/releases", ReleaseRequestSchema),
        ("/v1/invoices", InvoiceRequestSchema),
    ],
)
def test_request_examples_fit_the_schema_and_the_code_accepts_them(
    spec: dict[str, Any], path: str, schema: type[Any]
) -> None:
    body = spec["paths"][path]["post"]["requestBody"]
    assert body["required"] is True
    media = body["content"]["application/json"]
    assert media["examples"]
    for example in media["examples"].values():
        _validator(media["schema"], spec).validate(example["value"])
        schema().load(example["value"])  # the view's own schema: raises if it refuses


def test_the_documented_examples_work_against_the_app() -> None:
    """The examples name the demo listing and tell a story: two holds, one invoiced, one
    released."""
    app = _app()
    app.extensions["tevo_hold"].service.adapter.set_quantity("demo-1", 10)
    http = app.test_client()
    document = http.get("/v1/openapi.json").get_json()
    headers = {"X-API-Key": KEY}

    def examples(path: str) -> list[Any]:
        media = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        return [example["value"] for example in media["examples"].values()]

    for body in examples("/v1/holds"):
        assert http.post("/v1/holds", json=body, headers=headers).status_code == 201
    (invoice,) = examples("/v1/invoices")
    assert http.post("/v1/invoices", json=invoice, headers=headers).status_code == 201
    (release,) = examples("/v1/releases")
    assert http.post("/v1/releases", json=release, headers=headers).status_code == 200
    # ... and crossed over, they are the documented conflicts
    refused = http.post("/v1/releases", json={"global_id": invoice["global_id"]}, headers=headers)
    assert refused.get_json()["code"] == "hold_already_invoiced"
    refused = http.post("/v1/invoices", json={**invoice, **release}, headers=headers)
    assert refused.get_json()["code"] == "hold_released"
    parameter = document["paths"]["/v1/holds/{global_id}"]["get"]["parameters"][0]
    read = http.get("/v1/holds/" + parameter["example"], headers=headers)
    assert read.get_json()["status"] == "invoiced"


def test_the_order_id_bound_is_the_validators(spec: dict[str, Any]) -> None:
    assert check_order_id(MAX_ORDER_NUMBER) == MAX_ORDER_NUMBER
    with pytest.raises(errors.InvalidRequest):
        check_order_id(MAX_ORDER_NUMBER + 1)
    order = spec["components"]["schemas"]["InvoiceRequest"]["properties"]["tevo_order_id"]
    assert order["oneOf"][0]["maximum"] == MAX_ORDER_NUMBER


# -- security and links -------------------------------------------------------------------------


def test_api_key_security_is_declared_and_only_operations_probes_are_public(
    spec: dict[str, Any],
) -> None:
    schemes = spec["components"]["securitySchemes"]
    assert schemes["ApiKey"] == {**schemes["ApiKey"], "type": "apiKey", "in": "header"}
    assert schemes["ApiKey"]["name"] == "X-API-Key"
    assert schemes["Bearer"]["scheme"] == "bearer"
    assert spec["security"] == [{"ApiKey": []}, {"Bearer": []}]
    for (method, path), operation in _operations(spec).items():
        public = path in PUBLIC
        assert ("security" in operation) == public, (method, path)
        assert ("401" in operation["responses"]) != public


def test_links_describe_the_hold_release_invoice_sequences(spec: dict[str, Any]) -> None:
    ids = {op["operationId"] for op in _operations(spec).values()}
    links = {
        (operation["operationId"], name): link
        for operation in _operations(spec).values()
        for response in operation["responses"].values()
        for name, link in response.get("links", {}).items()
    }
    assert {(source, link["operationId"]) for (source, _), link in links.items()} >= {
        ("holdInventory", "releaseHold"),
        ("holdInventory", "invoiceHold"),
        ("holdInventory", "getHold"),
        ("releaseHold", "getHold"),
        ("invoiceHold", "getHold"),
    }
    for link in links.values():
        assert link["operationId"] in ids
        values = {**link.get("parameters", {}), **link.get("requestBody", {})}
        assert values["global_id"] == "$response.body#/global_id"


# -- the reference page -------------------------------------------------------------------------


def test_the_reference_page_is_served_without_a_key_and_loads_only_local_files(
    http: FlaskClient,
) -> None:
    page = http.get("/docs")
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    urls = re.findall(r'(?:src|href|data-spec-url)="([^"]*)"', html)
    assert urls
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url  # this server, no CDN
        with http.get(url) as response:  # closes the file it streams
            assert response.status_code == 200, url
    assert "validatorUrl: null" in html


@pytest.mark.parametrize(
    "headers",
    [{"Range": "bytes=5-1"}, {"Range": "bytes=0-9"}, {"If-None-Match": "*"}, {}],
    ids=["bad-range", "range", "if-none-match", "plain"],
)
def test_the_page_files_come_whole_as_the_document_says(
    http: FlaskClient, spec: dict[str, Any], headers: dict[str, str]
) -> None:
    """Only 200 (or 404) is documented for them: no 206, 304 or 416 (and no http_error code)."""
    content = spec["paths"]["/docs/{asset}"]["get"]["responses"]["200"]["content"]
    for asset, media in oa.DOCS_ASSETS.items():
        with http.get(f"/docs/{asset}", headers=headers) as response:
            assert response.status_code == 200, (asset, response.get_data()[:200])
            assert response.mimetype == media and media in content
            whole = (oa._swagger_ui_dir() / asset).read_bytes()
            assert response.get_data() == whole
            assert response.headers["Cache-Control"] == "public, max-age=3600"


def test_only_the_swagger_ui_files_are_served_under_docs(http: FlaskClient) -> None:
    for path in ("/docs/index.html", "/docs/..%2Fsetup.py", "/docs/swagger-ui.js.map"):
        response = http.get(path)
        assert response.status_code == 404
        assert response.mimetype == "application/problem+json"
        assert response.get_json()["code"] == "not_found"


# -- what the 502 and 503 answers leave behind --------------------------------------------------


def _meaning(operation_id: str, error: type[errors.TevoHoldError]) -> str:
    [op] = [op for op in oa.OPERATIONS if op.operation_id == operation_id]
    [answer] = [a for a in op.answers if a.error is error]
    return answer.explain()


def test_the_502_and_503_meanings_say_what_the_call_left() -> None:
    """The hold's 502 once said "nothing was held", though a POS that failed (a 5xx) may have
    held, and the hold is then compensated (a release answers 200, not 404); and every 503 said
    "nothing was changed", though a release whose POS is down is released here all the same and
    an invoice whose POS is down is kept as invoice_failed."""
    pos = StubPos(errors.PosError("unused"), methods=())
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    service = HoldService(Ledger(client, keys=KeySpace("t")), pos)
    http = create_app({"TEVO_HOLD_API_KEYS": KEY, "TESTING": True}, service=service).test_client()
    auth = {"X-API-Key": KEY}

    def post(path: str, body: dict[str, Any], failing: tuple[str, ...] = ()) -> tuple[int, Any]:
        pos.methods = failing
        answer = http.post(path, json=body, headers=auth)
        return answer.status_code, answer.get_json()

    hold_502 = _meaning("holdInventory", errors.PosError)
    cases = [
        ("refused", errors.PosError("refused"), 404),
        ("failed", errors.PosError("failed", outcome_unknown=True), 200),
    ]
    for gid, error, release_status in cases:
        pos.exc = error
        hold = {"remote_id": "L", "quantity": 1, "global_id": gid}
        assert post("/v1/holds", hold, failing=("hold",))[0] == 502
        status, body = post("/v1/releases", {"global_id": gid})
        assert status == release_status, body
        said = "`404 hold_not_found`" if status == 404 else f"`200` (`{body['status']}`)"
        assert said in hold_502, hold_502

    pos.exc = errors.Unavailable("The POS could not be reached.")
    for gid, operation, call in (
        ("r", "release", ("/v1/releases", {"global_id": "r"})),
        ("i", "invoice", ("/v1/invoices", {"global_id": "i", "tevo_order_id": 7})),
    ):
        assert post("/v1/holds", {"remote_id": "L", "quantity": 1, "global_id": gid})[0] == 201
        assert post(*call, failing=(operation,))[0] == 503
        now = http.get(f"/v1/holds/{gid}", headers=auth).get_json()["status"]
        meaning = _meaning(f"{operation}Hold", errors.Unavailable)
        assert f"`{now}`" in meaning and "nothing was changed. Or the POS" in meaning, meaning
    assert "nothing was held" in _meaning("holdInventory", errors.Unavailable)


# -- what every answer carries ------------------------------------------------------------------


def test_every_member_the_server_always_sends_is_required(spec: dict[str, Any]) -> None:
    """The server sends tevo_order_id, invoiced_at and released_at (and, on GET, last_error)
    always, null while unset; the schemas once left them out of ``required``, so that a client
    generated from the document had to treat them as optional."""
    app = _app()
    app.extensions["tevo_hold"].service.adapter.set_quantity("L1", 10)
    http = app.test_client()
    auth = {"X-API-Key": KEY}
    hold = {"remote_id": "L1", "quantity": 1, "global_id": "g"}
    bodies = {
        "Hold": [
            http.post("/v1/holds", json=hold, headers=auth).get_json(),
            http.post("/v1/holds", json=hold, headers=auth).get_json(),  # a replay
            http.post("/v1/releases", json={"global_id": "g"}, headers=auth).get_json(),
            http.post("/v1/holds", json={**hold, "global_id": "i"}, headers=auth).get_json(),
            http.post(
                "/v1/invoices", json={"global_id": "i", "tevo_order_id": 7}, headers=auth
            ).get_json(),
        ],
        "HoldDetail": [http.get(f"/v1/holds/{g}", headers=auth).get_json() for g in ("g", "i")],
    }
    for name, answers in bodies.items():
        schema = spec["components"]["schemas"][name]
        for body in answers:
            assert set(body) == set(schema["required"]) == set(schema["properties"]), body
            _validator({"$ref": f"#/components/schemas/{name}"}, spec).validate(body)


@pytest.mark.parametrize("raw", ["[]", '"a"', '{"global_id": "a", "global_id": "b"}'])
def test_a_body_refused_as_a_whole_has_no_errors_as_the_contract_says(
    http: FlaskClient, spec: dict[str, Any], raw: str
) -> None:
    """The TEvo guide once said invalid_request always adds ``errors``; a body that is not an
    object, or names a member twice, has none (there is no field to name)."""
    answer = http.post(
        "/v1/releases",
        data=raw,
        headers={"X-API-Key": KEY, "Content-Type": "application/json"},
    ).get_json()
    assert answer["code"] == "invalid_request" and "errors" not in answer, answer
    said = spec["components"]["schemas"]["Problem"]["properties"]["errors"]["description"]
    assert "when fields are at fault" in said and "absent when" in said, said
    guide = " ".join((ROOT / "docs" / "tevo-integration.md").read_text("utf-8").split())
    assert "is refused as a whole, without `errors`" in guide


def test_every_answer_documents_and_carries_x_request_id(
    http: FlaskClient, spec: dict[str, Any]
) -> None:
    """Every answer carries X-Request-ID (the README said so), but neither the document nor the
    TEvo guide did."""
    header = spec["components"]["headers"]["Request-ID"]
    pattern = re.compile(header["schema"]["pattern"])
    for key, operation in _operations(spec).items():
        for status, response in operation["responses"].items():
            ref = response.get("headers", {}).get("X-Request-ID")
            assert ref == {"$ref": "#/components/headers/Request-ID"}, (key, status)
    # the answers of each kind do carry one, of the documented form
    answers = [
        http.get("/healthz"),
        http.get("/docs/swagger-ui.css"),
        http.get("/docs/nope.js"),
        http.post("/v1/holds", json={}),
        http.post("/v1/releases", json={"global_id": "none"}, headers={"X-API-Key": KEY}),
        http.get("/v1/holds/g", headers={"X-API-Key": KEY, "X-Request-ID": "tevo:1/a+b=c@d"}),
    ]
    for answer in answers:
        answer.close()  # a file's answer holds the file open until then
        assert pattern.fullmatch(answer.headers["X-Request-ID"]), answer.status
    assert answers[-1].headers["X-Request-ID"] == "tevo:1/a+b=c@d"
    guide = (ROOT / "docs" / "tevo-integration.md").read_text("utf-8")
    assert "Every answer also carries `X-Request-ID`" in guide
    assert "`X-Request-ID`" in spec["info"]["description"]


def test_the_integration_guide_lists_every_status_of_a_hold() -> None:
    """The guide's table of the hold's members once left out invoice_failed."""
    guide = (ROOT / "docs" / "tevo-integration.md").read_text("utf-8")
    [row] = [line for line in guide.splitlines() if line.startswith("| `status` | string |")]
    for status in HoldStatus:
        assert f"`{status}`" in row, status
