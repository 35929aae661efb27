"""Room state behind one store interface: the in-memory backend serves a single node; with redis.address (or
Sentinels naming the master), nodes share rooms and ingresses through Redis (cluster.Cluster)."""
