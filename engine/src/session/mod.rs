//! Protocol drivers: the sender (primary) and receiver (standby) sides of a
//! replication session, plus the framing they share.

pub mod framing;
pub mod machine;
pub mod receiver;
pub mod send_window;
pub mod sender;
pub mod verify;
