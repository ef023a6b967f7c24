//! The production backend: PostgreSQL (`store.url = "postgres://…"`).
//!
//! The schema is a list of versioned SQL files ([`SCHEMA`], under `schema/`), applied
//! in order under an advisory lock when the cloud starts (or by `platen-cloud db
//! migrate`) and recorded in `platen_schema`; a database whose schema is newer than
//! this binary knows is refused. The schema states the invariants as constraints.
//!
//! The storage port is synchronous (sled is), so this backend runs tokio-postgres'
//! connection tasks on a runtime of its own (one thread) and each call waits for its
//! statements on the caller's thread (`Pool::with`): a call never needs the
//! caller's runtime, and never deadlocks it. Connections come from a small pool
//! that opens them on demand, caches prepared statements per connection and drops a
//! connection the server closed, so the store recovers by itself when the database
//! returns. Every write is committed when the call returns: nothing is acknowledged
//! that is not committed.

mod contracts;
mod copy;
mod readings;
mod reports;
mod webhooks;

use super::{Backend, Result, StoreError};
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use tokio_postgres::{Client, Config, Statement};

/// The schema versions this binary knows, in order: (version, name, SQL).
pub const SCHEMA: &[(u32, &str, &str)] = &[
    (1, "init", include_str!("schema/0001_init.sql")),
    (2, "claims", include_str!("schema/0002_claims.sql")),
    (3, "webhooks", include_str!("schema/0003_webhooks.sql")),
];

/// Advisory lock key held while the schema is migrated ("platen" in ASCII).
const MIGRATION_LOCK: i64 = 0x706c_6174_656e;

/// Most connections one cloud instance opens.
const MAX_CONNECTIONS: usize = 8;

/// How long a call waits for a free connection before it fails.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long opening a connection may take (when the URL does not say).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A server error's own message, or the client's with its causes (never the URL or
/// its password: tokio-postgres does not repeat them).
fn pg_message(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.code().code(), db.message());
    }
    let mut m = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        m.push_str(": ");
        m.push_str(&s.to_string());
        source = s.source();
    }
    m
}

pub(super) fn db_err(e: tokio_postgres::Error) -> StoreError {
    StoreError::Backend {
        backend: "postgres",
        message: pg_message(&e),
    }
}

/// A pooled connection with its prepared statements.
pub(super) struct Conn {
    pub client: Client,
    statements: HashMap<&'static str, Statement>,
}

impl Conn {
    /// The prepared form of `sql`, prepared once per connection.
    pub async fn prep(
        &mut self,
        sql: &'static str,
    ) -> std::result::Result<Statement, tokio_postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql).await?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }
}

enum Tls {
    None,
    Rustls(tokio_postgres_rustls::MakeRustlsConnect),
}

struct Idle {
    conns: Vec<Conn>,
    open: usize,
}

/// An open batch transaction of one thread ([`Backend::begin_batch`]).
struct Batch {
    conn: Option<Conn>,
    failed: bool,
}

/// Connections to one database.
pub(super) struct Pool {
    /// Threads' open batch transactions: their calls run on that connection.
    batches: Mutex<HashMap<std::thread::ThreadId, Batch>>,
    config: Config,
    tls: Tls,
    runtime: tokio::runtime::Handle,
    /// Dropped with the pool: the runtime's thread then ends.
    _stop: std::sync::mpsc::SyncSender<()>,
    idle: Mutex<Idle>,
    freed: Condvar,
}

impl Pool {
    fn new(config: Config, tls: Tls) -> Result<Pool> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Backend {
                backend: "postgres",
                message: format!("cannot start the database runtime: {e}"),
            })?;
        let runtime = rt.handle().clone();
        let (stop, stopped) = std::sync::mpsc::sync_channel::<()>(0);
        std::thread::Builder::new()
            .name("platen-postgres".into())
            .spawn(move || {
                rt.block_on(async move {
                    // Wait off the runtime's thread for the pool to go.
                    let _ = tokio::task::spawn_blocking(move || stopped.recv()).await;
                })
            })
            .map_err(|e| StoreError::Backend {
                backend: "postgres",
                message: format!("cannot start the database thread: {e}"),
            })?;
        Ok(Pool {
            config,
            tls,
            runtime,
            _stop: stop,
            batches: Mutex::new(HashMap::new()),
            idle: Mutex::new(Idle {
                conns: Vec::new(),
                open: 0,
            }),
            freed: Condvar::new(),
        })
    }

    /// Open a connection; its connection task runs on the pool's runtime.
    fn connect(&self) -> Result<Conn> {
        let config = self.config.clone();
        let fut: std::pin::Pin<
            Box<
                dyn std::future::Future<Output = std::result::Result<Client, tokio_postgres::Error>>
                    + Send,
            >,
        > = match &self.tls {
            Tls::None => Box::pin(async move {
                let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
                tokio::spawn(conn);
                Ok(client)
            }),
            Tls::Rustls(tls) => {
                let tls = tls.clone();
                Box::pin(async move {
                    let (client, conn) = config.connect(tls).await?;
                    tokio::spawn(conn);
                    Ok(client)
                })
            }
        };
        let joined = futures_executor::block_on(self.runtime.spawn(fut));
        let client = joined
            .map_err(|e| StoreError::Backend {
                backend: "postgres",
                message: format!("connecting: {e}"),
            })?
            .map_err(|e| StoreError::Backend {
                backend: "postgres",
                message: format!(
                    "cannot connect to {}: {}",
                    describe(&self.config),
                    pg_message(&e)
                ),
            })?;
        Ok(Conn {
            client,
            statements: HashMap::new(),
        })
    }

    fn checkout(&self) -> Result<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let deadline = std::time::Instant::now() + CHECKOUT_TIMEOUT;
        loop {
            while let Some(c) = idle.conns.pop() {
                if !c.client.is_closed() {
                    return Ok(c);
                }
                idle.open -= 1;
            }
            if idle.open < MAX_CONNECTIONS {
                idle.open += 1;
                drop(idle);
                return self.connect().inspect_err(|_| {
                    let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                    idle.open -= 1;
                    self.freed.notify_one();
                });
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(StoreError::Backend {
                    backend: "postgres",
                    message: format!("no free database connection within {CHECKOUT_TIMEOUT:?}"),
                });
            }
            idle = self
                .freed
                .wait_timeout(idle, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn checkin(&self, c: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if c.client.is_closed() {
            idle.open -= 1;
        } else {
            idle.conns.push(c);
        }
        self.freed.notify_one();
    }

    /// Run `f` on a pooled connection — this thread's batch transaction's, if one is
    /// open — waiting for it on this thread.
    pub fn with<T>(
        &self,
        f: impl AsyncFnOnce(&mut Conn) -> std::result::Result<T, tokio_postgres::Error>,
    ) -> Result<T> {
        let me = std::thread::current().id();
        let batch_conn = self
            .batches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&me)
            .and_then(|b| b.conn.take());
        if let Some(mut c) = batch_conn {
            let r = futures_executor::block_on(f(&mut c));
            let mut batches = self.batches.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(b) = batches.get_mut(&me) {
                b.conn = Some(c);
                b.failed |= r.is_err();
            }
            return r.map_err(db_err);
        }
        let mut c = self.checkout()?;
        let r = futures_executor::block_on(f(&mut c));
        self.checkin(c);
        r.map_err(db_err)
    }

    /// Open a transaction for this thread's calls until [`Pool::end_batch`].
    fn begin_batch(&self) -> Result<()> {
        let me = std::thread::current().id();
        if self
            .batches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&me)
        {
            return Ok(());
        }
        let c = self.checkout()?;
        if let Err(e) = futures_executor::block_on(c.client.batch_execute("BEGIN")) {
            self.checkin(c);
            return Err(db_err(e));
        }
        self.batches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                me,
                Batch {
                    conn: Some(c),
                    failed: false,
                },
            );
        Ok(())
    }

    /// Commit this thread's batch (roll it back if a statement in it failed: then
    /// nothing of it is kept, and the error says so).
    fn end_batch(&self) -> Result<()> {
        let me = std::thread::current().id();
        let Some(b) = self
            .batches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&me)
        else {
            return Ok(());
        };
        let Some(c) = b.conn else {
            return Ok(());
        };
        let end = if b.failed { "ROLLBACK" } else { "COMMIT" };
        let r = futures_executor::block_on(c.client.batch_execute(end));
        self.checkin(c);
        r.map_err(db_err)?;
        if b.failed {
            return Err(StoreError::Backend {
                backend: "postgres",
                message: "a statement of the batch failed: the batch was rolled back".into(),
            });
        }
        Ok(())
    }
}

/// `postgres://user@host:port/dbname`: where, never the password.
fn describe(c: &Config) -> String {
    let host = c
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = c.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{}@{host}:{port}/{}",
        c.get_user().unwrap_or(""),
        c.get_dbname().unwrap_or("")
    )
}

/// Parse a `store.url`; the error never repeats the URL (it may hold a password).
pub fn parse_url(url: &str) -> Result<Config> {
    url.parse::<Config>().map_err(|e| StoreError::Invalid {
        key: "store.url".into(),
        message: format!(
            "not a PostgreSQL URL ({e}); expected postgres://user:password@host:port/database"
        ),
    })
}

/// The PostgreSQL backend.
pub struct PgStore {
    pool: Arc<Pool>,
    describe: String,
}

impl PgStore {
    /// Connect to `url`, migrate the schema to this binary's version (under an
    /// advisory lock) and check it. `tls`: the TLS client for `sslmode=prefer|require`.
    pub fn open(url: &str, tls: Option<Arc<rustls::ClientConfig>>) -> Result<PgStore> {
        let store = Self::connect(url, tls)?;
        store.migrate()?;
        Ok(store)
    }

    /// Connect without touching the schema.
    pub fn connect(url: &str, tls: Option<Arc<rustls::ClientConfig>>) -> Result<PgStore> {
        let mut config = parse_url(url)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.application_name("platen-cloud");
        let describe = describe(&config);
        let tls = match tls {
            Some(c) => Tls::Rustls(tokio_postgres_rustls::MakeRustlsConnect::new((*c).clone())),
            None => Tls::None,
        };
        let pool = Arc::new(Pool::new(config, tls)?);
        // Connect now: a wrong URL fails at start, with the host named.
        let c = pool.checkout()?;
        pool.checkin(c);
        Ok(PgStore { pool, describe })
    }

    /// The schema version the database has (0: none yet).
    pub fn schema_version(&self) -> Result<u32> {
        self.pool.with(async |c| {
            let exists: bool = c
                .client
                .query_one("SELECT to_regclass('platen_schema') IS NOT NULL", &[])
                .await?
                .get(0);
            if !exists {
                return Ok(0);
            }
            let v: Option<i32> = c
                .client
                .query_one("SELECT max(version) FROM platen_schema", &[])
                .await?
                .get(0);
            Ok(v.unwrap_or(0).max(0) as u32)
        })
    }

    /// Apply the schema versions the database lacks, in order, each in a transaction,
    /// under an advisory lock (several instances may start at once). Refuses a schema
    /// newer than this binary. Returns (from, to).
    pub fn migrate(&self) -> Result<(u32, u32)> {
        let known = SCHEMA.last().map(|s| s.0).unwrap_or(0);
        let r = self.pool.with(async |c| {
            c.client
                .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
                .await?;
            let r = async {
                c.client
                    .batch_execute(
                        "CREATE TABLE IF NOT EXISTS platen_schema (
                            version integer PRIMARY KEY,
                            name text NOT NULL,
                            applied_at timestamptz NOT NULL DEFAULT now())",
                    )
                    .await?;
                let found: Option<i32> = c
                    .client
                    .query_one("SELECT max(version) FROM platen_schema", &[])
                    .await?
                    .get(0);
                let found = found.unwrap_or(0).max(0) as u32;
                if found > known {
                    return Ok(Err(found));
                }
                for (version, name, sql) in SCHEMA.iter().filter(|s| s.0 > found) {
                    let tx = c.client.transaction().await?;
                    tx.batch_execute(sql).await?;
                    tx.execute(
                        "INSERT INTO platen_schema (version, name) VALUES ($1, $2)",
                        &[&(*version as i32), name],
                    )
                    .await?;
                    tx.commit().await?;
                }
                Ok(Ok(found))
            }
            .await;
            c.client
                .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
                .await?;
            r
        })?;
        match r {
            Ok(from) => Ok((from, known)),
            Err(found) => Err(StoreError::TooNew {
                what: format!("database {}", self.describe),
                found,
                known,
            }),
        }
    }

    pub(super) fn pool(&self) -> &Pool {
        &self.pool
    }
}

impl Backend for PgStore {
    fn sync(&self) -> Result<()> {
        // Every call commits before it returns, but for a batch: commit it now.
        self.pool.end_batch()
    }
    fn begin_batch(&self) -> Result<()> {
        self.pool.begin_batch()
    }
    fn check(&self) -> Result<()> {
        self.pool
            .with(async |c| c.client.simple_query("SELECT 1").await.map(|_| ()))
    }
    fn describe(&self) -> String {
        self.describe.clone()
    }
    fn kind(&self) -> &'static str {
        "postgres"
    }
}

/// A u64 the cloud issued (a version, an id) as the BIGINT column holds it.
pub(super) fn to_i64(v: u64, what: &str) -> Result<i64> {
    i64::try_from(v).map_err(|_| StoreError::Invalid {
        key: what.to_string(),
        message: format!("{v} is beyond the database's range (at most {})", i64::MAX),
    })
}

/// A record's stored JSON form.
pub(super) fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("plain data serializes")
}

/// Decode a record read back as JSON text.
pub(super) fn decode<T: serde::de::DeserializeOwned>(key: &str, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        key: key.to_string(),
        message: e.to_string(),
    })
}
