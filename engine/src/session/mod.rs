//! Protocol drivers: the sender (primary) and receiver (standby) sides of a replication session.
