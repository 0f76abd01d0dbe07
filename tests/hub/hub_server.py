"""A small but real Hugging Face Hub on 127.0.0.1, for tests that run the real client.

Why a server and not mocks: huggingface_hub 2.x speaks HTTP through httpx2 (no requests
adapters to patch), and the point of the tests is that the real client's requests, retries,
headers and cache layout work end to end. The routes and headers below are the ones
huggingface_hub 2.4 (and 1.x) sends and reads, taken from its source:

- POST /api/repos/create                          hf_api.create_repo (409 when it exists)
- POST /api/validate-yaml                         hf_api._validate_yaml (1.x create_commit)
- POST /api/models/{repo}/preupload/{rev}         _commit_api._fetch_upload_modes
- POST /api/models/{repo}/commit/{rev}            _commit_api._send_commit (NDJSON, base64)
- POST /api/models/{repo}/branch/{branch}         hf_api.create_branch
- GET  /api/models/{repo}[/revision/{rev}]        hf_api.model_info (siblings, sha)
- GET  /api/models/{repo}/tree/{rev}[/{path}]     hf_api.list_repo_tree (snapshot_download 2.x)
- HEAD/GET /{repo}/resolve/{rev}/{path}           file_download (X-Repo-Commit, ETag, size)
- GET  /api/whoami-v2                             hf_api.whoami

Every file is a "regular" (non-LFS, non-Xet) git blob, so no storage backend is needed.
Auth follows the Hub: a wrong token is refused everywhere (401), writes need the right
token, reads of public repos work without one. `fail_with(status)` makes every request
fail (optionally only the next `count`), `requests` records what the client sent, and
`unhandled` lists routes the server does not implement (a test can assert it is empty).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import yaml

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_oid(content: bytes) -> str:
    """The git object id of a blob: what the Hub reports as a regular file's oid/ETag."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Commit:
    oid: str
    message: str
    files: dict[str, bytes]
    parent: str | None
    date: str


@dataclass
class Repo:
    """One model repo: branches point at commits; each commit holds the full file tree."""

    repo_id: str
    private: bool = False
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        """A branch name or a (full or >= 7 char) commit oid -> the commit."""
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        if len(revision) >= 7:
            for oid, commit in self.commits.items():
                if oid.startswith(revision):
                    return commit
        return None

    def files(self, revision: str = "main") -> dict[str, bytes]:
        """The file tree at `revision` (path -> bytes); KeyError when the revision is unknown."""
        commit = self.resolve(revision)
        if commit is None:
            raise KeyError(revision)
        return dict(commit.files)

    def commit_count(self, revision: str = "main") -> int:
        n, commit = 0, self.resolve(revision)
        while commit is not None:
            n += 1
            commit = self.commits.get(commit.parent) if commit.parent else None
        return n


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    authorization: str | None
    status: int = 0


class HubError(Exception):
    """An HTTP error answer, with the Hub's X-Error-Code / X-Error-Message headers."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict | None = None,
        extra: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers = headers or {}
        self.extra = extra or {}  # more JSON fields in the body


class FakeHub:
    """The server's state plus its lifecycle (`start`/`stop`, or use it as a context manager)."""

    def __init__(
        self,
        token: str = "hf_fake_write_token",
        user: str = "sam-tester",
        orgs: tuple[str, ...] = ("sam-medft-org",),
    ):
        self.token = token
        self.user = user
        self.orgs = set(orgs)
        self.repos: dict[str, Repo] = {}
        self.requests: list[RecordedRequest] = []
        self.unhandled: list[str] = []
        self._fail_status: int | None = None
        self._fail_count: int | None = None
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""
        self.cache_dir = None  # set by the fake_hub fixture: the HF_HUB_CACHE tests use

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            name="fake-hub",
            kwargs={"poll_interval": 0.05},
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- test controls ---------------------------------------------------------------------

    def fail_with(self, status: int | None, count: int | None = None) -> None:
        """Answer `status` to every request (the next `count` only, if given); None: heal."""
        with self._lock:
            self._fail_status, self._fail_count = status, count

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    def add_repo(self, repo_id: str, files: dict[str, bytes], *, private: bool = False) -> Repo:
        """Create a repo with one commit holding `files` (for pull tests without a push)."""
        with self._lock:
            repo = self._create(repo_id, private)
            self._commit(repo, "main", "seed", {"files": files, "deleted": []})
            return repo

    # -- state changes (called with the lock held) -----------------------------------------

    def _create(self, repo_id: str, private: bool) -> Repo:
        repo = Repo(repo_id=repo_id, private=private)
        self.repos[repo_id] = repo
        self._commit(
            repo,
            "main",
            "initial commit",
            {"files": {".gitattributes": GITATTRIBUTES}, "deleted": []},
            new_branch=True,
        )
        return repo

    def _commit(
        self, repo: Repo, branch: str, message: str, ops: dict, *, new_branch: bool = False
    ) -> Commit:
        parent = None if new_branch else repo.branches[branch]
        files = dict(repo.commits[parent].files) if parent else {}
        for path in ops["deleted"]:
            if path.endswith("/"):
                files = {p: c for p, c in files.items() if not p.startswith(path)}
            else:
                files.pop(path, None)
        files.update(ops["files"])
        oid = hashlib.sha1(
            f"{repo.repo_id}:{branch}:{len(repo.commits)}:{time.time_ns()}:{message}".encode()
        ).hexdigest()
        date = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        commit = Commit(oid=oid, message=message, files=files, parent=parent, date=date)
        repo.commits[oid] = commit
        repo.branches[branch] = oid
        return commit


class _Handler(BaseHTTPRequestHandler):
    """Routes one request against `fake` (a FakeHub). HTTP/1.1 with keep-alive, like the Hub."""

    fake: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    # -- plumbing --------------------------------------------------------------------------

    def _handle(self, method: str) -> None:
        split = urlsplit(self.path)
        record = RecordedRequest(
            method, unquote(split.path), parse_qs(split.query), self.headers.get("Authorization")
        )
        body = self._read_body()
        fake = self.fake
        with fake._lock:
            fake.requests.append(record)
            forced = fake._fail_status
            if forced is not None and fake._fail_count is not None:
                fake._fail_count -= 1
                if fake._fail_count <= 0:
                    fake._fail_status = fake._fail_count = None
        try:
            if forced is not None:
                raise HubError(forced, f"fake hub: forced failure {forced}")
            status, headers, payload = self._route(method, split.path, record.query, body)
        except HubError as e:
            headers = dict(e.headers)
            headers["X-Error-Message"] = e.message
            if e.code:
                headers["X-Error-Code"] = e.code
            status, payload = e.status, {"error": e.message, **e.extra}
        record.status = status
        self._send(method, status, headers, payload)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, method: str, status: int, headers: dict[str, str], payload: Any) -> None:
        if isinstance(payload, bytes):
            data = payload
        else:
            data = json.dumps(payload).encode()
            headers.setdefault("Content-Type", "application/json")
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", headers.get("Content-Length", str(len(data))))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(data)

    # -- auth ------------------------------------------------------------------------------

    def _auth(self, *, write: bool, repo: Repo | None = None) -> str | None:
        """The user name for a valid token, None for an anonymous read; HubError otherwise."""
        header = self.headers.get("Authorization")
        if header is not None:
            if header != f"Bearer {self.fake.token}":
                raise HubError(401, "Invalid credentials in Authorization header")
            return self.fake.user
        if write:
            raise HubError(401, "You must be authenticated to access this resource")
        if repo is not None and repo.private:
            raise HubError(401, "Repository not found", code="RepoNotFound")
        return None

    def _may_write(self, namespace: str) -> None:
        if namespace != self.fake.user and namespace not in self.fake.orgs:
            raise HubError(403, f"You don't have the rights to write to the namespace {namespace}")

    # -- routing ---------------------------------------------------------------------------

    def _route(self, method: str, raw_path: str, query: dict, body: bytes) -> tuple[int, dict, Any]:
        parts = [unquote(p) for p in raw_path.strip("/").split("/")]
        fake = self.fake
        with fake._lock:
            if method == "GET" and parts == ["api", "whoami-v2"]:
                return self._whoami()
            if method == "POST" and parts == ["api", "repos", "create"]:
                return self._create_repo(json.loads(body or b"{}"))
            if method == "POST" and parts == ["api", "validate-yaml"]:
                return self._validate_yaml(json.loads(body or b"{}"))
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                return self._api_models(method, parts[2:], query, body)
            if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
                return self._resolve(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
            fake.unhandled.append(f"{method} {raw_path}")
            raise HubError(404, f"fake hub: no route for {method} {raw_path}")

    def _repo(self, repo_id: str) -> Repo:
        repo = self.fake.repos.get(repo_id)
        if repo is None:
            raise HubError(404, "Repository not found", code="RepoNotFound")
        return repo

    def _commit_at(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
        return commit

    def _api_models(
        self, method: str, rest: list[str], query: dict, body: bytes
    ) -> tuple[int, dict, Any]:
        repo_id, action, args = f"{rest[0]}/{rest[1]}", rest[2] if len(rest) > 2 else "", rest[3:]
        if method == "GET" and action in ("", "revision"):
            repo = self._repo(repo_id)
            self._auth(write=False, repo=repo)
            revision = args[0] if action == "revision" and args else "main"
            return self._model_info(repo, self._commit_at(repo, revision), query)
        if method == "GET" and action == "tree" and args:
            repo = self._repo(repo_id)
            self._auth(write=False, repo=repo)
            return self._tree(repo, self._commit_at(repo, args[0]), "/".join(args[1:]), query)
        if method == "POST" and action in ("preupload", "commit", "branch") and args:
            self._auth(write=True)
            self._may_write(rest[0])
            repo = self._repo(repo_id)
            if action == "preupload":
                return self._preupload(repo, args[0], json.loads(body or b"{}"))
            if action == "commit":
                return self._commit(repo, args[0], query, body)
            return self._branch(repo, args[0], json.loads(body or b"{}"))
        self.fake.unhandled.append(f"{method} /api/models/{'/'.join(rest)}")
        raise HubError(404, f"fake hub: no route for {method} /api/models/{'/'.join(rest)}")

    # -- endpoints -------------------------------------------------------------------------

    def _whoami(self) -> tuple[int, dict, Any]:
        user = self._auth(write=True)
        return (
            200,
            {},
            {
                "type": "user",
                "id": "fake-user-id",
                "name": user,
                "fullname": "SAM tester",
                "orgs": [{"type": "org", "name": o} for o in sorted(self.fake.orgs)],
                "auth": {
                    "type": "access_token",
                    "accessToken": {"displayName": "fake", "role": "write"},
                },
            },
        )

    def _create_repo(self, payload: dict) -> tuple[int, dict, Any]:
        user = self._auth(write=True)
        if payload.get("type", "model") not in (None, "model"):
            raise HubError(400, "fake hub: only model repos are implemented")
        namespace = payload.get("organization") or user
        self._may_write(namespace)
        repo_id = f"{namespace}/{payload['name']}"
        url = f"{self.fake.url}/{repo_id}"
        if repo_id in self.fake.repos:
            raise HubError(409, "You already created this model repo", extra={"url": url})
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        self.fake._create(repo_id, private)
        return (
            200,
            {},
            {"url": url, "name": repo_id, "id": hashlib.md5(repo_id.encode()).hexdigest()},
        )

    def _validate_yaml(self, payload: dict) -> tuple[int, dict, Any]:
        content = payload.get("content", "")
        if content.startswith("---"):
            header = content.split("---", 2)[1]
            try:
                yaml.safe_load(header)
            except yaml.YAMLError as e:
                return 400, {}, {"errors": [{"message": f"invalid YAML: {e}"}], "warnings": []}
        return 200, {}, {"errors": [], "warnings": []}

    def _model_info(self, repo: Repo, commit: Commit, query: dict) -> tuple[int, dict, Any]:
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        siblings = []
        for path, content in sorted(commit.files.items()):
            s: dict[str, Any] = {"rfilename": path}
            if blobs:
                s.update(size=len(content), blobId=git_blob_oid(content))
            siblings.append(s)
        namespace = repo.repo_id.split("/")[0]
        return (
            200,
            {},
            {
                "_id": hashlib.md5(repo.repo_id.encode()).hexdigest(),
                "id": repo.repo_id,
                "modelId": repo.repo_id,
                "author": namespace,
                "sha": commit.oid,
                "lastModified": commit.date,
                "createdAt": repo.commits[next(iter(repo.commits))].date,
                "private": repo.private,
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
            },
        )

    def _tree(self, repo: Repo, commit: Commit, prefix: str, query: dict) -> tuple[int, dict, Any]:
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        base = prefix.strip("/") + "/" if prefix.strip("/") else ""
        entries: dict[str, dict] = {}
        for path, content in sorted(commit.files.items()):
            if not path.startswith(base):
                continue
            rel = path[len(base) :].split("/")
            for depth in range(1, len(rel)):  # the folders on the way
                folder = base + "/".join(rel[:depth])
                if recursive or depth == 1:
                    entries.setdefault(
                        folder,
                        {
                            "type": "directory",
                            "path": folder,
                            "oid": hashlib.sha1(folder.encode()).hexdigest(),
                            "size": 0,
                        },
                    )
            if recursive or len(rel) == 1:
                entries[path] = {
                    "type": "file",
                    "path": path,
                    "size": len(content),
                    "oid": git_blob_oid(content),
                }
        if base and not entries:
            raise HubError(404, f"Entry not found: {prefix}", code="EntryNotFound")
        return 200, {}, list(entries.values())

    def _preupload(self, repo: Repo, revision: str, payload: dict) -> tuple[int, dict, Any]:
        commit = self._commit_at(repo, unquote(revision))
        files = []
        for f in payload.get("files", []):
            existing = commit.files.get(f["path"])
            files.append(
                {
                    "path": f["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": git_blob_oid(existing) if existing is not None else None,
                }
            )
        return 200, {}, {"files": files, "commitOid": commit.oid}

    def _commit(self, repo: Repo, revision: str, query: dict, body: bytes) -> tuple[int, dict, Any]:
        if query.get("create_pr"):
            raise HubError(400, "fake hub: pull requests are not implemented")
        branch = unquote(revision)
        if branch not in repo.branches:
            raise HubError(404, f"Invalid rev id: {branch}", code="RevisionNotFound")
        header: dict = {}
        ops: dict[str, Any] = {"files": {}, "deleted": []}
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, f"fake hub: unsupported encoding {value.get('encoding')}")
                ops["files"][value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                ops["deleted"].append(value["path"])
            elif key == "deletedFolder":
                ops["deleted"].append(value["path"].rstrip("/") + "/")
            else:
                raise HubError(
                    400,
                    f"fake hub: commit operation {key!r} is not implemented "
                    "(every file is 'regular' here)",
                )
        if not header.get("summary"):
            raise HubError(400, "commit summary is required")
        parent = header.get("parentCommit")
        if parent and parent != repo.branches[branch]:
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        commit = self.fake._commit(repo, branch, header["summary"], ops)
        return (
            200,
            {},
            {
                "success": True,
                "commitOid": commit.oid,
                "pullRequestUrl": None,
                "commitUrl": f"{self.fake.url}/{repo.repo_id}/commit/{commit.oid}",
            },
        )

    def _branch(self, repo: Repo, branch: str, payload: dict) -> tuple[int, dict, Any]:
        branch = unquote(branch)
        if branch in repo.branches:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        start = self._commit_at(repo, payload.get("startingPoint") or "main")
        repo.branches[branch] = start.oid
        return 200, {}, {}

    def _resolve(self, repo_id: str, revision: str, path: str) -> tuple[int, dict, Any]:
        repo = self._repo(repo_id)
        self._auth(write=False, repo=repo)
        commit = self._commit_at(repo, revision)
        content = commit.files.get(path)
        if content is None:
            raise HubError(
                404, "Entry not found", code="EntryNotFound", headers={"X-Repo-Commit": commit.oid}
            )
        oid = git_blob_oid(content)
        headers = {
            "X-Repo-Commit": commit.oid,
            "ETag": f'"{oid}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f"inline; filename*=UTF-8''{quote(path.split('/')[-1])}",
        }
        range_header = self.headers.get("Range")
        if range_header and range_header.startswith("bytes="):
            start_s, _, end_s = range_header[len("bytes=") :].partition("-")
            start = int(start_s or 0)
            end = int(end_s) if end_s else len(content) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
            return 206, headers, content[start : end + 1]
        return 200, headers, content
