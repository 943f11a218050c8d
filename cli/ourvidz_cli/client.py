"""The CLI's HTTP side: stored credentials, authenticated requests that refresh
an expired access token once, and problem+json errors turned into messages."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8080"


def default_credentials_path() -> Path:
    """`$OURVIDZ_CREDENTIALS`, else `$XDG_CONFIG_HOME/ourvidz/credentials.json`
    (`~/.config/...` when unset)."""
    if os.environ.get("OURVIDZ_CREDENTIALS"):
        return Path(os.environ["OURVIDZ_CREDENTIALS"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "ourvidz" / "credentials.json"


class CredentialStore:
    """Tokens per server URL in one JSON file, readable by its owner only
    (0600, folder 0700): they are as good as the password for their lifetime."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read_all(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def load(self, url: str) -> dict[str, Any]:
        return dict(self._read_all().get("servers", {}).get(url, {}))

    def save(self, url: str, entry: dict[str, Any]) -> None:
        data = self._read_all()
        data.setdefault("servers", {})[url] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Write a private temporary file, then rename: the tokens are never
        # readable by others, not even for a moment, and never half-written.
        fd, tmp = tempfile.mkstemp(prefix=".credentials-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as handle:
                os.fchmod(handle.fileno(), 0o600)
                json.dump(data, handle, indent=2)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


@dataclass
class ApiError(Exception):
    """A non-2xx answer, with what its problem+json body said."""

    status: int
    title: str = ""
    detail: str = ""
    errors: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_response(cls, resp: httpx.Response) -> ApiError:
        body: Any = {}
        with contextlib.suppress(ValueError):
            body = resp.json()
        if not isinstance(body, dict):
            body = {}
        errors = body.get("errors") if isinstance(body.get("errors"), list) else []
        return cls(
            status=resp.status_code,
            title=str(body.get("title") or resp.reason_phrase or "error"),
            detail=str(body.get("detail") or ""),
            errors=[e for e in errors if isinstance(e, dict)],
        )

    def __str__(self) -> str:
        """The title and status, the detail, then one line per bad field. The
        gateway's detail of a field error is those fields joined (`seed: must
        be >= 0`): then it is left out, so each reason shows once."""
        fields = [f"{e.get('field', '?')}: {e.get('message', '')}" for e in self.errors]
        head = f"{self.title} ({self.status})"
        repeats_fields = bool(fields) and all(f in self.detail for f in fields)
        if self.detail and self.detail != self.title and not repeats_fields:
            head += f": {self.detail}"
        return "\n".join([head, *(f"  {f}" for f in fields)])


class NotLoggedIn(Exception):
    pass


class Api:
    """Requests against one gateway, with the stored tokens for it."""

    def __init__(self, url: str, store: CredentialStore, *, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.store = store
        self.http = httpx.Client(base_url=self.url, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    # -- tokens ---------------------------------------------------------------------

    def remember(self, answer: dict[str, Any]) -> None:
        """Store the tokens of a signup / login / refresh answer."""
        user = answer.get("user") or {}
        entry = self.store.load(self.url)
        entry.update(
            email=user.get("email", entry.get("email")),
            user_id=user.get("id", entry.get("user_id")),
            access_token=answer["access_token"],
            refresh_token=answer.get("refresh_token", entry.get("refresh_token")),
        )
        self.store.save(self.url, entry)

    def _access_token(self) -> str:
        token = self.store.load(self.url).get("access_token")
        if not token:
            raise NotLoggedIn(f"not logged in to {self.url}: run `ourvidz login EMAIL` first")
        return token

    def refresh(self) -> bool:
        """Trade the refresh token for new tokens; False when that is refused."""
        refresh_token = self.store.load(self.url).get("refresh_token")
        if not refresh_token:
            return False
        resp = self.http.post("/v1/auth/refresh", json={"refresh_token": refresh_token})
        if resp.status_code != 200:
            return False
        self.remember(resp.json())
        return True

    # -- requests ----------------------------------------------------------------------

    def request(
        self, method: str, path: str, *, auth: bool = True, **kwargs: Any
    ) -> httpx.Response:
        """One request; on a 401 refresh the tokens once and try again.
        Raises ApiError for any answer that is not 2xx."""
        resp = self._send(method, path, auth, kwargs)
        if resp.status_code == 401 and auth and self.refresh():
            resp = self._send(method, path, auth, kwargs)
        if resp.status_code >= 400:
            raise ApiError.from_response(resp)
        return resp

    def _send(self, method: str, path: str, auth: bool, kwargs: dict[str, Any]) -> httpx.Response:
        headers = dict(kwargs.get("headers") or {})
        if auth:
            headers["Authorization"] = f"Bearer {self._access_token()}"
        return self.http.request(method, path, **{**kwargs, "headers": headers})

    @contextlib.contextmanager
    def stream(
        self, path: str, *, headers: dict[str, str] | None = None
    ) -> Iterator[httpx.Response]:
        """A streamed GET (for SSE), with the same refresh-once rule."""
        for attempt in (1, 2):
            all_headers = {**(headers or {}), "Authorization": f"Bearer {self._access_token()}"}
            with self.http.stream(
                "GET", path, headers=all_headers, timeout=httpx.Timeout(30.0, read=None)
            ) as resp:
                if resp.status_code == 401 and attempt == 1 and self.refresh():
                    continue
                if resp.status_code >= 400:
                    resp.read()
                    raise ApiError.from_response(resp)
                yield resp
                return

    def download(self, url: str, dest: Path) -> int:
        """Fetch a signed URL into `dest`. No Authorization header: the URL is
        its own credential (S3 refuses a presigned URL that carries one)."""
        target = (
            url if url.startswith(("http://", "https://")) else self.url + "/" + url.lstrip("/")
        )
        tmp = dest.with_name(dest.name + ".part")
        size = 0
        with httpx.stream("GET", target, timeout=httpx.Timeout(30.0, read=300.0)) as resp:
            if resp.status_code >= 400:
                resp.read()
                raise ApiError.from_response(resp)
            with open(tmp, "wb") as handle:
                for chunk in resp.iter_bytes():
                    handle.write(chunk)
                    size += len(chunk)
        os.replace(tmp, dest)
        return size
