//! What compensation decides, as data: billing periods and the parts of a credit.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One billing period `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Period {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// Local year and month of the period, e.g. 2026-03.
    pub year: i32,
    pub month: u32,
}

impl Period {
    /// Length in whole seconds.
    pub fn secs(&self) -> u64 {
        (self.end - self.start).num_seconds().max(0) as u64
    }

    /// `YYYY-MM`: the period's name in keys and messages.
    pub fn label(&self) -> String {
        format!("{:04}-{:02}", self.year, self.month)
    }

    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        self.start <= t && t < self.end
    }
}

/// Why nothing is owed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum NotOwed {
    /// Setup completed without any fault (a late completion alone is not compensated).
    NoFault,
    /// Setup completed at or before the effective time.
    CompletedInTime {
        t0: DateTime<Utc>,
        t1: DateTime<Utc>,
    },
    /// A fault, but less than one whole second of unavailability (T1 − T0 < 1 s):
    /// whole seconds are what is paid for.
    UnderOneSecond {
        t0: DateTime<Utc>,
        t1: DateTime<Utc>,
    },
    /// Every fault had its cause on the customer's side (its gateway down, its
    /// printer unreachable from its gateway) and the plan does not compensate those.
    CustomerSide { evidence: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtraPages {
    pub pages: u64,
    /// The period whose page cap is raised (`YYYY-MM`).
    pub period: String,
    pub arithmetic: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shipment {
    pub item: String,
    pub quantity: u64,
    pub arithmetic: String,
}

/// What is owed for the unavailable time inside one billing period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    pub period: Period,
    /// The unavailable interval inside the period.
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub unavailable_secs: u64,
    pub period_secs: u64,
    /// `to` is the completion time (false: the period closed while setup was incomplete).
    pub up_to_completion: bool,
    pub fee_credit: u64,
    pub fee_arithmetic: String,
    pub extra_pages: Option<ExtraPages>,
    pub shipment: Option<Shipment>,
}
