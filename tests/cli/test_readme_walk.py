"""The README's "Provisioning a gateway" block, walked as printed: in a temporary directory,
against a local `tagway cloud serve`, only the placeholders filled in (the cloud's URL, the
admin key and claim token the commands before printed) and `sudo -u tagway` left out."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.integration]
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def readme_block(heading: str) -> list[str]:
    """The commands of the first ```sh block under `heading`, continuation lines joined,
    comments removed."""
    text = (REPO / "README.md").read_text()
    section = text.split(f"\n## {heading}\n", 1)[1]
    block = section.split("```sh\n", 1)[1].split("\n```", 1)[0]
    joined = block.replace("\\\n", " ")
    return [re.sub(r"\s+#.*$", "", line).strip() for line in joined.splitlines() if line.strip()]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_provisioning_block_runs_as_printed(tmp_path: Path) -> None:
    commands = readme_block("Provisioning a gateway")
    assert [c.split()[:3] for c in commands] == [
        ["tagway", "cloud", "tenant"], ["tagway", "cloud", "claim-token"],
        ["sudo", "-u", "tagway"],
    ]  # fmt: skip
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}",
           "TAGWAY_PLATFORM_ADMIN_KEY": "platform-key-for-the-walk",
           "TAGWAY_CONFIG": str(tmp_path / "gw" / "config.yaml")}  # fmt: skip
    env.pop("TAGWAY_CLOUD_DATABASE", None)
    subprocess.run(["tagway", "init", str(tmp_path / "gw")], env=env, check=True, cwd=tmp_path)
    serve = subprocess.Popen(  # the cloud host: the defaults, in this directory
        ["tagway", "cloud", "serve", "--port", str(port), "--public-url", url],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        outputs: list[str] = []
        for command in commands:
            line = command.replace("https://cloud.example.com", url)
            line = line.replace("sudo -u tagway ", "").replace("twc_...", "$CLAIM_TOKEN")
            done = subprocess.run(["bash", "-c", line], env=env, cwd=tmp_path, text=True,
                                  capture_output=True, timeout=120, check=False)  # fmt: skip
            assert done.returncode == 0, (line, done.stdout, done.stderr)
            outputs.append(done.stdout)
            if key := re.search(r"admin API key .*: (\S+)", done.stdout):
                env["ADMIN_KEY"] = key[1]
            if token := re.search(r"^(twc_\S+)$", done.stdout, re.MULTILINE):
                env["CLAIM_TOKEN"] = token[1]
        config = yaml.safe_load((tmp_path / "gw" / "config.yaml").read_text())
        assert config["cloud"]["url"] == url
        admin = {"Authorization": f"Bearer {env['ADMIN_KEY']}"}
        gateways = httpx.get(f"{url}/v1/gateways", headers=admin).json()
        assert len(gateways) == 1
    finally:
        serve.send_signal(signal.SIGINT)
        serve.wait(timeout=30)
