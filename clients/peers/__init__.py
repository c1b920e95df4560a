"""Clients of the peers that do not speak rtlab's wire contract (the floors use rtlab's own clients)."""
