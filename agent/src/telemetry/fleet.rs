//! Polling a whole fleet: every printer once per interval, many at a time, over the
//! one shared UDP socket.
//!
//! A sweep starts one task per printer; a semaphore lets `concurrency` of them poll
//! at once, each with at most two requests in flight ([`crate::telemetry::poll`]). An
//! unreachable printer holds one permit for its timeout × (retries + 1) the first
//! time; once it is known to be down it is probed with one request without retries,
//! outside the concurrency limit, so dead printers add one timeout to a sweep and
//! take no permit from the printers that answer. After the poll, the printer's
//! [`Tracker`](crate::telemetry::Tracker) decides whether a message is due; due
//! messages go into the durable outbox with their sequence number. Drift checks ride
//! on the same sweep when they are due.

use crate::apply::drift::DriftCheck;
use crate::observe::status::Board;
use crate::snmp::printer_mib::{decode, TelemetrySpec};
use crate::snmp::Snmp;
use crate::store::{OutboxEntry, SeqKind, Store};
use crate::telemetry::poll::{collect, probe};
use crate::telemetry::{Thresholds, Tracker};
use chrono::Utc;
use platen_protocol::telemetry::{SupplyClass, SupplyState};
use platen_protocol::{codec, Id, Telemetry, Topic};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, error, info};

/// One printer as the fleet poller sees it.
pub struct FleetPrinter<S> {
    pub id: Id,
    pub tenant: Id,
    pub snmp: S,
    pub spec: Arc<TelemetrySpec>,
    pub device: Option<u32>,
    pub tracker: Tracker,
    pub drift: Option<DriftCheck>,
    pub next_drift: Option<Instant>,
}

/// What one sweep did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepStats {
    pub printers: usize,
    pub answered: usize,
    pub unanswered: usize,
    pub messages: usize,
    pub elapsed: Duration,
}

pub struct Fleet<S> {
    pub printers: Vec<FleetPrinter<S>>,
    pub concurrency: usize,
    pub thresholds: Thresholds,
    pub drift_interval: Option<Duration>,
    /// Where messages go; None polls without queueing (benchmarks).
    pub store: Option<Store>,
    pub board: Board,
    /// Queue telemetry messages (false: the sweep only serves drift checks).
    pub telemetry: bool,
}

struct Outcome<S> {
    printer: FleetPrinter<S>,
    answered: bool,
    queued: bool,
}

impl<S: Snmp + 'static> Fleet<S> {
    /// Poll every printer once.
    pub async fn sweep(&mut self) -> SweepStats {
        self.sweep_some(|_| true).await
    }

    /// Poll the printers `which` picks, once.
    pub async fn sweep_some(&mut self, which: impl Fn(&Id) -> bool) -> SweepStats {
        let started = Instant::now();
        let sem = Arc::new(Semaphore::new(self.concurrency.max(1)));
        let mut set = JoinSet::new();
        let (picked, rest): (Vec<_>, Vec<_>) = self.printers.drain(..).partition(|p| which(&p.id));
        self.printers = rest;
        let n = picked.len();
        for p in picked {
            let sem = sem.clone();
            let (th, store, board, drift_every, telemetry) = (
                self.thresholds.clone(),
                self.store.clone(),
                self.board.clone(),
                self.drift_interval,
                self.telemetry,
            );
            set.spawn(async move {
                poll_one(p, &sem, &th, store.as_ref(), &board, drift_every, telemetry).await
            });
        }
        let mut stats = SweepStats {
            printers: n,
            ..Default::default()
        };
        while let Some(r) = set.join_next().await {
            match r {
                Ok(o) => {
                    if o.answered {
                        stats.answered += 1;
                    } else {
                        stats.unanswered += 1;
                    }
                    stats.messages += usize::from(o.queued);
                    self.printers.push(o.printer);
                }
                // A poll task cannot panic on printer data (decoding is total); if
                // one did, that printer drops out and the error says which sweep.
                Err(e) => {
                    error!(error = %e, "a printer's poll task failed; it is no longer polled")
                }
            }
        }
        stats.elapsed = started.elapsed();
        stats
    }

    /// Sweep every `interval` until `stop`; between sweeps, poll at once the printers
    /// `pokes` names (an SNMP notification came from them: [`crate::telemetry::traps`]).
    pub async fn run(
        mut self,
        interval: Duration,
        mut pokes: Option<mpsc::Receiver<Vec<Id>>>,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            let started = Instant::now();
            let s = self.sweep().await;
            info!(
                printers = s.printers,
                answered = s.answered,
                unanswered = s.unanswered,
                messages = s.messages,
                ms = s.elapsed.as_millis() as u64,
                "telemetry sweep"
            );
            let next = tokio::time::Instant::from_std(started + interval);
            loop {
                let poke = async {
                    match pokes.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep_until(next) => break,
                    _ = stop.changed() => return,
                    got = poke => match got {
                        Some(ids) => {
                            let s = self.sweep_some(|id| ids.contains(id)).await;
                            info!(
                                printers = s.printers,
                                answered = s.answered,
                                messages = s.messages,
                                ms = s.elapsed.as_millis() as u64,
                                "polled on an SNMP notification"
                            );
                        }
                        // The listener stopped: sweeps go on.
                        None => pokes = None,
                    },
                }
                if *stop.borrow() {
                    return;
                }
            }
            if *stop.borrow() {
                return;
            }
        }
    }
}

async fn poll_one<S: Snmp>(
    mut p: FleetPrinter<S>,
    sem: &Arc<Semaphore>,
    th: &Thresholds,
    store: Option<&Store>,
    board: &Board,
    drift_every: Option<Duration>,
    telemetry: bool,
) -> Outcome<S> {
    // A printer known to be down gets one request without retries first, outside
    // the concurrency limit (one datagram in flight, no permit held while it waits).
    let probed = if p.tracker.is_stale() {
        probe(&p.snmp).await
    } else {
        Ok(())
    };
    let _permit = match probed {
        Ok(()) => match sem.clone().acquire_owned().await {
            Ok(permit) => Some(permit),
            Err(_) => {
                return Outcome {
                    printer: p,
                    answered: false,
                    queued: false,
                }
            }
        },
        Err(_) => None,
    };
    let polled = match probed {
        Ok(()) => collect(&p.snmp, &p.spec, &mut p.device).await,
        Err(e) => Err(e),
    };
    let now = Utc::now();
    let answered = polled.is_ok();
    let result = polled
        .map(|(d, values)| decode(&values, d, &p.spec, now))
        .map_err(|e| e.to_string());
    let msg = p.tracker.observe(result, now, th);
    update_board(board, &p, now);
    let mut queued = false;
    if let (Some(msg), Some(store), true) = (&msg, store, telemetry) {
        queued = queue(store, &p, msg).await;
        if !queued {
            p.tracker.unsent(msg.seq);
        }
    }
    // Drift: only on a printer that just answered, when due.
    if let (true, Some(every), Some(store)) = (answered, drift_every, store) {
        let due = p.next_drift.is_none_or(|t| Instant::now() >= t);
        if due {
            p.next_drift = Some(Instant::now() + every);
            if let Some(check) = p.drift.as_mut() {
                match check.run(&p.snmp, &mut p.device, store).await {
                    Ok(Some(_)) => board.printer(p.id.as_str(), |s| s.last_drift_at = Some(now)),
                    Ok(None) => {}
                    Err(e) => debug!(printer = %p.id, error = %e, "drift check skipped"),
                }
            }
        }
    }
    Outcome {
        printer: p,
        answered,
        queued,
    }
}

async fn queue<S>(store: &Store, p: &FleetPrinter<S>, msg: &Telemetry) -> bool {
    let payload = String::from_utf8(codec::encode(msg)).unwrap_or_default();
    let entry = OutboxEntry::new(Topic::telemetry(&p.tenant, &p.id).to_string(), payload);
    match store
        .queue(SeqKind::Telemetry, &p.id, msg.seq, &entry)
        .await
    {
        Ok(_) => {
            if !msg.events.is_empty() {
                let names: Vec<&str> = msg.events.iter().map(|e| e.name()).collect();
                info!(printer = %p.id, seq = msg.seq, events = ?names, "telemetry events queued");
            }
            true
        }
        Err(e) => {
            let events: Vec<&str> = msg.events.iter().map(|e| e.name()).collect();
            error!(printer = %p.id, seq = msg.seq, events = ?events, error = %e, "could not queue telemetry");
            false
        }
    }
}

fn update_board<S>(board: &Board, p: &FleetPrinter<S>, now: chrono::DateTime<Utc>) {
    let last = p.tracker.last_reading();
    let stale = p.tracker.is_stale();
    board.printer(p.id.as_str(), |s| {
        s.reachable = Some(!stale);
        s.telemetry_seq = p.tracker.seq();
        if stale {
            s.stale_since = s.stale_since.or(Some(now));
        } else {
            s.stale_since = None;
        }
        if let Some(r) = last {
            s.last_good_at = Some(r.read_at);
            s.model = r.identity.model.clone();
            s.serial = r.identity.serial.clone();
            s.pages = r.billing_value();
            s.errors = r.status.errors.clone();
            s.supply_warnings = r
                .supplies
                .iter()
                .filter(|x| {
                    matches!(
                        (x.class, x.state),
                        (SupplyClass::Consumed, SupplyState::Low | SupplyState::Empty)
                            | (
                                SupplyClass::Receptacle,
                                SupplyState::AlmostFull | SupplyState::Full
                            )
                    )
                })
                .map(|x| format!("{}: {}", x.description, state_name(x.state)))
                .collect();
        }
    });
}

/// A supply state's wire name (`almost_full`, …).
pub fn state_name(s: SupplyState) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snmp::fake::FakePrinter;
    use std::sync::atomic::Ordering::SeqCst;

    /// Requests of a full poll: GETs and walks.
    fn requests(f: &FakePrinter) -> u32 {
        *f.gets.lock().unwrap() + f.walks.load(SeqCst)
    }

    #[tokio::test]
    async fn a_printer_known_to_be_down_costs_one_request_without_retries() {
        let snmp = Arc::new(FakePrinter::standard());
        snmp.down.store(true, SeqCst);
        let id: Id = "p1".parse().unwrap();
        let mut fleet = Fleet {
            printers: vec![FleetPrinter {
                id: id.clone(),
                tenant: "acme".parse().unwrap(),
                snmp: snmp.clone(),
                spec: Arc::new(TelemetrySpec::default()),
                device: None,
                tracker: Tracker::new("gw".parse().unwrap(), id, 0),
                drift: None,
                next_drift: None,
            }],
            concurrency: 4,
            thresholds: Thresholds::default(),
            drift_interval: None,
            store: None,
            board: Board::new("gw", 1),
            telemetry: false,
        };
        // First poll: not known to be down yet, the full poll with its retries.
        assert_eq!(fleet.sweep().await.unanswered, 1);
        let first = requests(&snmp);
        assert!(first >= 1);
        assert_eq!(snmp.once.load(SeqCst), 0);
        // Known to be down: one probe, nothing else.
        assert_eq!(fleet.sweep().await.unanswered, 1);
        assert_eq!(snmp.once.load(SeqCst), 1);
        assert_eq!(requests(&snmp), first, "no full poll while down");
        // Back: the probe answers and the full poll follows in the same sweep.
        snmp.down.store(false, SeqCst);
        assert_eq!(fleet.sweep().await.answered, 1);
        assert_eq!(snmp.once.load(SeqCst), 2);
        assert!(requests(&snmp) > first);
    }
}
