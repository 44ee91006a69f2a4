"""A loopback stand-in for the Hugging Face Hub, just enough for huggingface_hub's upload and download paths.

It serves the endpoints the real client calls (see /work/shared/reference/assets.md, "Testing the Hub without
the Hub"): repo creation, YAML validation, branch creation, preupload, the LFS batch API with a basic PUT
transfer, the ndjson commit endpoint (with pull requests), ``resolve`` downloads and repo info. State lives
in memory: repositories as commits of ``{path: bytes}``, LFS objects by sha256.

Safety: it binds 127.0.0.1 on a free port only, answers at most ``max_requests`` requests (then 503s), gives
every connection a socket timeout, and :meth:`FakeHub.stop` (or leaving the ``with`` block) shuts it down.
Requests it does not know are answered 404 and recorded in ``unhandled`` so a test can assert there were none.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".npz", ".onnx")


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    private: bool = False
    branches: dict[str, str] = field(default_factory=dict)  # branch or refs/pr/N -> commit
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit -> files
    messages: dict[str, str] = field(default_factory=dict)
    prs: int = 0


class FakeHub:
    """An in-memory Hub served over HTTP on 127.0.0.1. Use as a context manager."""

    def __init__(self, token: str = "hf_test", max_requests: int = 500) -> None:
        self.token = token
        self.max_requests = max_requests
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.log: list[tuple[str, str]] = []
        self.unhandled: list[str] = []
        self.failures: dict[str, int] = {}  # route name -> how many more requests to fail with HTTP 500
        self.created_visibility: dict[str, str | None] = {}
        self._lock = threading.Lock()
        self._counter = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> FakeHub:
        handler = type("Handler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- state helpers for tests ---------------------------------------------------------------------------------
    def add_repo(self, repo_id: str, files: dict[str, bytes], private: bool = False) -> str:
        """Create a repository holding ``files`` on main; return the commit."""
        repo = self.repos.setdefault(repo_id, Repo(private=private))
        return self._commit(repo, "main", dict(files), "seed")

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return repo.commits[repo.branches[revision]]

    def count(self, method: str, pattern: str) -> int:
        return sum(1 for m, p in self.log if m == method and re.search(pattern, p))

    def _commit(self, repo: Repo, branch: str, files: dict[str, bytes], message: str) -> str:
        self._counter += 1
        oid = hashlib.sha1(f"{self._counter}:{message}:{sorted(files)}".encode()).hexdigest()
        repo.commits[oid] = files
        repo.messages[oid] = message
        repo.branches[branch] = oid
        return oid

    # -- routing ---------------------------------------------------------------------------------------------------
    def handle(self, req: _Handler) -> None:
        url = urlsplit(req.path)
        path, query = url.path, parse_qs(url.query)
        with self._lock:
            self.log.append((req.command, path))
            if len(self.log) > self.max_requests:
                return req.reply(503, {"error": "fake hub request budget exhausted"})
        for method, pattern, name in _ROUTES:
            match = re.fullmatch(pattern, path)
            if match and req.command in method.split("|"):
                if self.failures.get(name, 0) > 0:
                    self.failures[name] -= 1
                    return req.reply(500, {"error": f"injected failure of {name}"})
                with self._lock:
                    return getattr(self, f"_{name}")(req, query, *[unquote(g) for g in match.groups()])
        self.unhandled.append(f"{req.command} {req.path}")
        return req.reply(404, {"error": "no such endpoint in the fake hub"})

    def _auth_ok(self, req: _Handler) -> bool:
        return req.headers.get("authorization") == f"Bearer {self.token}"

    def _repo(self, req: _Handler, repo_id: str, write: bool = False) -> Repo | None:
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private or write) and not self._auth_ok(req):
            req.reply(404 if not write else 401, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            return None
        return repo

    def _head(self, req: _Handler, repo: Repo, revision: str) -> str | None:
        commit = repo.branches.get(revision) or (revision if revision in repo.commits else None)
        if commit is None:
            req.reply(404, {"error": "Revision not found"}, {"X-Error-Code": "RevisionNotFound"})
        return commit

    # -- endpoints ------------------------------------------------------------------------------------------------
    def _create_repo(self, req, query):
        body = req.json()
        repo_id = f"{body.get('organization')}/{body['name']}"
        if not self._auth_ok(req):
            return req.reply(401, {"error": "Invalid username or password."})
        url = f"{self.endpoint}/{repo_id}"
        if repo_id in self.repos:
            return req.reply(409, {"error": "You already created this model repo", "url": url})
        visibility = body.get("visibility") or ("private" if body.get("private") else None)
        self.created_visibility[repo_id] = visibility
        repo = self.repos[repo_id] = Repo(private=visibility == "private")
        self._commit(repo, "main", {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"}, "initial commit")
        return req.reply(200, {"url": url, "name": repo_id})

    def _validate_yaml(self, req, query):
        content = req.json().get("content", "")
        match = re.match(r"^---\n(.*?)\n---\n", content, re.S)
        try:
            meta = yaml.safe_load(match.group(1)) if match else {}
        except yaml.YAMLError as exc:
            return req.reply(400, {"errors": [{"message": str(exc)}], "warnings": []})
        if not isinstance(meta, dict):
            return req.reply(400, {"errors": [{"message": "metadata must be a mapping"}], "warnings": []})
        return req.reply(200, {"errors": [], "warnings": []})

    def _create_branch(self, req, query, repo_id, branch):
        repo = self._repo(req, repo_id, write=True)
        if repo is None:
            return None
        if branch in repo.branches:
            return req.reply(409, {"error": "Reference already exists"})
        start = (req.json() or {}).get("startingPoint") or "main"
        repo.branches[branch] = repo.branches.get(start, start)
        return req.reply(200, {})

    def _preupload(self, req, query, repo_id, revision):
        repo = self._repo(req, repo_id, write=True)
        if repo is None or (commit := self._head(req, repo, revision)) is None:
            return None
        current = repo.commits[commit]
        out = []
        for f in req.json()["files"]:
            lfs = f["path"].endswith(LFS_SUFFIXES) or f["size"] > 10 * 2**20
            old = current.get(f["path"])
            oid = None if old is None else hashlib.sha256(old).hexdigest() if lfs else git_sha1(old)
            out.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        return req.reply(200, {"files": out, "commitOid": commit})

    def _lfs_batch(self, req, query, repo_id):
        if self._repo(req, repo_id, write=True) is None:
            return None
        objects = []
        for obj in req.json()["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.lfs:  # objects the server already holds get no action: the client skips them
                entry["actions"] = {"upload": {"href": f"{self.endpoint}/_lfs/{obj['oid']}"}}
            objects.append(entry)
        return req.reply(200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"})

    def _lfs_put(self, req, query, oid):
        data = req.body()
        if hashlib.sha256(data).hexdigest() != oid:
            return req.reply(400, {"error": "sha256 mismatch"})
        self.lfs[oid] = data
        return req.reply(200, {})

    def _commit_api(self, req, query, repo_id, revision):
        repo = self._repo(req, repo_id, write=True)
        if repo is None or (head := self._head(req, repo, revision)) is None:
            return None
        lines = [json.loads(line) for line in req.body().splitlines() if line.strip()]
        files = dict(repo.commits[head])
        summary = ""
        for item in lines:
            key, value = item["key"], item["value"]
            if key == "header":
                summary = value["summary"]
            elif key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "lfsFile":
                if value["oid"] not in self.lfs:
                    return req.reply(422, {"error": f"LFS object {value['oid']} was never uploaded"})
                files[value["path"]] = self.lfs[value["oid"]]
            elif key in ("deletedFile", "deletedFolder"):
                files = {p: d for p, d in files.items() if p != value["path"] and not p.startswith(value["path"].rstrip("/") + "/")}
        pr_url = None
        branch = revision
        if query.get("create_pr") == ["1"]:
            repo.prs += 1
            branch = f"refs/pr/{repo.prs}"
            pr_url = f"{self.endpoint}/{repo_id}/discussions/{repo.prs}"
        oid = self._commit(repo, branch, files, summary)
        return req.reply(200, {"commitUrl": f"{self.endpoint}/{repo_id}/commit/{oid}", "commitOid": oid, "pullRequestUrl": pr_url})

    def _not_served(self, req, query):
        return req.reply(404, {"error": "not served by the fake hub"})

    def _repo_info(self, req, query, repo_id, revision="main"):
        repo = self._repo(req, repo_id)
        if repo is None or (commit := self._head(req, repo, revision)) is None:
            return None
        siblings = [{"rfilename": p} for p in sorted(repo.commits[commit])]
        return req.reply(200, {"id": repo_id, "modelId": repo_id, "sha": commit, "private": repo.private, "siblings": siblings})

    def _resolve(self, req, query, repo_id, revision, path):
        repo = self._repo(req, repo_id)
        if repo is None or (commit := self._head(req, repo, revision)) is None:
            return None
        data = repo.commits[commit].get(path)
        if data is None:
            return req.reply(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit})
        etag = hashlib.sha256(data).hexdigest() if path.endswith(LFS_SUFFIXES) else git_sha1(data)
        return req.reply(200, data, {"ETag": f'"{etag}"', "X-Repo-Commit": commit, "Content-Type": "application/octet-stream"})


_REPO = r"/([^/]+/[^/]+)"
_ROUTES = [
    ("POST", r"/api/repos/create", "create_repo"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("POST", rf"/api/models{_REPO}/branch/([^/]+)", "create_branch"),
    ("POST", rf"/api/models{_REPO}/preupload/([^/]+)", "preupload"),
    ("POST", rf"/api/models{_REPO}/commit/([^/]+)", "commit_api"),
    ("POST", rf"{_REPO}\.git/info/lfs/objects/batch", "lfs_batch"),
    ("PUT", r"/_lfs/([0-9a-f]{64})", "lfs_put"),
    ("GET", rf"/api/models{_REPO}/revision/([^/]+)", "repo_info"),
    ("GET", rf"/api/models{_REPO}", "repo_info"),
    ("GET|HEAD", rf"{_REPO}/resolve/([^/]+)/(.+)", "resolve"),
    ("GET", r"/api/agent-harnesses", "not_served"),  # fetched by the client's user-agent code; optional
]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10  # seconds per socket operation: a stuck client cannot hold a thread forever
    hub: FakeHub

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.__dict__.pop("_body", None)  # one handler serves every request of a kept-alive connection
        self.hub.handle(self)

    do_HEAD = do_POST = do_PUT = do_GET

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def body(self) -> bytes:
        if not hasattr(self, "_body"):
            if "chunked" in self.headers.get("Transfer-Encoding", ""):
                parts = []
                for _ in range(1_000_000):  # bounded: a chunked body ends with a zero-size chunk
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        self.rfile.readline()
                        break
                    parts.append(self.rfile.read(size))
                    self.rfile.readline()
                self._body = b"".join(parts)
            else:
                self._body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        return self._body

    def json(self) -> dict:
        raw = self.body()
        return json.loads(raw) if raw else {}

    def reply(self, status: int, payload: bytes | dict, headers: dict[str, str] | None = None) -> None:
        if self.command in ("POST", "PUT"):
            self.body()  # drain the request so the kept-alive connection stays in sync
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        for key, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
