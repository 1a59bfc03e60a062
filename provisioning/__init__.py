"""provisioning: the cryptography the gateway and the cloud share.

P-256 keys, CSRs, per-tenant certificate authorities, certificate signing and verification, claim
tokens and the short-lived ES256 gateway tokens the uplink authenticates with. Private keys are
written atomically with mode 0600. This package imports nothing else of tagway.

Modules: `keys` (P-256 keys and key files), `csr` (signing requests), `ca` (tenant CAs, issuing
and verifying gateway certificates), `certificates` (PEM, thumbprints, the names in a
certificate), `sealing` (master key, CA keys encrypted at rest), `tokens` (ES256 gateway tokens),
`claim` (enrollment claim tokens), `files` (atomic writes, permission-checked reads), `jws`
(the token codec), `errors` (the error tree).
"""
