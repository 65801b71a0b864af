"""Reference services built only on the platform's public API: the ledger."""
