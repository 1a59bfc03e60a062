"""Claim tokens: random, recognisable by a short prefix, stored only as a digest."""

from __future__ import annotations

import pytest

from provisioning.claim import (
    DISPLAY_PREFIX_LENGTH,
    check_claim_token,
    claim_token_matches,
    hash_claim_token,
    new_claim_token,
)
from provisioning.errors import ClaimTokenMalformed


def test_new_token_has_the_shape_prefix_and_digest() -> None:
    issued = new_claim_token()
    assert issued.token.startswith("twc_")
    assert len(issued.token) == 4 + 43
    assert issued.display_prefix == issued.token[:DISPLAY_PREFIX_LENGTH]
    assert len(issued.display_prefix) == 12
    assert issued.digest == hash_claim_token(issued.token)
    assert check_claim_token(f"  {issued.token}\n") == issued.token


def test_tokens_are_unique() -> None:
    assert len({new_claim_token().token for _ in range(200)}) == 200


def test_digest_matches_only_its_token() -> None:
    issued, other = new_claim_token(), new_claim_token()
    assert claim_token_matches(issued.token, issued.digest)
    assert not claim_token_matches(other.token, issued.digest)
    altered = issued.token[:-1] + ("B" if issued.token.endswith("A") else "A")
    assert not claim_token_matches(altered, issued.digest)


def test_digest_and_repr_do_not_reveal_the_token() -> None:
    issued = new_claim_token()
    secret_part = issued.token[DISPLAY_PREFIX_LENGTH:]
    assert secret_part not in issued.digest
    assert secret_part not in repr(issued)
    assert issued.display_prefix in repr(issued)


@pytest.mark.parametrize(
    "text",
    ["", "twc_", "twc_short", "xyz_" + "a" * 43, "twc_" + "a" * 42 + "!", "twc_" + "a" * 44],
)
def test_malformed_tokens_are_refused_without_echoing_them(text: str) -> None:
    with pytest.raises(ClaimTokenMalformed) as caught:
        check_claim_token(text)
    if len(text) > 8:
        assert text not in str(caught.value)
