"""`tagway provision`: enroll this gateway with the cloud using a claim token.

The gateway makes its key pair here (the private key never leaves the state directory, mode
0600), sends a CSR with the claim token, checks the certificate chain it gets back, commits the
identity (`edge.identity.IdentityStore`) and points the config's ``cloud:`` section at the cloud.
The config is edited as text so its comments stay; only if that edit would not validate is the
file rewritten from its parsed content (and the command says the comments were lost).
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from cli.agent_cmds import ConfigOpt
from cli.errors import CliError, fail
from cli.local import DEFAULT_CONFIG

_REFUSALS = {
    "claim_token_invalid": "the claim token is unknown or revoked; check it, or ask the tenant "
    "admin for a new one",
    "claim_token_expired": "the claim token has expired; ask the tenant admin for a new one "
    "(tagway cloud claim-token create)",
    "claim_token_exhausted": "the claim token has been used up; ask the tenant admin for a new "
    "one (tagway cloud claim-token create)",
}
_CLOUD_LINE = re.compile(r"^cloud:\s*(#.*)?$")
_STARTER_CLOUD = re.compile(r"^# cloud:\n#   url: [^\n]*\n", re.MULTILINE)
_ANY_CLOUD = re.compile(r"^cloud\s*:", re.MULTILINE)
_CLOUD_KEY = re.compile(r"^(\s+)(url|token_file|gateway_id)\s*:")


def provision(
    cloud: Annotated[str, typer.Option("--cloud", help="The cloud's URL.")],
    claim_token: Annotated[
        str,
        typer.Option(
            "--claim-token", envvar="TAGWAY_CLAIM_TOKEN", help="The claim token (twc_...)."
        ),
    ],
    name: Annotated[
        str | None, typer.Option("--name", help="Gateway name (default: gateway.name).")
    ] = None,
    config: ConfigOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="Enroll again, replacing the existing identity.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the cloud.")] = 30.0,
) -> None:
    """Enroll this gateway with the cloud: key pair, CSR, certificate, cloud section.

    The private key is created here and never leaves this machine. With --name, the config's
    gateway.name is set to the same name, so the gateway is called one thing everywhere.
    Example: tagway provision --cloud https://cloud.example.com --claim-token twc_... --name press-3
    """
    path = config or DEFAULT_CONFIG
    for line in enroll(cloud=cloud, claim_token=claim_token, name=name, config=path,
                       force=force, timeout=timeout):  # fmt: skip
        typer.echo(line)
    typer.echo(f"next: tagway run --config {path}")


def enroll(
    *, cloud: str, claim_token: str, name: str | None, config: Path, force: bool, timeout: float
) -> list[str]:
    """Enroll the gateway of `config` (see `provision`); the lines that say what was done."""
    from edge.config import load_config  # noqa: PLC0415 - keep `--help` fast
    from edge.identity import IdentityError, IdentityStore  # noqa: PLC0415
    from provisioning.claim import check_claim_token  # noqa: PLC0415
    from provisioning.csr import csr_to_pem  # noqa: PLC0415

    path = config
    if not path.is_file():
        fail(f"no config at {path}; create one with `tagway init` or pass --config")
    cfg = load_config(path)
    token = check_claim_token(claim_token)
    store = IdentityStore(cfg.gateway.state_dir)
    if store.exists() and not force:
        try:
            current = store.load()
            what = f"as gateway {current.gateway_id} of {current.cloud_url}"
        except IdentityError:
            what = "(the identity there is unreadable)"
        fail(f"this gateway is already provisioned {what} in {store.directory}; "
             "use --force to enroll it again")  # fmt: skip
    gateway_name = name or cfg.gateway.name
    csr = store.prepare_csr(gateway_name)
    body = {"claim_token": token, "csr": csr_to_pem(csr).decode("ascii"), "name": gateway_name}
    answer = _post(cloud.rstrip("/") + "/v1/provision", body, timeout)
    identity = store.commit(
        str(answer["certificate_chain"]).encode("ascii"),
        gateway_id=str(answer["gateway_id"]),
        cloud_url=str(answer["cloud"]["token_audience"]),
    )
    renamed = str(answer["name"]) if str(answer["name"]) != cfg.gateway.name else None
    edited = update_cloud_section(path, cloud.rstrip("/"), gateway_name=renamed)
    changed = "cloud.url" + (f" and gateway.name ({renamed})" if renamed else "")
    return _enrolled(answer, identity, store.directory, path, f"{changed} set ({edited})")


def _post(url: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    try:
        response = httpx.post(url, json=body, timeout=timeout)
    except httpx.HTTPError as exc:
        fail(f"cannot reach the cloud at {url}: {exc or type(exc).__name__}")
    try:
        payload = response.json()
    except ValueError:
        fail(f"{url} did not answer like a tagway cloud (HTTP {response.status_code})")
    if response.status_code == 201 and isinstance(payload, dict):
        return payload
    error = payload.get("error", {}) if isinstance(payload, dict) else {}
    code = str(error.get("code", "http_error"))
    if code in _REFUSALS:
        fail(_REFUSALS[code])
    if code == "gateway_name_taken":
        fail(f"{error.get('message')} (use --name)")
    raise CliError(f"the cloud refused the enrollment: HTTP {response.status_code} {code}: "
                   f"{error.get('message', response.text[:200])}")  # fmt: skip


def update_cloud_section(path: Path, url: str, *, gateway_name: str | None = None) -> str:
    """Point the config's ``cloud:`` section at `url` (and set ``gateway.name`` when given);
    say how the file was changed."""
    from edge.config import ConfigError, parse_config  # noqa: PLC0415

    text = path.read_text()
    edited = set_cloud_url(text, url)
    if edited is not None and gateway_name is not None:
        edited = set_gateway_name(edited, gateway_name)
    how = "comments kept"
    try:
        if edited is not None:
            parse_config(edited, source=str(path), base=path.parent)
    except ConfigError:
        edited = None
    if edited is None:
        edited = _rewritten(text, url, gateway_name)
        how = "rewritten: its comments were not kept"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(edited)
    os.chmod(tmp, path.stat().st_mode & 0o777)  # noqa: PTH101 - keep the file's mode
    tmp.replace(path)
    return how


def set_cloud_url(text: str, url: str) -> str | None:
    """`text` with ``cloud.url`` set to `url` (a line edit; static-token keys are dropped), or
    None when the section is not written in block style and a line edit cannot do it."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if _CLOUD_LINE.match(line)), None)
    if start is None and _ANY_CLOUD.search(text):
        return None
    if start is None:
        if _STARTER_CLOUD.search(text):
            return _STARTER_CLOUD.sub(f"cloud:\n  url: {url}\n", text, count=1)
        return (
            text + ("" if text.endswith("\n") or not text else "\n") + f"\ncloud:\n  url: {url}\n"
        )
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or lines[end][0] in " \t#"):
        end += 1
    block: list[str] = []
    for line in lines[start + 1 : end]:
        match = _CLOUD_KEY.match(line)
        if match is None:
            block.append(line)
        elif match.group(2) == "url":
            block.append(f"{match.group(1)}url: {url}\n")
    if not any(_CLOUD_KEY.match(line) for line in block):
        block.insert(0, f"  url: {url}\n")
    return "".join([*lines[: start + 1], *block, *lines[end:]])


def set_gateway_name(text: str, name: str) -> str | None:
    """`text` with the value of ``gateway.name`` replaced in place (block or flow style, comments
    kept), or None when the file has no such scalar to replace."""
    import yaml  # noqa: PLC0415

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    node = _child(_child(root, "gateway"), "name")
    if not isinstance(node, yaml.ScalarNode):
        return None
    plain = re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) is not None
    value = name if plain else json.dumps(name)
    return text[: node.start_mark.index] + value + text[node.end_mark.index :]


def _child(node: Any, key: str) -> Any:
    import yaml  # noqa: PLC0415

    if not isinstance(node, yaml.MappingNode):
        return None
    return next((v for k, v in node.value if k.value == key), None)


def _rewritten(text: str, url: str, gateway_name: str | None = None) -> str:
    import yaml  # noqa: PLC0415

    data = yaml.safe_load(text) or {}
    cloud = {k: v for k, v in (data.get("cloud") or {}).items() if k not in {"token_file",
             "gateway_id"}}  # fmt: skip
    data["cloud"] = {**cloud, "url": url}
    if gateway_name is not None:
        data["gateway"] = {**(data.get("gateway") or {}), "name": gateway_name}
    return str(yaml.safe_dump(data, sort_keys=False))


def _enrolled(
    answer: dict[str, Any], identity: Any, directory: Path, config: Path, how: str
) -> list[str]:
    expires = datetime.fromtimestamp(int(answer["certificate_expires_at"]) / 1e6, tz=UTC)
    lines = [
        (
            f"enrolled as gateway {identity.gateway_id} ({answer['name']}) in tenant "
            f"{answer['tenant_id']} at {answer['cloud']['url']}"
        ),
        f"  identity:    {directory} (private key mode 0600, made here, never sent)",
        f"  certificate: {identity.thumbprint}, valid until {expires:%Y-%m-%d}",
        f"  config:      {config}: {how}",
    ]
    if answer.get("site") or answer.get("labels"):
        labels = ", ".join(f"{k}={v}" for k, v in answer.get("labels", {}).items())
        lines.append(f"  site:        {answer.get('site') or '-'}  labels: {labels or '-'}")
    return lines
