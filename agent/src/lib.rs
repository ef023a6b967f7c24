//! `platen-agent`: runs beside printers, applies desired configuration over SNMP and
//! reports the outcome over MQTT, durably.
//!
//! Data flow (see `ARCHITECTURE.md`):
//! MQTT `config/desired` → [`mqtt`] (manual ack) → [`store`] (sled, flushed) → ack →
//! [`reconciler`] (one task per printer) → [`apply`] (SET, settle, GET read-back,
//! [`verdict`]) → report into the [`store`] outbox (flushed) → [`mqtt`] publishes it
//! and deletes it only on the broker's PUBACK.

pub mod apply;
pub mod catalog;
pub mod config;
pub mod counters;
pub mod diag;
pub mod discover;
pub mod drift;
pub mod fleet;
pub mod metrics;
pub mod mqtt;
pub mod poll;
pub mod printer_mib;
pub mod reconciler;
pub mod run;
pub use platen_ops::backoff;
pub use platen_ops::secret;
pub mod snmp;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod traps;
pub use platen_ops::tls;
pub mod verdict;
