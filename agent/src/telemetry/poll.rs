//! One telemetry poll of one printer: at most two requests in flight (the scalar GET
//! and the table walks run side by side; the walks one after another).
//!
//! The values collected go to [`crate::snmp::printer_mib::decode`]; this module only does
//! the SNMP traffic. A timeout or network error fails the poll (the printer is
//! unreachable); any other error on a table (a malformed walk) leaves that table
//! out of the reading and is logged, so one broken table does not blind the rest.
//! A printer already known to be down is first [`probe`]d with one request without
//! retries: dead printers cost a sweep one timeout, not timeout × attempts.

use crate::snmp::printer_mib::{scalar_oids, table_oids, TelemetrySpec};
use crate::snmp::reads::{discover_device_index, get_values};
use crate::snmp::{ObjectId, Snmp, SnmpError, SnmpValue};
use std::collections::BTreeMap;
use tracing::debug;

/// Most rows read from one table walk.
pub const WALK_LIMIT: usize = 2048;

fn fatal(e: &SnmpError) -> bool {
    matches!(e, SnmpError::Timeout { .. } | SnmpError::Network(_))
}

/// sysObjectID: asked once of a printer known to be down (any answer, even an
/// error status, says it is back).
const PROBE_OID: &str = "1.3.6.1.2.1.1.2.0";

/// Whether a printer known to be down answers one request (no retries).
pub async fn probe<S: Snmp>(snmp: &S) -> Result<(), SnmpError> {
    let oid: ObjectId = PROBE_OID.parse().map_err(SnmpError::Other)?;
    match snmp.get_once(std::slice::from_ref(&oid)).await {
        Ok(_) => Ok(()),
        Err(e) if fatal(&e) => Err(e),
        Err(_) => Ok(()),
    }
}

/// Read everything telemetry needs. `device` caches the hrDeviceIndex (1 when the
/// printer has no hrDevicePrinter row).
pub async fn collect<S: Snmp>(
    snmp: &S,
    spec: &TelemetrySpec,
    device: &mut Option<u32>,
) -> Result<(u32, BTreeMap<ObjectId, SnmpValue>), SnmpError> {
    let d = match *device {
        Some(d) => d,
        None => {
            let d = match discover_device_index(snmp).await {
                Ok(found) => found.unwrap_or(1),
                Err(e) if fatal(&e) => return Err(e),
                Err(_) => 1,
            };
            *device = Some(d);
            d
        }
    };
    let scalars = scalar_oids(d, spec);
    let get = get_values(snmp, &scalars);
    let walks = async {
        let mut rows = Vec::new();
        for t in table_oids(spec) {
            match snmp.walk(&t, WALK_LIMIT).await {
                Ok(r) => rows.extend(r),
                Err(e) if fatal(&e) => return Err(e),
                Err(e) => debug!(table = %t, error = %e, "table left out of this reading"),
            }
        }
        Ok(rows)
    };
    let (values, rows) = tokio::join!(get, walks);
    let values = values?;
    let rows = rows?;
    let mut map: BTreeMap<ObjectId, SnmpValue> = scalars.into_iter().zip(values).collect();
    map.extend(rows);
    Ok((d, map))
}
