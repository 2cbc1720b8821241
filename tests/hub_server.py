"""A local HTTP stand-in for the Hugging Face hub, for upload tests (Flask on 127.0.0.1, a random port).

It answers only what ``HfApi.create_repo`` and ``HfApi.upload_folder`` / ``create_commit`` call: repos/create,
validate-yaml, whoami-v2, preupload (every file "regular", so its content comes inline, base64, in the commit's
NDJSON: no LFS or xet transfer) and commit. Committed files are written under ``root/<type>s/<org>/<name>/``.
Every request is recorded (method, path, whether it carried the expected token); any other route is a 404
that is recorded too, so a test sees what the client asked that the stand-in does not serve.

    with HubServer(tmp_path, token="hf_test") as hub:   # hub.url: set HF_ENDPOINT to it
        ...
        assert (hub.repo("model", "org/name") / "README.md").exists()
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from pathlib import Path
from typing import Any

from flask import Flask, jsonify, request
from werkzeug.serving import make_server


class HubServer:
    """The hub's upload API over files in ``root``; writes need ``Authorization: Bearer <token>``."""

    def __init__(self, root: Path, token: str):
        self.root, self.token = Path(root), token
        self.requests: list[dict[str, Any]] = []
        self.repos: dict[tuple[str, str], dict[str, Any]] = {}
        self.app = self._app()
        self._server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._thread.join(timeout=5)

    def repo(self, repo_type: str, repo_id: str) -> Path:
        """Where a repository's committed files are stored."""
        return self.root / f"{repo_type}s" / repo_id

    def paths(self) -> list[str]:
        """``METHOD path`` of every request, in order."""
        return [f"{r['method']} {r['path']}" for r in self.requests]

    def _authorized(self) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.token}"

    def _app(self) -> Flask:
        app = Flask("hub_server")

        @app.before_request
        def record() -> Any:
            self.requests.append({"method": request.method, "path": request.path, "authorized": self._authorized()})
            if request.method != "GET" and not self._authorized():
                return jsonify(error="Invalid credentials in Authorization header"), 401
            return None

        @app.get("/api/whoami-v2")
        def whoami() -> Any:
            return jsonify(type="user", name="tester", orgs=[], auth={"type": "access_token"})

        @app.post("/api/repos/create")
        def create() -> Any:
            body = request.get_json()
            repo_type = body.get("type") or "model"
            repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
            if (repo_type, repo_id) in self.repos:
                return jsonify(error="You already created this repo"), 409
            self.repos[(repo_type, repo_id)] = {"visibility": body.get("visibility"), "commits": []}
            self.repo(repo_type, repo_id).mkdir(parents=True, exist_ok=True)
            prefix = "" if repo_type == "model" else f"{repo_type}s/"
            return jsonify(url=f"{self.url}/{prefix}{repo_id}", name=repo_id)

        @app.post("/api/validate-yaml")
        def validate_yaml() -> Any:
            return jsonify(errors=[], warnings=[])

        @app.post("/api/<repo_type>s/<org>/<name>/preupload/<revision>")
        def preupload(repo_type: str, org: str, name: str, revision: str) -> Any:
            if (repo_type, f"{org}/{name}") not in self.repos:
                return jsonify(error="Repository not found"), 404
            files = request.get_json()["files"]
            return jsonify(files=[{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                                  for f in files], commitOid="0" * 40)

        @app.post("/api/<repo_type>s/<org>/<name>/commit/<revision>")
        def commit(repo_type: str, org: str, name: str, revision: str) -> Any:
            repo_id = f"{org}/{name}"
            if (repo_type, repo_id) not in self.repos:
                return jsonify(error="Repository not found"), 404
            lines = [json.loads(line) for line in request.get_data().splitlines() if line.strip()]
            header, ops = lines[0], lines[1:]
            written = []
            for op in ops:
                if op["key"] != "file":
                    return jsonify(error=f"this stand-in takes regular files only, not {op['key']}"), 400
                target = self.repo(repo_type, repo_id) / op["value"]["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(base64.b64decode(op["value"]["content"]))
                written.append(op["value"]["path"])
            oid = hashlib.sha1(request.get_data()).hexdigest()
            self.repos[(repo_type, repo_id)]["commits"].append({"summary": header["value"]["summary"],
                                                                "files": written, "oid": oid})
            prefix = "" if repo_type == "model" else f"{repo_type}s/"
            return jsonify(commitUrl=f"{self.url}/{prefix}{repo_id}/commit/{oid}", commitOid=oid,
                           success=True, pullRequestUrl=None)

        @app.errorhandler(404)
        def not_found(_: Exception) -> Any:
            return jsonify(error=f"the hub stand-in does not serve {request.method} {request.path}"), 404

        return app
