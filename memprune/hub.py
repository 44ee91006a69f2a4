"""The Hugging Face Hub: ``hf://`` checkpoint references and ``memprune push``.

Reading: ``hf://OWNER/NAME/PATH[@REVISION]`` (or the Hub's own ``hf://OWNER/NAME@REVISION/PATH``) is fetched
with ``hf_hub_download`` into the standard Hub cache, so ``HF_HUB_OFFLINE=1`` works once the cache is
filled. A sharded index brings its shards, and a memprune manifest stored beside the file comes along, so
``verify`` and stacked patches see it. Every resolved reference is remembered with its commit
(:func:`hub_provenance`) so a manifest can name exactly what was patched.

Writing: :func:`push` uploads a patched safetensors file, its manifest, a model card rendered from the
manifest (:mod:`memprune.card`), a tokenizer reference and any audit/FID reports in one commit. It never
uploads pickles and refuses a checkpoint whose manifest does not check out unless ``force``. LFS objects
are pre-uploaded before the commit, so re-running an interrupted push skips what already reached the Hub.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator, Sequence
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
    try:
        weight_map = json.loads(Path(index_path).read_text(encoding="utf-8"))["weight_map"]
        return sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise MempruneError(f"{uri} is not a valid safetensors index ({exc}): it needs a weight_map") from None


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


# ---- push -----------------------------------------------------------------------------------------------------


# Official tokenizers of the released models: a patch never touches the tokenizer, so the card points to these.
DEFAULT_TOKENIZERS = {
    "var": "hf://FoundationVision/var/vae_ch160v4096z32.pth",
    "rar": "hf://fun-research/TiTok/maskgit-vqgan-imagenet-f16-256.bin",
    "llamagen": "hf://FoundationVision/LlamaGen/vq_ds16_c2i.pt",
}
TOKENIZER_REF = "memprune_tokenizer.json"


@dataclass(frozen=True)
class PushFile:
    """One file of a push: uploaded from ``local`` or from the generated bytes ``data``."""

    path_in_repo: str
    kind: str  # weights | manifest | card | tokenizer | report
    size: int
    sha256: str
    local: Path | None = None
    data: bytes | None = None


@dataclass
class PushPlan:
    """Everything a push will upload, the checks it passed, and the rendered card."""

    repo_id: str
    files: list[PushFile]
    card: str
    checks: list[Any]  # memprune.verify.Check
    manifest: dict[str, Any]
    tokenizer: dict[str, Any] | None
    commit_message: str
    commit_description: str
    warnings: list[str] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        return all(c.ok for c in self.checks)


def plan_push(
    patched: str | os.PathLike,
    repo_id: str,
    *,
    reports: Sequence[str | os.PathLike] = (),
    base: str | os.PathLike | None = None,
    tokenizer: str | None = None,
    include_tokenizer: bool = False,
    license: str | None = None,
    force: bool = False,
) -> PushPlan:
    """Check a patched checkpoint and decide what :func:`push` uploads, without contacting the Hub.

    Raises:
        MempruneError: bad repo id, a pickle or other non-safetensors file, no manifest, a pickled tokenizer.
        VerificationError: a manifest check failed and ``force`` is off.
    """
    from memprune.card import find_reports, render_card
    from memprune.errors import VerificationError
    from memprune.io import open_checkpoint
    from memprune.manifest import manifest_path_for, read_manifest

    _check_repo_id(repo_id)
    path = _patched_file(patched)
    with open_checkpoint(path) as ckpt:
        manifest = read_manifest(path, ckpt.metadata)
        if manifest is None:
            raise MempruneError(f"{path} has no memprune manifest (no {manifest_path_for(path).name}, none in its header): push uploads outputs of `memprune patch`")
    from memprune.verify import verify

    checks = verify(path, base, raise_on_failure=False).checks
    failed = [c for c in checks if not c.ok]
    warnings = [f"pushing despite failed check {c.name}: {c.detail}" for c in failed]
    if failed and not force:
        raise VerificationError(f"{path.name} does not match its manifest ({failed[0].name}: {failed[0].detail}): re-run `memprune patch`, or pass --force to push anyway")
    found, report_files, report_warnings = find_reports(path, reports)
    tok_ref, tok_files, tok_warnings = _tokenizer_files(manifest, tokenizer, include_tokenizer, path.name)
    card = render_card(manifest, repo_id=repo_id, weights_name=path.name, reports=found, license=license, tokenizer=tok_ref)
    sidecar = manifest_path_for(path)
    manifest_bytes = sidecar.read_bytes() if sidecar.exists() else (json.dumps(manifest, indent=2) + "\n").encode()
    files = [
        _local_file(path.name, "weights", path, digest=_checked_digest(checks, manifest)),
        _bytes_file(sidecar.name, "manifest", manifest_bytes),
        _bytes_file("README.md", "card", card.encode("utf-8")),
        *tok_files,
        *(_local_file(r.path_in_repo, "report", r.path) for r in report_files),
    ]
    sel, inter = manifest.get("selection", {}), manifest.get("intervention", {})
    message = f"memprune: {manifest.get('architecture')} with {sel.get('selected')} memorization units x {inter.get('factor')}"
    description = f"Patched with `{manifest.get('command')}`; source sha256 {manifest.get('input', {}).get('sha256')}."
    return PushPlan(repo_id, files, card, checks, manifest, tok_ref, message, description, warnings + report_warnings + tok_warnings)


def _check_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if repo_id.count("/") != 1:
        raise MempruneError(f"--repo {repo_id!r} must be OWNER/NAME (your user or organization, then the model name)")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise MempruneError(f"--repo {repo_id!r} is not a valid Hub repository id ({str(exc).splitlines()[0]})") from None


def _patched_file(patched: str | os.PathLike) -> Path:
    from memprune.io.reader import PICKLE_SUFFIXES

    text = str(patched)
    if text.startswith(SCHEME):
        raise MempruneError(f"{text} is a Hub reference: push uploads a local file written by `memprune patch`")
    path = Path(patched)
    if path.name.endswith(PICKLE_SUFFIXES):
        raise MempruneError(f"refusing to push pickle {path.name}: memprune pushes safetensors only (pickles can run code when loaded); patch it to a .safetensors output first")
    if not path.name.endswith(".safetensors"):
        raise MempruneError(f"{path.name} is not a .safetensors file: push uploads the single-file output of `memprune patch`")
    if not path.is_file():
        raise MempruneError(f"{path} does not exist: check the path")
    return path


def _tokenizer_files(manifest: dict[str, Any], given: str | None, include: bool, weights_name: str) -> tuple[dict[str, Any] | None, list[PushFile], list[str]]:
    """The tokenizer record for the card, as ``memprune_tokenizer.json`` (plus the file itself with ``include``)."""
    from memprune.io import sha256_file
    from memprune.io.reader import resolve_checkpoint_path

    info = (manifest.get("scores") or {}).get("info") or {}
    recorded = manifest.get("tokenizer") or info.get("tokenizer")
    ref = given or recorded or DEFAULT_TOKENIZERS.get(str(manifest.get("architecture")))
    if ref is None:
        if include:
            raise MempruneError("--include-tokenizer needs a tokenizer: pass --tokenizer PATH_OR_HF_URI")
        return None, [], ["no tokenizer reference is known for this architecture: pass --tokenizer to record one"]
    ref = str(ref)
    origin = "given" if given else "manifest" if recorded else "architecture default"
    record: dict[str, Any] = {"schema": "memprune.tokenizer-ref/1", "reference": ref, "origin": origin,
                              "note": "memprune patches never change the tokenizer: load it from this reference"}
    files, warnings = [], []
    local = None if ref.startswith(SCHEME) else Path(ref)
    if include:
        local = resolve_checkpoint_path(ref)
        if not local.name.endswith(".safetensors"):
            raise MempruneError(
                f"refusing to push tokenizer {local.name}: memprune pushes safetensors only; convert it with `memprune convert "
                f"{local.name} tokenizer.safetensors` and pass --tokenizer tokenizer.safetensors, or drop --include-tokenizer"
            )
        record["file"] = local.name if local.name != weights_name else f"tokenizer-{local.name}"
        files.append(_local_file(record["file"], "tokenizer", local))
    elif local is not None:
        warnings.append(f"tokenizer {ref} is a local path, which means nothing to others: give an hf:// reference or --include-tokenizer")
        record["reference"] = local.name
    if local is not None and local.is_file():
        record["sha256"] = sha256_file(local)
    files.append(_bytes_file(TOKENIZER_REF, "tokenizer", (json.dumps(record, indent=2) + "\n").encode()))
    return record, files, warnings


def _local_file(name: str, kind: str, path: Path, digest: str | None = None) -> PushFile:
    from memprune.io import sha256_file

    return PushFile(name, kind, path.stat().st_size, digest or sha256_file(path), local=path)


def _checked_digest(checks: list[Any], manifest: dict[str, Any]) -> str | None:
    """The weights' sha256 when the output-digest check already established it (saves re-reading the file)."""
    ok = any(c.name == "output digest" and c.ok for c in checks)
    return (manifest.get("output") or {}).get("sha256") if ok else None


def _bytes_file(name: str, kind: str, data: bytes) -> PushFile:
    import hashlib

    return PushFile(name, kind, len(data), hashlib.sha256(data).hexdigest(), data=data)


@dataclass
class PushResult:
    """What :func:`push` uploaded (or, with ``dry_run``, would upload)."""

    plan: PushPlan
    dry_run: bool
    repo_url: str | None = None
    commit_url: str | None = None
    commit_oid: str | None = None
    pr_url: str | None = None
    unchanged: list[str] = field(default_factory=list)


def push(
    patched: str | os.PathLike,
    repo_id: str,
    *,
    reports: Sequence[str | os.PathLike] = (),
    base: str | os.PathLike | None = None,
    tokenizer: str | None = None,
    include_tokenizer: bool = False,
    license: str | None = None,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
    token: str | None = None,
    dry_run: bool = False,
    force: bool = False,
    endpoint: str | None = None,
) -> PushResult:
    """Upload a patched checkpoint, its manifest, a model card, the tokenizer reference and reports in one commit.

    Args:
        patched: the ``.safetensors`` written by ``memprune patch`` (its manifest beside it).
        repo_id: ``OWNER/NAME``; created (public unless ``private``) when it does not exist.
        reports: folders holding ``audit_summary.json`` / ``fid.json``; the checkpoint's folder is always searched.
        base: the checkpoint it was patched from, for a full ``verify`` before uploading.
        tokenizer: tokenizer path or ``hf://`` reference (default: from the manifest, else the architecture's).
        include_tokenizer: upload the tokenizer file itself (safetensors only), not just the reference.
        license: SPDX id for the card when the source license is unknown or should be overridden.
        private: create the repository private.
        revision: branch to commit to (created if missing), or the PR's target branch with ``create_pr``.
        create_pr: open a pull request instead of committing to the branch.
        commit_message: commit summary (default: a description of the patch).
        token: Hub token (default: the saved login or ``HF_TOKEN``).
        dry_run: plan, check and render only; contact nothing.
        force: push even when the manifest checks fail (pickles are refused regardless).
        endpoint: Hub URL (default: ``HF_ENDPOINT`` or huggingface.co).

    Raises:
        MempruneError: bad inputs, a pickle, Hub errors. VerificationError: the manifest does not check out.
    """
    plan = plan_push(patched, repo_id, reports=reports, base=base, tokenizer=tokenizer, include_tokenizer=include_tokenizer,
                     license=license, force=force)
    if dry_run:
        return PushResult(plan, dry_run=True)
    return _upload(plan, private=private, revision=revision, create_pr=create_pr, commit_message=commit_message,
                   token=token, endpoint=endpoint)


def _upload(plan, *, private: bool, revision: str | None, create_pr: bool, commit_message: str | None,
            token: str | None, endpoint: str | None) -> PushResult:
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(endpoint=endpoint, token=token)
    target = plan.repo_id
    ops = [CommitOperationAdd(f.path_in_repo, f.local if f.local is not None else f.data) for f in plan.files]
    with _hub_errors(f"pushing to {target}", revision=revision), _network_errors(f"pushing to {target}"):
        url = api.create_repo(target, private=private or None, exist_ok=True)
        if revision and revision != "main" and not create_pr:
            api.create_branch(target, branch=revision, exist_ok=True)
        # create_commit pre-uploads LFS objects first (the server skips objects it already holds), then
        # commits; an interrupted push therefore resumes on re-run without sending the weights again.
        info = api.create_commit(
            target, ops, commit_message=commit_message or plan.commit_message, commit_description=plan.commit_description,
            revision=revision, create_pr=create_pr,
        )
    # Files whose content already matched the branch were dropped from the commit by the client.
    unchanged = [op.path_in_repo for op in ops if getattr(op, "_remote_oid", None) and op._remote_oid == op._local_oid]
    return PushResult(plan, False, str(url), info.commit_url, info.oid, info.pr_url, unchanged)


@contextlib.contextmanager
def _network_errors(what: str) -> Iterator[None]:
    """httpx transport errors (refused connection, timeout) as one line, inside :func:`_hub_errors`."""
    try:
        yield
    except Exception as exc:
        if type(exc).__module__.split(".")[0] in ("httpx", "httpcore", "httpx2"):
            raise MempruneError(f"{what}: network error ({type(exc).__name__}: {exc}): check the connection; a re-run resumes") from None
        raise
