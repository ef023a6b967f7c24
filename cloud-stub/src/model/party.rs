//! Tenants, plans, contracts and contract changes: plain data with validation.
//!
//! Money is integer minor units of the contract's currency (cents, yen). Times are UTC;
//! the contract's IANA time zone only decides where billing periods start.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use platen_protocol::{Id, SettingValue};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Default shipment unit for consumables delivery: one week.
pub const DEFAULT_SHIPMENT_UNIT_SECS: u64 = 7 * 86400;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    pub id: Id,
    pub name: String,
    /// The reseller that looks after this tenant; it may order migrations for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reseller: Option<Id>,
}

/// A reseller: orders plan migrations on behalf of the tenants assigned to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reseller {
    pub id: Id,
    pub name: String,
}

/// What the customer buys; decides the kind of compensation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServiceKind {
    /// Flat-rate printing: a monthly fee for up to `page_cap` pages.
    FlatRatePrint {
        monthly_fee: u64,
        page_cap: u64,
    },
    /// Automatic delivery of `item`; one shipment covers `shipment_unit_secs` of service.
    ConsumablesDelivery {
        monthly_fee: u64,
        item: String,
        #[serde(default = "default_shipment_unit")]
        shipment_unit_secs: u64,
    },
    Basic {
        monthly_fee: u64,
    },
}

fn default_shipment_unit() -> u64 {
    DEFAULT_SHIPMENT_UNIT_SECS
}

impl ServiceKind {
    pub fn monthly_fee(&self) -> u64 {
        match self {
            ServiceKind::FlatRatePrint { monthly_fee, .. }
            | ServiceKind::ConsumablesDelivery { monthly_fee, .. }
            | ServiceKind::Basic { monthly_fee } => *monthly_fee,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            ServiceKind::FlatRatePrint { .. } => "flat_rate_print",
            ServiceKind::ConsumablesDelivery { .. } => "consumables_delivery",
            ServiceKind::Basic { .. } => "basic",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub id: Id,
    pub name: String,
    pub service: ServiceKind,
    /// Plan groups this plan belongs to (`mono`, `color`, `tier:small`); migration
    /// rules can name a group instead of a plan.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// What the plan includes (`duplex`, `scan`, `color`): shown, not enforced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
    /// The device settings this plan needs (setting name → value), all required.
    #[serde(default)]
    pub config_template: BTreeMap<String, SettingValue>,
    /// Compensate faults whose cause is on the customer's side (its gateway down, its
    /// printer unreachable from its gateway). Off by default: the customer could
    /// otherwise cause the wait it is paid for.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub compensate_customer_side: bool,
}

impl Plan {
    pub fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("name must not be empty".into());
        }
        match &self.service {
            ServiceKind::ConsumablesDelivery {
                item,
                shipment_unit_secs,
                ..
            } => {
                if item.trim().is_empty() {
                    return Err("service.item must not be empty".into());
                }
                if *shipment_unit_secs == 0 {
                    return Err("service.shipment_unit_secs must be > 0".into());
                }
            }
            ServiceKind::FlatRatePrint { .. } | ServiceKind::Basic { .. } => {}
        }
        for g in self.groups.iter().chain(&self.features) {
            if g.is_empty()
                || g.len() > 64
                || !g
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_:.".contains(&b))
            {
                return Err(format!(
                    "group or feature {g:?}: 1-64 characters from a-z, 0-9, '-', '_', ':', '.'"
                ));
            }
        }
        if self.config_template.len() > platen_protocol::config::MAX_SETTINGS {
            return Err("config_template has too many settings".into());
        }
        Ok(())
    }
}

/// A contract as created; its current plan and settings follow from its changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contract {
    pub id: Id,
    pub tenant: Id,
    pub printers: Vec<Id>,
    pub plan: Id,
    pub effective_at: DateTime<Utc>,
    /// IANA zone, e.g. `Europe/Berlin`: billing periods are its calendar months.
    pub time_zone: String,
    /// ISO 4217 code; fees and credits are in its minor unit.
    pub currency: String,
    /// Minimum term in billing periods, renewed for the same length; none: month to
    /// month (the term ends with each period). Used by `end_of_term` migrations.
    #[serde(default)]
    pub term_months: Option<u32>,
    pub created_at: DateTime<Utc>,
}

impl Contract {
    pub fn tz(&self) -> Tz {
        self.time_zone.parse().unwrap_or(chrono_tz::UTC)
    }
}

pub fn parse_time_zone(s: &str) -> Result<Tz, String> {
    s.parse::<Tz>()
        .map_err(|_| format!("unknown IANA time zone {s:?}"))
}

pub fn check_currency(s: &str) -> Result<(), String> {
    if s.len() == 3 && s.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(format!(
            "currency {s:?} is not an ISO 4217 code (three capital letters)"
        ))
    }
}

/// What a contract change does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ChangeKind {
    Start,
    PlanChange {
        from: Id,
        to: Id,
    },
    SettingsChange {
        settings: BTreeMap<String, SettingValue>,
    },
}

/// One start or change of a contract, with everything needed to set it up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContractChange {
    /// `{contract}.{seq}`: stable, used in ledger keys.
    pub id: String,
    pub contract: Id,
    pub seq: u32,
    pub change: ChangeKind,
    /// T0: when the customer is entitled to the service as changed.
    pub effective_at: DateTime<Utc>,
    pub requested_at: DateTime<Utc>,
    /// The plan in force from this change on.
    pub plan: Id,
    /// The full desired settings from this change on (plan template + overrides).
    pub settings: BTreeMap<String, SettingValue>,
}

pub fn change_id(contract: &Id, seq: u32) -> String {
    format!("{contract}.{seq}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_json_shapes() {
        let p: Plan = serde_json::from_str(
            r#"{"id":"toner-s","name":"Toner S","service":{"kind":"consumables_delivery","monthly_fee":1500,"item":"TK-5240K"}}"#,
        )
        .unwrap();
        assert_eq!(
            p.service,
            ServiceKind::ConsumablesDelivery {
                monthly_fee: 1500,
                item: "TK-5240K".into(),
                shipment_unit_secs: DEFAULT_SHIPMENT_UNIT_SECS
            }
        );
        p.validate().unwrap();
        let bad = r#"{"id":"x","name":"X","service":{"kind":"flat_rate_print","monthly_fee":1,"page_cap":2,"extra":1}}"#;
        assert!(serde_json::from_str::<Plan>(bad).is_err());
        let neg = r#"{"id":"x","name":"X","service":{"kind":"basic","monthly_fee":-5}}"#;
        assert!(serde_json::from_str::<Plan>(neg).is_err());
    }

    #[test]
    fn zones_and_currencies() {
        assert!(parse_time_zone("Europe/Berlin").is_ok());
        assert!(parse_time_zone("Mars/Olympus").is_err());
        assert!(check_currency("EUR").is_ok());
        assert!(check_currency("eur").is_err());
        assert!(check_currency("EURO").is_err());
    }
}
