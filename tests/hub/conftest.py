"""Fixtures of the Hub tests: an isolated Hub environment, offline (hand-filled cache) or online (loopback stand-in)."""

from __future__ import annotations

import pytest
from fake_hub import FakeHub

import memprune.hub as hub


@pytest.fixture
def hf_env(tmp_path, monkeypatch):
    """An empty Hub cache in tmp_path, no saved token, Xet off, and a clean provenance registry."""
    from huggingface_hub import constants

    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no_saved_token"))
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(tmp_path / "agent_harnesses.json"), raising=False)
    monkeypatch.setattr(hub, "_RESOLVED", {})
    return cache


@pytest.fixture
def offline(hf_env, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hf_env


@pytest.fixture
def online(hf_env, monkeypatch):
    """The stand-in Hub, with huggingface_hub's import-time endpoint constants pointed at it."""
    from huggingface_hub import constants

    with FakeHub() as server:
        monkeypatch.setattr(constants, "ENDPOINT", server.endpoint)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
        yield server
    assert server.unhandled == [], server.unhandled
