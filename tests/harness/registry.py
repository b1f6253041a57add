"""A schema registry for the tests, speaking the Confluent Schema Registry REST API.

Why not a real one: no Confluent Schema Registry or Karapace can be installed from the registries this
machine reaches, and Apicurio Registry 3.3.3 from Maven Central cannot be started (its app module is an
un-augmented Quarkus module and a dependency, apicurio-registry-schema-util-provider 3.3.3, is not
served). So this follows the Confluent API documentation
(https://docs.confluent.io/platform/current/schema-registry/develop/api.html) for the calls bronze and the
Confluent clients make, with the documented status codes and error bodies:

  GET  /schemas/ids/{id}                  {"schema": ...}                       404 / 40403
  GET  /schemas/ids/{id}/versions         [{"subject", "version"}]              404 / 40403
  GET  /schemas/types                     ["AVRO"]
  GET  /subjects                          [subject, ...]
  GET  /subjects/{s}/versions             [1, 2, ...]                           404 / 40401
  GET  /subjects/{s}/versions/{v|latest}  {"subject", "id", "version", "schema"} 404 / 40401, 40402
  POST /subjects/{s}/versions             {"id"}  (same schema -> same id)      422 / 42201
  POST /subjects/{s}                      the registered version of a schema    404 / 40401, 40403
  GET  /config                            {"compatibilityLevel": "BACKWARD"}

Ids are global across subjects, as in Confluent's registry; schemas compare by their parsed JSON. The
Confluent Python client (`confluent_kafka.schema_registry`) is used against it in the tests, so the
wire format is checked by a client that was not written here. Optional basic auth answers 401 / 40101.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class Store:
    """Schemas by id and subjects' versions; survives a server restart (the registry's backing store)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.by_id: dict[int, tuple[str, str]] = {}  # id -> (schema text, schema type)
        self.subjects: dict[str, list[int]] = {}  # subject -> ids by version (version = index + 1)
        self.requests: list[tuple[str, str]] = []

    def id_of(self, text: str, schema_type: str) -> int | None:
        canonical = json.loads(text)
        for i, (t, ty) in self.by_id.items():
            if ty == schema_type and json.loads(t) == canonical:
                return i
        return None

    def register(self, subject: str, text: str, schema_type: str = "AVRO") -> int:
        with self.lock:
            i = self.id_of(text, schema_type)
            if i is None:
                i = max(self.by_id, default=0) + 1
                self.by_id[i] = (text, schema_type)
            versions = self.subjects.setdefault(subject, [])
            if i not in versions:
                versions.append(i)
            return i


class Handler(BaseHTTPRequestHandler):
    store: Store
    auth: str | None

    def log_message(self, *args):
        pass

    def reply(self, status: int, body) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def error(self, status: int, code: int, message: str) -> None:
        self.reply(status, {"error_code": code, "message": message})

    def authorized(self) -> bool:
        if self.auth is None:
            return True
        want = "Basic " + base64.b64encode(self.auth.encode()).decode()
        if self.headers.get("Authorization") == want:
            return True
        self.error(401, 40101, "Unauthorized")
        return False

    def route(self):
        path = urlparse(self.path).path.rstrip("/")
        self.store.requests.append((self.command, path))
        return [unquote(p) for p in path.split("/")[1:]]

    def do_GET(self):
        parts = self.route()
        if not self.authorized():
            return
        s = self.store
        with s.lock:
            match parts:
                case ["schemas", "types"]:
                    return self.reply(200, ["AVRO"])
                case ["schemas", "ids", i] if i.isdigit() and int(i) in s.by_id:
                    text, ty = s.by_id[int(i)]
                    body = {"schema": text}
                    if ty != "AVRO":
                        body["schemaType"] = ty
                    return self.reply(200, body)
                case ["schemas", "ids", i, "versions"] if i.isdigit() and int(i) in s.by_id:
                    return self.reply(200, [{"subject": sub, "version": v + 1}
                                            for sub, ids in s.subjects.items()
                                            for v, x in enumerate(ids) if x == int(i)])
                case ["schemas", "ids", *_]:
                    return self.error(404, 40403, "Schema not found")
                case ["subjects"]:
                    return self.reply(200, sorted(s.subjects))
                case ["subjects", sub, "versions"]:
                    if sub not in s.subjects:
                        return self.error(404, 40401, f"Subject '{sub}' not found.")
                    return self.reply(200, list(range(1, len(s.subjects[sub]) + 1)))
                case ["subjects", sub, "versions", v]:
                    if sub not in s.subjects:
                        return self.error(404, 40401, f"Subject '{sub}' not found.")
                    ids = s.subjects[sub]
                    n = len(ids) if v == "latest" else int(v) if re.fullmatch(r"-?\d+", v) else 0
                    if n == -1:
                        n = len(ids)
                    if not 1 <= n <= len(ids):
                        return self.error(404, 40402, f"Version {v} not found.")
                    text, ty = s.by_id[ids[n - 1]]
                    return self.reply(200, {"subject": sub, "id": ids[n - 1], "version": n, "schema": text,
                                            **({"schemaType": ty} if ty != "AVRO" else {})})
                case ["config"] | ["config", _]:
                    return self.reply(200, {"compatibilityLevel": "BACKWARD"})
        return self.error(404, 404, "HTTP 404 Not Found")

    def do_POST(self):
        parts = self.route()
        if not self.authorized():
            return
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
            text = body["schema"]
            json.loads(text)
        except (ValueError, KeyError, TypeError):
            return self.error(422, 42201, "Invalid schema")
        ty = body.get("schemaType", "AVRO")
        s = self.store
        match parts:
            case ["subjects", sub, "versions"]:
                return self.reply(200, {"id": s.register(sub, text, ty)})
            case ["subjects", sub]:
                with s.lock:
                    if sub not in s.subjects:
                        return self.error(404, 40401, f"Subject '{sub}' not found.")
                    i = s.id_of(text, ty)
                    if i is None or i not in s.subjects[sub]:
                        return self.error(404, 40403, "Schema not found")
                    return self.reply(200, {"subject": sub, "id": i, "version": s.subjects[sub].index(i) + 1,
                                            "schema": s.by_id[i][0]})
        return self.error(404, 404, "HTTP 404 Not Found")


class Registry:
    """The server on a fixed port; `stop()` and `start()` again simulate an outage."""

    def __init__(self, port: int, auth: str | None = None):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.store = Store()
        self.auth = auth
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> Registry:
        handler = type("BoundHandler", (Handler,), {"store": self.store, "auth": self.auth})
        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def lookups(self, schema_id: int) -> int:
        """How many times GET /schemas/ids/{id} was asked (bronze caches them)."""
        return sum(1 for m, p in self.store.requests if m == "GET" and p == f"/schemas/ids/{schema_id}")
