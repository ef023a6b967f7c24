//! The broker link: MQTT with manual acknowledgement, the outbox pump, health and
//! the last will ([`mqtt`]).

pub mod mqtt;
