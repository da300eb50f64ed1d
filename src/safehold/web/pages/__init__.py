"""The dashboard's pages, one module per use case: logging in, plans (and the overview),
runs, restore points, and the admin pages (agents, tokens)."""
