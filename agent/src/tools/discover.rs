//! `platen-agent discover RANGE`: find printers in an address range by SNMP.
//!
//! A host counts as a printer when its hrDeviceTable has an hrDevicePrinter row, or,
//! for printers without the Host Resources MIB, when it answers prtMarkerLifeCount
//! or prtMarkerSuppliesDescription. Hosts that do not answer within the timeout
//! are skipped silently: most addresses in a range have nothing on them.

use crate::snmp::printer_mib::{
    text, HR_DEVICE_DESCR, PRT_SERIAL, PRT_SUPPLIES_ENTRY, SYS_DESCR, SYS_OBJECT_ID,
};
use crate::snmp::reads::get_values;
use crate::snmp::{AsyncSnmp, ObjectId, SharedTransport, Snmp, SnmpError, Target};
use serde::Serialize;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Most addresses one run may sweep.
pub const MAX_ADDRESSES: usize = 65_536;

/// Parse `10.0.0.0/24`, `10.0.0.5-10.0.0.40`, or one address (IPv4).
pub fn parse_range(s: &str) -> Result<Vec<Ipv4Addr>, String> {
    let s = s.trim();
    let (first, last) = if let Some((a, b)) = s.split_once('-') {
        let a: Ipv4Addr = a
            .trim()
            .parse()
            .map_err(|_| format!("{a:?} is not an IPv4 address"))?;
        let b: Ipv4Addr = b
            .trim()
            .parse()
            .map_err(|_| format!("{b:?} is not an IPv4 address"))?;
        (u32::from(a), u32::from(b))
    } else if s.contains('/') {
        let net: ipnet::Ipv4Net = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let (a, b) = (u32::from(net.network()), u32::from(net.broadcast()));
        // Leave out network and broadcast addresses when the net has hosts between them.
        if net.prefix_len() < 31 {
            (a + 1, b - 1)
        } else {
            (a, b)
        }
    } else {
        let a: Ipv4Addr = s
            .parse()
            .map_err(|_| format!("{s:?} is not an IPv4 address, a CIDR range or A-B"))?;
        (u32::from(a), u32::from(a))
    };
    if last < first {
        return Err(format!("{s:?}: the range ends before it starts"));
    }
    let n = (last - first) as usize + 1;
    if n > MAX_ADDRESSES {
        return Err(format!(
            "{s:?} has {n} addresses; the limit is {MAX_ADDRESSES}"
        ));
    }
    Ok((first..=last).map(Ipv4Addr::from).collect())
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Found {
    pub address: String,
    pub port: u16,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub sys_descr: Option<String>,
    pub sys_object_id: Option<String>,
    pub device_index: u32,
    /// The settings profile to use and why ([`pick_profile`]).
    pub profile: String,
    pub profile_reason: String,
}

/// The profile for a printer: its maker's built-in one when there is one (told by
/// the IANA enterprise number in sysObjectID, else by the maker's name in
/// sysDescr), the default otherwise; with the reason, for the technician.
pub fn pick_profile(sys_object_id: Option<&str>, sys_descr: Option<&str>) -> (String, String) {
    if let Some(oid) = sys_object_id {
        if let Some((maker, profile)) = crate::apply::profile::maker(oid) {
            return match profile {
                Some(p) => (
                    p.to_string(),
                    format!("sysObjectID {oid} is {maker}'s: its profile reads {maker}'s own page counters"),
                ),
                None => (
                    "default".into(),
                    format!("sysObjectID {oid} is {maker}'s; no built-in profile reads its own counters yet"),
                ),
            };
        }
    }
    if let Some(descr) = sys_descr {
        // Whole words only ("HP" is not the "hp" in "http").
        let words: Vec<String> = descr
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect();
        for (_, maker, profile) in crate::apply::profile::MAKERS {
            if let Some(p) = profile {
                let name: Vec<String> = maker.split(' ').map(str::to_lowercase).collect();
                if words.windows(name.len()).any(|w| w == name.as_slice()) {
                    return (
                        p.to_string(),
                        format!("sysDescr names {maker} (sysObjectID does not): its profile reads {maker}'s own page counters"),
                    );
                }
            }
        }
    }
    (
        "default".into(),
        "maker not recognised: the standard Printer MIB only".into(),
    )
}

impl Found {
    /// A `[[printer]]` entry to paste into the agent config.
    pub fn as_toml(&self) -> String {
        let base = self
            .model
            .as_deref()
            .unwrap_or("printer")
            .to_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect::<String>();
        let base: Vec<&str> = base.split('-').filter(|p| !p.is_empty()).take(4).collect();
        let id = format!("{}-{}", base.join("-"), self.address.replace('.', "-"));
        let mut s = String::from("[[printer]]\n");
        s.push_str(&format!("id = {:?}\n", id));
        s.push_str(&format!("address = {:?}\n", self.address));
        s.push_str(&format!("port = {}\n", self.port));
        s.push_str("community = \"<write community>\"  # set the printer's write community\n");
        if let Some(m) = &self.model {
            s.push_str(&format!("# model: {m}\n"));
        }
        if let Some(sn) = &self.serial {
            s.push_str(&format!("# serial: {sn}\n"));
        }
        s.push_str(&format!(
            "profile = {:?}  # {}\n",
            self.profile, self.profile_reason
        ));
        s
    }
}

/// Look at one host. Ok(None): it answers SNMP but is not a printer.
pub async fn probe<S: Snmp>(
    snmp: &S,
    address: &str,
    port: u16,
) -> Result<Option<Found>, SnmpError> {
    let sys: ObjectId = SYS_DESCR.parse().map_err(SnmpError::Other)?;
    let sys_oid: ObjectId = SYS_OBJECT_ID.parse().map_err(SnmpError::Other)?;
    let system = get_values(snmp, &[sys, sys_oid]).await?;
    let sys_descr = system.first().and_then(text);
    let sys_object_id = match system.get(1) {
        Some(crate::snmp::SnmpValue::ObjectId(o)) => Some(o.to_string()),
        _ => None,
    };
    let device = crate::snmp::reads::discover_device_index(snmp)
        .await
        .unwrap_or(None);
    let d = match device {
        Some(d) => d,
        None => {
            // No Host Resources printer row: a Printer-MIB supplies table still says printer.
            let sup: ObjectId = PRT_SUPPLIES_ENTRY.parse().map_err(SnmpError::Other)?;
            let rows = snmp.walk(&sup, 1).await.unwrap_or_default();
            if !rows.iter().any(|(o, _)| o.starts_with(&sup)) {
                return Ok(None);
            }
            1
        }
    };
    let oids: Vec<ObjectId> = [HR_DEVICE_DESCR, PRT_SERIAL]
        .iter()
        .filter_map(|b| b.parse::<ObjectId>().ok())
        .map(|o| o.child(d))
        .collect();
    let vals = get_values(snmp, &oids).await.unwrap_or_default();
    let t = |i: usize| {
        vals.get(i)
            .filter(|v| !v.is_exception())
            .and_then(text)
            .filter(|s| !s.is_empty())
    };
    let (profile, profile_reason) = pick_profile(sys_object_id.as_deref(), sys_descr.as_deref());
    Ok(Some(Found {
        address: address.to_string(),
        port,
        model: t(0).or_else(|| sys_descr.clone()),
        serial: t(1),
        sys_descr,
        sys_object_id,
        device_index: d,
        profile,
        profile_reason,
    }))
}

/// Sweep `addresses`, `concurrency` at a time; returns printers in address order.
pub async fn sweep(
    addresses: Vec<Ipv4Addr>,
    port: u16,
    community: crate::secret::Secret,
    timeout: std::time::Duration,
    retries: u32,
    concurrency: usize,
    progress: impl Fn() + Send + Sync + 'static,
) -> Result<Vec<Found>, SnmpError> {
    let transport = SharedTransport::bind().await?;
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let progress = Arc::new(progress);
    let mut set = tokio::task::JoinSet::new();
    for a in addresses {
        let (sem, transport, progress) = (sem.clone(), transport.clone(), progress.clone());
        let target = Target {
            address: a.to_string(),
            port,
            credentials: crate::snmp::Credentials::V2c(community.clone()),
            timeout,
            retries,
        };
        set.spawn(async move {
            let _permit = sem.acquire_owned().await.ok()?;
            let found = match AsyncSnmp::connect(&target, &transport).await {
                Ok(snmp) => probe(&snmp, &target.address, port).await.ok().flatten(),
                Err(_) => None,
            };
            progress();
            found
        });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        if let Ok(Some(f)) = r {
            out.push(f);
        }
    }
    out.sort_by_key(|f| f.address.parse::<IpAddr>().ok());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let r = parse_range("127.0.0.1-127.0.0.4").unwrap();
        assert_eq!(r.len(), 4);
        assert_eq!(r[3], Ipv4Addr::new(127, 0, 0, 4));
        let r = parse_range("192.168.1.0/24").unwrap();
        assert_eq!((r.len(), r[0].to_string()), (254, "192.168.1.1".into()));
        assert_eq!(parse_range("10.0.0.7/32").unwrap().len(), 1);
        assert_eq!(parse_range("10.0.0.7").unwrap().len(), 1);
        for bad in ["10.0.0.9-10.0.0.1", "10.0.0.0/8", "x", "10.0.0.1-y", "::1"] {
            assert!(parse_range(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn toml_entry_is_pasteable_and_has_no_community() {
        let f = Found {
            address: "10.0.0.5".into(),
            port: 161,
            model: Some("Brother MFC-L2710DW series".into()),
            serial: Some("E7123".into()),
            sys_descr: None,
            sys_object_id: Some("1.3.6.1.4.1.2435.2.3.9.1".into()),
            device_index: 1,
            profile: "default".into(),
            profile_reason: "sysObjectID 1.3.6.1.4.1.2435.2.3.9.1 is Brother's".into(),
        };
        let t = f.as_toml();
        assert!(
            t.contains("id = \"brother-mfc-l2710dw-series-10-0-0-5\""),
            "{t}"
        );
        assert!(t.contains("<write community>"));
        // The entry parses as a printer table of the agent config.
        let cfg = format!(
            "agent_id='a'\ntenant='t'\nstate_dir='/tmp'\n[broker]\nhost='h'\n{}",
            t.replace("<write community>", "x")
        );
        let c = crate::config::AgentConfig::parse(&cfg, std::path::Path::new("x.toml")).unwrap();
        assert_eq!(c.printers[0].address, "10.0.0.5");
        assert_eq!(c.printers[0].profile, "default");
    }

    #[test]
    fn the_profile_is_picked_by_maker_with_the_reason() {
        let cases = [
            (
                Some("1.3.6.1.4.1.18334.1.1.1.2.1.181.2.4"),
                None,
                "konica-minolta",
                "Konica Minolta's",
            ),
            (Some("1.3.6.1.4.1.11.2.3.9.1"), None, "hp", "HP's"),
            (Some(".1.3.6.1.4.1.253.8.62.1.35"), None, "xerox", "Xerox's"),
            (Some("1.3.6.1.4.1.1602.4.3"), None, "canon", "Canon's"),
            (Some("1.3.6.1.4.1.367.1.1"), None, "ricoh", "Ricoh's"),
            (
                Some("1.3.6.1.4.1.1347.41.1"),
                None,
                "default",
                "no built-in profile",
            ),
            // A print server's own sysObjectID: the description names the maker.
            (
                Some("1.3.6.1.4.1.99999.1"),
                Some("HP ETHERNET MULTI-ENVIRONMENT"),
                "hp",
                "sysDescr names HP",
            ),
            (
                None,
                Some("Canon iR-ADV C5535"),
                "canon",
                "sysDescr names Canon",
            ),
            (
                None,
                Some("KONICA MINOLTA bizhub C250i"),
                "konica-minolta",
                "sysDescr names Konica Minolta",
            ),
            (
                None,
                Some("see http://printer.example/"),
                "default",
                "not recognised",
            ),
            (None, None, "default", "not recognised"),
        ];
        for (oid, descr, profile, why) in cases {
            let (p, reason) = pick_profile(oid, descr);
            assert_eq!(p, profile, "{oid:?} {descr:?}");
            assert!(reason.contains(why), "{oid:?}: {reason}");
        }
    }
}
