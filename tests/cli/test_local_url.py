"""The local API's URL the CLI, the TUI and the agent's discovery file use: an IPv6 host is
bracketed (``http://::1:8470`` is no URL: the CLI answered "internal error")."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from cli.local import fixed_url
from edge.config import LocalApiSection, http_url, load_config


@pytest.mark.parametrize(("host", "url"), [
    ("::1", "http://[::1]:8470"), ("127.0.0.1", "http://127.0.0.1:8470"),
    ("localhost", "http://localhost:8470"), ("::", "http://[::]:8470"),
    ("fe80::1", "http://[fe80::1]:8470"),
])  # fmt: skip
def test_an_ipv6_host_is_bracketed(host: str, url: str) -> None:
    assert http_url(host, 8470) == url
    parsed = httpx.URL(url)
    assert (parsed.host, parsed.port) == (host, 8470)


def test_the_cli_s_and_the_discovery_file_s_url_for_an_ipv6_local_api(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(f"gateway: {{name: gw, state_dir: {tmp_path / 'state'}}}\n"
                      "local_api: {host: '::1', port: 8471}\n")  # fmt: skip
    cfg = load_config(config)
    assert fixed_url(cfg) == "http://[::1]:8471"
    assert cfg.local_api.url(40000) == "http://[::1]:40000"  # the port bound (port 0)
    assert LocalApiSection().url() == "http://127.0.0.1:8470"
