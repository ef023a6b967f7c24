//! SNMP behind a small trait of ours.
//!
//! The reconciler talks to printers through [`Snmp`], with our own [`ObjectId`],
//! [`SnmpValue`] and [`SnmpError`] types, so the SNMP library is one module deep and
//! unit tests can use a scripted fake. [`AsyncSnmp`] implements it with the
//! `async-snmp` crate (pinned exactly in the workspace manifest). Many printers share
//! one UDP socket ([`SharedTransport`]).
//!
//! Communities are handed to async-snmp and never formatted by this module.

pub mod printer_mib;
pub(crate) mod reads;
pub(crate) mod verdict;

use crate::secret::Secret;
use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

/// A numeric OID.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectId(pub Vec<u32>);

impl ObjectId {
    pub fn child(&self, arc: u32) -> ObjectId {
        let mut v = self.0.clone();
        v.push(arc);
        ObjectId(v)
    }
    pub fn starts_with(&self, prefix: &ObjectId) -> bool {
        self.0.starts_with(&prefix.0)
    }
}

impl FromStr for ObjectId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.strip_prefix('.').unwrap_or(s);
        let arcs: Result<Vec<u32>, _> = s.split('.').map(|a| a.parse::<u32>()).collect();
        match arcs {
            Ok(a) if a.len() >= 2 && a.len() <= 128 => Ok(ObjectId(a)),
            Ok(_) => Err(format!("OID {s:?} must have 2 to 128 arcs")),
            Err(_) => Err(format!(
                "OID {s:?} is not numeric (dotted decimal, e.g. 1.3.6.1.2.1.1.6.0)"
            )),
        }
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for a in &self.0 {
            if !first {
                f.write_str(".")?;
            }
            write!(f, "{a}")?;
            first = false;
        }
        Ok(())
    }
}

/// A value read from or written to a printer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnmpValue {
    Integer(i64),
    OctetString(Vec<u8>),
    ObjectId(ObjectId),
    /// Counter32, Gauge32, TimeTicks, Counter64 and the like.
    Unsigned(u64),
    Null,
    NoSuchObject,
    NoSuchInstance,
    EndOfMibView,
    /// Any other type, described.
    Other(String),
}

impl SnmpValue {
    pub fn is_exception(&self) -> bool {
        matches!(
            self,
            SnmpValue::NoSuchObject | SnmpValue::NoSuchInstance | SnmpValue::EndOfMibView
        )
    }
}

/// SNMP error-status values (RFC 3416), by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorStatus {
    TooBig,
    NoSuchName,
    BadValue,
    ReadOnly,
    GenErr,
    NoAccess,
    WrongType,
    WrongLength,
    WrongEncoding,
    WrongValue,
    NoCreation,
    InconsistentValue,
    ResourceUnavailable,
    CommitFailed,
    UndoFailed,
    AuthorizationError,
    NotWritable,
    InconsistentName,
    Other(i32),
}

impl fmt::Display for ErrorStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ErrorStatus::TooBig => "tooBig",
            ErrorStatus::NoSuchName => "noSuchName",
            ErrorStatus::BadValue => "badValue",
            ErrorStatus::ReadOnly => "readOnly",
            ErrorStatus::GenErr => "genErr",
            ErrorStatus::NoAccess => "noAccess",
            ErrorStatus::WrongType => "wrongType",
            ErrorStatus::WrongLength => "wrongLength",
            ErrorStatus::WrongEncoding => "wrongEncoding",
            ErrorStatus::WrongValue => "wrongValue",
            ErrorStatus::NoCreation => "noCreation",
            ErrorStatus::InconsistentValue => "inconsistentValue",
            ErrorStatus::ResourceUnavailable => "resourceUnavailable",
            ErrorStatus::CommitFailed => "commitFailed",
            ErrorStatus::UndoFailed => "undoFailed",
            ErrorStatus::AuthorizationError => "authorizationError",
            ErrorStatus::NotWritable => "notWritable",
            ErrorStatus::InconsistentName => "inconsistentName",
            ErrorStatus::Other(n) => return write!(f, "errorStatus({n})"),
        };
        f.write_str(s)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnmpError {
    /// No answer after the configured retries.
    #[error("no answer from {target} after {retries} retries")]
    Timeout { target: String, retries: u32 },
    /// The printer answered with an error status; `index` is 1-based (0 = whole PDU).
    #[error("{status} (index {index})")]
    Status { status: ErrorStatus, index: u32 },
    #[error("network error: {0}")]
    Network(String),
    #[error("malformed response: {0}")]
    Malformed(String),
    /// SNMPv3: authentication or privacy failed, unknown user, time window, engine
    /// discovery (the agent's message says which).
    #[error("SNMPv3 security: {0}")]
    Security(String),
    #[error("{0}")]
    Other(String),
}

impl Target {
    /// Connection parameters for a printer from its config entry.
    pub fn of(p: &crate::config::PrinterConfig) -> Target {
        use crate::config::SnmpVersion;
        Target {
            address: p.address.clone(),
            port: p.port,
            credentials: match (&p.snmp_version, &p.v3) {
                (SnmpVersion::V3, Some(v3)) => Credentials::V3(v3.clone()),
                (SnmpVersion::V1, _) => Credentials::V1(p.community.clone()),
                _ => Credentials::V2c(p.community.clone()),
            },
            timeout: p.timeout(),
            retries: p.retries,
        }
    }
}

impl SnmpError {
    /// The error's kind, as the metrics label it.
    pub fn kind(&self) -> &'static str {
        match self {
            SnmpError::Timeout { .. } => "timeout",
            SnmpError::Status { .. } => "status",
            SnmpError::Network(_) => "network",
            SnmpError::Malformed(_) => "malformed",
            SnmpError::Security(_) => "security",
            SnmpError::Other(_) => "other",
        }
    }
}

/// What the agent needs from SNMP. One instance talks to one printer.
pub trait Snmp: Send + Sync {
    /// GET several objects in one request; one value per OID, in order.
    fn get(
        &self,
        oids: &[ObjectId],
    ) -> impl Future<Output = Result<Vec<SnmpValue>, SnmpError>> + Send;
    /// SET one object; returns the value in the response varbind.
    fn set(
        &self,
        oid: &ObjectId,
        value: SnmpValue,
    ) -> impl Future<Output = Result<SnmpValue, SnmpError>> + Send;
    /// SET several objects in one PDU; one response value per object, in order. An
    /// RFC 3416 agent applies all or none; an error names the first failing object
    /// by its 1-based index. Clients that cannot send one answer `Unsupported`.
    fn set_many(
        &self,
        items: &[(ObjectId, SnmpValue)],
    ) -> impl Future<Output = Result<Vec<SnmpValue>, SnmpError>> + Send {
        let n = items.len();
        async move {
            Err(SnmpError::Other(format!(
                "this client does not send a SET of {n} objects in one PDU"
            )))
        }
    }
    /// GET asked once, without the retries: how a printer already known to be down
    /// is probed, so it costs one timeout per poll instead of timeout × attempts.
    fn get_once(
        &self,
        oids: &[ObjectId],
    ) -> impl Future<Output = Result<Vec<SnmpValue>, SnmpError>> + Send {
        self.get(oids)
    }
    /// Walk a subtree (GETNEXT), at most `limit` rows.
    fn walk(
        &self,
        prefix: &ObjectId,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<(ObjectId, SnmpValue)>, SnmpError>> + Send;
}

// ---------------------------------------------------------------------------
// async-snmp implementation

use async_snmp::transport::{UdpHandle, UdpTransport};
use async_snmp::{Auth, Client, Oid, Retry, Value};

/// Receive buffer asked for the shared socket. The Linux default (208 KiB) held
/// fewer responses than 128 printers × 2 requests in flight send back at once:
/// `platen-bench` saw datagrams dropped (`RcvbufErrors` in /proc/net/snmp) and
/// sweeps waiting a whole timeout for them. The kernel caps this at
/// `net.core.rmem_max` (the guide: tuning for large fleets).
pub const RECV_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// One UDP socket shared by every printer of an agent.
#[derive(Clone)]
pub struct SharedTransport(UdpTransport);

impl SharedTransport {
    pub async fn bind() -> Result<Self, SnmpError> {
        UdpTransport::builder()
            .bind("0.0.0.0:0")
            .recv_buffer_size(RECV_BUFFER_BYTES)
            .build()
            .await
            .map(SharedTransport)
            .map_err(|e| SnmpError::Network(e.to_string()))
    }

    /// Datagrams answered and requests expired so far on this socket.
    pub fn stats(&self) -> (u64, u64) {
        let s = self.0.stats();
        (s.correlated_datagrams, s.expired_registrations)
    }
}

/// How the agent authenticates to one printer.
#[derive(Clone, Debug)]
pub enum Credentials {
    V1(Secret),
    V2c(Secret),
    V3(crate::config::V3Config),
}

impl Credentials {
    /// The well-known community this printer is written with, if it is one
    /// (`public`, `private`): anyone on its network can then reconfigure it.
    pub fn default_community(&self) -> Option<&'static str> {
        match self {
            Credentials::V1(c) | Credentials::V2c(c) => {
                ["public", "private"].into_iter().find(|d| c.expose() == *d)
            }
            Credentials::V3(_) => None,
        }
    }

    /// async-snmp's form. The passwords leave their [`Secret`] only here.
    fn auth(&self) -> Result<Auth, SnmpError> {
        use crate::config::{V3Auth, V3Priv};
        use async_snmp::{AuthProtocol as A, PrivProtocol as P};
        Ok(match self {
            Credentials::V1(c) => Auth::v1(c.expose().to_string()),
            Credentials::V2c(c) => Auth::v2c(c.expose().to_string()),
            Credentials::V3(v) => {
                let auth = match v.auth_protocol {
                    V3Auth::Sha224 => A::Sha224,
                    V3Auth::Sha256 => A::Sha256,
                    V3Auth::Sha384 => A::Sha384,
                    V3Auth::Sha512 => A::Sha512,
                };
                let privacy = match v.priv_protocol {
                    V3Priv::Aes128 => P::Aes128,
                    V3Priv::Aes192 => P::Aes192Blumenthal,
                    V3Priv::Aes256 => P::Aes256Blumenthal,
                };
                async_snmp::UsmConfig::new(v.user.clone().into_bytes())
                    .auth_priv(
                        auth,
                        v.auth_password.expose(),
                        privacy,
                        v.priv_password.expose(),
                    )
                    // The crate's message names the problem, never the password.
                    .map_err(|e| SnmpError::Security(format!("SNMPv3 user {}: {e}", v.user)))?
                    .into()
            }
        })
    }
}

/// Connection parameters for one printer.
#[derive(Clone, Debug)]
pub struct Target {
    pub address: String,
    pub port: u16,
    pub credentials: Credentials,
    pub timeout: Duration,
    pub retries: u32,
}

/// [`Snmp`] over async-snmp. Cheap to clone (clones share the socket).
#[derive(Clone)]
pub struct AsyncSnmp {
    client: Client<UdpHandle>,
    /// The same printer without retries (for [`Snmp::get_once`]).
    once: Client<UdpHandle>,
    target: String,
    retries: u32,
    /// Latency/error recording for the printer; `None` for one-off clients (diag, discover).
    probe: Option<std::sync::Arc<crate::observe::metrics::SnmpProbe>>,
    /// SNMPv3: the printer's engine id as discovered, watched for changes.
    engine: Option<std::sync::Arc<EngineWatch>>,
}

/// Watches an SNMPv3 printer's engine id. A different id at the same address means
/// another device (or a reset one) answers there: worth a warning, since the
/// credentials were accepted by a device nobody may have meant to configure.
pub struct EngineWatch {
    cache: std::sync::Arc<async_snmp::EngineCache>,
    addr: std::net::SocketAddr,
    last: std::sync::Mutex<Option<bytes::Bytes>>,
}

impl EngineWatch {
    fn check(&self, target: &str) {
        let addr = self.addr;
        let Some(now) = self.cache.get(&addr).map(|s| s.engine_id().clone()) else {
            return;
        };
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match last.as_ref() {
            Some(prev) if *prev != now => {
                tracing::warn!(
                    target_addr = target,
                    previous = %hex(prev),
                    now = %hex(&now),
                    "SNMPv3 engine id changed: another or a reset device answers at this address"
                );
                *last = Some(now);
            }
            Some(_) => {}
            None => {
                tracing::debug!(target_addr = target, engine_id = %hex(&now), "SNMPv3 engine discovered");
                *last = Some(now);
            }
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl AsyncSnmp {
    pub async fn connect(t: &Target, transport: &SharedTransport) -> Result<Self, SnmpError> {
        let auth = t.credentials.auth()?;
        let engines = matches!(t.credentials, Credentials::V3(_))
            .then(|| std::sync::Arc::new(async_snmp::EngineCache::new()));
        let engines = &engines;
        let build = |retries: u32, auth: Auth| async move {
            let retry = Retry::fixed(retries, Duration::ZERO)
                .map_err(|e| SnmpError::Other(e.to_string()))?;
            let mut b = Client::builder((t.address.as_str(), t.port), auth);
            if let Some(cache) = &engines {
                // Both clients share what engine discovery learnt.
                b = b.engine_cache(cache.clone());
            }
            b.request_timeout(t.timeout)
                .retry(retry)
                .strict_source(true)
                .build_with(&transport.0)
                .await
                .map_err(|e| convert_error(*e, retries))
        };
        let client = build(t.retries, auth.clone()).await?;
        let once = build(0, auth).await?;
        let engine = engines.as_ref().map(|cache| {
            std::sync::Arc::new(EngineWatch {
                cache: cache.clone(),
                // The address the client resolved: the engine cache's key.
                addr: client.peer_addr(),
                last: std::sync::Mutex::new(None),
            })
        });
        Ok(AsyncSnmp {
            client,
            once,
            target: format!("{}:{}", t.address, t.port),
            retries: t.retries,
            probe: None,
            engine,
        })
    }

    /// Record latency and errors of this client's requests under `printer`.
    pub fn with_metrics(mut self, printer: &str) -> Self {
        self.probe = Some(std::sync::Arc::new(
            crate::observe::metrics::get().snmp_probe(printer),
        ));
        self
    }

    fn record<T>(
        &self,
        op: crate::observe::metrics::SnmpOp,
        started: std::time::Instant,
        r: &Result<T, SnmpError>,
    ) {
        if let Some(p) = &self.probe {
            p.record(op, started.elapsed(), r.as_ref().err().map(SnmpError::kind));
        }
        if let Some(w) = &self.engine {
            w.check(&self.target);
        }
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    /// Run `op`; for SNMPv3 printers, look closer at a timeout.
    ///
    /// async-snmp drops a printer's unauthenticated Reports ("wrong digest",
    /// "unknown user", "unknown engine id": an attacker could forge them), so wrong
    /// credentials and a replaced device both look like a timeout. Engine discovery
    /// (an unauthenticated exchange) tells them apart:
    /// - no answer: the printer is down (the timeout stands);
    /// - another engine id than the one in use: the device was replaced or reset;
    ///   the new engine is used from now on ([`EngineWatch`] warns) and `op` is tried
    ///   once more;
    /// - the same engine: it is there and refused our keys ([`SnmpError::Security`]).
    async fn with_v3_checks<T, F, Fut>(&self, op: F) -> Result<T, SnmpError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, SnmpError>>,
    {
        let r = op().await;
        let (Err(SnmpError::Timeout { .. }), Some(watch)) = (&r, &self.engine) else {
            return r;
        };
        let addr = watch.addr;
        let used = watch.cache.get(&addr).map(|e| e.engine_id().clone());
        if self.client.rediscover_engine().await.is_err() {
            return r;
        }
        let now = watch.cache.get(&addr).map(|e| e.engine_id().clone());
        if now != used {
            let _ = self.once.rediscover_engine().await;
            return op().await;
        }
        Err(SnmpError::Security(format!(
            "{} answers, but not to authenticated requests: check the user, \
             auth/priv protocols and passwords",
            self.target
        )))
    }
}

fn to_oid(o: &ObjectId) -> Oid {
    Oid::from(o.0.clone())
}

fn from_oid(o: &Oid) -> ObjectId {
    ObjectId(o.arcs().to_vec())
}

/// Convert an async-snmp value (also used to load recordings in tests).
pub fn from_value(v: &Value) -> SnmpValue {
    match v {
        Value::Integer(i) => SnmpValue::Integer(i64::from(*i)),
        Value::OctetString(b) => SnmpValue::OctetString(b.to_vec()),
        Value::ObjectIdentifier(o) => SnmpValue::ObjectId(from_oid(o)),
        Value::Counter32(n) | Value::Gauge32(n) | Value::UInteger32(n) | Value::TimeTicks(n) => {
            SnmpValue::Unsigned(u64::from(*n))
        }
        Value::Counter64(n) => SnmpValue::Unsigned(*n),
        Value::Null => SnmpValue::Null,
        Value::NoSuchObject => SnmpValue::NoSuchObject,
        Value::NoSuchInstance => SnmpValue::NoSuchInstance,
        Value::EndOfMibView => SnmpValue::EndOfMibView,
        other => SnmpValue::Other(format!("{other:?}")),
    }
}

fn to_value(v: SnmpValue) -> Result<Value, SnmpError> {
    match v {
        SnmpValue::Integer(i) => i32::try_from(i)
            .map(Value::Integer)
            .map_err(|_| SnmpError::Other(format!("integer {i} does not fit INTEGER (32 bits)"))),
        SnmpValue::OctetString(b) => Ok(Value::OctetString(bytes::Bytes::from(b))),
        SnmpValue::ObjectId(o) => Ok(Value::ObjectIdentifier(to_oid(&o))),
        other => Err(SnmpError::Other(format!(
            "cannot SET a value of this kind: {other:?}"
        ))),
    }
}

fn convert_status(s: &async_snmp::ErrorStatus) -> ErrorStatus {
    use async_snmp::ErrorStatus as E;
    match s {
        E::TooBig => ErrorStatus::TooBig,
        E::NoSuchName => ErrorStatus::NoSuchName,
        E::BadValue => ErrorStatus::BadValue,
        E::ReadOnly => ErrorStatus::ReadOnly,
        E::GenErr => ErrorStatus::GenErr,
        E::NoAccess => ErrorStatus::NoAccess,
        E::WrongType => ErrorStatus::WrongType,
        E::WrongLength => ErrorStatus::WrongLength,
        E::WrongEncoding => ErrorStatus::WrongEncoding,
        E::WrongValue => ErrorStatus::WrongValue,
        E::NoCreation => ErrorStatus::NoCreation,
        E::InconsistentValue => ErrorStatus::InconsistentValue,
        E::ResourceUnavailable => ErrorStatus::ResourceUnavailable,
        E::CommitFailed => ErrorStatus::CommitFailed,
        E::UndoFailed => ErrorStatus::UndoFailed,
        E::AuthorizationError => ErrorStatus::AuthorizationError,
        E::NotWritable => ErrorStatus::NotWritable,
        E::InconsistentName => ErrorStatus::InconsistentName,
        E::Unknown(n) => ErrorStatus::Other(*n),
        // NoError as an error, or a future variant: keep the number-less name.
        _ => ErrorStatus::Other(-1),
    }
}

fn convert_error(e: async_snmp::Error, retries: u32) -> SnmpError {
    use async_snmp::Error as E;
    match e {
        E::SharedOperation { source } => convert_error(clone_error(&source), retries),
        E::Exchange { source, .. } => convert_error(*source, retries),
        E::Timeout {
            target, retries, ..
        } => SnmpError::Timeout {
            target: target.to_string(),
            retries,
        },
        E::ConstructionTimeout { target, .. } => SnmpError::Timeout {
            target: format!("{target:?}"),
            retries,
        },
        E::Snmp { status, index, .. } => SnmpError::Status {
            status: convert_status(&status),
            index,
        },
        E::Network { source, .. } => SnmpError::Network(source.to_string()),
        E::Decode(d) => SnmpError::Malformed(d.to_string()),
        E::MalformedResponse { target } => SnmpError::Malformed(format!("from {target}")),
        E::ResponseShape { target, .. } => {
            SnmpError::Malformed(format!("unexpected response shape from {target}"))
        }
        e @ (E::Report { .. } | E::Auth { .. } | E::Privacy(_)) => {
            SnmpError::Security(e.to_string())
        }
        E::WalkAborted { target, reason } => {
            SnmpError::Malformed(format!("walk of {target} aborted: {reason}"))
        }
        other => SnmpError::Other(other.to_string()),
    }
}

/// `SharedOperation` holds an `Arc<Error>`; we only need its classification.
fn clone_error(e: &async_snmp::Error) -> async_snmp::Error {
    use async_snmp::Error as E;
    match e {
        E::Timeout {
            target,
            elapsed,
            retries,
        } => E::Timeout {
            target: *target,
            elapsed: *elapsed,
            retries: *retries,
        },
        other => E::Config(other.to_string().into()),
    }
}

impl Snmp for AsyncSnmp {
    async fn get(&self, oids: &[ObjectId]) -> Result<Vec<SnmpValue>, SnmpError> {
        let started = std::time::Instant::now();
        let r = self
            .with_v3_checks(|| self.get_inner(&self.client, self.retries, oids))
            .await;
        self.record(crate::observe::metrics::SnmpOp::Get, started, &r);
        r
    }

    async fn set(&self, oid: &ObjectId, value: SnmpValue) -> Result<SnmpValue, SnmpError> {
        let started = std::time::Instant::now();
        let r = self
            .with_v3_checks(|| self.set_inner(oid, value.clone()))
            .await;
        self.record(crate::observe::metrics::SnmpOp::Set, started, &r);
        r
    }

    async fn set_many(&self, items: &[(ObjectId, SnmpValue)]) -> Result<Vec<SnmpValue>, SnmpError> {
        let started = std::time::Instant::now();
        let r = self.with_v3_checks(|| self.set_many_inner(items)).await;
        self.record(crate::observe::metrics::SnmpOp::Set, started, &r);
        r
    }

    async fn get_once(&self, oids: &[ObjectId]) -> Result<Vec<SnmpValue>, SnmpError> {
        let started = std::time::Instant::now();
        let r = self.get_inner(&self.once, 0, oids).await;
        self.record(crate::observe::metrics::SnmpOp::Get, started, &r);
        r
    }

    async fn walk(
        &self,
        prefix: &ObjectId,
        limit: usize,
    ) -> Result<Vec<(ObjectId, SnmpValue)>, SnmpError> {
        let started = std::time::Instant::now();
        let r = self.with_v3_checks(|| self.walk_inner(prefix, limit)).await;
        self.record(crate::observe::metrics::SnmpOp::Walk, started, &r);
        r
    }
}

impl AsyncSnmp {
    /// One GET through `client` (the retrying one or [`AsyncSnmp::once`]), with the
    /// answer checked against the request.
    async fn get_inner(
        &self,
        client: &Client<UdpHandle>,
        retries: u32,
        oids: &[ObjectId],
    ) -> Result<Vec<SnmpValue>, SnmpError> {
        let req: Vec<Oid> = oids.iter().map(to_oid).collect();
        let resp = client
            .get_many(&req)
            .await
            .map_err(|e| convert_error(*e, retries))?;
        if resp.varbinds.len() != oids.len() {
            return Err(SnmpError::Malformed(format!(
                "asked for {} objects, got {}",
                oids.len(),
                resp.varbinds.len()
            )));
        }
        let mut out = Vec::with_capacity(oids.len());
        for (vb, want) in resp.varbinds.iter().zip(oids) {
            if from_oid(&vb.oid) != *want {
                return Err(SnmpError::Malformed(format!(
                    "asked for {want}, got {}",
                    vb.oid
                )));
            }
            out.push(from_value(&vb.value));
        }
        Ok(out)
    }

    async fn set_inner(&self, oid: &ObjectId, value: SnmpValue) -> Result<SnmpValue, SnmpError> {
        let v = to_value(value)?;
        let resp = self
            .client
            .set(&to_oid(oid), v)
            .await
            .map_err(|e| convert_error(*e, self.retries))?;
        match resp.varbinds.first() {
            Some(vb) => Ok(from_value(&vb.value)),
            None => Err(SnmpError::Malformed("SET response without varbinds".into())),
        }
    }

    async fn set_many_inner(
        &self,
        items: &[(ObjectId, SnmpValue)],
    ) -> Result<Vec<SnmpValue>, SnmpError> {
        let mut req = Vec::with_capacity(items.len());
        for (o, v) in items {
            req.push((to_oid(o), to_value(v.clone())?));
        }
        let resp = self
            .client
            .set_many(&req)
            .await
            .map_err(|e| convert_error(*e, self.retries))?;
        if resp.varbinds.len() != items.len() {
            return Err(SnmpError::Malformed(format!(
                "set {} objects, the response has {}",
                items.len(),
                resp.varbinds.len()
            )));
        }
        Ok(resp
            .varbinds
            .iter()
            .map(|vb| from_value(&vb.value))
            .collect())
    }

    async fn walk_inner(
        &self,
        prefix: &ObjectId,
        limit: usize,
    ) -> Result<Vec<(ObjectId, SnmpValue)>, SnmpError> {
        let mut stream = self
            .client
            .walk(to_oid(prefix))
            .map_err(|e| convert_error(*e, self.retries))?;
        let mut out = Vec::new();
        while let Some(item) = stream.next().await {
            let vb = item.map_err(|e| convert_error(*e, self.retries))?;
            out.push((from_oid(&vb.oid), from_value(&vb.value)));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }
}

/// SNMP notifications (traps, informs; v1/v2c with one of the given communities)
/// received on a socket. Only each one's source address comes out: Platen never takes
/// a notification's contents as data (see `crate::telemetry::traps`).
pub struct Notifications(async_snmp::notification::NotificationReceiver);

impl Notifications {
    pub async fn bind(
        addr: std::net::SocketAddr,
        communities: &[crate::secret::Secret],
    ) -> Result<Notifications, String> {
        let mut b =
            async_snmp::notification::NotificationReceiver::builder().bind(addr.to_string());
        for c in communities {
            b = b.community(c.expose());
        }
        b.build()
            .await
            .map(Notifications)
            .map_err(|e| format!("cannot listen for SNMP notifications on {addr}: {e}"))
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.0.local_addr()
    }

    /// The source of the next acceptable notification (an inform is answered).
    pub async fn next_source(&self) -> Result<std::net::SocketAddr, String> {
        self.0
            .recv()
            .await
            .map(|n| n.source)
            .map_err(|e| e.to_string())
    }
}

/// A shared fake is a client: a unit test keeps one handle to inspect what the
/// printer was asked while the code under test owns the other. (`AsyncSnmp` itself
/// clones cheaply; nothing outside the tests needs this.)
#[cfg(test)]
impl<T: Snmp> Snmp for std::sync::Arc<T> {
    fn get(
        &self,
        oids: &[ObjectId],
    ) -> impl Future<Output = Result<Vec<SnmpValue>, SnmpError>> + Send {
        (**self).get(oids)
    }
    fn set(
        &self,
        oid: &ObjectId,
        value: SnmpValue,
    ) -> impl Future<Output = Result<SnmpValue, SnmpError>> + Send {
        (**self).set(oid, value)
    }
    fn set_many(
        &self,
        items: &[(ObjectId, SnmpValue)],
    ) -> impl Future<Output = Result<Vec<SnmpValue>, SnmpError>> + Send {
        (**self).set_many(items)
    }
    fn get_once(
        &self,
        oids: &[ObjectId],
    ) -> impl Future<Output = Result<Vec<SnmpValue>, SnmpError>> + Send {
        (**self).get_once(oids)
    }
    fn walk(
        &self,
        prefix: &ObjectId,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<(ObjectId, SnmpValue)>, SnmpError>> + Send {
        (**self).walk(prefix, limit)
    }
}

#[cfg(test)]
pub(crate) mod fake;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oids_parse_and_print() {
        let o: ObjectId = "1.3.6.1.2.1.1.6.0".parse().unwrap();
        assert_eq!(o.to_string(), "1.3.6.1.2.1.1.6.0");
        assert_eq!(".1.3.6".parse::<ObjectId>().unwrap().to_string(), "1.3.6");
        for bad in ["", "1", "1.x.3", "1..3", "1.3.99999999999", "sysLocation.0"] {
            assert!(bad.parse::<ObjectId>().is_err(), "{bad}");
        }
    }
}
