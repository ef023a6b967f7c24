//! Billing, pure: periods ([`period`]), what is owed for unavailable time
//! ([`compensation`]), pages printed from counter samples ([`usage`]), the ledger for
//! finance ([`export`]).

pub mod compensation;
pub mod export;
pub mod period;
pub mod usage;
