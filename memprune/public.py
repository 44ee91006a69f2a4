"""What a release may publish: aggregate figures, settings and digests, never per-image results, ids or paths.

A privacy tool must not hand an attacker the list of training images a released model still reproduces, nor
the layout of the user's disk. Everything ``push`` uploads and everything ``patch`` embeds in weights passes
through here:

* :func:`public_report` keeps an **allow-list** of aggregate keys of the audit and FID reports (counts, rates,
  settings, digests, cosine quantiles and histograms); any key it does not know is dropped, so a report format
  that grows a per-image field stays private until this list is taught about it.
* :func:`public_name` / :func:`public_command` reduce local paths to file names (``hf://`` references stay).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

__all__ = ["public_name", "public_command", "public_value", "public_info", "public_report", "has_local_paths"]

# Aggregate keys that may be published, wherever they appear in a report.
_AGGREGATE_KEYS = frozenset("""
schema headline comparison counts models settings candidates sscd environment attack conditions per_condition
first_condition extracted_union union union_count random random_units random_baseline similarity histogram edges
model baseline audited extracted extracted_share extracted_vs_training_image mean_similarity median_similarity
max_similarity mean_hit_rate mean_token_match sweep prefix_tokens threshold baseline_extracted reduction_percent
before after reduction extracted_in_both only_before only_after sha256 arch patch selection intervention
input_sha256 top scope aggregate groups_used selected total_units factor target bias forced_score_mismatch prefix
prefix_unit greedy cfg cfg_pow top_k top_p temperature seed seeds batch_size reference view decode device dtype
tokenizer data per_class count ranked_positions selected_on backend_id protocol license memprune torch cuda
python created_utc fid num_images num_classes classes sampling inception spec weights_id comparability timing
seconds images_per_second mean min max median p05 p25 p75 p95 std key name kind label guidance scales
conditions_count source path file image_size sscd_protocol variant images_scored
""".split())
# Containers whose keys are names chosen by the run (models, conditions, prefixes), not field names.
_NAMED = frozenset({"counts", "models", "per_condition", "first_condition", "sweep", "random"})
# Values that name a local file or folder: published as the file name only.
_PATH_KEYS = frozenset({"path", "file", "data", "tokenizer", "source", "reference"})
_MAX_LIST = 256  # longer lists are per-item data, not aggregates
_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")


def public_name(path: str) -> str:
    """``/home/me/ckpt/var_d16.pth`` -> ``var_d16.pth``; ``hf://`` and other URLs are public and kept."""
    if "://" in path:
        return path
    return Path(path.replace("\\", "/")).name or path


def looks_local(text: str) -> bool:
    """An absolute, home-relative or dotted relative path, or a Windows drive path."""
    return "://" not in text and (text.startswith(("/", "~", "./", "../")) or bool(_DRIVE.match(text)))


# Options whose values are never paths (a regex over layer names may contain a slash).
_VERBATIM = frozenset({"--layers", "--top", "--repo", "-r", "--revision", "--commit-message", "-m", "--classes"})


def public_command(command: str) -> str:
    """The command line with every local path argument reduced to its file name (``--opt=/a/b`` too)."""
    try:
        tokens = shlex.split(command)
    except ValueError:
        return command.split(" ", 1)[0]
    out: list[str] = []
    for i, token in enumerate(tokens):
        if i and tokens[i - 1] in _VERBATIM:
            out.append(token)
            continue
        opt, eq, value = token.partition("=")
        if eq and opt.startswith("-"):
            out.append(token if opt in _VERBATIM else f"{opt}={_public_arg(value)}")
        else:
            out.append(_public_arg(token))
    return shlex.join(out)


def _public_arg(token: str) -> str:
    if token.startswith("-") or "://" in token:
        return token
    return public_name(token) if ("/" in token or looks_local(token)) else token


def public_value(key: str, value: Any) -> Any:
    """A scalar as it may be published: strings under path-like keys, or looking like paths, become names."""
    if isinstance(value, str) and ((key in _PATH_KEYS and not any(c.isspace() for c in value)) or looks_local(value)):
        return public_name(value)
    return value


# Per-image entries of a score file's ``info`` (one label per scored image): they stay in the score file.
_PER_IMAGE_INFO = frozenset({"labels", "images", "ids", "image_ids"})


def public_info(info: Any, _key: str = "") -> Any:
    """A score file's ``info`` as a manifest may carry it: per-image lists dropped, paths as file names."""
    if isinstance(info, dict):
        return {k: public_info(v, k) for k, v in info.items() if not (k in _PER_IMAGE_INFO and isinstance(v, (list, dict)))}
    if isinstance(info, list):
        return [public_info(v, _key) for v in info]
    return public_value(_key, info)


def public_report(data: Any, _key: str = "", _named: bool = False) -> Any:
    """The aggregate part of a report (audit summary, FID result): allow-listed keys, paths as names.

    Unknown keys are dropped (never passed through), lists longer than 256 items are dropped, and lists of
    strings are dropped unless they are condition or class names (short, not per image).
    """
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            if not isinstance(k, str) or not (_named or k in _AGGREGATE_KEYS):
                continue
            cleaned = public_report(v, k, k in _NAMED and not _named)
            if cleaned is not _DROP:
                out[k] = cleaned
        return out
    if isinstance(data, list):
        if len(data) > _MAX_LIST or (any(isinstance(v, str) for v in data) and _key not in {"conditions", "groups_used", "classes", "scales"}):
            return _DROP
        items = [public_report(v, _key) for v in data]
        return [v for v in items if v is not _DROP]
    if data is None or isinstance(data, (bool, int, float)):
        return data
    if isinstance(data, str):
        return public_value(_key, data)[:500]
    return _DROP


_DROP = object()


def has_local_paths(obj: Any, _key: str = "") -> bool:
    """Whether any string in ``obj`` (a manifest) is a local path with folders, i.e. not yet made public."""
    if isinstance(obj, dict):
        return any(has_local_paths(v, k) for k, v in obj.items())
    if isinstance(obj, list):
        return any(has_local_paths(v, _key) for v in obj)
    if isinstance(obj, str):
        if _key == "command":
            return public_command(obj) != obj
        return public_value(_key, obj) != obj
    return False
