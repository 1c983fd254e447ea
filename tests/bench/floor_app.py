"""The floor: the least a Flask endpoint on Redis pays per request, served like tevo-hold.

One POST route that does what any implementation must (check the media type, read and parse the
JSON body, check the API key in constant time, one EVALSHA of a trivial script, answer JSON) and
nothing else. It is served by the same gunicorn config, worker and thread counts as the real
server, with a redis-py client built the same way (:func:`tevo_hold.connection.connect`), so the
ratio of tevo-hold's throughput to this one is the cost of tevo-hold itself.

Settings: ``TEVO_HOLD_REDIS_URL`` and ``TEVO_HOLD_API_KEYS``, as for the real server.
"""

from __future__ import annotations

import hmac
import json
import os

from flask import Flask, Response, request

from tevo_hold.connection import connect
from tevo_hold.settings import Settings

from .common import FLOOR_SCRIPT

settings = Settings.from_env()
client = connect(settings)
script = client.register_script(FLOOR_SCRIPT)
keys = tuple(k.encode("utf-8") for k in settings.accepted_keys)
max_body = settings.max_body

app = Flask("floor")


def _json(body: object, status: int) -> Response:
    text = json.dumps(body, separators=(",", ":"))
    return Response(text, status, mimetype="application/json")


@app.post("/v1/<kind>")
def floor(kind: str) -> Response:
    if request.mimetype != "application/json":
        return _json({"code": "unsupported_media_type"}, 415)
    sent = request.headers.get("X-API-Key", "").encode("latin-1", "replace")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(sent, key)
    if not matched:
        return _json({"code": "unauthorized"}, 401)
    if (request.content_length or 0) > max_body:
        return _json({"code": "payload_too_large"}, 413)
    try:
        body = json.loads(request.get_data().decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return _json({"code": "malformed_json"}, 400)
    global_id = body.get("global_id") if isinstance(body, dict) else None
    if not isinstance(global_id, str):
        return _json({"code": "invalid_request"}, 400)
    script(keys=[f"floor:{kind}:{global_id}"], args=[global_id])
    return _json({"global_id": global_id, "status": "ok"}, 201)


@app.get("/healthz")
def healthz() -> Response:
    return _json({"status": "ok", "pid": os.getpid()}, 200)
