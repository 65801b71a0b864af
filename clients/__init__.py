"""Outbound calls: the channel factory and the chain generated clients call through."""
