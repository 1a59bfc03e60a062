"""provisioning: the cryptography the gateway and the cloud share.

P-256 keys, CSRs, per-tenant certificate authorities, certificate signing and verification, claim
tokens and the short-lived ES256 gateway tokens the uplink authenticates with. Private keys are
written atomically with mode 0600. This package imports nothing else of tagway.
"""
