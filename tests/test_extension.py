"""The Flask extension inside a vendor's own app, under a prefix of its choosing."""

from __future__ import annotations

import fakeredis
import pytest
from flask import Flask

from tevo_hold import Settings, TevoHold, build_service
from tevo_hold.errors import ConfigurationError
from tevo_hold.web import EXTENSION_KEY

KEY = {"X-API-Key": "vendor-key"}


@pytest.fixture
def vendor_app() -> Flask:
    app = Flask("vendor")

    @app.get("/")
    def home() -> str:
        return "<h1>vendor home</h1>"

    settings = Settings(redis_url="redis://unused", api_keys=("vendor-key",))
    service = build_service(settings, client=fakeredis.FakeRedis(server=fakeredis.FakeServer()))
    service.adapter.set_quantity("L", 3)  # type: ignore[attr-defined]
    ext = TevoHold(service=service, settings=settings, url_prefix="/tevo")
    ext.init_app(app)
    return app


def test_api_answers_under_the_prefix(vendor_app):
    http = vendor_app.test_client()
    r = http.post(
        "/tevo/v1/holds", json={"remote_id": "L", "quantity": 1, "global_id": "g"}, headers=KEY
    )
    assert r.status_code == 201 and r.json["status"] == "held"
    assert http.get("/tevo/v1/holds/g", headers=KEY).json["global_id"] == "g"
    assert http.get("/tevo/healthz").status_code == 200


def test_errors_under_the_prefix_are_problems_and_the_rest_of_the_app_is_untouched(vendor_app):
    http = vendor_app.test_client()
    missing = http.get("/tevo/v1/nothing", headers=KEY)
    assert missing.status_code == 404 and missing.mimetype == "application/problem+json"
    assert missing.json["code"] == "not_found"
    wrong = http.put("/tevo/v1/holds", headers=KEY)
    assert wrong.status_code == 405 and wrong.json["code"] == "method_not_allowed"
    assert "POST" in wrong.headers["Allow"]
    assert http.get("/").data == b"<h1>vendor home</h1>"
    theirs = http.get("/elsewhere")
    assert theirs.status_code == 404 and theirs.mimetype == "text/html"


def test_state_lives_in_app_extensions_and_config_is_read_from_app_config():
    app = Flask("vendor")
    app.config.update(TEVO_HOLD_API_KEYS="k1,k2", TEVO_HOLD_HOLD_TTL="42")
    TevoHold(app)
    state = app.extensions[EXTENSION_KEY]
    assert state.settings.api_keys == ("k1", "k2") and state.service.hold_ttl == 42


def test_init_app_twice_names_the_mistake():
    app = Flask("vendor")
    TevoHold(app)
    with pytest.raises(ConfigurationError, match="once per app"):
        TevoHold(app)
