//! MQTT topics as types.
//!
//! | topic | direction | QoS / retained |
//! |---|---|---|
//! | `platen/v1/{tenant}/{printer}/config/desired` | cloud → agent | 1, retained |
//! | `platen/v1/{tenant}/{printer}/config/report` | agent → cloud | 1 |
//! | `platen/v1/{tenant}/{printer}/config/drift` | agent → cloud | 1 |
//! | `platen/v1/{tenant}/{printer}/telemetry` | agent → cloud | 1 |
//! | `platen/v1/{tenant}/{printer}/cmd/diag` | operator → agent | 1 (only if enabled) |
//! | `platen/v1/{tenant}/{printer}/cmd/diag/response` | agent → operator | 1 |
//! | `platen/v1/agents/{agent}/echo` | agent → itself (`diag` broker test) | 1 |
//! | `platen/v1/agents/{agent}/health` | agent → all | 1, retained; last will `down` |
//!
//! `agents` is reserved: it cannot be a tenant id. Parsing rejects wildcards,
//! empty levels and invalid ids, so a topic that parses is safe to publish on.

use crate::ids::{Id, IdError};
use std::fmt;
use std::str::FromStr;

/// Protocol major version carried in every topic.
pub const PROTOCOL_PREFIX: &str = "platen/v1";

/// A Platen topic.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    DesiredConfig { tenant: Id, printer: Id },
    ConfigReport { tenant: Id, printer: Id },
    ConfigDrift { tenant: Id, printer: Id },
    Telemetry { tenant: Id, printer: Id },
    DiagRequest { tenant: Id, printer: Id },
    DiagResponse { tenant: Id, printer: Id },
    AgentHealth { agent: Id },
    AgentEcho { agent: Id },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic {topic:?} is not under {PROTOCOL_PREFIX}/")]
    WrongPrefix { topic: String },
    #[error("topic {topic:?} has an unknown shape")]
    UnknownShape { topic: String },
    #[error("topic {topic:?}: invalid id: {source}")]
    InvalidId {
        topic: String,
        #[source]
        source: IdError,
    },
    #[error("topic {topic:?}: tenant id 'agents' is reserved")]
    ReservedTenant { topic: String },
}

impl Topic {
    pub fn desired(tenant: &Id, printer: &Id) -> Self {
        Topic::DesiredConfig {
            tenant: tenant.clone(),
            printer: printer.clone(),
        }
    }
    pub fn report(tenant: &Id, printer: &Id) -> Self {
        Topic::ConfigReport {
            tenant: tenant.clone(),
            printer: printer.clone(),
        }
    }
    pub fn telemetry(tenant: &Id, printer: &Id) -> Self {
        Topic::Telemetry {
            tenant: tenant.clone(),
            printer: printer.clone(),
        }
    }
    pub fn drift(tenant: &Id, printer: &Id) -> Self {
        Topic::ConfigDrift {
            tenant: tenant.clone(),
            printer: printer.clone(),
        }
    }
    pub fn diag_request(tenant: &Id, printer: &Id) -> Self {
        Topic::DiagRequest {
            tenant: tenant.clone(),
            printer: printer.clone(),
        }
    }
    pub fn diag_response(tenant: &Id, printer: &Id) -> Self {
        Topic::DiagResponse {
            tenant: tenant.clone(),
            printer: printer.clone(),
        }
    }
    pub fn echo(agent: &Id) -> Self {
        Topic::AgentEcho {
            agent: agent.clone(),
        }
    }
    pub fn health(agent: &Id) -> Self {
        Topic::AgentHealth {
            agent: agent.clone(),
        }
    }

    /// The subscription filter a cloud uses for every report of every tenant.
    pub fn all_reports_filter() -> String {
        format!("{PROTOCOL_PREFIX}/+/+/config/report")
    }

    /// The subscription filter for every printer's telemetry.
    pub fn all_telemetry_filter() -> String {
        format!("{PROTOCOL_PREFIX}/+/+/telemetry")
    }

    /// The subscription filter for every drift report.
    pub fn all_drift_filter() -> String {
        format!("{PROTOCOL_PREFIX}/+/+/config/drift")
    }

    /// The subscription filter for every agent's health.
    pub fn all_health_filter() -> String {
        format!("{PROTOCOL_PREFIX}/agents/+/health")
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topic::DesiredConfig { tenant, printer } => {
                write!(f, "{PROTOCOL_PREFIX}/{tenant}/{printer}/config/desired")
            }
            Topic::ConfigReport { tenant, printer } => {
                write!(f, "{PROTOCOL_PREFIX}/{tenant}/{printer}/config/report")
            }
            Topic::ConfigDrift { tenant, printer } => {
                write!(f, "{PROTOCOL_PREFIX}/{tenant}/{printer}/config/drift")
            }
            Topic::Telemetry { tenant, printer } => {
                write!(f, "{PROTOCOL_PREFIX}/{tenant}/{printer}/telemetry")
            }
            Topic::DiagRequest { tenant, printer } => {
                write!(f, "{PROTOCOL_PREFIX}/{tenant}/{printer}/cmd/diag")
            }
            Topic::DiagResponse { tenant, printer } => {
                write!(f, "{PROTOCOL_PREFIX}/{tenant}/{printer}/cmd/diag/response")
            }
            Topic::AgentHealth { agent } => write!(f, "{PROTOCOL_PREFIX}/agents/{agent}/health"),
            Topic::AgentEcho { agent } => write!(f, "{PROTOCOL_PREFIX}/agents/{agent}/echo"),
        }
    }
}

impl FromStr for Topic {
    type Err = TopicError;

    fn from_str(topic: &str) -> Result<Self, Self::Err> {
        let rest = topic
            .strip_prefix(PROTOCOL_PREFIX)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| TopicError::WrongPrefix {
                topic: topic.into(),
            })?;
        let levels: Vec<&str> = rest.split('/').collect();
        let id = |s: &str| {
            Id::new(s).map_err(|source| TopicError::InvalidId {
                topic: topic.into(),
                source,
            })
        };
        let shape = || TopicError::UnknownShape {
            topic: topic.into(),
        };
        match levels.as_slice() {
            ["agents", agent, "health"] => Ok(Topic::AgentHealth { agent: id(agent)? }),
            ["agents", agent, "echo"] => Ok(Topic::AgentEcho { agent: id(agent)? }),
            ["agents", ..] => Err(TopicError::ReservedTenant {
                topic: topic.into(),
            }),
            [tenant, printer, "config", "desired"] => Ok(Topic::DesiredConfig {
                tenant: id(tenant)?,
                printer: id(printer)?,
            }),
            [tenant, printer, "config", "report"] => Ok(Topic::ConfigReport {
                tenant: id(tenant)?,
                printer: id(printer)?,
            }),
            [tenant, printer, "config", "drift"] => Ok(Topic::ConfigDrift {
                tenant: id(tenant)?,
                printer: id(printer)?,
            }),
            [tenant, printer, "telemetry"] => Ok(Topic::Telemetry {
                tenant: id(tenant)?,
                printer: id(printer)?,
            }),
            [tenant, printer, "cmd", "diag"] => Ok(Topic::DiagRequest {
                tenant: id(tenant)?,
                printer: id(printer)?,
            }),
            [tenant, printer, "cmd", "diag", "response"] => Ok(Topic::DiagResponse {
                tenant: id(tenant)?,
                printer: id(printer)?,
            }),
            _ => Err(shape()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Id {
        Id::new(s).unwrap()
    }

    #[test]
    fn every_topic_round_trips() {
        let all = [
            Topic::desired(&id("acme"), &id("p1")),
            Topic::report(&id("acme"), &id("p1")),
            Topic::telemetry(&id("acme"), &id("p1")),
            Topic::drift(&id("acme"), &id("p1")),
            Topic::diag_request(&id("acme"), &id("p1")),
            Topic::diag_response(&id("acme"), &id("p1")),
            Topic::health(&id("gw-7")),
            Topic::echo(&id("gw-7")),
        ];
        for t in all {
            let s = t.to_string();
            assert_eq!(s.parse::<Topic>().unwrap(), t, "{s}");
        }
    }

    #[test]
    fn formats_as_documented() {
        assert_eq!(
            Topic::desired(&id("acme"), &id("p1")).to_string(),
            "platen/v1/acme/p1/config/desired"
        );
        assert_eq!(
            Topic::health(&id("gw")).to_string(),
            "platen/v1/agents/gw/health"
        );
    }

    #[test]
    fn rejects_wildcards_and_bad_shapes() {
        type Check = fn(&TopicError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("platen/v1/+/p1/config/desired", |e| {
                matches!(e, TopicError::InvalidId { .. })
            }),
            ("platen/v1/acme/#", |e| {
                matches!(e, TopicError::UnknownShape { .. })
            }),
            ("platen/v1/acme/p#/config/report", |e| {
                matches!(e, TopicError::InvalidId { .. })
            }),
            ("platen/v1//p1/config/desired", |e| {
                matches!(e, TopicError::InvalidId { .. })
            }),
            ("platen/v2/acme/p1/config/desired", |e| {
                matches!(e, TopicError::WrongPrefix { .. })
            }),
            ("platen/v1/acme/p1/config", |e| {
                matches!(e, TopicError::UnknownShape { .. })
            }),
            ("platen/v1/acme/p1/config/desired/x", |e| {
                matches!(e, TopicError::UnknownShape { .. })
            }),
            ("platen/v1/agents/p1/config/desired", |e| {
                matches!(e, TopicError::ReservedTenant { .. })
            }),
            ("platen/v1/agents/+/health", |e| {
                matches!(e, TopicError::InvalidId { .. })
            }),
            ("", |e| matches!(e, TopicError::WrongPrefix { .. })),
        ];
        for (topic, check) in cases {
            let err = topic.parse::<Topic>().unwrap_err();
            assert!(check(&err), "{topic}: {err:?}");
        }
    }

    #[test]
    fn filters_have_the_expected_shape() {
        assert_eq!(Topic::all_reports_filter(), "platen/v1/+/+/config/report");
        assert_eq!(Topic::all_health_filter(), "platen/v1/agents/+/health");
    }
}
