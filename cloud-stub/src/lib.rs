//! `platen-cloud`: holds tenants, plans and contracts; publishes each change's device
//! configuration, sets the service up at the provider, confirms both, compensates
//! unavailable time, and decides plan migrations.
//!
//! Layers, lowest first (each uses only those before it; see ARCHITECTURE.md):
//! * [`model`] — plain data: parties, contracts, changes, evidence, ledger entries,
//!   migrations, samples, stored reports;
//! * [`store`] — the storage port and its backends (sled, PostgreSQL);
//! * [`billing`] — billing periods, compensation, usage from counter samples (pure);
//! * [`plans`] — the plan catalog and its migration rules (pure);
//! * [`fleet`] — when a printer under contract has gone quiet (a pure rule) and the
//!   sweep that reports it;
//! * [`link`] — the broker link ([`Cloud`]): publish desired configs, ingest reports,
//!   telemetry and health;
//! * [`engine`] — drives every open change: publish, confirm, fault, settle, pay;
//! * [`webhooks`] — outbound webhooks: Standard Webhooks signing and the delivery
//!   worker;
//! * [`ops`] — validated operations and the migrations service, with domain errors;
//! * [`http`] — the HTTP API, its listener and its tokens;
//! * [`server`] and [`config`] — the process: wiring, and the configuration file.

pub mod billing;
pub mod config;
pub mod engine;
pub mod fleet;
pub mod http;
pub mod link;
pub mod model;
pub mod ops;
pub mod plans;
pub mod server;
pub mod store;
pub mod webhooks;

pub use link::{BrokerAuth, Cloud, CloudError, Counters, ReportEvent, INGEST_BATCH};
