//! The publish stage: what a detector decides reaches the maintenance engineers, durably and in order. An alarm
//! transition is written to the on-disk [`outbox`] first, then published over [`mqtt`] and removed from the outbox
//! only once the broker has acknowledged it; a broker that is down, or a daemon that restarts, loses nothing.

pub mod mqtt;
pub mod outbox;
