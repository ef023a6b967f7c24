//! `platen-printer-sim`: a simulated network printer that speaks SNMP.
//!
//! It serves a Printer-MIB subset (system group, hrDevice/hrPrinter, prtGeneral,
//! prtMarker page counter, supplies, alerts), writable where Platen's default profile
//! writes, with SET type/range checks and two-phase commit (async-snmp's agent).
//! Its data can come from an snmprec recording of a real printer instead.
//!
//! Fault knobs ([`Faults`]), settable at start and while running:
//! read-only objects (SET → notWritable), delayed responses, dropped requests (the
//! first N are never answered), stale read-backs (N GETs after a SET still return the
//! old value), a reboot (sysUpTime restarts, unsaved values revert), and a page
//! counter that advances with time. One process can run many printers. A recording's
//! sysUpTime plays back: it advances from the recorded value, and a reboot restarts
//! it from 0 (so reboot detection can be tested on real printers' data).

pub mod snmprec;

use async_snmp::agent::Agent;
use async_snmp::handler::{
    BoxFuture, GetNextResult, GetResult, HandlerResult, MibHandler, PreparedSet, RequestContext,
    SetCommitResult, SetTestError, SetTestResult, SetUndoResult,
};
use async_snmp::{Oid, Value, VarBind};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub const SYS_UPTIME: &str = "1.3.6.1.2.1.1.3.0";
pub const PAGE_COUNTER: &str = "1.3.6.1.2.1.43.10.2.1.4.1.1";

pub fn oid(s: &str) -> Oid {
    let arcs: Vec<u32> = s.split('.').filter_map(|a| a.parse().ok()).collect();
    Oid::from(arcs)
}

/// What a writable object accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Constraint {
    Text { max_len: usize },
    Integer { min: i32, max: i32 },
}

/// Fault knobs.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Objects that refuse SET with notWritable even though they are writable.
    pub read_only: HashSet<Oid>,
    /// Delay before every response.
    pub delay: Duration,
    /// Leave this many requests unanswered, then answer normally.
    pub drop_first: u32,
    /// After a SET, this many GETs of the object still return the old value.
    pub stale_reads: u32,
    /// Pages added to the page counter per minute.
    pub pages_per_minute: u32,
}

struct State {
    values: BTreeMap<Oid, Value>,
    initial: BTreeMap<Oid, Value>,
    writable: HashMap<Oid, Constraint>,
    faults: Faults,
    booted: Instant,
    /// The page counter is `page_base` + pages printed since `counter_epoch`.
    counter_epoch: Instant,
    page_base: u32,
    stale: HashMap<Oid, (u32, Value)>,
    requests: u64,
    sets: u64,
}

/// One simulated printer's data and behaviour; cheap to clone (shared state).
#[derive(Clone)]
pub struct SimPrinter {
    state: Arc<Mutex<State>>,
}

/// An OCTET STRING value from text.
pub fn text(s: &str) -> Value {
    Value::OctetString(Bytes::from(s.to_string()))
}

/// The default MIB for a printer named `name`. hrDeviceIndex is 1.
pub fn default_mib(name: &str) -> BTreeMap<Oid, Value> {
    let mut m = BTreeMap::new();
    let mut put = |o: &str, v: Value| {
        m.insert(oid(o), v);
    };
    put(
        "1.3.6.1.2.1.1.1.0",
        text("Platen SimPrinter 1000; firmware 1.0.0"),
    );
    put(
        "1.3.6.1.2.1.1.2.0",
        Value::ObjectIdentifier(oid("1.3.6.1.4.1.99999.1.1")),
    );
    put(SYS_UPTIME, Value::TimeTicks(0));
    put("1.3.6.1.2.1.1.4.0", text(""));
    put("1.3.6.1.2.1.1.5.0", text(name));
    put("1.3.6.1.2.1.1.6.0", text("Unknown"));
    // HOST-RESOURCES-MIB: one printer device.
    put("1.3.6.1.2.1.25.3.2.1.1.1", Value::Integer(1));
    put(
        "1.3.6.1.2.1.25.3.2.1.2.1",
        Value::ObjectIdentifier(oid("1.3.6.1.2.1.25.3.1.5")),
    );
    put("1.3.6.1.2.1.25.3.2.1.3.1", text("Platen SimPrinter 1000"));
    put("1.3.6.1.2.1.25.3.2.1.5.1", Value::Integer(2)); // hrDeviceStatus running
    put("1.3.6.1.2.1.25.3.5.1.1.1", Value::Integer(3)); // hrPrinterStatus idle
    put(
        "1.3.6.1.2.1.25.3.5.1.2.1",
        Value::OctetString(Bytes::from_static(&[0])),
    ); // no errors
       // Printer-MIB prtGeneralTable, hrDeviceIndex 1.
    put("1.3.6.1.2.1.43.5.1.1.2.1", Value::Integer(1));
    put("1.3.6.1.2.1.43.5.1.1.3.1", Value::Integer(3)); // prtGeneralReset notResetting (read-only here)
    put("1.3.6.1.2.1.43.5.1.1.4.1", text(""));
    put("1.3.6.1.2.1.43.5.1.1.5.1", text(""));
    put("1.3.6.1.2.1.43.5.1.1.6.1", Value::Integer(1));
    put("1.3.6.1.2.1.43.5.1.1.13.1", Value::Integer(3));
    put("1.3.6.1.2.1.43.5.1.1.14.1", Value::Integer(3));
    put("1.3.6.1.2.1.43.5.1.1.16.1", text(name));
    put("1.3.6.1.2.1.43.5.1.1.17.1", text(&format!("SIM-{name}")));
    // prtMarker: page counter in impressions.
    put("1.3.6.1.2.1.43.10.2.1.3.1.1", Value::Integer(7));
    put(PAGE_COUNTER, Value::Counter32(1000));
    // prtMarkerSupplies: black toner.
    put("1.3.6.1.2.1.43.11.1.1.4.1.1", Value::Integer(3)); // class: consumed
    put("1.3.6.1.2.1.43.11.1.1.5.1.1", Value::Integer(3)); // type: toner
    put(
        "1.3.6.1.2.1.43.11.1.1.6.1.1",
        text("Black Toner Cartridge SIM-TK1"),
    );
    put("1.3.6.1.2.1.43.11.1.1.7.1.1", Value::Integer(19)); // percent
    put("1.3.6.1.2.1.43.11.1.1.8.1.1", Value::Integer(100));
    put("1.3.6.1.2.1.43.11.1.1.9.1.1", Value::Integer(80));
    // prtInputTable: a paper tray with A4 and an empty manual feed.
    for (row, kind, name, max, level) in [(1, 3, "Tray 1", 250, 200), (2, 5, "Bypass", 50, 0)] {
        let col = |c: u32| format!("1.3.6.1.2.1.43.8.2.1.{c}.1.{row}");
        put(&col(2), Value::Integer(kind)); // prtInputType
        put(&col(8), Value::Integer(8)); // capacity in sheets
        put(&col(9), Value::Integer(max));
        put(&col(10), Value::Integer(level));
        put(&col(12), text("A4"));
        put(&col(13), text(name));
    }
    // prtAlertTable: one informational alert.
    put("1.3.6.1.2.1.43.18.1.1.2.1.1", Value::Integer(4)); // severity: warning
    put("1.3.6.1.2.1.43.18.1.1.4.1.1", Value::Integer(11)); // group: markerSupplies
    put("1.3.6.1.2.1.43.18.1.1.7.1.1", Value::Integer(1104)); // code: markerTonerAlmostEmpty
    put("1.3.6.1.2.1.43.18.1.1.8.1.1", text("Toner low"));
    m
}

/// The objects Platen's default profile writes, with the constraints of RFC 3805.
/// `device` is the hrDeviceIndex.
pub fn default_writable(device: u32) -> HashMap<Oid, Constraint> {
    let mut w = HashMap::new();
    for o in [
        "1.3.6.1.2.1.1.4.0",
        "1.3.6.1.2.1.1.5.0",
        "1.3.6.1.2.1.1.6.0",
    ] {
        w.insert(oid(o), Constraint::Text { max_len: 255 });
    }
    let dev = |col: u32| oid(&format!("1.3.6.1.2.1.43.5.1.1.{col}.{device}"));
    w.insert(dev(2), Constraint::Integer { min: 1, max: 65535 });
    w.insert(dev(4), Constraint::Text { max_len: 127 });
    w.insert(dev(5), Constraint::Text { max_len: 127 });
    w.insert(dev(6), Constraint::Integer { min: 1, max: 65535 });
    w.insert(dev(13), Constraint::Integer { min: 3, max: 4 });
    w.insert(dev(14), Constraint::Integer { min: 3, max: 5 });
    w.insert(dev(16), Constraint::Text { max_len: 127 });
    w
}

/// The hrDeviceIndex of the first hrDevicePrinter row in `values`.
pub fn printer_device_index(values: &BTreeMap<Oid, Value>) -> Option<u32> {
    let prefix = oid("1.3.6.1.2.1.25.3.2.1.2");
    let printer = Value::ObjectIdentifier(oid("1.3.6.1.2.1.25.3.1.5"));
    values.iter().find_map(|(k, v)| {
        (k.arcs().len() == prefix.arcs().len() + 1
            && k.arcs().starts_with(prefix.arcs())
            && *v == printer)
            .then(|| *k.arcs().last().unwrap_or(&0))
    })
}

impl SimPrinter {
    pub fn new(
        values: BTreeMap<Oid, Value>,
        writable: HashMap<Oid, Constraint>,
        faults: Faults,
    ) -> SimPrinter {
        let page_base = match values.get(&oid(PAGE_COUNTER)) {
            Some(Value::Counter32(n)) => *n,
            _ => 0,
        };
        SimPrinter {
            state: Arc::new(Mutex::new(State {
                initial: values.clone(),
                values,
                writable,
                faults,
                booted: Instant::now(),
                counter_epoch: Instant::now(),
                page_base,
                stale: HashMap::new(),
                requests: 0,
                sets: 0,
            })),
        }
    }

    /// A printer with the default MIB.
    pub fn standard(name: &str, faults: Faults) -> SimPrinter {
        SimPrinter::new(default_mib(name), default_writable(1), faults)
    }

    /// A printer playing back a recording; the default-profile objects that the
    /// recording has (at its hrDeviceIndex) are writable.
    pub fn from_recording(values: BTreeMap<Oid, Value>, faults: Faults) -> SimPrinter {
        let device = printer_device_index(&values).unwrap_or(1);
        let writable = default_writable(device)
            .into_iter()
            .filter(|(k, _)| values.contains_key(k))
            .collect();
        SimPrinter::new(values, writable, faults)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_read_only(&self, o: Oid, read_only: bool) {
        let mut s = self.lock();
        if read_only {
            s.faults.read_only.insert(o);
        } else {
            s.faults.read_only.remove(&o);
        }
    }

    pub fn set_faults(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self.lock().faults);
    }

    /// Reboot: sysUpTime restarts and every value written since the last boot is
    /// lost; the page counter (non-volatile on real printers) keeps its count.
    pub fn reboot(&self) {
        let mut s = self.lock();
        let pages = s.pages();
        s.values = s.initial.clone();
        if s.values.contains_key(&oid(SYS_UPTIME)) {
            s.values.insert(oid(SYS_UPTIME), Value::TimeTicks(0));
        }
        s.booted = Instant::now();
        s.stale.clear();
        s.set_pages(pages);
    }

    /// Change a value from outside SNMP (the printer's panel, a technician, wear):
    /// supply levels, the page counter (which may go backwards), alerts, settings.
    pub fn put(&self, o: Oid, v: Value) {
        let mut s = self.lock();
        if o == oid(PAGE_COUNTER) {
            if let Value::Counter32(n) = v {
                s.set_pages(n);
            }
        }
        if o == oid(SYS_UPTIME) {
            // The value set is what reads now; it advances from here.
            s.booted = Instant::now();
        }
        s.stale.remove(&o);
        s.values.insert(o, v);
    }

    /// The page counter (prtMarkerLifeCount.1.1) as a client would read it now.
    pub fn page_counter(&self) -> u32 {
        self.lock().pages()
    }

    /// Set the page counter (printing, or a counter reset when lower).
    pub fn set_page_counter(&self, n: u32) {
        self.put(oid(PAGE_COUNTER), Value::Counter32(n));
    }

    /// Remove an object (an alert that cleared).
    pub fn remove(&self, o: &Oid) -> bool {
        self.lock().values.remove(o).is_some()
    }

    /// Current value of an object (as a client would read it, without faults).
    pub fn value(&self, o: &Oid) -> Option<Value> {
        let s = self.lock();
        s.read(o)
    }

    pub fn counters(&self) -> (u64, u64) {
        let s = self.lock();
        (s.requests, s.sets)
    }

    /// Count the request and say how long to wait before answering (None: never).
    fn admit(&self) -> Option<Duration> {
        let mut s = self.lock();
        s.requests += 1;
        if s.faults.drop_first > 0 {
            s.faults.drop_first -= 1;
            return None;
        }
        Some(s.faults.delay)
    }

    async fn gate(&self) {
        match self.admit() {
            Some(d) if d.is_zero() => {}
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending::<()>().await,
        }
    }
}

impl State {
    fn pages(&self) -> u32 {
        match self.read(&oid(PAGE_COUNTER)) {
            Some(Value::Counter32(n)) => n,
            _ => self.page_base,
        }
    }

    fn set_pages(&mut self, n: u32) {
        self.page_base = n;
        self.counter_epoch = Instant::now();
        if self.values.contains_key(&oid(PAGE_COUNTER)) {
            self.values.insert(oid(PAGE_COUNTER), Value::Counter32(n));
        }
    }

    fn read(&self, o: &Oid) -> Option<Value> {
        if *o == oid(SYS_UPTIME) {
            // The stored value is the uptime at boot (a recording's, or 0 after a
            // reboot); it advances with time and wraps as TimeTicks do. A recording
            // without sysUpTime has none.
            let Some(Value::TimeTicks(at_boot)) = self.values.get(o) else {
                return None;
            };
            let hundredths = (self.booted.elapsed().as_millis() / 10) as u32;
            return Some(Value::TimeTicks(at_boot.wrapping_add(hundredths)));
        }
        if *o == oid(PAGE_COUNTER)
            && self.values.contains_key(o)
            && self.faults.pages_per_minute > 0
        {
            let pages = self.counter_epoch.elapsed().as_secs_f64() / 60.0
                * f64::from(self.faults.pages_per_minute);
            return Some(Value::Counter32(self.page_base.wrapping_add(pages as u32)));
        }
        self.values.get(o).cloned()
    }

    fn read_for_get(&mut self, o: &Oid) -> Option<Value> {
        if let Some((n, old)) = self.stale.get_mut(o) {
            if *n > 0 {
                *n -= 1;
                return Some(old.clone());
            }
        }
        self.read(o)
    }
}

struct Handler(SimPrinter);

struct Change {
    printer: SimPrinter,
    oid: Oid,
    value: Value,
    previous: Option<Value>,
}

impl PreparedSet for Change {
    fn commit<'a>(
        &'a mut self,
        _: &'a RequestContext,
        _: &'a Oid,
        _: &'a Value,
    ) -> BoxFuture<'a, SetCommitResult> {
        Box::pin(async move {
            let mut s = self.printer.lock();
            self.previous = s.values.insert(self.oid.clone(), self.value.clone());
            s.sets += 1;
            let n = s.faults.stale_reads;
            if n > 0 {
                if let Some(prev) = &self.previous {
                    s.stale.insert(self.oid.clone(), (n, prev.clone()));
                }
            }
            Ok(())
        })
    }

    fn undo<'a>(
        &'a mut self,
        _: &'a RequestContext,
        _: &'a Oid,
        _: &'a Value,
    ) -> BoxFuture<'a, SetUndoResult> {
        Box::pin(async move {
            if let Some(prev) = self.previous.take() {
                let mut s = self.printer.lock();
                s.values.insert(self.oid.clone(), prev);
                s.stale.remove(&self.oid);
            }
            Ok(())
        })
    }
}

impl MibHandler for Handler {
    fn get<'a>(
        &'a self,
        _: &'a RequestContext,
        o: &'a Oid,
    ) -> BoxFuture<'a, HandlerResult<GetResult>> {
        Box::pin(async move {
            self.0.gate().await;
            let v = self.0.lock().read_for_get(o);
            Ok(match v {
                Some(v) => GetResult::Value(v),
                None => GetResult::NoSuchObject,
            })
        })
    }

    fn get_next<'a>(
        &'a self,
        _: &'a RequestContext,
        o: &'a Oid,
    ) -> BoxFuture<'a, HandlerResult<GetNextResult>> {
        Box::pin(async move {
            self.0.gate().await;
            let s = self.0.lock();
            let next = s
                .values
                .range::<Oid, _>((std::ops::Bound::Excluded(o), std::ops::Bound::Unbounded))
                .next()
                .map(|(k, _)| k.clone());
            Ok(match next {
                Some(k) => {
                    let v = s.read(&k).unwrap_or(Value::Null);
                    GetNextResult::Value(VarBind::new(k, v))
                }
                None => GetNextResult::EndOfMibView,
            })
        })
    }

    fn test_set<'a>(
        &'a self,
        _: &'a RequestContext,
        o: &'a Oid,
        value: &'a Value,
    ) -> BoxFuture<'a, SetTestResult> {
        Box::pin(async move {
            self.0.gate().await;
            let s = self.0.lock();
            if !s.values.contains_key(o) {
                return Err(SetTestError::NoCreation);
            }
            let Some(constraint) = s.writable.get(o) else {
                return Err(SetTestError::NotWritable);
            };
            if s.faults.read_only.contains(o) {
                return Err(SetTestError::NotWritable);
            }
            match (constraint, value) {
                (Constraint::Text { max_len }, Value::OctetString(b)) if b.len() > *max_len => {
                    return Err(SetTestError::WrongLength)
                }
                (Constraint::Text { .. }, Value::OctetString(_)) => {}
                (Constraint::Integer { min, max }, Value::Integer(n)) if n < min || n > max => {
                    return Err(SetTestError::WrongValue)
                }
                (Constraint::Integer { .. }, Value::Integer(_)) => {}
                _ => return Err(SetTestError::WrongType),
            }
            Ok(Box::new(Change {
                printer: self.0.clone(),
                oid: o.clone(),
                value: value.clone(),
                previous: None,
            }) as Box<dyn PreparedSet>)
        })
    }
}

/// A printer being served on a UDP port.
pub struct Running {
    pub id: String,
    pub addr: SocketAddr,
    pub printer: SimPrinter,
    cancel: CancellationToken,
}

impl Running {
    pub fn stop(&self) {
        self.cancel.cancel();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot serve printer {id} on {bind}: {message}")]
pub struct ServeError {
    pub id: String,
    pub bind: String,
    pub message: String,
}

/// Serve `printer` on `bind` (e.g. `127.0.0.1:0`) with the given community.
pub async fn serve(
    id: &str,
    printer: SimPrinter,
    bind: &str,
    community: &str,
) -> Result<Running, ServeError> {
    let err = |m: String| ServeError {
        id: id.into(),
        bind: bind.into(),
        message: m,
    };
    let cancel = CancellationToken::new();
    let agent = Agent::builder()
        .bind(bind)
        .community(community.as_bytes())
        .handler(oid("1.3"), Arc::new(Handler(printer.clone())))
        .without_builtin_handlers()
        .allow_all_access()
        .cancellation_token(cancel.clone())
        .build()
        .await
        .map_err(|e| err(e.to_string()))?;
    let addr = agent.local_addr();
    let name = id.to_string();
    tokio::spawn(async move {
        if let Err(e) = agent.run().await {
            tracing::error!(printer = %name, error = %e, "simulated printer stopped");
        }
    });
    Ok(Running {
        id: id.into(),
        addr,
        printer,
        cancel,
    })
}

/// The Printer MIB's printerV2Alert notification (RFC 3805 §2.2.13).
pub const PRINTER_V2_ALERT: &str = "1.3.6.1.2.1.43.18.2.0.1";

/// Send an SNMPv2c printerV2Alert trap from `from` (a printer's address: the
/// receiver tells printers apart by it) to `to`, as a printer does when an alert is
/// raised. `uptime_cs`: the printer's sysUpTime.
pub async fn send_alert_trap(
    from: std::net::IpAddr,
    to: SocketAddr,
    community: &str,
    uptime_cs: u32,
) -> Result<(), String> {
    let transport = async_snmp::transport::UdpTransport::builder()
        .bind(SocketAddr::new(from, 0).to_string())
        .build()
        .await
        .map_err(|e| e.to_string())?;
    let client = async_snmp::Client::builder(to.to_string(), async_snmp::Auth::v2c(community))
        .build_with(&transport)
        .await
        .map_err(|e| e.to_string())?;
    let oid: Oid = PRINTER_V2_ALERT.parse().map_err(|e| format!("{e:?}"))?;
    client
        .send_trap(&oid, uptime_cs, Vec::new())
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uptime(p: &SimPrinter) -> Option<u32> {
        match p.value(&oid(SYS_UPTIME)) {
            Some(Value::TimeTicks(t)) => Some(t),
            None => None,
            other => panic!("sysUpTime as {other:?}"),
        }
    }

    #[test]
    fn a_recordings_uptime_plays_back_and_restarts_on_reboot() {
        let mut values = BTreeMap::new();
        values.insert(oid(SYS_UPTIME), Value::TimeTicks(217_539_735));
        let p = SimPrinter::from_recording(values, Faults::default());
        let first = uptime(&p).unwrap();
        assert!(first >= 217_539_735, "{first}");
        std::thread::sleep(Duration::from_millis(30));
        let later = uptime(&p).unwrap();
        assert!(later > first, "advances: {first} then {later}");
        p.reboot();
        assert!(uptime(&p).unwrap() < 100, "restarts from 0 on reboot");
        // Near the TimeTicks limit it wraps, as a real agent's does.
        p.put(oid(SYS_UPTIME), Value::TimeTicks(u32::MAX));
        std::thread::sleep(Duration::from_millis(30));
        assert!(uptime(&p).unwrap() < 100, "wrapped");
    }

    #[test]
    fn a_recording_without_uptime_has_none() {
        let p = SimPrinter::from_recording(BTreeMap::new(), Faults::default());
        assert_eq!(uptime(&p), None);
        let std = SimPrinter::standard("p1", Faults::default());
        assert!(uptime(&std).is_some(), "the default MIB has one");
    }
}
