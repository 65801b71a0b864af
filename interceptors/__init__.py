"""Server and client interceptors and the resilience mechanisms they use.

Depends on neither `server` nor `clients`: those two wire these pieces into
chains. See README "Layers".
"""
