"""The HTTP gateway: identity at the edge, the public JSON API, SSE bridges of
the gRPC watch streams, and signed local-file downloads."""
