//! What the agent tells about itself: the Prometheus registry ([`metrics`]) and the
//! status board the `status` command reads ([`status`]).

pub(crate) mod metrics;
pub mod status;
