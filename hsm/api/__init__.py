"""The signer's gRPC entry point: thin servicer, bearer-token auth, server."""
