//! Outbound webhooks, the I/O side: signing requests as the Standard Webhooks
//! specification says ([`sign`]) and the delivery worker that sends the outbox's
//! pending deliveries ([`deliver`]). The events themselves are written by the store
//! with the ledger entries they report (see [`crate::model::webhook`]).

pub mod deliver;
pub mod sign;

pub use deliver::{Deliverer, DeliveryCounters, WebhookConfig};
