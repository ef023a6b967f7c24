//! Fixtures shared by the end-to-end tests on the cloud side: ids, desired configs,
//! an in-process cloud link, waiting for a report.

use super::*;
use platen_cloud::model::ReceivedReport;
use platen_cloud::Cloud;
use platen_protocol::{Code, DesiredConfig, Id, SettingValue};
use std::collections::BTreeMap;

pub fn tenant() -> Id {
    "acme".parse().unwrap()
}

pub fn desired(printer: &str, version: u64, settings: &[(&str, SettingValue)]) -> DesiredConfig {
    DesiredConfig {
        printer_id: printer.parse().unwrap(),
        version,
        issued_at: chrono::Utc::now(),
        settings: settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
        signature: None,
    }
}

pub fn t(s: &str) -> SettingValue {
    SettingValue::Text(s.into())
}

pub async fn start_cloud(port: u16, dir: &std::path::Path) -> Cloud {
    let cloud = Cloud::start("127.0.0.1", port, "platen-cloud-test", &dir.join("cloud")).unwrap();
    assert!(
        cloud.wait_connected(Duration::from_secs(10)).await,
        "cloud could not connect"
    );
    cloud
}

pub async fn wait_report(
    cloud: &Cloud,
    report_id: &str,
    within: Duration,
    agent: &AgentProc,
) -> ReceivedReport {
    let end = tokio::time::Instant::now() + within;
    loop {
        if let Some(r) = cloud.report(report_id) {
            return r;
        }
        if tokio::time::Instant::now() > end {
            panic!(
                "report {report_id} did not arrive within {within:?}\n--- agent log ---\n{}",
                agent.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn code_of(r: &ReceivedReport, name: &str) -> Code {
    r.report
        .settings
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no setting {name}"))
        .code
}
