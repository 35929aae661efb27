"""Clients that ship with tern (operator CLI, load tester, C load generator); the server never imports them."""
