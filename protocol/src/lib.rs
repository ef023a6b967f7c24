//! Platen's wire protocol: MQTT topics, message types and per-setting reason codes.
//!
//! This crate does no I/O. Everything that crosses the broker between the cloud and
//! an agent is defined here, so both sides parse and format it the same way:
//!
//! - [`topics`]: versioned topics as types (`platen/v1/{tenant}/{printer}/config/desired`, …)
//!   that parse and format, rejecting wildcards and invalid ids.
//! - [`DesiredConfig`]: what the cloud wants a printer to look like (retained, QoS 1).
//! - [`ApplyReport`]: what the agent did about it, per setting, with a [`Code`].
//! - [`Health`]: the agent's retained liveness message (its last will says `down`).
//! - [`Telemetry`]: counters, supplies, status, alerts and derived events.
//! - [`DriftReport`]: verified settings changed outside Platen (code 203).
//! - [`diag`]: remote diagnostics request and response.
//! - [`codec`]: strict decoding with a size limit; unknown fields are errors (but in a
//!   message of a newer minor version); every message carries `"protocol": "1.2"` and
//!   a newer major version is refused.
//!
//! The codes are documented in the guide's protocol page (`docs/src/protocol.md`); golden examples live in
//! `protocol/golden/` and are round-tripped by the tests.

pub mod codec;
pub mod config;
pub mod diag;
pub mod drift;
pub mod health;
pub mod ids;
pub mod report;
pub mod signing;
pub mod telemetry;
pub mod topics;

pub use codec::{
    decode, encode, DecodeError, MAX_INCOMING_PACKET_BYTES, MAX_MESSAGE_BYTES, PROTOCOL_VERSION,
};
pub use config::{DesiredConfig, SettingValue, MAX_SETTINGS};
pub use diag::{DiagRequest, DiagResponse, PrinterDiag};
pub use drift::{DriftReport, DriftedSetting};
pub use health::{Health, HealthStatus};
pub use ids::{Id, IdError};
pub use report::{ApplyReport, Code, Refusal, ReportStatus, SettingResult};
pub use signing::{ConfigSignature, SignatureError, Signer, TrustedKeys};
pub use telemetry::Telemetry;
pub use topics::{Topic, TopicError};
