"""Hostile input: the OpenAPI fuzz, malformed safetensors and checkpoints, oversized bodies, rate limits,
and attacks on API keys. The route-by-route 401/403 checks are tests/api/test_auth.py."""
