"""The room domain: rooms, participants, publications, subscriptions, layer allocation, data routing and speakers."""
