//! Reads every part of the agent makes the same way: finding the printer's
//! hrDeviceIndex, and a GET that survives SNMPv1's whole-request noSuchName.

use super::printer_mib::{HR_DEVICE_PRINTER, HR_DEVICE_TYPE};
use super::{ErrorStatus, ObjectId, Snmp, SnmpError, SnmpValue};
use std::collections::HashSet;

/// Find the printer's hrDeviceIndex: the first hrDeviceType row equal to hrDevicePrinter.
pub async fn discover_device_index<S: Snmp>(snmp: &S) -> Result<Option<u32>, SnmpError> {
    let prefix: ObjectId = HR_DEVICE_TYPE.parse().map_err(SnmpError::Other)?;
    let printer: ObjectId = HR_DEVICE_PRINTER.parse().map_err(SnmpError::Other)?;
    let rows = snmp.walk(&prefix, 256).await?;
    Ok(rows.into_iter().find_map(|(oid, v)| match v {
        SnmpValue::ObjectId(t) if t == printer && oid.0.len() == prefix.0.len() + 1 => {
            oid.0.last().copied()
        }
        _ => None,
    }))
}

/// GET that tolerates SNMPv1's whole-PDU noSuchName: the named object becomes
/// NoSuchObject and the rest is asked again.
pub async fn get_values<S: Snmp>(snmp: &S, oids: &[ObjectId]) -> Result<Vec<SnmpValue>, SnmpError> {
    let mut missing: HashSet<usize> = HashSet::new();
    loop {
        let ask: Vec<(usize, ObjectId)> = oids
            .iter()
            .cloned()
            .enumerate()
            .filter(|(i, _)| !missing.contains(i))
            .collect();
        if ask.is_empty() {
            return Ok(vec![SnmpValue::NoSuchObject; oids.len()]);
        }
        let req: Vec<ObjectId> = ask.iter().map(|(_, o)| o.clone()).collect();
        match snmp.get(&req).await {
            Ok(vals) => {
                let mut out = vec![SnmpValue::NoSuchObject; oids.len()];
                for ((i, _), v) in ask.into_iter().zip(vals) {
                    out[i] = v;
                }
                return Ok(out);
            }
            Err(SnmpError::Status {
                status: ErrorStatus::NoSuchName,
                index,
            }) if index >= 1 && (index as usize) <= ask.len() => {
                missing.insert(ask[index as usize - 1].0);
            }
            Err(e) => return Err(e),
        }
    }
}
