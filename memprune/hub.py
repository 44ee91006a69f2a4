"""The Hugging Face Hub, reading side: ``hf://`` checkpoint references (``memprune push`` is in :mod:`memprune.push`).

Reading: ``hf://OWNER/NAME/PATH[@REVISION]`` (or the Hub's own ``hf://OWNER/NAME@REVISION/PATH``) is fetched
with ``hf_hub_download`` into the standard Hub cache, so ``HF_HUB_OFFLINE=1`` works once the cache is
filled. A sharded index brings its shards, and a memprune manifest stored beside the file comes along, so
``verify`` and stacked patches see it. Every resolved reference is remembered with its commit
(:func:`hub_provenance`) so a manifest can name exactly what was patched.

Writing (:mod:`memprune.push`, re-exported here): ``push`` uploads a patched safetensors file, its manifest, a model card rendered from the
manifest (:mod:`memprune.card`), a tokenizer reference and any audit/FID reports in one commit. It never
uploads pickles and refuses a checkpoint whose manifest does not check out unless ``force``. LFS objects
are pre-uploaded before the commit, so re-running an interrupted push skips what already reached the Hub.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memprune.errors import MempruneError

SCHEME = "hf://"
_COMMIT_RE = re.compile(r"[0-9a-f]{40}")
# Hub revisions that contain '/' (pull-request and conversion refs), as in huggingface_hub's own parser.
_SPECIAL_REF_RE = re.compile(r"^refs/(?:pr/\d+|convert/[\w.-]+)")
_OTHER_REPO_TYPES = ("datasets/", "spaces/", "buckets/", "kernels/")


@dataclass(frozen=True)
class HubRef:
    """A parsed ``hf://`` reference: repository, file inside it, and revision (``None`` = the default branch)."""

    repo_id: str
    path: str
    revision: str | None = None

    def uri(self) -> str:
        """The canonical memprune form ``hf://OWNER/NAME/PATH[@REVISION]``."""
        return f"{SCHEME}{self.repo_id}/{self.path}" + (f"@{self.revision}" if self.revision else "")


@dataclass(frozen=True)
class HubFile:
    """A downloaded Hub file and exactly where it came from."""

    ref: HubRef
    local_path: Path
    commit: str
    license: str | None = None
    extra_files: tuple[Path, ...] = field(default_factory=tuple)

    def provenance(self) -> dict[str, str]:
        """``{repo, path, revision, commit}`` (plus ``license`` when the source card declares one)."""
        out = {"repo": self.ref.repo_id, "path": self.ref.path, "revision": self.ref.revision or "main", "commit": self.commit}
        if self.license:
            out["license"] = self.license
        return out


# Every reference resolved in this process, keyed by its URI and by the local path handed out.
_RESOLVED: dict[str, HubFile] = {}


def parse_hf_uri(uri: str) -> HubRef:
    """Parse ``hf://OWNER/NAME/PATH[@REVISION]`` or ``hf://OWNER/NAME@REVISION/PATH``.

    Raises:
        MempruneError: naming what is wrong with the URI and the expected form.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    def bad(why: str) -> MempruneError:
        return MempruneError(f"hf:// reference {uri!r} is malformed ({why}): write hf://OWNER/NAME/PATH[@REVISION], e.g. hf://FoundationVision/var/var_d16.pth")

    if not uri.startswith(SCHEME):
        raise bad("it does not start with hf://")
    body = uri[len(SCHEME):]
    body = body[len("models/"):] if body.startswith("models/") else body
    if body.startswith(_OTHER_REPO_TYPES):
        raise bad(f"memprune loads model repositories, not {body.split('/', 1)[0]}")
    head, _, rest = body.partition("/")
    name, _, tail = rest.partition("/")
    if "@" in name:  # the Hub's canonical form: OWNER/NAME@REVISION/PATH
        name, _, after = name.partition("@")
        after = f"{after}/{tail}" if tail else after
        special = _SPECIAL_REF_RE.match(after)
        revision, path = (special.group(0), after[special.end():].lstrip("/")) if special else after.partition("/")[::2]
    else:
        path, at, revision = tail.rpartition("@") if "@" in tail else (tail, "", "")
        if at and not revision:
            raise bad("the revision after '@' is empty")
    repo_id = f"{head}/{name}"
    if not head or not name:
        raise bad("the repository must be OWNER/NAME")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise bad(f"invalid repository id {repo_id!r}: {str(exc).splitlines()[0]}") from None
    if not path or path.endswith("/"):
        raise bad("it names no file inside the repository")
    if path.startswith("/") or ".." in path.split("/"):
        raise bad(f"file path {path!r} must be relative, without '..'")
    return HubRef(repo_id, path, revision or None)


def resolve_hf_uri(uri: str) -> Path:
    """Download (or find in the Hub cache) the file an ``hf://`` reference names and return its local path.

    ``reader.resolve_checkpoint_path`` calls this for ``hf://`` arguments. See :func:`resolve_hf_uri_with_info`.
    """
    return resolve_hf_uri_with_info(uri).local_path


def resolve_hf_uri_with_info(
    uri: str, *, endpoint: str | None = None, token: str | bool | None = None, cache_dir: str | os.PathLike | None = None
) -> HubFile:
    """Resolve an ``hf://`` reference through ``hf_hub_download`` and record where it came from.

    A ``*.safetensors.index.json`` brings every shard it lists, from the same commit. The memprune manifest
    stored beside the file (``<stem>.manifest.json``), if any, is fetched too. ``HF_HUB_OFFLINE=1`` serves
    everything from the cache.

    Args:
        uri: ``hf://OWNER/NAME/PATH[@REVISION]``.
        endpoint: Hub URL (default: ``HF_ENDPOINT`` or huggingface.co).
        token: Hub token (default: the saved login or ``HF_TOKEN``).
        cache_dir: Hub cache folder (default: ``HF_HUB_CACHE``).

    Raises:
        MempruneError: malformed URI, missing repository/revision/file, no access, or offline with an empty cache.
    """
    ref = parse_hf_uri(uri)
    kwargs = dict(endpoint=endpoint, token=token, cache_dir=cache_dir)
    local = _download(ref, ref.revision, required=True, **kwargs)
    commit = _commit_of(local, ref.path) or ref.revision or "unknown"
    pinned = commit if _COMMIT_RE.fullmatch(commit) else ref.revision
    extra: list[Path] = []
    if ref.path.endswith(".safetensors.index.json"):
        for shard in _shards_of(local, uri):
            extra.append(_download(HubRef(ref.repo_id, _sibling(ref.path, shard)), pinned, required=True, **kwargs))
    from memprune.manifest import manifest_path_for

    sidecar = _sibling(ref.path, manifest_path_for(ref.path).name)
    if (found := _download(HubRef(ref.repo_id, sidecar), pinned, required=False, **kwargs)) is not None:
        extra.append(found)
    info = HubFile(ref, local, commit, _card_license(ref.repo_id, pinned, kwargs), tuple(extra))
    _RESOLVED[uri] = _RESOLVED[str(local)] = info
    return info


def hub_provenance(path: str | os.PathLike) -> dict[str, str] | None:
    """Where a checkpoint came from on the Hub: ``{repo, path, revision, commit}``, or ``None`` if not from the Hub.

    Works for an ``hf://`` URI or local path resolved in this process, and for any file inside a Hub cache
    snapshot (``models--OWNER--NAME/snapshots/<commit>/PATH``), whose layout alone names repo, commit and path.
    """
    text = str(path)
    if text in _RESOLVED:
        return _RESOLVED[text].provenance()
    if text.startswith(SCHEME):
        return None
    parts = Path(text).parts
    for i in range(len(parts) - 3, -1, -1):
        repo_dir, snapshots, commit = parts[i], parts[i + 1], parts[i + 2]
        if repo_dir.startswith("models--") and snapshots == "snapshots" and _COMMIT_RE.fullmatch(commit):
            repo_id = repo_dir[len("models--"):].replace("--", "/", 1)
            return {"repo": repo_id, "path": "/".join(parts[i + 3:]), "revision": commit, "commit": commit}
    return None


def _sibling(path: str, name: str) -> str:
    folder = path.rpartition("/")[0]
    return f"{folder}/{name}" if folder else name


def _commit_of(local: Path, path_in_repo: str) -> str | None:
    """The commit folder of a cache snapshot path ``.../snapshots/<commit>/<path_in_repo>``."""
    folder = Path(local)
    for _ in path_in_repo.split("/"):
        folder = folder.parent
    return folder.name if folder.parent.name == "snapshots" and _COMMIT_RE.fullmatch(folder.name) else None


def _shards_of(index_path: Path, uri: str) -> list[str]:
    # The same strict parser as local indexes: a shard named "../x" would otherwise be fetched from outside the folder.
    from memprune.io.formats import parse_index

    try:
        raw = Path(index_path).read_bytes()
    except OSError as exc:
        raise MempruneError(f"cannot read {uri} ({exc.strerror}): download it again") from None
    return parse_index(raw, uri).shards


def _download(ref: HubRef, revision: str | None, *, required: bool, endpoint, token, cache_dir) -> Path | None:
    """``hf_hub_download`` with its exceptions turned into one-line MempruneErrors (or ``None`` if optional)."""
    from huggingface_hub import hf_hub_download

    try:
        with _hub_errors(ref.uri(), revision=revision):
            return Path(hf_hub_download(ref.repo_id, ref.path, revision=revision, endpoint=endpoint, token=token, cache_dir=cache_dir))
    except MempruneError:
        if required:
            raise
        return None


def _card_license(repo_id: str, revision: str | None, kwargs: dict[str, Any]) -> str | None:
    """The ``license`` declared in the source repository's model card, if it has one (best effort)."""
    from huggingface_hub import ModelCard

    readme = _download(HubRef(repo_id, "README.md"), revision, required=False, **kwargs)
    if readme is None:
        return None
    try:
        data = ModelCard.load(readme, ignore_metadata_errors=True).data
    except Exception:  # a malformed card must never block loading the weights
        return None
    value = getattr(data, "license", None)
    return value if isinstance(value, str) and value else None


@contextlib.contextmanager
def _hub_errors(what: str, *, revision: str | None = None, repo_id: str | None = None) -> Iterator[None]:
    """Translate huggingface_hub exceptions raised while handling ``what`` into one-line MempruneErrors."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    login = "log in with `hf auth login`, set HF_TOKEN, or pass --token"
    try:
        yield
    except GatedRepoError:
        raise MempruneError(f"{what}: the repository is gated; accept its conditions on the Hub page and {login}") from None
    except RepositoryNotFoundError:
        raise MempruneError(f"{what}: repository not found (or private and you are not logged in): check the name, or {login}") from None
    except RevisionNotFoundError:
        raise MempruneError(f"{what}: revision {revision or 'main'!r} does not exist: check the branch, tag or commit") from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        if constants.HF_HUB_OFFLINE:
            raise MempruneError(
                f"{what} is not in the Hub cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set: "
                "download it once online (`hf download OWNER/NAME PATH`) or unset HF_HUB_OFFLINE"
            ) from None
        raise MempruneError(f"{what}: the Hub ({constants.ENDPOINT}) could not be reached and the file is not cached: check the connection or HF_ENDPOINT") from None
    except EntryNotFoundError:
        raise MempruneError(f"{what}: no such file at revision {revision or 'main'!r}: check the path (list files with `hf download --dry-run` or on the Hub page)") from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        hint = login + " with write access" if status in (401, 403) else "retry; a re-run resumes where it stopped"
        server = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MempruneError(f"{what}: the Hub answered HTTP {status} ({server}): {hint}") from None
    except OSError as exc:  # connection resets and timeouts (httpx errors are not OSErrors; see _network_errors)
        raise MempruneError(f"{what}: network error ({exc}): check the connection; a re-run resumes") from None


__all__ = ["HubFile", "HubRef", "hub_provenance", "parse_hf_uri", "resolve_hf_uri", "resolve_hf_uri_with_info"]
