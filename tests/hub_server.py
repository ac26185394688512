"""A small in-process Hugging Face Hub server for tests.

It answers the endpoints listed in ``shared/reference/hub-http-api.md`` well enough for the real
``huggingface_hub`` client to create repositories, commit files (base64 "regular" uploads), tag, branch,
list refs and commits, list a revision's files (``tree`` and ``paths-info``, with the ``lfs`` block of LFS files as
the Hub answers), and download files back. Failures can be injected per path (HTTP errors, 429 with
``Retry-After``, dropped connections, slow answers, requests accepted and never answered), stored files can be
corrupted (a byte flipped when a commit stores them), the whole server can be switched "down", and every request
is recorded.

Example:
    ```python
    server = HubServer().start()
    server.inject(r"/commit/", status=500, times=2)
    ...
    assert [r for r in server.requests if r.method == "POST" and "/commit/" in r.path]
    ```
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_TOKENS = {"hf_test_token": "tester", "hf_other_token": "other"}
_API_REPO = re.compile(r"^/api/(models|datasets|spaces)/([^/]+/[^/]+?)(?:/(.*))?$")
_LFS_BATCH = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+/[^/]+)\.git/info/lfs/objects/batch$")
_RESOLVE = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


def git_blob_sha1(data: bytes) -> str:
    """The git blob id of ``data`` (what the Hub reports as the ``oid`` of a regular file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    id: str
    parent: str | None
    title: str
    message: str
    author: str
    date: str
    files: dict[str, bytes]
    lfs: set[str] = field(default_factory=set)  # the paths stored as LFS files


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, rev: str) -> Commit | None:
        """A branch, a tag, ``refs/heads/x``, ``refs/tags/x`` or a (full or abbreviated) commit id."""
        rev = rev.removeprefix("refs/heads/").removeprefix("refs/tags/")
        cid = self.branches.get(rev) or self.tags.get(rev)
        if cid is None and re.fullmatch(r"[0-9a-f]{7,40}", rev):
            cid = next((c for c in self.commits if c.startswith(rev)), None)
        return self.commits.get(cid) if cid else None


@dataclass
class Injection:
    pattern: re.Pattern[str]
    method: str | None
    status: int | None
    times: int | None  # None: forever
    retry_after: float | None
    delay_s: float
    drop: bool
    hang: bool = False
    hang_after: bool = False


@dataclass
class RecordedRequest:
    method: str
    path: str  # without the query string, URL-unquoted
    query: dict[str, list[str]]
    user: str | None  # the user the token maps to (never the token itself)
    body: bytes
    status: int | None = None  # None when the connection was dropped

    def json(self) -> Any:
        return json.loads(self.body)

    def ndjson(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.body.splitlines() if line.strip()]


class ApiError(Exception):
    """An error answer: the status, the ``X-Error-Code`` the client maps to a typed exception, extra JSON."""

    def __init__(self, status: int, message: str, code: str | None = None, body: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.body = status, code, body


class HubServer:
    """A Hub on 127.0.0.1 served from a daemon thread; thread-safe; see the module docstring."""

    def __init__(self, tokens: dict[str, str] | None = None) -> None:
        self.tokens = dict(DEFAULT_TOKENS if tokens is None else tokens)
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[RecordedRequest] = []
        self.injections: list[Injection] = []
        self.down = False  # when True, every connection is dropped without an answer
        self.lfs_min_size: int | None = None  # files this large are answered "lfs" by preupload (default: none)
        self.lfs_objects: dict[str, bytes] = {}  # LFS store, by sha256
        self.corruptions: list[list[Any]] = []  # [path regex, times left]: flip a byte of files commits store
        self._release = threading.Event()  # set to free the requests that hang
        self.lock = threading.RLock()
        self._counter = 0
        self._httpd: ThreadingHTTPServer | None = None

    # ----------------------------------------------------------------- lifecycle and test controls
    def start(self) -> HubServer:
        server = self

        class Handler(_Handler):
            hub = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, name="hub-server", daemon=True).start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "start() the server first"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def reset(self, *, repos: bool = True) -> None:
        """Forget injected failures, recorded requests, the down switch and (by default) every repository."""
        with self.lock:
            self.injections.clear()
            self.requests.clear()
            self.corruptions.clear()
            self.down = False
            self.lfs_min_size = None
            self._release.set()  # requests left hanging by a test give up now
            self._release = threading.Event()
            if repos:
                self.repos.clear()
                self.lfs_objects.clear()

    def inject(
        self,
        path_regex: str,
        status: int | None = 500,
        times: int | None = 1,
        retry_after: float | None = None,
        delay_s: float = 0.0,
        drop: bool = False,
        method: str | None = None,
        hang: bool = False,
        hang_after: bool = False,
    ) -> Injection:
        """Make the next ``times`` requests whose path matches ``path_regex`` (``re.search``) misbehave.

        ``delay_s`` sleeps before answering (a slow answer: with ``status=None`` the request is then served
        normally); ``drop`` closes the connection without an answer; ``hang`` reads the request and never answers
        (until :meth:`reset`; nothing is applied); ``hang_after`` applies the request (e.g. a commit lands) and then
        never answers; otherwise ``status`` is answered, with a ``Retry-After`` header
        when ``retry_after`` is given. ``times=None`` keeps the failure forever.
        """
        inj = Injection(re.compile(path_regex), method, status, times, retry_after, delay_s, drop, hang, hang_after)
        with self.lock:
            self.injections.append(inj)
        return inj

    def corrupt(self, path_regex: str, times: int = 1) -> None:
        """Store a corrupted copy (last byte flipped) of the next ``times`` committed files matching ``path_regex``.

        The commit itself succeeds, as when storage corrupts a file: only a check of what was stored finds it.
        """
        with self.lock:
            self.corruptions.append([re.compile(path_regex), times])

    def _maybe_corrupt(self, path: str, data: bytes) -> bytes:
        with self.lock:
            for item in self.corruptions:
                if item[1] > 0 and item[0].search(path) and data:
                    item[1] -= 1
                    return data[:-1] + bytes([data[-1] ^ 0xFF])
        return data

    def requests_to(self, path_regex: str, method: str | None = None) -> list[RecordedRequest]:
        with self.lock:
            return [
                r for r in self.requests if re.search(path_regex, r.path) and (method is None or r.method == method)
            ]

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def _take_injection(self, method: str, path: str) -> Injection | None:
        with self.lock:
            for inj in self.injections:
                if inj.pattern.search(path) and (inj.method is None or inj.method == method):
                    if inj.times is not None:
                        inj.times -= 1
                        if inj.times <= 0:
                            self.injections.remove(inj)
                    return inj
        return None

    # ----------------------------------------------------------------------------------- state
    def _new_commit(
        self, repo: Repo, parent: str | None, title: str, message: str, author: str, files: dict[str, bytes]
    ) -> Commit:
        self._counter += 1
        cid = hashlib.sha1(f"{repo.repo_id}:{parent}:{title}:{self._counter}:{time.time_ns()}".encode()).hexdigest()
        now = time.time()
        date = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
        commit = Commit(cid, parent, title, message, author, date, files)
        repo.commits[cid] = commit
        return commit

    def create_repo_state(self, repo_id: str, repo_type: str = "model", private: bool = False) -> Repo:
        """Create a repository directly (tests may use it to set up someone else's repo)."""
        with self.lock:
            repo = Repo(repo_type, repo_id, private)
            first = self._new_commit(repo, None, "initial commit", "", "system", {".gitattributes": b"*.bin lfs\n"})
            repo.branches["main"] = first.id
            self.repos[(repo_type, repo_id)] = repo
            return repo

    def seed_files(
        self,
        repo_id: str,
        files: dict[str, bytes],
        *,
        branch: str = "main",
        private: bool = True,
        title: str = "Upload",
    ) -> Commit:
        """Commit ``files`` on ``branch`` of ``repo_id`` (created if missing) as its owner would, e.g. through the
        web interface: a repository that already holds the user's own files before hfexport pushes to it."""
        with self.lock:
            repo = self.repos.get(("model", repo_id)) or self.create_repo_state(repo_id, private=private)
            head = repo.commits[repo.branches[branch]]
            commit = self._new_commit(repo, head.id, title, "", repo_id.split("/")[0], {**head.files, **files})
            commit.lfs = set(head.lfs) - set(files)
            repo.branches[branch] = commit.id
            return commit

    def files_at(self, repo_id: str, rev: str = "main") -> dict[str, bytes]:
        """The files of a revision (a branch, a tag or a commit), read straight from the server's state."""
        with self.lock:
            commit = self.repo(repo_id).resolve(rev)
            assert commit is not None, f"{rev} does not exist in {repo_id}"
            return dict(commit.files)


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes: no 40 ms delayed-ACK stalls

    def log_message(self, format: str, *args: Any) -> None:  # silence the default stderr log
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

    # ------------------------------------------------------------------------------ plumbing
    def _handle(self, method: str) -> None:
        hub = self.hub
        split = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        token = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip() or None
        self.user = hub.tokens.get(token) if token else None
        self.bad_token = token is not None and self.user is None
        record = RecordedRequest(method, unquote(split.path), parse_qs(split.query), self.user, body)
        with hub.lock:
            hub.requests.append(record)
            down = hub.down
        inj = None if down else hub._take_injection(method, record.path)
        if inj is not None and inj.delay_s:
            time.sleep(inj.delay_s)
        if inj is not None and inj.hang:
            hub._release.wait()  # accepted, never answered (until the test Hub is reset)
            self.close_connection = True
            return
        if down or (inj is not None and inj.drop):
            self.close_connection = True  # no answer at all: the client sees the connection close
            return
        if inj is not None and inj.status is not None:
            headers = {} if inj.retry_after is None else {"Retry-After": f"{inj.retry_after:g}"}
            record.status = inj.status
            self._send(inj.status, {"error": f"injected failure {inj.status}"}, headers)
            return
        try:
            status, payload, headers = self._route(method, split.path, body)
        except ApiError as e:
            headers = {"X-Error-Message": str(e)}
            if e.code:
                headers["X-Error-Code"] = e.code
            status, payload = e.status, {"error": str(e), **(e.body or {})}
        except Exception as e:  # a bug in this server: answer 500 rather than hang the client
            status, payload, headers = 500, {"error": f"test server error: {e!r}"}, {}
        record.status = status
        if inj is not None and inj.hang_after:
            record.status = None
            hub._release.wait()  # applied, but the answer never comes (until the test Hub is reset)
            self.close_connection = True
            return
        self._send(status, payload, headers, head=method == "HEAD")

    def _send(self, status: int, payload: Any, headers: dict[str, str], head: bool = False) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        if not isinstance(payload, bytes):
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def _require_user(self) -> str:
        if self.user is None:
            raise ApiError(401, "Invalid credentials in Authorization header")
        return self.user

    def _get_repo(self, repo_type: str, repo_id: str, write: bool = False) -> Repo:
        repo = self.hub.repos.get((repo_type, repo_id))
        if write:
            user = self._require_user()
            if repo_id.split("/")[0] != user:
                raise ApiError(403, f"You don't have the rights to write to {repo_id} as {user}")
        if repo is None or (repo.private and self.user != repo_id.split("/")[0]):
            raise ApiError(404, "Repository not found", "RepoNotFound")
        return repo

    @staticmethod
    def _rev(repo: Repo, rev: str) -> Commit:
        commit = repo.resolve(rev)
        if commit is None:
            raise ApiError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return commit

    # ---------------------------------------------------------------------------------- routes
    def _route(self, method: str, raw_path: str, body: bytes) -> tuple[int, Any, dict[str, str]]:
        hub = self.hub
        with hub.lock:
            if self.bad_token:  # like the Hub: an unknown token is refused everywhere, not ignored
                raise ApiError(401, "Invalid credentials in Authorization header")
            if raw_path == "/api/whoami-v2" and method == "GET":
                user = self._require_user()
                return 200, {"type": "user", "name": user, "fullname": user, "orgs": [], "auth": {}}, {}
            if raw_path == "/api/validate-yaml" and method == "POST":
                return 200, {"errors": [], "warnings": []}, {}
            if raw_path == "/api/repos/create" and method == "POST":
                return self._create_repo(json.loads(body or b"{}"))
            if raw_path == "/api/repos/delete" and method == "DELETE":
                args = json.loads(body or b"{}")
                repo_id = f"{args.get('organization') or self._require_user()}/{args['name']}"
                self._get_repo(args.get("type") or "model", repo_id, write=True)
                del hub.repos[(args.get("type") or "model", repo_id)]
                return 200, {}, {}
            if (m := _RESOLVE.match(raw_path)) and method in ("GET", "HEAD"):
                repo_type = m.group(1)[:-1] if m.group(1) else "model"
                return self._resolve(repo_type, m.group(2), m.group(3), unquote(m.group(4)))
            if (m := _LFS_BATCH.match(raw_path)) and method == "POST":
                self._get_repo(m.group(1)[:-1] if m.group(1) else "model", m.group(2), write=True)
                return 200, self._lfs_batch(json.loads(body)), {}
            if (m := re.fullmatch(r"/lfs-upload/([0-9a-f]{64})", raw_path)) and method == "PUT":
                if hashlib.sha256(body).hexdigest() != m.group(1):
                    raise ApiError(400, "the uploaded bytes do not match the LFS oid")
                hub.lfs_objects[m.group(1)] = body
                return 200, {}, {}
            if m := _API_REPO.match(raw_path):
                repo_type, repo_id, rest = m.group(1)[:-1], m.group(2), m.group(3) or ""
                return self._repo_api(method, repo_type, repo_id, rest, body)
        raise ApiError(404, f"no route for {method} {raw_path}")

    def _lfs_batch(self, args: dict[str, Any]) -> dict[str, Any]:
        """Basic transfer: an upload ``href`` for each object the store lacks (none for known ones)."""
        objects = []
        for obj in args.get("objects", []):
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.hub.lfs_objects:
                entry["actions"] = {"upload": {"href": f"{self.hub.url}/lfs-upload/{obj['oid']}"}}
            objects.append(entry)
        return {"transfer": "basic", "objects": objects}

    def _create_repo(self, args: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        user = self._require_user()
        namespace = args.get("organization") or user
        repo_id, repo_type = f"{namespace}/{args['name']}", args.get("type") or "model"
        url = f"{self.hub.url}/{'' if repo_type == 'model' else repo_type + 's/'}{repo_id}"
        if namespace != user:
            raise ApiError(403, f"You don't have the rights to create a {repo_type} under the namespace {namespace}")
        if (repo_type, repo_id) in self.hub.repos:
            raise ApiError(409, "You already created this model repo", body={"url": url})
        private = args.get("private", False) or args.get("visibility") == "private"
        self.hub.create_repo_state(repo_id, repo_type, private=bool(private))
        return 200, {"url": url, "name": repo_id}, {}

    def _repo_api(self, method: str, repo_type: str, repo_id: str, rest: str, body: bytes):
        verb, _, tail = rest.partition("/")
        rev, _, sub_path = tail.partition("/")
        rev, sub_path = unquote(rev), unquote(sub_path)
        write = method in ("POST", "PUT", "DELETE") and verb not in ("preupload", "paths-info")
        repo = self._get_repo(repo_type, repo_id, write=write)
        args = json.loads(body) if body and verb not in ("commit", "paths-info") else {}
        if method == "GET" and verb in ("", "revision"):
            commit = self._rev(repo, rev or "main")
            siblings = [{"rfilename": p, "size": len(d)} for p, d in sorted(commit.files.items())]
            info = {
                "id": repo_id,
                "modelId": repo_id,
                "sha": commit.id,
                "private": repo.private,
                "tags": [],
                "downloads": 0,
                "likes": 0,
                "siblings": siblings,
                "lastModified": commit.date,
            }
            return 200, info, {}
        if method == "POST" and verb == "preupload":
            files = repo.resolve(rev).files if repo.resolve(rev) else {}
            answer = []
            for f in args.get("files", []):
                lfs = self.hub.lfs_min_size is not None and f["size"] >= self.hub.lfs_min_size
                remote = files.get(f["path"])  # its oid lets the client skip an unchanged file
                oid = None if remote is None else hashlib.sha256(remote).hexdigest() if lfs else git_blob_sha1(remote)
                mode = "lfs" if lfs else "regular"
                answer.append({"path": f["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
            return 200, {"files": answer}, {}
        if method == "POST" and verb == "commit":
            return self._commit(repo, rev, body)
        if verb == "branch" and method == "POST":
            if rev in repo.branches:
                raise ApiError(409, f"Reference already exists: refs/heads/{rev}")
            repo.branches[rev] = self._rev(repo, args.get("startingPoint") or "main").id
            return 200, {}, {}
        if verb == "branch" and method == "DELETE":
            if repo.branches.pop(rev, None) is None:
                raise ApiError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            return 200, {}, {}
        if verb == "tag" and method == "POST":
            if args["tag"] in repo.tags:
                raise ApiError(409, f"Tag already exists: {args['tag']}")
            repo.tags[args["tag"]] = self._rev(repo, rev).id
            return 200, {}, {}
        if verb == "tag" and method == "DELETE":
            if repo.tags.pop(rev, None) is None:
                raise ApiError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            return 200, {}, {}
        if method == "GET" and verb == "refs":

            def refs(kind: str, items: dict[str, str]) -> list[dict[str, str]]:
                return [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": c} for n, c in sorted(items.items())]

            return (
                200,
                {
                    "branches": refs("heads", repo.branches),
                    "tags": refs("tags", repo.tags),
                    "converts": [],
                    "pullRequests": [],
                },
                {},
            )
        if method == "GET" and verb == "commits":
            out, commit = [], self._rev(repo, rev)
            while commit is not None:
                out.append(
                    {
                        "id": commit.id,
                        "title": commit.title,
                        "message": commit.message,
                        "date": commit.date,
                        "authors": [{"user": commit.author}],
                    }
                )
                commit = repo.commits.get(commit.parent) if commit.parent else None
            return 200, out, {}
        if method == "GET" and verb == "tree":
            return 200, self._tree(self._rev(repo, rev), sub_path), {}
        if method == "POST" and verb == "paths-info":
            commit = self._rev(repo, rev)
            form = parse_qs(body.decode())  # the client sends a form: paths=a&paths=b&expand=False
            return 200, [_file_entry(commit, p) for p in form.get("paths", []) if p in commit.files], {}
        raise ApiError(404, f"no route for {method} {repo_type}s/{repo_id}/{rest}")

    def _commit(self, repo: Repo, rev: str, body: bytes) -> tuple[int, Any, dict[str, str]]:
        if rev not in repo.branches:
            raise ApiError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        head = repo.commits[repo.branches[rev]]
        files, header, lfs = dict(head.files), {}, set(head.lfs)
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                files[value["path"]] = self.hub._maybe_corrupt(value["path"], base64.b64decode(value["content"]))
                lfs.discard(value["path"])
            elif key == "lfsFile":
                if value["oid"] not in self.hub.lfs_objects:
                    raise ApiError(422, f"LFS object {value['oid']} of {value['path']} was never uploaded")
                files[value["path"]] = self.hub._maybe_corrupt(value["path"], self.hub.lfs_objects[value["oid"]])
                lfs.add(value["path"])
            elif key == "deletedFile":
                lfs.discard(value["path"])
                if files.pop(value["path"], None) is None:
                    raise ApiError(404, "A file with this name doesn't exist", "EntryNotFound")
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: d for p, d in files.items() if not p.startswith(prefix)}
            else:
                raise ApiError(400, f"unsupported commit operation {key!r} (this test Hub answers 'regular' only)")
        parent = header.get("parentCommit")
        if parent and not head.id.startswith(parent):
            raise ApiError(412, "A commit has happened since. Please refresh and try again.")
        commit = self.hub._new_commit(
            repo,
            head.id,
            header.get("summary", ""),
            header.get("description", ""),
            self.user or "anonymous",
            files,
        )
        commit.lfs = lfs & set(files)
        repo.branches[rev] = commit.id
        url = f"{self.hub.url}/{repo.repo_id}/commit/{commit.id}"
        return 200, {"commitOid": commit.id, "commitUrl": url, "success": True}, {}

    @staticmethod
    def _tree(commit: Commit, sub_path: str) -> list[dict[str, Any]]:
        prefix = sub_path.strip("/") + "/" if sub_path.strip("/") else ""
        entries: dict[str, dict[str, Any]] = {}
        for path in sorted(commit.files):
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix) :].split("/")
            for i in range(1, len(parts)):  # every folder on the way
                folder = prefix + "/".join(parts[:i])
                entries.setdefault(folder, {"type": "directory", "path": folder, "oid": git_blob_sha1(folder.encode())})
            entries[path] = _file_entry(commit, path)
        if prefix and not entries:
            raise ApiError(404, f"{sub_path} does not exist", "EntryNotFound")
        return list(entries.values())

    def _resolve(self, repo_type: str, repo_id: str, rev: str, path: str) -> tuple[int, Any, dict[str, str]]:
        repo = self._get_repo(repo_type, repo_id)
        commit = self._rev(repo, unquote(rev))
        data = commit.files.get(path)
        if data is None:
            raise ApiError(404, f"Entry not found: {path}", "EntryNotFound")
        etag = git_blob_sha1(data)
        return (
            200,
            data,
            {"X-Repo-Commit": commit.id, "ETag": f'"{etag}"', "Content-Type": "application/octet-stream"},
        )


def _file_entry(commit: Commit, path: str) -> dict[str, Any]:
    """A file as ``tree`` and ``paths-info`` list it: an LFS file's ``oid`` is its pointer's blob id, and its
    ``lfs`` block holds the content's sha256 (``oid``), ``size`` and ``pointerSize``, as on the Hub."""
    data = commit.files[path]
    if path not in commit.lfs:
        return {"type": "file", "path": path, "size": len(data), "oid": git_blob_sha1(data)}
    sha256 = hashlib.sha256(data).hexdigest()
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n".encode()
    lfs = {"oid": sha256, "size": len(data), "pointerSize": len(pointer)}
    return {"type": "file", "path": path, "size": len(data), "oid": git_blob_sha1(pointer), "lfs": lfs}


__all__ = ["HubServer", "RecordedRequest", "git_blob_sha1"]
