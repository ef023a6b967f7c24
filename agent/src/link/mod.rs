//! The broker link: MQTT with manual acknowledgement, the outbox pump, health and
//! the last will ([`mqtt`]); what an arriving desired config becomes ([`inbound`]).

pub mod inbound;
pub mod mqtt;
