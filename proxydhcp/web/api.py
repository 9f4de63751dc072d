"""/api/sessions[?failed=1&limit=N] and /api/sessions/<mac>: boot sessions as JSON (the same
as `proxydhcp sessions --json`), read from the event store in a thread, never on the reactor."""

from __future__ import annotations

import json
import re

from twisted.internet import threads
from twisted.web import resource, server

_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


class Sessions(resource.Resource):
    isLeaf = True

    def __init__(self, state_dir) -> None:
        super().__init__()
        self.state_dir = state_dir  # callable: the running config's state.dir

    def render_GET(self, request):
        from proxydhcp.events.store import Reader, db_path
        request.proxydhcp_kind = "api"
        request.setHeader(b"content-type", b"application/json")
        parts = [p.decode("utf-8", "replace") for p in request.postpath if p]
        mac = parts[0].lower().replace("-", ":") if parts else None
        if mac is not None and (len(parts) > 1 or not _MAC.match(mac)):
            request.setResponseCode(400)
            return b'{"error": "expected /api/sessions or /api/sessions/aa:bb:cc:dd:ee:ff"}\n'
        failed = request.args.get(b"failed", [b""])[0] in (b"1", b"true", b"yes")
        try:
            limit = max(1, min(1000, int(request.args.get(b"limit", [b"50"])[0])))
        except ValueError:
            request.setResponseCode(400)
            return b'{"error": "limit must be an integer"}\n'
        path = db_path(self.state_dir())
        gone = []     # the client hung up before the answer: nothing to write, nothing to finish
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def query():
            reader = Reader(path)
            try:
                return reader.sessions(mac=mac, failed=failed, limit=limit)
            finally:
                reader.close()

        def answer(rows):
            if gone:
                return
            if mac is None:
                body = rows
            elif rows:
                body = rows[0]
            else:
                request.setResponseCode(404)
                body = {"error": f"no session for {mac}"}
            request.write(json.dumps(body, default=str).encode() + b"\n")
            request.finish()

        def unavailable(failure):
            if gone:
                return
            request.setResponseCode(503)
            request.write(json.dumps({"error": f"event store unavailable: {failure.getErrorMessage()}"}).encode() + b"\n")
            request.finish()

        threads.deferToThread(query).addCallbacks(answer, unavailable)
        return server.NOT_DONE_YET
