"""The Transfers service of the reference ledger."""
