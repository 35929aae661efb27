"""Room state behind one store interface: the in-memory backend serves a single node; with redis.address, nodes
share rooms through Redis (cluster.Cluster)."""
