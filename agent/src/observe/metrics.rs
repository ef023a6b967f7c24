//! Prometheus metrics (`[metrics] enabled = true` → `GET http://{listen}/metrics`).
//!
//! Counters and histograms are recorded where things happen (process-wide, like
//! Prometheus' default registry: recording is a few atomic operations whether or not
//! the endpoint is on). Gauges that mirror state (outbox depth and age, telemetry
//! staleness, uptime, broker connection) are read from the store and the status board
//! at scrape time, so they are never stale.
//!
//! | series | type | labels |
//! |---|---|---|
//! | `platen_agent_info` | gauge (1) | `version`, `commit`, `protocol` |
//! | `platen_agent_uptime_seconds` | gauge | |
//! | `platen_reports_total` | counter | `status` (applied, partially_applied, not_applied, superseded) |
//! | `platen_report_settings_total` | counter | `code` (200, 403, 505, …; a refused config counts its refusal code 401/505) |
//! | `platen_outbox_depth` | gauge | |
//! | `platen_outbox_oldest_age_seconds` | gauge | (0 when empty) |
//! | `platen_snmp_request_duration_seconds` | histogram | `printer`, `op` (get, set, walk) |
//! | `platen_snmp_errors_total` | counter | `printer`, `kind` (timeout, status, network, malformed, security, other) |
//! | `platen_mqtt_connected` | gauge (0/1) | |
//! | `platen_mqtt_reconnects_total` | counter | |
//! | `platen_inbound_refused_total` | counter | `topic` (desired, diag), `reason` (malformed, oversized, wrong_printer, unknown_printer, stale, signature, protocol, invalid_topic) |
//! | `platen_telemetry_age_seconds` | gauge | `printer`: time since the last good reading (since start before the first) |
//! | `platen_traps_total` | counter | `outcome` (poll, rate_limited, unknown_source) |

use crate::observe::status::Board;
use crate::store::Store;
use chrono::Utc;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Info {
    version: String,
    commit: String,
    protocol: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    printer: String,
    op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    printer: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    topic: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PrinterLabel {
    printer: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

fn latency_histogram() -> Histogram {
    // 0.5 ms … ~16 s, doubling.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The agent's metrics.
pub struct Metrics {
    started: Instant,
    registry: Registry,
    uptime: FloatGauge,
    reports: Family<StatusLabel, Counter>,
    settings: Family<CodeLabel, Counter>,
    outbox_depth: Gauge,
    outbox_age: FloatGauge,
    snmp_latency: Family<OpLabels, Histogram, fn() -> Histogram>,
    snmp_errors: Family<ErrorLabels, Counter>,
    mqtt_connected: Gauge,
    mqtt_reconnects: Counter,
    telemetry_age: Family<PrinterLabel, FloatGauge>,
    refused: Family<RefusedLabels, Counter>,
    traps: Family<OutcomeLabel, Counter>,
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("platen");
        let info = Family::<Info, Gauge>::default();
        info.get_or_create(&Info {
            version: platen_ops::version::VERSION.into(),
            commit: platen_ops::version::GIT_COMMIT.into(),
            protocol: platen_protocol::PROTOCOL_VERSION.into(),
        })
        .set(1);
        registry.register("agent_info", "Build of this agent", info);
        let m = Metrics {
            started: Instant::now(),
            uptime: FloatGauge::default(),
            reports: Family::default(),
            settings: Family::default(),
            outbox_depth: Gauge::default(),
            outbox_age: FloatGauge::default(),
            snmp_latency: Family::new_with_constructor(latency_histogram),
            snmp_errors: Family::default(),
            mqtt_connected: Gauge::default(),
            mqtt_reconnects: Counter::default(),
            telemetry_age: Family::default(),
            refused: Family::default(),
            traps: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "agent_uptime_seconds",
            "Time since the agent started",
            m.uptime.clone(),
        );
        registry.register(
            "reports",
            "Apply reports queued, by status",
            m.reports.clone(),
        );
        registry.register(
            "report_settings",
            "Settings in queued apply reports, by code (a refused config counts its refusal code)",
            m.settings.clone(),
        );
        registry.register(
            "outbox_depth",
            "Messages in the outbox not yet acknowledged by the broker",
            m.outbox_depth.clone(),
        );
        registry.register(
            "outbox_oldest_age_seconds",
            "Age of the oldest message in the outbox (0 when empty)",
            m.outbox_age.clone(),
        );
        registry.register(
            "snmp_request_duration_seconds",
            "SNMP request latency per printer and operation (with retries)",
            m.snmp_latency.clone(),
        );
        registry.register(
            "snmp_errors",
            "Failed SNMP requests per printer and kind",
            m.snmp_errors.clone(),
        );
        registry.register(
            "mqtt_connected",
            "1 while connected to the broker",
            m.mqtt_connected.clone(),
        );
        registry.register(
            "mqtt_reconnects",
            "Connections to the broker after the first",
            m.mqtt_reconnects.clone(),
        );
        registry.register(
            "telemetry_age_seconds",
            "Time since the printer's last good telemetry reading",
            m.telemetry_age.clone(),
        );
        registry.register(
            "inbound_refused",
            "Inbound MQTT messages refused, by topic kind and reason",
            m.refused.clone(),
        );
        registry.register(
            "traps",
            "SNMP notifications received from printers, by what came of them",
            m.traps.clone(),
        );
        Metrics { registry, ..m }
    }

    /// A notification arrived (`poll`, `rate_limited` or `unknown_source`).
    pub fn trap(&self, outcome: &str) {
        self.traps
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .inc();
    }

    /// An inbound message was refused (it is also logged with the reason).
    pub fn refused(&self, topic: &str, reason: &str) {
        self.refused
            .get_or_create(&RefusedLabels {
                topic: topic.into(),
                reason: reason.into(),
            })
            .inc();
    }

    /// A report was queued.
    pub fn report(&self, report: &platen_protocol::ApplyReport) {
        self.reports
            .get_or_create(&StatusLabel {
                status: report.status.as_str().into(),
            })
            .inc();
        for s in &report.settings {
            self.count_code(s.code);
        }
        if let Some(r) = &report.refused {
            self.count_code(r.code);
        }
    }

    fn count_code(&self, code: platen_protocol::Code) {
        self.settings
            .get_or_create(&CodeLabel {
                code: code.as_u16().to_string(),
            })
            .inc();
    }

    /// The histograms of one printer's requests, looked up once: recording is then
    /// an atomic update, with no label allocation on the polling hot path.
    pub fn snmp_probe(&self, printer: &str) -> SnmpProbe {
        let latency = |op: &str| {
            self.snmp_latency
                .get_or_create(&OpLabels {
                    printer: printer.into(),
                    op: op.into(),
                })
                .clone()
        };
        SnmpProbe {
            printer: printer.into(),
            get: latency("get"),
            set: latency("set"),
            walk: latency("walk"),
        }
    }

    /// The broker acknowledged a connection; `nth` counts them from 1.
    pub fn connected(&self, nth: u64) {
        if nth > 1 {
            self.mqtt_reconnects.inc();
        }
    }

    /// Refresh the state gauges and render the text exposition.
    pub fn render(&self, store: &Store, board: &Board, connected: bool) -> String {
        let now = Utc::now();
        self.uptime.set(self.started.elapsed().as_secs_f64());
        self.outbox_depth
            .set(i64::try_from(store.outbox_len()).unwrap_or(i64::MAX));
        let age = store
            .oldest_pending()
            .map(|t| (now - t).num_milliseconds().max(0) as f64 / 1000.0)
            .unwrap_or(0.0);
        self.outbox_age.set(age);
        self.mqtt_connected.set(i64::from(connected));
        let snap = board.get();
        let started = snap.started_at.unwrap_or(now);
        for (id, p) in &snap.printers {
            let since = p.last_good_at.unwrap_or(started);
            self.telemetry_age
                .get_or_create(&PrinterLabel {
                    printer: id.clone(),
                })
                .set((now - since).num_milliseconds().max(0) as f64 / 1000.0);
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        out
    }
}

/// An SNMP operation, for the latency histogram's `op` label.
#[derive(Clone, Copy, Debug)]
pub enum SnmpOp {
    Get,
    Set,
    Walk,
}

/// Records one printer's SNMP requests (see [`Metrics::snmp_probe`]).
pub struct SnmpProbe {
    printer: String,
    get: Histogram,
    set: Histogram,
    walk: Histogram,
}

impl SnmpProbe {
    /// One request took `took`, with this outcome.
    /// One request's latency, and its error's kind (`timeout`, `status`, …) when it
    /// failed.
    pub fn record(&self, op: SnmpOp, took: Duration, error_kind: Option<&'static str>) {
        let h = match op {
            SnmpOp::Get => &self.get,
            SnmpOp::Set => &self.set,
            SnmpOp::Walk => &self.walk,
        };
        h.observe(took.as_secs_f64());
        if let Some(kind) = error_kind {
            get()
                .snmp_errors
                .get_or_create(&ErrorLabels {
                    printer: self.printer.clone(),
                    kind: kind.into(),
                })
                .inc();
        }
    }
}
