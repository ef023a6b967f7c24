//! The one fake [`Snmp`] of the agent's unit tests: an in-memory printer that can be
//! told to time out, refuse SETs, answer like snmpsim or like an SNMPv1 agent, go down
//! and come back, and that counts what it was asked. (End-to-end tests use the
//! simulator, `platen-printer-sim`, over real UDP.)

use super::printer_mib::HR_DEVICE_PRINTER;
use super::{ErrorStatus, ObjectId, Snmp, SnmpError, SnmpValue};
use std::collections::HashMap;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicU32};
use std::sync::Mutex;

/// An in-memory printer: its objects, the errors and quirks it is told to show, and
/// counts of what it was asked.
#[derive(Default)]
pub struct FakePrinter {
    pub values: Mutex<HashMap<ObjectId, SnmpValue>>,
    pub set_errors: Mutex<HashMap<ObjectId, Vec<SnmpError>>>,
    /// Reads of an OID that still return the old value after a SET.
    pub stale_reads: Mutex<HashMap<ObjectId, u32>>,
    pub old: Mutex<HashMap<ObjectId, SnmpValue>>,
    pub timeout_all: bool,
    /// Unreachable while set (can change while the printer is in use).
    pub down: AtomicBool,
    pub timeout_gets_after_set: bool,
    /// SETs time out (the GETs answer).
    pub timeout_sets: bool,
    /// Every SET is answered with this value and changes nothing (snmpsim answers
    /// noSuchInstance with error-status noError).
    pub set_answer: Option<SnmpValue>,
    /// SNMPv1: a GET naming an object the printer does not have fails the whole
    /// request with noSuchName at its index.
    pub v1: bool,
    pub sets: Mutex<Vec<ObjectId>>,
    /// The OIDs of each multi-object SET PDU.
    pub batches: Mutex<Vec<Vec<ObjectId>>>,
    pub gets: Mutex<u32>,
    pub walks: AtomicU32,
    /// GETs asked once, without retries (the probe of a printer known to be down).
    pub once: AtomicU32,
}

pub fn o(s: &str) -> ObjectId {
    s.parse().unwrap()
}

pub fn timeout() -> SnmpError {
    SnmpError::Timeout {
        target: "127.0.0.1:1".into(),
        retries: 2,
    }
}

impl FakePrinter {
    pub fn standard() -> FakePrinter {
        let f = FakePrinter::default();
        {
            let mut v = f.values.lock().unwrap();
            v.insert(
                o("1.3.6.1.2.1.1.4.0"),
                SnmpValue::OctetString(b"old contact".to_vec()),
            );
            v.insert(
                o("1.3.6.1.2.1.1.5.0"),
                SnmpValue::OctetString(b"sim".to_vec()),
            );
            v.insert(
                o("1.3.6.1.2.1.1.6.0"),
                SnmpValue::OctetString(b"Unknown".to_vec()),
            );
            v.insert(
                o("1.3.6.1.2.1.25.3.2.1.2.1"),
                SnmpValue::ObjectId(o("1.3.6.1.2.1.25.3.1.1")),
            );
            v.insert(
                o("1.3.6.1.2.1.25.3.2.1.2.3"),
                SnmpValue::ObjectId(o(HR_DEVICE_PRINTER)),
            );
            v.insert(o("1.3.6.1.2.1.43.5.1.1.6.3"), SnmpValue::Integer(1));
            v.insert(o("1.3.6.1.2.1.43.5.1.1.13.3"), SnmpValue::Integer(3));
        }
        f
    }
    fn unreachable(&self) -> bool {
        self.timeout_all || self.down.load(SeqCst)
    }

    fn read(&self, oid: &ObjectId) -> SnmpValue {
        let mut stale = self.stale_reads.lock().unwrap();
        if let Some(n) = stale.get_mut(oid) {
            if *n > 0 {
                *n -= 1;
                if let Some(v) = self.old.lock().unwrap().get(oid) {
                    return v.clone();
                }
            }
        }
        self.values
            .lock()
            .unwrap()
            .get(oid)
            .cloned()
            .unwrap_or(SnmpValue::NoSuchObject)
    }
}

impl Snmp for FakePrinter {
    async fn get(&self, oids: &[ObjectId]) -> Result<Vec<SnmpValue>, SnmpError> {
        *self.gets.lock().unwrap() += 1;
        if self.unreachable()
            || (self.timeout_gets_after_set && !self.sets.lock().unwrap().is_empty())
        {
            return Err(timeout());
        }
        let vals: Vec<SnmpValue> = oids.iter().map(|o| self.read(o)).collect();
        match vals.iter().position(|v| v.is_exception()) {
            Some(i) if self.v1 => Err(SnmpError::Status {
                status: ErrorStatus::NoSuchName,
                index: i as u32 + 1,
            }),
            _ => Ok(vals),
        }
    }
    async fn get_once(&self, oids: &[ObjectId]) -> Result<Vec<SnmpValue>, SnmpError> {
        self.once.fetch_add(1, SeqCst);
        if self.unreachable() {
            return Err(timeout());
        }
        Ok(oids.iter().map(|o| self.read(o)).collect())
    }
    async fn set(&self, oid: &ObjectId, value: SnmpValue) -> Result<SnmpValue, SnmpError> {
        self.sets.lock().unwrap().push(oid.clone());
        if self.unreachable() || self.timeout_sets {
            return Err(timeout());
        }
        if let Some(answer) = &self.set_answer {
            return Ok(answer.clone());
        }
        if let Some(errs) = self.set_errors.lock().unwrap().get_mut(oid) {
            if !errs.is_empty() {
                return Err(errs.remove(0));
            }
        }
        let mut vals = self.values.lock().unwrap();
        match vals.get(oid) {
            None => Ok(SnmpValue::NoSuchObject),
            Some(old) => {
                self.old.lock().unwrap().insert(oid.clone(), old.clone());
                vals.insert(oid.clone(), value.clone());
                Ok(value)
            }
        }
    }
    /// All or nothing, like an RFC 3416 agent: a pending error or an unknown
    /// object fails the whole PDU (pending errors are not consumed).
    async fn set_many(&self, items: &[(ObjectId, SnmpValue)]) -> Result<Vec<SnmpValue>, SnmpError> {
        self.batches
            .lock()
            .unwrap()
            .push(items.iter().map(|(o, _)| o.clone()).collect());
        self.sets
            .lock()
            .unwrap()
            .extend(items.iter().map(|(o, _)| o.clone()));
        if self.unreachable() || self.timeout_sets {
            return Err(timeout());
        }
        for (i, (oid, _)) in items.iter().enumerate() {
            if let Some(e) = self
                .set_errors
                .lock()
                .unwrap()
                .get(oid)
                .and_then(|e| e.first())
            {
                return Err(match e {
                    SnmpError::Status { status, .. } => SnmpError::Status {
                        status: *status,
                        index: i as u32 + 1,
                    },
                    other => other.clone(),
                });
            }
            if !self.values.lock().unwrap().contains_key(oid) {
                return Err(SnmpError::Status {
                    status: ErrorStatus::NoCreation,
                    index: i as u32 + 1,
                });
            }
        }
        let mut vals = self.values.lock().unwrap();
        for (oid, value) in items {
            if let Some(old) = vals.insert(oid.clone(), value.clone()) {
                self.old.lock().unwrap().insert(oid.clone(), old);
            }
        }
        Ok(items.iter().map(|(_, v)| v.clone()).collect())
    }
    async fn walk(
        &self,
        prefix: &ObjectId,
        limit: usize,
    ) -> Result<Vec<(ObjectId, SnmpValue)>, SnmpError> {
        self.walks.fetch_add(1, SeqCst);
        if self.unreachable() {
            return Err(timeout());
        }
        let vals = self.values.lock().unwrap();
        let mut rows: Vec<_> = vals
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows.truncate(limit);
        Ok(rows)
    }
}
