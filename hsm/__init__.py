"""The HSM-style signer: its own process holding the hot keys, with its own
policy and audit log; plus the key-ceremony and offline (cold) signing CLI.

Layout: config.py (signer.toml), keystores/ (software HD seeds, PKCS#11
tokens), decode/ (PSBT and EIP-1559 decoders that explain a payload),
policy.py and approvals.py (the rules), limits.py (rolling 24 h totals),
audit.py (hash-chained log), service.py (decode -> check -> sign -> record),
api/ (gRPC server and auth), client.py (what the core uses), cli.py and
offline.py (ceremonies, cold signing). v1/ is generated code only.
"""
