//! A report as the cloud keeps it.

use chrono::{DateTime, Utc};
use platen_protocol::ApplyReport;
use serde::{Deserialize, Serialize};

/// A report as stored: the agent's report plus when the cloud received it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ReceivedReport {
    pub report: ApplyReport,
    pub received_at: DateTime<Utc>,
}
