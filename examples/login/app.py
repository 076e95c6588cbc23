"""A tiny login API (pure ASGI, no dependency): what brute force and credential stuffing hit.

``POST /login`` with ``{"username", "password"}`` (JSON) answers 200 and a token for a
known user with the right password, 401 otherwise; ``GET /orders`` answers 200;
``GET /attempts`` says how many login attempts reached this process (the tests read it to
count what the gateway let through).

Run it alone with ``uvicorn examples.login.app:app --port 9000``, or behind
``surefoot serve --config examples/login/gateway.toml``.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

USERS = {"alice": "correct horse battery staple", "bob": "hunter2-but-longer"}


class LoginApp:
    def __init__(self) -> None:
        self.attempts = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        route = (scope["method"], scope["path"])
        if route == ("POST", "/login"):
            self.attempts += 1
            status, answer = self.login(body)
        elif route == ("GET", "/orders"):
            status, answer = 200, {"orders": []}
        elif route == ("GET", "/attempts"):
            status, answer = 200, {"attempts": self.attempts}
        else:
            status, answer = 404, {"error": "not found"}
        content = json.dumps(answer).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(content)),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    @staticmethod
    def login(body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            form = json.loads(body)
            user, password = str(form["username"]), str(form["password"])
        except (ValueError, KeyError, TypeError, RecursionError):
            return 400, {"error": 'expected {"username", "password"}'}
        known = USERS.get(user)
        if known is not None and hmac.compare_digest(known.encode(), password.encode()):
            return 200, {"token": f"token-for-{user}"}
        return 401, {"error": "wrong username or password"}


app = LoginApp()
