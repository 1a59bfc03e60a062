"""Who the uplink posts as: loaded from the agent's config and state directory at start.

Two sources, chosen by the config's `cloud` section:

- `token_file` (with `gateway_id`): a static token issued by the cloud, for gateways that are
  not provisioned with a key (tests, the benchmarks, a quick trial);
- otherwise the identity `tagway provision` committed under `<state_dir>/identity/`: tokens are
  minted from its key, and a maintenance loop rotates its certificate before it expires.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path

from edge.config import AgentConfig
from edge.gateway_token import TokenMinter
from edge.identity import IdentityError, IdentityNotFound, IdentityStore
from edge.rotation import keep_certificate_fresh

TokenSource = Callable[[], Awaitable[str]]
"""Returns a valid gateway token (minting or renewing it when needed)."""


class NotProvisioned(IdentityNotFound):
    """The config names a cloud, but the gateway has no identity and no token file."""


def _nothing() -> None:
    """Renewing a static token: there is nothing to renew, the cloud must accept it as it is."""


@dataclass(frozen=True, slots=True, kw_only=True)
class UplinkIdentity:
    """The gateway id, a source of tokens, and what to run beside the uplink.

    Args:
        gateway_id: the id the cloud issued at provisioning.
        token: returns a valid token.
        renew: forget the cached token, so the next `token()` mints a fresh one (after a 401).
        maintenance: a loop the agent runs beside the uplink (certificate rotation), or None.
    """

    gateway_id: str
    token: TokenSource
    renew: Callable[[], None] = _nothing
    maintenance: Callable[[], Coroutine[None, None, None]] | None = None


def load_uplink_identity(config: AgentConfig) -> UplinkIdentity | None:
    """The uplink's identity for `config`, or None when it has no cloud (an offline gateway).

    Raises:
        NotProvisioned: a cloud is configured but there is nothing to sign with.
        IdentityError: the token file or the identity files are unusable.
    """
    cloud = config.cloud
    if cloud is None:
        return None
    if cloud.token_file is not None and cloud.gateway_id is not None:  # validated together
        return _static(cloud.token_file, gateway_id=cloud.gateway_id)
    store = IdentityStore(config.gateway.state_dir)
    try:
        identity = store.load()
    except IdentityNotFound:
        raise NotProvisioned(
            "this gateway is not provisioned: run `tagway provision --cloud URL --claim-token "
            "TOKEN` first, or remove the cloud section to run offline"
        ) from None
    minter = TokenMinter(identity)

    async def minted() -> str:
        return minter.token()

    async def rotate_when_due() -> None:
        await keep_certificate_fresh(store, minter, cloud_url=cloud.url)

    return UplinkIdentity(gateway_id=identity.gateway_id, token=minted,
                          renew=minter.invalidate, maintenance=rotate_when_due)  # fmt: skip


def _static(path: Path, *, gateway_id: str) -> UplinkIdentity:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise IdentityError(f"cannot read the token file {path}: {exc.strerror}") from exc

    async def static() -> str:
        return token

    return UplinkIdentity(gateway_id=gateway_id, token=static)
