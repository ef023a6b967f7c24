//! The technician's commands: `diag` ([`diag`]), `discover` ([`discover`]), the
//! command-line front ([`cli`]); and the metrics endpoint ([`metrics_endpoint`]).

pub mod cli;
pub mod diag;
pub mod discover;
pub mod metrics_endpoint;
