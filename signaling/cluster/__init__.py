"""Room state behind one store interface; the in-memory backend serves a single node."""
