//! Applying one desired config to one printer: SET what differs, read back, decide.
//!
//! The procedure, per desired config version:
//! 1. **Plan**: unknown setting names → 404; values that break the profile → 400
//!    (no SNMP traffic for either).
//! 2. **Device index**: settings under the Printer MIB need the printer's
//!    hrDeviceIndex, found by walking hrDeviceType (cached by the caller).
//! 3. **Pre-read**: one GET of every planned object. Settings that already have the
//!    desired value are verified (200, 0 attempts); a timeout makes all 504.
//! 4. **SET**: settings that are not disruptive and have no prerequisite among the
//!    settings being set go out together, up to [`SET_BATCH_MAX`] per PDU (an RFC 3416
//!    agent applies a PDU all or nothing). If a batch fails for any reason but a
//!    timeout, its settings are sent again one per PDU, which attributes the error
//!    to the setting that caused it. Everything else is one PDU per setting, in profile
//!    order (prerequisites first, disruptive last). Retryable errors (genErr,
//!    resourceUnavailable) are retried with bounded backoff. A timeout marks the
//!    printer unreachable: the remaining settings are 504 without more traffic.
//!    Before each SET, a newer desired version makes the rest 409 (superseded).
//! 5. **Read-back** after the settle delay: one GET of everything that was SET,
//!    repeated with backoff for values still differing (stale read-backs), then 412.
//!    A read-back that times out after a successful SET is 202.
//!
//! Generic over [`Snmp`], so it runs against the real client and a scripted fake.

pub(crate) mod drift;
pub mod profile;
pub(crate) mod reconciler;

use crate::apply::profile::{Prepared, Profile, SettingDef};
use crate::snmp::reads::{discover_device_index, get_values};
use crate::snmp::verdict::{classify, exception_code};
use crate::snmp::{ObjectId, Snmp, SnmpValue};
use chrono::Utc;
use platen_protocol::{Code, DesiredConfig, SettingResult, SettingValue};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct ApplyParams {
    pub settle: Duration,
    pub readback_retries: u32,
    pub retry_backoff: Duration,
    pub max_set_attempts: u32,
    /// Send settings without prerequisites in shared SET PDUs (see step 4a).
    pub batch_set: bool,
}

/// Most settings in one SET PDU (async-snmp's default request limit).
pub const SET_BATCH_MAX: usize = 10;

impl From<&crate::config::ApplyConfig> for ApplyParams {
    fn from(c: &crate::config::ApplyConfig) -> Self {
        ApplyParams {
            settle: Duration::from_millis(c.settle_ms),
            readback_retries: c.readback_retries,
            retry_backoff: Duration::from_millis(c.retry_backoff_ms),
            max_set_attempts: c.max_set_attempts.max(1),
            batch_set: c.batch_set,
        }
    }
}

/// The per-setting results (ordered by setting name) and whether a newer version
/// interrupted the apply.
#[derive(Debug)]
pub struct Outcome {
    pub results: Vec<SettingResult>,
    pub superseded: bool,
}

struct Item<'a> {
    name: &'a str,
    desired: &'a SettingValue,
    def: &'a SettingDef,
    prepared: Prepared,
    oid: ObjectId,
    attempts: u32,
    read_back: Option<SettingValue>,
}

struct Results<'c> {
    desired: &'c DesiredConfig,
    map: BTreeMap<String, SettingResult>,
}

impl<'c> Results<'c> {
    fn done(
        &mut self,
        name: &str,
        code: Code,
        detail: impl Into<String>,
        read_back: Option<SettingValue>,
        attempts: u32,
    ) {
        let desired = self
            .desired
            .settings
            .get(name)
            .cloned()
            .unwrap_or(SettingValue::Integer(0));
        let verified_at = (code == Code::Verified).then(Utc::now);
        self.map.insert(
            name.to_string(),
            SettingResult {
                name: name.to_string(),
                desired,
                read_back,
                code,
                detail: detail.into(),
                attempts,
                verified_at,
            },
        );
    }
    fn item(&mut self, it: &Item, code: Code, detail: impl Into<String>) {
        self.done(it.name, code, detail, it.read_back.clone(), it.attempts);
    }
}

/// What one value read from the printer says about a setting.
enum Reading {
    Equal,
    Differs,
    Failed(Code, String),
}

/// Judge a value read back (or pre-read) for `it`, recording the normalised value.
fn judge(it: &mut Item, value: &SnmpValue) -> Reading {
    if let Some(code) = exception_code(value) {
        return Reading::Failed(
            code,
            format!("{} is not implemented by this printer ({value:?})", it.oid),
        );
    }
    match it.def.normalize(value, it.desired) {
        Ok(n) => {
            let equal = it.def.matches(&n, &it.prepared);
            it.read_back = Some(n);
            if equal {
                Reading::Equal
            } else {
                Reading::Differs
            }
        }
        Err(why) => Reading::Failed(Code::AgentError, why),
    }
}

fn backoff(base: Duration, attempt: u32) -> Duration {
    platen_ops::backoff::doubled(base, attempt.min(10), Duration::MAX)
}

/// Apply `desired` to the printer behind `snmp`. `device` caches the hrDeviceIndex
/// between applies; `superseded` says whether a newer version has arrived.
pub async fn apply<S: Snmp>(
    snmp: &S,
    profile: &Profile,
    desired: &DesiredConfig,
    device: &mut Option<u32>,
    params: &ApplyParams,
    superseded: impl Fn() -> bool,
) -> Outcome {
    let mut res = Results {
        desired,
        map: BTreeMap::new(),
    };
    let mut was_superseded = false;

    // 1. Plan.
    let mut planned: Vec<(&str, &SettingValue, &SettingDef, Prepared)> = Vec::new();
    for (name, value) in &desired.settings {
        match profile.get(name) {
            None => res.done(
                name,
                Code::NotSupported,
                format!("unknown setting: not in profile {:?}", profile.name),
                None,
                0,
            ),
            Some(def) => match def.prepare(value) {
                Ok(p) => planned.push((name, value, def, p)),
                Err(why) => res.done(name, Code::ValueRejected, why, None, 0),
            },
        }
    }

    // 2. Device index, if any planned setting needs it.
    if device.is_none() && planned.iter().any(|(_, _, d, _)| d.oid.needs_device()) {
        match discover_device_index(snmp).await {
            Ok(found) => *device = found,
            Err(e) => {
                let v = classify(&e);
                for (name, ..) in &planned {
                    res.done(name, v.code, format!("finding hrDeviceIndex: {e}"), None, 0);
                }
                return finish(res, false);
            }
        }
    }
    let mut items: Vec<Item> = Vec::new();
    for (name, value, def, prepared) in planned {
        match def.oid.resolve(*device) {
            Some(oid) => items.push(Item {
                name,
                desired: value,
                def,
                prepared,
                oid,
                attempts: 0,
                read_back: None,
            }),
            None => res.done(
                name,
                Code::NotSupported,
                "printer has no hrDeviceType = hrDevicePrinter row",
                None,
                0,
            ),
        }
    }
    let order = profile.apply_order(&items.iter().map(|i| i.name).collect::<Vec<_>>());
    items.sort_by_key(|i| order.iter().position(|n| *n == i.name));

    // 3. Pre-read.
    if items.is_empty() {
        return finish(res, false);
    }
    let oids: Vec<ObjectId> = items.iter().map(|i| i.oid.clone()).collect();
    let current = match get_values(snmp, &oids).await {
        Ok(v) => v,
        Err(e) => {
            let v = classify(&e);
            for it in &items {
                res.item(it, v.code, format!("reading current value: {e}"));
            }
            return finish(res, false);
        }
    };
    let mut to_set: Vec<Item> = Vec::new();
    for (mut it, value) in items.into_iter().zip(current) {
        match judge(&mut it, &value) {
            Reading::Equal => res.item(&it, Code::Verified, "already set; verified by read"),
            Reading::Differs => to_set.push(it),
            Reading::Failed(code, why) => res.item(&it, code, why),
        }
    }

    // 4a. SET in batches: settings that are not disruptive and need nothing else
    // set in this version share PDUs. A batch that fails in any way falls back to
    // one PDU per setting (4b), which gives each setting its own result.
    let mut unreachable: Option<String> = None;
    let mut failed: HashSet<&str> = HashSet::new();
    let mut set_ok: Vec<Item> = Vec::new();
    if params.batch_set {
        let names: HashSet<&str> = to_set.iter().map(|i| i.name).collect();
        let (batch, rest): (Vec<Item>, Vec<Item>) = to_set.into_iter().partition(|i| {
            !i.def.disruptive && !i.def.requires.iter().any(|r| names.contains(r.as_str()))
        });
        let mut single = Vec::new();
        let mut chunks = batch.into_iter().peekable();
        while chunks.peek().is_some() {
            let chunk: Vec<Item> = chunks.by_ref().take(SET_BATCH_MAX).collect();
            if chunk.len() < 2 || unreachable.is_some() || was_superseded || superseded() {
                single.extend(chunk);
                continue;
            }
            let req: Vec<(ObjectId, SnmpValue)> = chunk
                .iter()
                .map(|i| (i.oid.clone(), i.prepared.to_snmp()))
                .collect();
            match snmp.set_many(&req).await {
                Ok(values) if !values.iter().any(|v| exception_code(v).is_some()) => {
                    for mut it in chunk {
                        it.attempts = 1;
                        set_ok.push(it);
                    }
                }
                Err(e) if classify(&e).unreachable => {
                    // The same as a single SET timing out: nothing more is sent.
                    for mut it in chunk {
                        it.attempts = 1;
                        res.item(&it, classify(&e).code, e.to_string());
                        failed.insert(it.name);
                    }
                    unreachable = Some(e.to_string());
                }
                // An error status or an exception in a varbind: find out which
                // setting, one PDU each (a failed batch is not counted in `attempts`).
                _ => single.extend(chunk),
            }
        }
        // Keep the profile's order for what is left: prerequisites first, disruptive last.
        single.extend(rest);
        let order: Vec<&str> = single.iter().map(|i| i.name).collect();
        let order = profile.apply_order(&order);
        single.sort_by_key(|i| order.iter().position(|n| *n == i.name));
        to_set = single;
    }

    // 4b. SET, one PDU per setting.
    for mut it in to_set {
        if let Some(why) = &unreachable {
            res.item(&it, Code::Unreachable, format!("not attempted: {why}"));
            failed.insert(it.name);
            continue;
        }
        if was_superseded || superseded() {
            was_superseded = true;
            res.item(
                &it,
                Code::Superseded,
                "a newer desired version arrived before this setting was applied",
            );
            continue;
        }
        if let Some(r) = it.def.requires.iter().find(|r| failed.contains(r.as_str())) {
            res.item(
                &it,
                Code::PrerequisiteFailed,
                format!("prerequisite {r} failed"),
            );
            failed.insert(it.name);
            continue;
        }
        loop {
            it.attempts += 1;
            match snmp.set(&it.oid, it.prepared.to_snmp()).await {
                Ok(v) => {
                    if let Some(code) = exception_code(&v) {
                        res.item(&it, code, format!("printer answered the SET with {v:?}"));
                        failed.insert(it.name);
                    } else {
                        set_ok.push(it);
                    }
                    break;
                }
                Err(e) => {
                    let v = classify(&e);
                    if v.unreachable {
                        unreachable = Some(e.to_string());
                        res.item(&it, v.code, e.to_string());
                        failed.insert(it.name);
                        break;
                    }
                    if v.retryable && it.attempts < params.max_set_attempts {
                        tokio::time::sleep(backoff(params.retry_backoff, it.attempts - 1)).await;
                        continue;
                    }
                    res.item(&it, v.code, e.to_string());
                    failed.insert(it.name);
                    break;
                }
            }
        }
    }

    // 5. Read-back.
    if !set_ok.is_empty() {
        // tokio's timer has millisecond ticks: even a zero sleep would wait for one.
        if !params.settle.is_zero() {
            tokio::time::sleep(params.settle).await;
        }
        let mut pending = set_ok;
        let mut round: u32 = 0;
        loop {
            let oids: Vec<ObjectId> = pending.iter().map(|i| i.oid.clone()).collect();
            let values = match get_values(snmp, &oids).await {
                Ok(v) => v,
                Err(e) => {
                    let v = classify(&e);
                    let code = if v.unreachable {
                        Code::AcceptedPending
                    } else {
                        v.code
                    };
                    for it in &pending {
                        res.item(it, code, format!("SET accepted; read-back failed: {e}"));
                    }
                    break;
                }
            };
            let mut still: Vec<Item> = Vec::new();
            for (mut it, value) in pending.into_iter().zip(values) {
                match judge(&mut it, &value) {
                    Reading::Equal => res.item(&it, Code::Verified, "verified by read-back"),
                    Reading::Differs => still.push(it),
                    Reading::Failed(code, why) => res.item(&it, code, why),
                }
            }
            if still.is_empty() {
                break;
            }
            if round >= params.readback_retries {
                for it in &still {
                    let got = it
                        .read_back
                        .as_ref()
                        .map(|v| v.to_string())
                        .unwrap_or_default();
                    res.item(
                        it,
                        Code::ReadBackMismatch,
                        format!("read back {got} after {} reads", round + 1),
                    );
                }
                break;
            }
            tokio::time::sleep(backoff(params.retry_backoff, round)).await;
            round += 1;
            pending = still;
        }
    }
    finish(res, was_superseded)
}

fn finish(res: Results, superseded: bool) -> Outcome {
    Outcome {
        results: res.map.into_values().collect(),
        superseded,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    use crate::snmp::fake::{o, FakePrinter};
    use crate::snmp::{ErrorStatus, SnmpError};

    fn params() -> ApplyParams {
        ApplyParams {
            settle: Duration::from_millis(100),
            readback_retries: 2,
            retry_backoff: Duration::from_millis(50),
            max_set_attempts: 3,
            batch_set: true,
        }
    }

    fn desired(settings: &[(&str, SettingValue)]) -> DesiredConfig {
        DesiredConfig {
            printer_id: "p1".parse().unwrap(),
            version: 1,
            issued_at: Utc::now(),
            settings: settings
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            signature: None,
        }
    }

    fn t(s: &str) -> SettingValue {
        SettingValue::Text(s.into())
    }

    async fn run(f: &FakePrinter, cfg: &DesiredConfig) -> (Outcome, Option<u32>) {
        let mut dev = None;
        let out = apply(
            f,
            &Profile::builtin_default(),
            cfg,
            &mut dev,
            &params(),
            || false,
        )
        .await;
        (out, dev)
    }

    fn codes(o: &Outcome) -> Vec<(String, u16, u32)> {
        o.results
            .iter()
            .map(|r| (r.name.clone(), r.code.as_u16(), r.attempts))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn applies_verifies_and_discovers_the_device_index() {
        let f = FakePrinter::standard();
        let cfg = desired(&[
            ("sysLocation", t("Room 1")),
            ("sysContact", t("old contact")),
            ("prtInputDefaultIndex", SettingValue::Integer(2)),
            ("prtConsoleDisable", t("disabled")),
        ]);
        let (out, dev) = run(&f, &cfg).await;
        assert_eq!(
            dev,
            Some(3),
            "hrDeviceIndex is discovered, not assumed to be 1"
        );
        assert_eq!(
            codes(&out),
            vec![
                ("prtConsoleDisable".into(), 200, 1),
                ("prtInputDefaultIndex".into(), 200, 1),
                ("sysContact".into(), 200, 0),
                ("sysLocation".into(), 200, 1),
            ]
        );
        assert_eq!(out.results[0].read_back, Some(t("disabled")));
        assert!(out.results.iter().all(|r| r.verified_at.is_some()));
        assert_eq!(
            f.sets.lock().unwrap().len(),
            3,
            "the unchanged setting is not written"
        );
        assert_eq!(*f.gets.lock().unwrap(), 2, "one pre-read and one read-back");
    }

    #[tokio::test(start_paused = true)]
    async fn classifies_rejections_without_touching_the_printer() {
        let f = FakePrinter::standard();
        // Only profile settings are written: an OID given as a name (here
        // prtGeneralReset.1) is an unknown setting like any other.
        let cfg = desired(&[
            ("1.3.6.1.2.1.43.5.1.1.3.1", SettingValue::Integer(4)),
            ("colourMode", t("mono")),
            ("prtInputDefaultIndex", SettingValue::Integer(0)),
            ("sysName", SettingValue::Integer(1)),
        ]);
        let (out, _) = run(&f, &cfg).await;
        assert_eq!(
            codes(&out),
            vec![
                ("1.3.6.1.2.1.43.5.1.1.3.1".into(), 404, 0),
                ("colourMode".into(), 404, 0),
                ("prtInputDefaultIndex".into(), 400, 0),
                ("sysName".into(), 400, 0)
            ]
        );
        assert!(f.sets.lock().unwrap().is_empty());
        assert_eq!(*f.gets.lock().unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn printer_errors_map_to_codes_and_retries_are_bounded() {
        let f = FakePrinter::standard();
        let st = |status| SnmpError::Status { status, index: 1 };
        f.set_errors
            .lock()
            .unwrap()
            .insert(o("1.3.6.1.2.1.1.6.0"), vec![st(ErrorStatus::NotWritable)]);
        f.set_errors
            .lock()
            .unwrap()
            .insert(o("1.3.6.1.2.1.1.4.0"), vec![st(ErrorStatus::GenErr); 5]);
        f.set_errors
            .lock()
            .unwrap()
            .insert(o("1.3.6.1.2.1.1.5.0"), vec![st(ErrorStatus::GenErr)]);
        let cfg = desired(&[
            ("sysLocation", t("x")),
            ("sysContact", t("y")),
            ("sysName", t("z")),
        ]);
        let (out, _) = run(&f, &cfg).await;
        assert_eq!(
            codes(&out),
            vec![
                ("sysContact".into(), 500, 3),
                ("sysLocation".into(), 403, 1),
                ("sysName".into(), 200, 2)
            ]
        );
        assert_eq!(
            out.results[1].read_back,
            Some(t("Unknown")),
            "a failed setting reports the value in use"
        );
        assert_eq!(out.results[1].detail, "notWritable (index 1)");
    }

    #[tokio::test(start_paused = true)]
    async fn unreachable_printer_is_504_for_everything() {
        let f = FakePrinter {
            timeout_all: true,
            ..FakePrinter::standard()
        };
        let cfg = desired(&[
            ("sysLocation", t("x")),
            ("prtInputDefaultIndex", SettingValue::Integer(2)),
        ]);
        let (out, _) = run(&f, &cfg).await;
        assert_eq!(
            codes(&out),
            vec![
                ("prtInputDefaultIndex".into(), 504, 0),
                ("sysLocation".into(), 504, 0)
            ]
        );
        assert!(
            out.results[1].detail.contains("no answer"),
            "{}",
            out.results[1].detail
        );
    }

    #[tokio::test(start_paused = true)]
    async fn stale_read_back_is_retried_then_412() {
        let f = FakePrinter::standard();
        f.stale_reads
            .lock()
            .unwrap()
            .insert(o("1.3.6.1.2.1.1.6.0"), 2);
        f.stale_reads
            .lock()
            .unwrap()
            .insert(o("1.3.6.1.2.1.1.4.0"), 10);
        let cfg = desired(&[("sysLocation", t("x")), ("sysContact", t("y"))]);
        let (out, _) = run(&f, &cfg).await;
        assert_eq!(
            codes(&out),
            vec![
                ("sysContact".into(), 412, 1),
                ("sysLocation".into(), 200, 1)
            ]
        );
        assert_eq!(out.results[0].read_back, Some(t("old contact")));
        assert_eq!(
            out.results[0].detail,
            "read back \"old contact\" after 3 reads"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn read_back_timeout_after_accepted_set_is_202() {
        let f = FakePrinter {
            timeout_gets_after_set: true,
            ..FakePrinter::standard()
        };
        let (out, _) = run(&f, &desired(&[("sysLocation", t("x"))])).await;
        assert_eq!(codes(&out), vec![("sysLocation".into(), 202, 1)]);
    }

    #[tokio::test(start_paused = true)]
    async fn set_answered_with_no_such_instance_is_404() {
        // snmpsim's behaviour: error-status noError, varbind noSuchInstance.
        let q = FakePrinter {
            set_answer: Some(SnmpValue::NoSuchInstance),
            ..FakePrinter::standard()
        };
        q.values.lock().unwrap().insert(
            o("1.3.6.1.2.1.1.6.0"),
            SnmpValue::OctetString(b"a".to_vec()),
        );
        let (out, _) = run(&q, &desired(&[("sysLocation", t("x"))])).await;
        assert_eq!(codes(&out), vec![("sysLocation".into(), 404, 1)]);
    }

    #[tokio::test(start_paused = true)]
    async fn settings_share_one_set_pdu() {
        let f = FakePrinter::standard();
        let cfg = desired(&[
            ("sysContact", t("a")),
            ("sysLocation", t("b")),
            ("sysName", t("c")),
        ]);
        let (out, _) = run(&f, &cfg).await;
        assert_eq!(
            codes(&out),
            vec![
                ("sysContact".into(), 200, 1),
                ("sysLocation".into(), 200, 1),
                ("sysName".into(), 200, 1)
            ]
        );
        assert_eq!(f.batches.lock().unwrap().len(), 1, "one PDU");
        assert_eq!(f.sets.lock().unwrap().len(), 3);
        // Pre-read and read-back: two GETs in all.
        assert_eq!(*f.gets.lock().unwrap(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_batch_is_resent_one_setting_per_pdu() {
        let f = FakePrinter::standard();
        f.set_errors.lock().unwrap().insert(
            o("1.3.6.1.2.1.1.6.0"),
            vec![SnmpError::Status {
                status: ErrorStatus::NotWritable,
                index: 1,
            }],
        );
        let cfg = desired(&[
            ("sysContact", t("a")),
            ("sysLocation", t("b")),
            ("sysName", t("c")),
        ]);
        let (out, _) = run(&f, &cfg).await;
        assert_eq!(
            codes(&out),
            vec![
                ("sysContact".into(), 200, 1),
                ("sysLocation".into(), 403, 1),
                ("sysName".into(), 200, 1)
            ]
        );
        assert_eq!(out.results[1].detail, "notWritable (index 1)");
        assert_eq!(f.batches.lock().unwrap().len(), 1);
        // The batch of three, then one PDU each.
        assert_eq!(f.sets.lock().unwrap().len(), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_that_times_out_makes_everything_504_without_more_traffic() {
        // The pre-read answers; the SET does not.
        let d = FakePrinter {
            timeout_sets: true,
            ..FakePrinter::standard()
        };
        let cfg = desired(&[
            ("sysContact", t("a")),
            ("sysLocation", t("b")),
            ("prtConsoleDisable", SettingValue::Integer(4)),
        ]);
        let (out, _) = run(&d, &cfg).await;
        let c = codes(&out);
        assert!(c.iter().all(|(_, code, _)| *code == 504), "{c:?}");
        assert_eq!(
            d.sets.lock().unwrap().len(),
            3,
            "the one batch and nothing after it: {c:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn disruptive_settings_and_dependants_keep_their_own_pdus_in_profile_order() {
        let profile = Profile::parse(
            r#"
[profile]
name = "t"
[[setting]]
name = "a_ip"
oid = "1.3.6.1.2.1.1.4.0"
type = "text"
disruptive = true
[[setting]]
name = "b"
oid = "1.3.6.1.2.1.1.5.0"
type = "text"
requires = ["c"]
[[setting]]
name = "c"
oid = "1.3.6.1.2.1.1.6.0"
type = "text"
[[setting]]
name = "d"
oid = "1.3.6.1.2.1.43.5.1.1.16.1"
type = "text"
"#,
            "t.toml",
        )
        .unwrap();
        let f = FakePrinter::standard();
        f.values.lock().unwrap().insert(
            o("1.3.6.1.2.1.43.5.1.1.16.1"),
            SnmpValue::OctetString(b"old".to_vec()),
        );
        let cfg = desired(&[
            ("a_ip", t("1")),
            ("b", t("2")),
            ("c", t("3")),
            ("d", t("4")),
        ]);
        let mut dev = None;
        let out = apply(&f, &profile, &cfg, &mut dev, &params(), || false).await;
        assert!(
            out.results.iter().all(|r| r.code == Code::Verified),
            "{:?}",
            codes(&out)
        );
        // c and d together; then b (needs c), then a_ip (disruptive) last.
        assert_eq!(
            *f.batches.lock().unwrap(),
            vec![vec![o("1.3.6.1.2.1.1.6.0"), o("1.3.6.1.2.1.43.5.1.1.16.1")]]
        );
        assert_eq!(
            f.sets.lock().unwrap()[2..],
            [o("1.3.6.1.2.1.1.5.0"), o("1.3.6.1.2.1.1.4.0")]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn newer_version_supersedes_the_rest() {
        let f = FakePrinter::standard();
        let cfg = desired(&[
            ("sysContact", t("a")),
            ("sysLocation", t("b")),
            ("sysName", t("c")),
        ]);
        let mut dev = None;
        let calls = std::cell::Cell::new(0);
        // One PDU per setting, so a newer version can interrupt between them (a
        // batch is one PDU: it is checked once, before it is sent).
        let out = apply(
            &f,
            &Profile::builtin_default(),
            &cfg,
            &mut dev,
            &ApplyParams {
                batch_set: false,
                ..params()
            },
            || {
                calls.set(calls.get() + 1);
                calls.get() > 1
            },
        )
        .await;
        assert!(out.superseded);
        assert_eq!(
            codes(&out),
            vec![
                ("sysContact".into(), 200, 1),
                ("sysLocation".into(), 409, 0),
                ("sysName".into(), 409, 0)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn printer_without_printer_row_gets_404_for_printer_mib_settings() {
        let f = FakePrinter::standard();
        f.values
            .lock()
            .unwrap()
            .retain(|k, _| !k.starts_with(&o(crate::snmp::printer_mib::HR_DEVICE_TYPE)));
        let cfg = desired(&[
            ("sysLocation", t("x")),
            ("prtInputDefaultIndex", SettingValue::Integer(2)),
        ]);
        let (out, dev) = run(&f, &cfg).await;
        assert_eq!(dev, None);
        assert_eq!(
            codes(&out),
            vec![
                ("prtInputDefaultIndex".into(), 404, 0),
                ("sysLocation".into(), 200, 1)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn v1_no_such_name_on_get_is_isolated() {
        let v1 = FakePrinter {
            v1: true,
            ..FakePrinter::standard()
        };
        v1.values.lock().unwrap().remove(&o("1.3.6.1.2.1.1.5.0"));
        let cfg = desired(&[("sysName", t("x")), ("sysLocation", t("y"))]);
        let (out, _) = run(&v1, &cfg).await;
        assert_eq!(
            codes(&out),
            vec![("sysLocation".into(), 200, 1), ("sysName".into(), 404, 0)]
        );
    }
}
