"""The HSM-style signer: its own process, keystores, policy, offline cold signing.
Arrives with the signer issue."""
