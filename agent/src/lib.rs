//! `platen-agent`: runs beside printers, applies desired configuration over SNMP and
//! reports the outcome over MQTT, durably; reports telemetry; answers technicians.
//!
//! Folders by concern, lowest layer first (each uses only the layers before it;
//! `agent/tests/layers.rs` checks every `crate::` path, ARCHITECTURE.md the map):
//! * [`config`], [`store`] (sled: desired configs, the outbox), and from
//!   `platen-ops` [`secret`], [`tls`], [`backoff`] — the base;
//! * [`observe`] — the metrics registry and the status board;
//! * [`snmp`] — the client behind our `Snmp` trait, reads, the Printer MIB decoding,
//!   verdicts of a read-back;
//! * [`apply`] — settings profiles, applying a desired config, the per-printer
//!   reconciler, drift checks;
//! * [`telemetry`] — polls, the fleet poller, the tracker that decides what to send,
//!   counter checks, SNMP notifications;
//! * [`link`] — the broker link (MQTT, the outbox pump);
//! * [`tools`] — the technician's commands (diag, discover, status), the metrics
//!   endpoint;
//! * [`run`] — the daemon: everything started together and stopped explicitly.
//!
//! Data flow: MQTT `config/desired` → [`link`] (manual ack) → [`store`] (flushed) →
//! ack → [`apply::reconciler`] (one task per printer) → [`apply`] (SET, settle, GET
//! read-back, [`snmp::verdict`]) → report into the [`store`] outbox (flushed) →
//! [`link`] publishes it and deletes it only on the broker's PUBACK.

pub use platen_ops::backoff;
pub use platen_ops::secret;
pub use platen_ops::tls;

pub mod config;
pub mod store;

pub mod observe;

pub mod snmp;

pub mod apply;

pub mod telemetry;

pub(crate) mod link;

pub mod tools;

pub mod run;
