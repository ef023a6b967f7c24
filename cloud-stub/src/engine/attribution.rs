//! Who caused a fault: the provider's side (Platen, the broker, the service provider)
//! or the customer's (its gateway switched off, its printer unreachable from its own
//! gateway). Pure: the engine passes what the cloud last saw of the agent and the
//! printer.
//!
//! A customer-side fault is compensated only when the plan says so
//! (`compensate_customer_side`, off by default): otherwise a tenant could stop its own
//! gateway, request a change, and be paid for the wait it caused.

use crate::model::{AgentSeen, Cause, PrinterSeen};
use chrono::{DateTime, Utc};
use platen_protocol::Id;

/// What is known when a config fault is found.
pub struct Facts<'a> {
    /// When the version that failed was published.
    pub published_at: DateTime<Utc>,
    /// The printer's agent and what it last said on its health topic.
    pub agent: Option<(&'a Id, Option<&'a AgentSeen>)>,
    pub printer: Option<&'a PrinterSeen>,
    /// The codes of the failing settings of the report, if one came.
    pub failing_codes: &'a [u16],
}

/// The cause of a config fault.
pub fn config_fault(f: &Facts) -> Cause {
    let at = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    if let Some((agent, Some(seen))) = f.agent {
        if !seen.up && seen.since <= f.published_at {
            return Cause::Customer {
                evidence: format!(
                    "agent {agent} was down since {} ({}), before the config was published at {}",
                    at(seen.since),
                    seen.reason.as_deref().unwrap_or("no reason given"),
                    at(f.published_at)
                ),
            };
        }
    }
    if !f.failing_codes.is_empty() && f.failing_codes.iter().all(|c| *c == 504) {
        return Cause::Customer {
            evidence: "the printer did not answer its own gateway (504 for every failing setting)"
                .into(),
        };
    }
    if let Some(p) = f.printer {
        if !p.reachable && p.since <= f.published_at {
            return Cause::Customer {
                evidence: format!(
                    "printer unreachable from its gateway {} since {}, before the config was published at {}",
                    p.agent,
                    at(p.since),
                    at(f.published_at)
                ),
            };
        }
    }
    Cause::Provider
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn causes_table() {
        let gw: Id = "gw-1".parse().unwrap();
        let published = t("2026-03-01T10:00:00Z");
        let down_before = AgentSeen {
            up: false,
            since: t("2026-03-01T09:00:00Z"),
            reason: None,
        };
        let down_after = AgentSeen {
            up: false,
            since: t("2026-03-01T10:00:05Z"),
            reason: None,
        };
        let up = AgentSeen {
            up: true,
            since: t("2026-03-01T08:00:00Z"),
            reason: None,
        };
        let unreachable = PrinterSeen {
            agent: gw.clone(),
            reachable: false,
            since: t("2026-03-01T09:30:00Z"),
        };
        let reachable = PrinterSeen {
            reachable: true,
            ..unreachable.clone()
        };
        let cases: Vec<(Facts, bool)> = vec![
            // (facts, customer side?)
            (
                Facts {
                    published_at: published,
                    agent: Some((&gw, Some(&down_before))),
                    printer: None,
                    failing_codes: &[],
                },
                true,
            ),
            // Went down after the publication: it had the chance; the cloud cannot
            // tell who is at fault, so the provider carries it.
            (
                Facts {
                    published_at: published,
                    agent: Some((&gw, Some(&down_after))),
                    printer: None,
                    failing_codes: &[],
                },
                false,
            ),
            (
                Facts {
                    published_at: published,
                    agent: Some((&gw, Some(&up))),
                    printer: None,
                    failing_codes: &[],
                },
                false,
            ),
            // Never heard of the agent: no evidence against the customer.
            (
                Facts {
                    published_at: published,
                    agent: Some((&gw, None)),
                    printer: None,
                    failing_codes: &[],
                },
                false,
            ),
            (
                Facts {
                    published_at: published,
                    agent: None,
                    printer: None,
                    failing_codes: &[504, 504],
                },
                true,
            ),
            (
                Facts {
                    published_at: published,
                    agent: None,
                    printer: None,
                    failing_codes: &[504, 403],
                },
                false,
            ),
            (
                Facts {
                    published_at: published,
                    agent: Some((&gw, Some(&up))),
                    printer: Some(&unreachable),
                    failing_codes: &[],
                },
                true,
            ),
            (
                Facts {
                    published_at: published,
                    agent: Some((&gw, Some(&up))),
                    printer: Some(&reachable),
                    failing_codes: &[],
                },
                false,
            ),
        ];
        for (i, (f, customer)) in cases.iter().enumerate() {
            let c = config_fault(f);
            assert_eq!(c.is_customer(), *customer, "case {i}: {c:?}");
        }
        let Cause::Customer { evidence } = config_fault(&cases[0].0) else {
            panic!()
        };
        assert!(
            evidence.contains("gw-1 was down since 2026-03-01T09:00:00Z"),
            "{evidence}"
        );
    }
}
