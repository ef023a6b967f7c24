//! The technician's commands: `diag` ([`diag`]), `discover` ([`discover`]), the
//! command-line front ([`cli`]); and the metrics endpoint ([`metrics_endpoint`]).

pub mod cli;
pub(crate) mod diag;
pub(crate) mod discover;
pub(crate) mod metrics_endpoint;
