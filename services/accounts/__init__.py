"""The Accounts service of the reference ledger."""
