//! Billing, pure: periods ([`period`]), what is owed for unavailable time
//! ([`compensation`]), pages printed from counter samples ([`usage`]).

pub mod compensation;
pub mod period;
pub mod usage;
