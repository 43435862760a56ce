"""gRPC entry points: thin servicers, auth and error mapping interceptors, the server."""
