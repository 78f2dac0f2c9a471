"""A small Hub-compatible HTTP server for offline tests: files on disk, the routes `huggingface_hub` really calls.

Upload (`HfApi.create_repo`, `create_branch`, `upload_folder`):

- `POST /api/repos/create`, `POST /api/validate-yaml`
- `POST /api/{type}s/{ns}/{name}/preupload/{rev}`: every file is uploaded "regular" (inline, base64), so neither
  Git LFS nor Xet is needed; the answer carries the git blob oid of a file already there, so that an unchanged
  file is skipped as on the Hub
- `POST /api/{type}s/{ns}/{name}/commit/{rev}` (NDJSON; `?create_pr=1` opens `refs/pr/N`)
- `POST /api/{type}s/{ns}/{name}/branch/{branch}`
- `POST /api/{type}s/{ns}/{name}/discussions` and `GET .../discussions/{num}`: `create_pr=True` opens the pull
  request first, then commits to its `refs/pr/N`

Download (`from_pretrained`, `hf_hub_download`, `snapshot_download`):

- `GET /api/{type}s/{ns}/{name}[/revision/{rev}]`: repo info with `sha` and `siblings`
- `HEAD|GET /[{type}s/]{ns}/{name}/resolve/{rev}/{path}` with `X-Repo-Commit`, `ETag` and `Content-Length`; errors
  carry the `X-Error-Code` (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`) that the client turns into its
  exceptions.

Each commit is a full snapshot folder `root/{type}/{ns}/{name}/{oid}/`. `fail_with = 500` makes every request fail
until it is reset. Requests (method, path, Authorization header) are recorded in `requests`.
"""

import base64
import hashlib
import json
import os
import shutil
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

REPO_TYPES = ("model", "dataset", "space")


def git_blob_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    refs: dict[str, str] = field(default_factory=dict)  # branch or "refs/pr/N" -> commit oid
    pulls: int = 0
    titles: dict[int, str] = field(default_factory=dict)  # pull request number -> title


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class LocalHub:
    """The state behind the server: repos, refs and commit snapshots under `root`."""

    def __init__(self, root: str):
        self.root = root
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lock = threading.Lock()
        self.endpoint = ""
        self.fail_with: int | None = None
        self.requests: list[tuple[str, str, str | None]] = []

    # storage -----------------------------------------------------------------------------------------------------
    def snapshot(self, repo: Repo, oid: str) -> str:
        return os.path.join(self.root, repo.repo_type, repo.repo_id, oid)

    def files(self, repo: Repo, oid: str) -> dict[str, str]:
        """path in repo -> path on disk."""
        top = self.snapshot(repo, oid)
        found = {}
        for folder, _, names in os.walk(top):
            for name in names:
                full = os.path.join(folder, name)
                found[os.path.relpath(full, top).replace(os.sep, "/")] = full
        return found

    def get_repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, f"Repository {repo_type}/{repo_id} not found", "RepoNotFound")
        return repo

    def resolve_revision(self, repo: Repo, revision: str) -> str:
        if revision in repo.refs:
            return repo.refs[revision]
        if os.path.isdir(self.snapshot(repo, revision)):  # a commit oid
            return revision
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def new_commit(self, repo: Repo, parent: str | None, changes) -> str:
        """Copy the parent snapshot, apply `changes(folder)`, name the result by its content."""
        staging = os.path.join(self.root, ".staging", os.urandom(8).hex())
        if parent is None:
            os.makedirs(staging)
        else:
            shutil.copytree(self.snapshot(repo, parent), staging)
        try:
            changes(staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        digest = hashlib.sha1((parent or "").encode())
        for folder, _, names in sorted(os.walk(staging)):
            for name in sorted(names):
                full = os.path.join(folder, name)
                digest.update(os.path.relpath(full, staging).encode())
                with open(full, "rb") as handle:
                    digest.update(hashlib.sha1(handle.read()).digest())
        oid = digest.hexdigest()
        target = self.snapshot(repo, oid)
        if os.path.exists(target):
            shutil.rmtree(staging)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(staging, target)
        return oid

    # API ---------------------------------------------------------------------------------------------------------
    def create_repo(self, body: dict) -> tuple[int, dict]:
        repo_type = body.get("type") or "model"
        repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
        if "/" not in repo_id:
            raise HubError(400, f"Repository id {repo_id!r} has no namespace")
        url = f"{self.endpoint}/{repo_id}" if repo_type == "model" else f"{self.endpoint}/{repo_type}s/{repo_id}"
        with self.lock:
            if (repo_type, repo_id) in self.repos:
                return 409, {"error": "You already created this repo", "url": url}
            repo = Repo(repo_type, repo_id, bool(body.get("private")))
            self.repos[(repo_type, repo_id)] = repo

            def gitattributes(folder):
                with open(os.path.join(folder, ".gitattributes"), "w") as handle:
                    handle.write("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")

            repo.refs["main"] = self.new_commit(repo, None, gitattributes)
        return 200, {"url": url, "name": repo_id, "id": repo_id}

    def preupload(self, repo: Repo, revision: str, body: dict) -> dict:
        try:
            existing = self.files(repo, self.resolve_revision(repo, revision))
        except HubError:
            existing = {}
        answer = []
        for entry in body.get("files", []):
            oid = None
            if entry["path"] in existing:
                with open(existing[entry["path"]], "rb") as handle:
                    oid = git_blob_oid(handle.read())
            answer.append({"path": entry["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": oid})
        return {"files": answer, "commitOid": repo.refs.get(revision)}

    def commit(self, repo: Repo, revision: str, payload: bytes, create_pr: bool) -> dict:
        lines = [json.loads(line) for line in payload.splitlines() if line.strip()]
        header = next((line["value"] for line in lines if line["key"] == "header"), None)
        if not header or not header.get("summary"):
            raise HubError(400, "Commit summary is required")
        with self.lock:
            if revision not in repo.refs:
                raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            parent = repo.refs[revision]
            if header.get("parentCommit") and header["parentCommit"] != parent:
                raise HubError(412, f"Parent commit {header['parentCommit']} is not the head of {revision}")

            def apply(folder):
                for line in lines:
                    value = line["value"]
                    if line["key"] == "file":
                        if value.get("encoding") != "base64":
                            raise HubError(400, f"Unsupported encoding for {value['path']}")
                        target = os.path.join(folder, *value["path"].split("/"))
                        os.makedirs(os.path.dirname(target), exist_ok=True)
                        with open(target, "wb") as handle:
                            handle.write(base64.b64decode(value["content"]))
                    elif line["key"] in ("deletedFile", "deletedFolder"):
                        target = os.path.join(folder, *value["path"].rstrip("/").split("/"))
                        if os.path.isdir(target):
                            shutil.rmtree(target)
                        elif os.path.exists(target):
                            os.remove(target)
                    elif line["key"] != "header":
                        raise HubError(400, f"This server takes regular files only, not {line['key']}")

            oid = self.new_commit(repo, parent, apply)
            prefix = self.endpoint if repo.repo_type == "model" else f"{self.endpoint}/{repo.repo_type}s"
            answer = {"commitOid": oid, "commitUrl": f"{prefix}/{repo.repo_id}/commit/{oid}"}
            if create_pr:  # the older one-call way: `?create_pr=1`
                repo.pulls += 1
                repo.titles[repo.pulls] = header["summary"]
                repo.refs[f"refs/pr/{repo.pulls}"] = oid
                answer["pullRequestUrl"] = f"{prefix}/{repo.repo_id}/discussions/{repo.pulls}"
            else:
                repo.refs[revision] = oid
        return answer

    def open_pull_request(self, repo: Repo, body: dict) -> dict:
        """`create_pull_request`: a `refs/pr/N` ref at main's head, which the following commits move."""
        if not body.get("pullRequest"):
            raise HubError(400, "This server opens pull requests only, not discussions")
        with self.lock:
            repo.pulls += 1
            repo.refs[f"refs/pr/{repo.pulls}"] = repo.refs["main"]
            repo.titles[repo.pulls] = body.get("title", "")
        return {"num": repo.pulls}

    def pull_request(self, repo: Repo, num: int) -> dict:
        if num not in repo.titles:
            raise HubError(404, f"Discussion {num} not found")
        return {
            "num": num,
            "title": repo.titles[num],
            "status": "open",
            "isPullRequest": True,
            "createdAt": "2026-01-01T00:00:00.000Z",
            "author": {"name": "test"},
            "repo": {"name": repo.repo_id, "type": repo.repo_type},
            "changes": {"base": "refs/heads/main"},
            "filesWithConflicts": [],
            "events": [],
        }

    def create_branch(self, repo: Repo, branch: str, body: dict) -> tuple[int, dict]:
        with self.lock:
            if branch in repo.refs:
                return 409, {"error": f"Branch {branch} already exists"}
            repo.refs[branch] = self.resolve_revision(repo, body.get("startingPoint") or "main")
        return 200, {}

    def tree(self, repo: Repo, revision: str, folder: str, recursive: bool) -> list[dict]:
        """Entries under `folder` (files and sub-folders), as `list_repo_tree` reads them."""
        files = self.files(repo, self.resolve_revision(repo, revision))
        prefix = folder.strip("/") + "/" if folder.strip("/") else ""
        entries: dict[str, dict] = {}
        for path, disk in files.items():
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix):].split("/")
            for depth in range(1, len(parts)):  # the folders on the way
                if recursive or depth == 1:
                    name = prefix + "/".join(parts[:depth])
                    entries.setdefault(name, {"type": "directory", "path": name, "oid": "0" * 40, "size": 0})
            if recursive or len(parts) == 1:
                with open(disk, "rb") as handle:
                    content = handle.read()
                entries[path] = {"type": "file", "path": path, "oid": git_blob_oid(content), "size": len(content)}
        if prefix and not entries:
            raise HubError(404, f"{folder} does not exist at {revision}", "EntryNotFound")
        return [entries[name] for name in sorted(entries)]

    def info(self, repo: Repo, revision: str) -> dict:
        oid = self.resolve_revision(repo, revision)
        return {
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "sha": oid,
            "private": repo.private,
            "siblings": [{"rfilename": path} for path in sorted(self.files(repo, oid))],
            "tags": [],
        }


def parse_repo_route(parts: list[str]) -> tuple[str, str, list[str]]:
    """["models", ns, name, *rest] -> (type, "ns/name", rest)."""
    if len(parts) < 3 or parts[0] not in {f"{kind}s" for kind in REPO_TYPES}:
        raise HubError(404, f"No route for /api/{'/'.join(parts)}")
    return parts[0][:-1], f"{parts[1]}/{parts[2]}", parts[3:]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: LocalHub  # set on the subclass made by `serve`

    def log_message(self, format, *args):  # quiet: requests are recorded in hub.requests
        pass

    def reply(self, status: int, body: bytes = b"", headers: dict | None = None, send_body: bool = True):
        self.send_response(status)
        headers = {"Content-Type": "application/json", **(headers or {})}
        headers.setdefault("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if send_body and body:
            self.wfile.write(body)

    def reply_json(self, status: int, data: dict | list):
        self.reply(status, json.dumps(data).encode())

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def handle_request(self, method: str):
        url = urlsplit(self.path)
        self.hub.requests.append((method, url.path, self.headers.get("Authorization")))
        body = self.read_body() if method == "POST" else b""
        try:
            if self.hub.fail_with:
                raise HubError(self.hub.fail_with, "Internal error (injected by the test)")
            parts = [unquote(part) for part in url.path.strip("/").split("/")]
            if parts[:1] == ["api"]:
                self.api(method, parts[1:], body, parse_qs(url.query))
            else:
                self.resolve(method, parts)
        except HubError as error:
            headers = {"X-Error-Message": error.message}
            if error.code:
                headers["X-Error-Code"] = error.code
            data = json.dumps({"error": error.message}).encode()
            self.reply(error.status, data, headers, send_body=method != "HEAD")

    def api(self, method: str, parts: list[str], body: bytes, query: dict):
        hub = self.hub
        if method == "POST" and parts == ["repos", "create"]:
            self.reply_json(*hub.create_repo(json.loads(body)))
            return
        if method == "POST" and parts == ["validate-yaml"]:
            self.reply_json(200, {"errors": [], "warnings": []})
            return
        repo_type, repo_id, rest = parse_repo_route(parts)
        repo = hub.get_repo(repo_type, repo_id)
        if method == "GET" and (not rest or rest[0] == "revision"):
            self.reply_json(200, hub.info(repo, "/".join(rest[1:]) or "main"))
        elif method == "GET" and rest[:1] == ["tree"] and len(rest) >= 2:
            recursive = query.get("recursive", ["false"])[0] in ("1", "true", "True")
            self.reply_json(200, hub.tree(repo, rest[1], "/".join(rest[2:]), recursive))
        elif method == "POST" and rest[:1] == ["preupload"]:
            self.reply_json(200, hub.preupload(repo, "/".join(rest[1:]), json.loads(body)))
        elif method == "POST" and rest[:1] == ["commit"]:
            create_pr = query.get("create_pr", ["0"])[0] in ("1", "true")
            self.reply_json(200, hub.commit(repo, "/".join(rest[1:]), body, create_pr))
        elif method == "POST" and rest == ["discussions"]:
            self.reply_json(200, hub.open_pull_request(repo, json.loads(body)))
        elif method == "GET" and rest[:1] == ["discussions"] and len(rest) == 2:
            self.reply_json(200, hub.pull_request(repo, int(rest[1])))
        elif method == "POST" and rest[:1] == ["branch"]:
            self.reply_json(*hub.create_branch(repo, "/".join(rest[1:]), json.loads(body or b"{}")))
        else:
            raise HubError(404, f"No route for {method} /api/{'/'.join(parts)}")

    def resolve(self, method: str, parts: list[str]):
        repo_type = "model"
        if parts[:1] in (["datasets"], ["spaces"]):
            repo_type, parts = parts[0][:-1], parts[1:]
        if len(parts) < 5 or parts[2] != "resolve":
            raise HubError(404, f"No route for {method} {self.path}")
        repo = self.hub.get_repo(repo_type, f"{parts[0]}/{parts[1]}")
        # a branch name may hold slashes (refs/pr/1): try the longest revision that exists
        for cut in range(len(parts) - 1, 3, -1):
            revision, path = "/".join(parts[3:cut]), "/".join(parts[cut:])
            try:
                oid = self.hub.resolve_revision(repo, revision)
                break
            except HubError:
                continue
        else:
            raise HubError(404, f"Invalid rev id: {parts[3]}", "RevisionNotFound")
        disk = self.hub.files(repo, oid).get(path)
        if disk is None:
            raise HubError(404, f"{path} does not exist at {revision}", "EntryNotFound")
        with open(disk, "rb") as handle:
            content = handle.read()
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Repo-Commit": oid,
            "ETag": f'"{git_blob_oid(content)}"',
            "Content-Length": str(len(content)),
        }
        self.reply(200, content, headers, send_body=method == "GET")

    def do_GET(self):
        self.handle_request("GET")

    def do_HEAD(self):
        self.handle_request("HEAD")

    def do_POST(self):
        self.handle_request("POST")


class HubServer:
    """`with HubServer(root) as hub: ...` serves on 127.0.0.1 (a free port) in a daemon thread."""

    def __init__(self, root: str):
        self.hub = LocalHub(root)
        handler = type("BoundHandler", (Handler,), {"hub": self.hub})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.endpoint = self.hub.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "HubServer":
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
