//! Plain data, the bottom layer: what the cloud keeps and decides about, with no I/O
//! and no decision logic (that is in `billing`, `plans`, `engine`, `ops`). Every
//! other layer depends on this one; this one on nothing else of the crate.
//!
//! * parties and what they buy ([`party`]): tenants, resellers, plans, contracts and
//!   their changes;
//! * a change's record and evidence ([`evidence`]): setup state, timeline events,
//!   ledger entries;
//! * billing periods and the parts of a credit ([`billing`]);
//! * what was heard of agents and printers, and whose side a fault is on ([`seen`]);
//! * telemetry samples and usage ([`usage`]), what migration rules see and decide
//!   ([`rules`]), stored migrations ([`migration`]), stored reports ([`report`]).

pub mod billing;
pub mod evidence;
pub mod migration;
pub mod party;
pub mod report;
pub mod rules;
pub mod seen;
pub mod usage;
pub mod webhook;

pub use billing::*;
pub use evidence::*;
pub use migration::*;
pub use party::*;
pub use report::*;
pub use rules::*;
pub use seen::*;
pub use usage::*;
pub use webhook::*;
