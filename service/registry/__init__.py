"""The optimizer registry and its database: models, repository (all queries), service, API keys."""
