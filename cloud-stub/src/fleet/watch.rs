//! The sweep that reports printers gone quiet: every printer of every contract is
//! judged by [`super::stale`] from its newest stored reading, and each quiet spell is
//! written once to the webhook outbox as `printer.stale`.
//!
//! The event's id names the spell (contract, printer, newest reading), so every
//! instance running the sweep writes the same event and the outbox keeps one; a
//! reading after it ends the spell. What was written is remembered per printer, so
//! a printer that stays quiet is not written again on every sweep.

use super::stale;
use crate::model::{printer_stale_event, Contract, Quiet};
use crate::store::{Store, StoreError};
use chrono::{DateTime, Utc};
use platen_protocol::Id;
use std::collections::HashMap;
use std::time::Duration;
use tracing::info;

pub(crate) struct StaleWatch {
    store: Store,
    stale_after: Duration,
    /// Per (contract, printer): the id of the `printer.stale` event written for its
    /// current quiet spell.
    written: HashMap<(Id, Id), String>,
}

impl StaleWatch {
    pub fn new(store: Store, stale_after: Duration) -> StaleWatch {
        StaleWatch {
            store,
            stale_after,
            written: HashMap::new(),
        }
    }

    /// How often to sweep: a quarter of `stale_after`, from one second to a minute.
    pub fn every(&self) -> Duration {
        (self.stale_after / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
    }

    /// How long after the instance starts the first sweep waits: agents deliver what
    /// their outboxes held while the cloud was away, which must not count as quiet.
    pub fn grace(&self) -> Duration {
        self.stale_after.min(Duration::from_secs(600))
    }

    /// Judge every printer under contract at `now`; returns the quiet spells written
    /// now (not those written before).
    pub fn sweep(&mut self, now: DateTime<Utc>) -> Result<Vec<Quiet>, StoreError> {
        let mut out = Vec::new();
        for c in self.store.contracts()? {
            for p in &c.printers {
                let key = (c.id.clone(), p.clone());
                let Some(q) = self.judge(&c, p, now)? else {
                    self.written.remove(&key);
                    continue;
                };
                let event = printer_stale_event(&q);
                if self.written.get(&key) == Some(&event.id) {
                    continue;
                }
                if self.store.add_events(std::slice::from_ref(&event), now)? > 0 {
                    info!(contract = %q.contract, printer = %q.printer, cause = q.cause(),
                        last_reading = ?q.last_reading, "printer stale");
                    out.push(q);
                }
                self.written.insert(key, event.id);
            }
        }
        Ok(out)
    }

    fn judge(
        &self,
        c: &Contract,
        printer: &Id,
        now: DateTime<Utc>,
    ) -> Result<Option<Quiet>, StoreError> {
        let since = c.effective_at.max(c.created_at);
        let last = self.store.latest_sample(&c.tenant, printer)?;
        let Some(stale_at) = stale::stale_since(now, last, since, self.stale_after) else {
            return Ok(None);
        };
        let seen = self.store.printer_seen(&c.tenant, printer)?;
        Ok(Some(Quiet {
            tenant: c.tenant.clone(),
            contract: c.id.clone(),
            printer: printer.clone(),
            last_reading: last,
            stale_at,
            stale_after: self.stale_after,
            agent: seen.as_ref().map(|s| s.agent.clone()),
            answering: seen.map(|s| s.reachable),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Sample, SuppliesState, Tenant};
    use crate::store::Created;

    fn contract(
        id: &str,
        printer: &str,
        at: DateTime<Utc>,
    ) -> (Contract, crate::model::ContractChange) {
        let c: Contract = serde_json::from_value(serde_json::json!({
            "id": id, "tenant": "acme", "printers": [printer], "plan": "basic",
            "effective_at": at, "time_zone": "UTC", "currency": "EUR", "created_at": at,
        }))
        .unwrap();
        let start = serde_json::from_value(serde_json::json!({
            "id": format!("{id}.1"), "contract": id, "seq": 1, "change": {"kind": "start"},
            "effective_at": at, "requested_at": at, "plan": "basic", "settings": {},
        }))
        .unwrap();
        (c, start)
    }

    fn sample(at: DateTime<Utc>) -> Sample {
        Sample {
            read_at: at,
            message_id: format!("gw:p1:t{}", at.timestamp()),
            counter: Some("total".into()),
            value: Some(1),
            supplies: SuppliesState::Ok,
            others: Vec::new(),
        }
    }

    /// A quiet spell is written once however often it is swept, by however many
    /// watches (instances); a reading ends it and the next spell is a new event.
    #[test]
    fn each_quiet_spell_is_one_event() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sled(dir.path()).unwrap();
        store
            .add_tenant(&Tenant {
                id: "acme".parse().unwrap(),
                name: "Acme".into(),
                reseller: None,
            })
            .unwrap();
        let t0 = Utc::now() - chrono::Duration::hours(10);
        let (c, start) = contract("c1", "p1", t0);
        assert_eq!(
            store.create_contract(&c, &start, false).unwrap(),
            Created::New
        );
        let (acme, p1) = (c.tenant.clone(), c.printers[0].clone());
        let hour = Duration::from_secs(3600);
        let mut a = StaleWatch::new(store.clone(), hour);
        let mut b = StaleWatch::new(store.clone(), hour);
        let at = |h: i64| t0 + chrono::Duration::hours(h);

        // Half an hour in: not yet. Then never reported: stale an hour after the start.
        assert!(a
            .sweep(t0 + chrono::Duration::minutes(30))
            .unwrap()
            .is_empty());
        let q = a.sweep(at(2)).unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!((q[0].cause(), q[0].stale_at), ("never_reported", at(1)));
        assert!(a.sweep(at(2)).unwrap().is_empty(), "swept again");
        assert!(b.sweep(at(3)).unwrap().is_empty(), "another instance");

        // A reading at +3 h ends the spell; quiet again from +4 h: a second event.
        store.record_sample(&acme, &p1, &sample(at(3))).unwrap();
        assert!(a.sweep(at(3)).unwrap().is_empty());
        let q = a.sweep(at(5)).unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!(
            (q[0].cause(), q[0].last_reading, q[0].stale_at),
            ("agent_silent", Some(at(3)), at(4))
        );
        assert!(b.sweep(at(5)).unwrap().is_empty());

        let events = store.webhook_events(0, 100).unwrap();
        let ids: Vec<&str> = events.iter().map(|(_, e)| e.id.as_str()).collect();
        assert_eq!(ids.len(), 2, "{ids:?}");
        assert_eq!(ids[0], "printer.stale/c1/p1/never");
        assert!(ids[1].starts_with("printer.stale/c1/p1/20"), "{ids:?}");
        let seqs: Vec<u64> = events.iter().map(|(_, e)| e.seq).collect();
        assert_eq!(seqs, [1, 2]);
        assert_eq!(events[1].1.data["cause"], "agent_silent");
        assert_eq!(events[1].1.occurred_at, at(4));
    }
}
