"""The HTTP API: thin routers that parse, call one service function and return a schema."""
