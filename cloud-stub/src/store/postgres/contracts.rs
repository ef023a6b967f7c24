//! [`Contracts`] on PostgreSQL: one statement per call where it can be, a transaction
//! where a call writes several rows.

use super::{decode, json, Conn, PgStore};
use crate::model::{ChangeRecord, Event, LedgerEntry, Repeated, SetupState, TimelineEntry};
use crate::model::{Contract, ContractChange, Plan, Reseller, Tenant};
use crate::model::{Migration, MigrationState};
use crate::store::{
    Batch, Claim, Contracts, Created, Due, Inserted, LedgerOwner, List, OwnerIndex, Page, Result,
    StoreError,
};
use chrono::{DateTime, Utc};
use platen_protocol::Id;
use tokio_postgres::types::ToSql;

type PgResult<T> = std::result::Result<T, tokio_postgres::Error>;

fn inserted(n: u64) -> Inserted {
    if n == 1 {
        Inserted::New
    } else {
        Inserted::Exists
    }
}

/// Rows of JSON text decoded, in the order read.
pub(super) fn decode_all<T: serde::de::DeserializeOwned>(
    what: &str,
    rows: Vec<String>,
) -> Result<Vec<T>> {
    rows.iter().map(|t| decode(what, t)).collect()
}

/// One column of text of every row.
pub(super) async fn texts(
    c: &mut Conn,
    sql: &'static str,
    params: &[&(dyn ToSql + Sync)],
) -> PgResult<Vec<String>> {
    let st = c.prep(sql).await?;
    Ok(c.client
        .query(&st, params)
        .await?
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect())
}

async fn text(
    c: &mut Conn,
    sql: &'static str,
    params: &[&(dyn ToSql + Sync)],
) -> PgResult<Option<String>> {
    let st = c.prep(sql).await?;
    Ok(c.client.query_opt(&st, params).await?.map(|r| r.get(0)))
}

async fn exec(c: &mut Conn, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> PgResult<u64> {
    let st = c.prep(sql).await?;
    c.client.execute(&st, params).await
}

/// Run `save` (an UPDATE of one change); a change that settles reports it in the
/// same transaction. Returns the rows updated.
async fn save_reporting_settlement(
    c: &mut Conn,
    save: &'static str,
    params: &[&(dyn ToSql + Sync)],
    rec: &ChangeRecord,
    now: DateTime<Utc>,
) -> PgResult<u64> {
    if !rec.setup.settled {
        return exec(c, save, params).await;
    }
    let tx = c.client.transaction().await?;
    let n = tx.execute(save, params).await?;
    if n == 1 {
        report_settled(&tx, rec, now).await?;
    }
    tx.commit().await?;
    Ok(n)
}

/// The `change.settled` event of `rec`, written in `tx` (the change's tenant read there).
async fn report_settled(
    tx: &tokio_postgres::Transaction<'_>,
    rec: &ChangeRecord,
    now: DateTime<Utc>,
) -> PgResult<()> {
    let tenant = tx
        .query_opt(
            "SELECT tenant FROM changes WHERE id = $1",
            &[&rec.change.id],
        )
        .await?
        .and_then(|r| r.get::<_, String>(0).parse::<Id>().ok());
    if let Some(t) = tenant {
        let reported: Vec<_> = crate::model::settled_event(&t, rec, now)
            .into_iter()
            .collect();
        super::webhooks::write_outbox(tx, &reported, now).await?;
    }
    Ok(())
}

impl PgStore {
    /// Insert a ledger entry if its key is new, with its events when `report` (a copy
    /// brings the events of its source instead).
    pub(super) fn insert_ledger(&self, e: &LedgerEntry, report: bool) -> Result<Inserted> {
        let period = e
            .key
            .strip_prefix(&format!("{}/", e.change_id))
            .ok_or_else(|| StoreError::Invalid {
                key: e.key.clone(),
                message: format!("a ledger key must start with its change {}/", e.change_id),
            })?
            .to_string();
        let credit = e.signed_credit();
        let amount = i64::try_from(credit).map_err(|_| StoreError::Invalid {
            key: e.key.clone(),
            message: format!("credit {credit} is beyond BIGINT"),
        })?;
        let doc = json(e);
        // The events it reports go in the same transaction (the outbox).
        let events = crate::model::ledger_events(e);
        let now = Utc::now();
        let r = self.pool().with(async |c| {
            let tx = c.client.transaction().await?;
            let n = tx
                .execute(
                    "INSERT INTO ledger (key, tenant, contract, change_id, period, currency,
                                         amount_minor, reverses, created_at, doc)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::text::jsonb)
                     ON CONFLICT DO NOTHING",
                    &[
                        &e.key,
                        &e.tenant.as_str(),
                        &e.contract.as_str(),
                        &e.change_id,
                        &period,
                        &e.currency,
                        &amount,
                        &e.reverses,
                        &e.created_at,
                        &doc,
                    ],
                )
                .await?;
            if n == 1 && report {
                super::webhooks::write_outbox(&tx, &events, now).await?;
            }
            tx.commit().await?;
            Ok(n)
        })?;
        let n = r;
        Ok(inserted(n))
    }
    /// Store a new migration, with its event when `report` (see [`Self::insert_ledger`]).
    pub(super) fn insert_migration(&self, m: &Migration, report: bool) -> Result<Inserted> {
        let (state, effective_at) = migration_cols(m);
        let doc = json(m);
        // A refused migration reports itself, in the same transaction.
        let reported: Vec<_> = crate::model::migration_event(m, m.decision.decided_at)
            .into_iter()
            .collect();
        let now = Utc::now();
        let n = self.pool().with(async |c| {
            let tx = c.client.transaction().await?;
            let n = tx
                .execute(
                    "INSERT INTO migrations (id, tenant, contract, state, decided_at, effective_at, doc)
                     VALUES ($1, $2, $3, $4, $5, $6, $7::text::jsonb) ON CONFLICT (id) DO NOTHING",
                    &[
                        &m.id,
                        &m.decision.tenant.as_str(),
                        &m.decision.contract.as_str(),
                        &state,
                        &m.decision.decided_at,
                        &effective_at,
                        &doc,
                    ],
                )
                .await?;
            if n == 1 && report {
                super::webhooks::write_outbox(&tx, &reported, now).await?;
            }
            tx.commit().await?;
            Ok(n)
        })?;
        Ok(inserted(n))
    }
    fn one<T: serde::de::DeserializeOwned>(
        &self,
        sql: &'static str,
        key: &str,
    ) -> Result<Option<T>> {
        let t = self.pool().with(async |c| text(c, sql, &[&key]).await)?;
        t.map(|t| decode(key, &t)).transpose()
    }

    fn all<T: serde::de::DeserializeOwned>(&self, sql: &'static str, what: &str) -> Result<Vec<T>> {
        decode_all(what, self.pool().with(async |c| texts(c, sql, &[]).await)?)
    }

    fn all_of<T: serde::de::DeserializeOwned>(
        &self,
        sql: &'static str,
        owner: &str,
    ) -> Result<Vec<T>> {
        decode_all(
            owner,
            self.pool().with(async |c| texts(c, sql, &[&owner]).await)?,
        )
    }

    fn insert_new(&self, sql: &'static str, id: &str, doc: String) -> Result<Inserted> {
        let n = self
            .pool()
            .with(async |c| exec(c, sql, &[&id, &doc]).await)?;
        Ok(inserted(n))
    }

    /// A page of `(key, doc)` rows from a query taking (after, limit[, owner]).
    fn page_rows(
        &self,
        sql: &'static str,
        owner: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Vec<u8>>> {
        let after = after.unwrap_or("");
        let n = (limit as i64).saturating_add(1);
        let rows: Vec<(String, String)> = self.pool().with(async |c| {
            let st = c.prep(sql).await?;
            let rows = match owner {
                Some(o) => c.client.query(&st, &[&after, &n, &o]).await?,
                None => c.client.query(&st, &[&after, &n]).await?,
            };
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })?;
        let more = rows.len() > limit;
        let items: Vec<(String, String)> = rows.into_iter().take(limit).collect();
        let next = if more {
            items.last().map(|(k, _)| k.clone())
        } else {
            None
        };
        Ok(Page {
            items: items.into_iter().map(|(_, d)| d.into_bytes()).collect(),
            next,
        })
    }
}

fn migration_cols(m: &Migration) -> (String, Option<DateTime<Utc>>) {
    (m.state.name().to_string(), m.decision.effective_at)
}

/// Insert a change (due now) inside a transaction; false when its id is taken.
async fn insert_change(
    tx: &tokio_postgres::Transaction<'_>,
    rec: &ChangeRecord,
    now: DateTime<Utc>,
) -> PgResult<bool> {
    let c = &rec.change;
    let seq = c.seq as i32;
    let n = tx
        .execute(
            "INSERT INTO changes (id, tenant, contract, seq, due_at, settled, doc)
             SELECT $1, k.tenant, k.id, $3, $4, false, $5::text::jsonb
             FROM contracts k WHERE k.id = $2
             ON CONFLICT (id) DO NOTHING",
            &[&c.id, &c.contract.as_str(), &seq, &now, &json(rec)],
        )
        .await?;
    Ok(n == 1)
}

impl Contracts for PgStore {
    fn add_tenant(&self, t: &Tenant) -> Result<Inserted> {
        let reseller = t.reseller.as_ref().map(|r| r.as_str());
        let doc = json(t);
        let n = self.pool().with(async |c| {
            exec(
                c,
                "INSERT INTO tenants (id, reseller, doc) VALUES ($1, $2, $3::text::jsonb)
                 ON CONFLICT (id) DO NOTHING",
                &[&t.id.as_str(), &reseller, &doc],
            )
            .await
        })?;
        Ok(inserted(n))
    }
    fn tenant(&self, id: &str) -> Result<Option<Tenant>> {
        self.one("SELECT doc::text FROM tenants WHERE id = $1", id)
    }
    fn tenants(&self) -> Result<Vec<Tenant>> {
        self.all("SELECT doc::text FROM tenants ORDER BY id", "tenants")
    }

    fn add_plan(&self, p: &Plan) -> Result<Inserted> {
        self.insert_new(
            "INSERT INTO plans (id, doc) VALUES ($1, $2::text::jsonb) ON CONFLICT (id) DO NOTHING",
            p.id.as_str(),
            json(p),
        )
    }
    fn put_plan(&self, p: &Plan) -> Result<()> {
        self.insert_new(
            "INSERT INTO plans (id, doc) VALUES ($1, $2::text::jsonb)
             ON CONFLICT (id) DO UPDATE SET doc = excluded.doc",
            p.id.as_str(),
            json(p),
        )
        .map(|_| ())
    }
    fn plan(&self, id: &str) -> Result<Option<Plan>> {
        self.one("SELECT doc::text FROM plans WHERE id = $1", id)
    }
    fn plans(&self) -> Result<Vec<Plan>> {
        self.all("SELECT doc::text FROM plans ORDER BY id", "plans")
    }

    fn add_reseller(&self, r: &Reseller) -> Result<Inserted> {
        self.insert_new(
            "INSERT INTO resellers (id, doc) VALUES ($1, $2::text::jsonb) ON CONFLICT (id) DO NOTHING",
            r.id.as_str(),
            json(r),
        )
    }
    fn reseller(&self, id: &str) -> Result<Option<Reseller>> {
        self.one("SELECT doc::text FROM resellers WHERE id = $1", id)
    }
    fn resellers(&self) -> Result<Vec<Reseller>> {
        self.all("SELECT doc::text FROM resellers ORDER BY id", "resellers")
    }

    fn next_id(&self) -> Result<u64> {
        let v: i64 = self.pool().with(async |c| {
            let st = c.prep("SELECT nextval('platen_ids')").await?;
            Ok(c.client.query_one(&st, &[]).await?.get(0))
        })?;
        Ok(v.max(0) as u64)
    }

    fn add_migration(&self, m: &Migration) -> Result<Inserted> {
        self.insert_migration(m, true)
    }
    fn migration(&self, id: &str) -> Result<Option<Migration>> {
        self.one("SELECT doc::text FROM migrations WHERE id = $1", id)
    }
    fn migrations(&self) -> Result<Vec<Migration>> {
        self.all("SELECT doc::text FROM migrations ORDER BY id", "migrations")
    }
    fn migrations_of(&self, owner: LedgerOwner<'_>) -> Result<Vec<Migration>> {
        match owner {
            LedgerOwner::Contract(k) => self.all_of(
                "SELECT doc::text FROM migrations WHERE contract = $1 ORDER BY id",
                k.as_str(),
            ),
            LedgerOwner::Tenant(t) => self.all_of(
                "SELECT doc::text FROM migrations WHERE tenant = $1 ORDER BY id",
                t.as_str(),
            ),
        }
    }
    fn scheduled(&self) -> Result<Vec<Due>> {
        let ms: Vec<Migration> = self.all(
            "SELECT doc::text FROM migrations WHERE state = 'scheduled' ORDER BY id",
            "scheduled migrations",
        )?;
        Ok(ms.iter().map(Due::of).collect())
    }
    fn finish_migration(&self, id: &str, state: MigrationState) -> Result<bool> {
        leave_scheduled(self, id, state, None)
    }
    fn execute_migration(&self, migration_id: &str, change: &ContractChange) -> Result<bool> {
        let state = MigrationState::Executed {
            change_id: change.id.clone(),
            at: change.requested_at,
        };
        leave_scheduled(self, migration_id, state, Some(change))
    }
    fn prune_refused_migrations(
        &self,
        before: DateTime<Utc>,
        from: &[u8],
        max_keys: usize,
    ) -> Result<Batch> {
        let from = String::from_utf8_lossy(from).into_owned();
        let n = max_keys.max(1) as i64;
        let (removed, next): (u64, Option<String>) = self.pool().with(async |c| {
            let tx = c.client.transaction().await?;
            let removed = tx
                .execute(
                    "DELETE FROM migrations WHERE id IN
                       (SELECT id FROM migrations WHERE id >= $1 ORDER BY id LIMIT $2)
                     AND state = 'refused' AND decided_at < $3",
                    &[&from, &n, &before],
                )
                .await?;
            let next = tx
                .query_opt(
                    "SELECT id FROM migrations WHERE id >= $1 ORDER BY id OFFSET $2 LIMIT 1",
                    &[&from, &(n - removed as i64)],
                )
                .await?
                .map(|r| r.get::<_, String>(0));
            tx.commit().await?;
            Ok((removed, next))
        })?;
        Ok((removed as usize, next.map(String::into_bytes)))
    }

    fn contract(&self, id: &str) -> Result<Option<Contract>> {
        self.one("SELECT doc::text FROM contracts WHERE id = $1", id)
    }
    fn contracts(&self) -> Result<Vec<Contract>> {
        self.all("SELECT doc::text FROM contracts ORDER BY id", "contracts")
    }
    fn contracts_of_tenant(&self, tenant: &Id) -> Result<Vec<Contract>> {
        self.all_of(
            "SELECT doc::text FROM contracts WHERE tenant = $1 ORDER BY id",
            tenant.as_str(),
        )
    }
    fn create_contract(
        &self,
        k: &Contract,
        start: &ContractChange,
        allow_shared: bool,
    ) -> Result<Created> {
        let rec = ChangeRecord {
            change: start.clone(),
            setup: SetupState::default(),
        };
        let now = Utc::now();
        let doc = json(k);
        self.pool().with(async |c| {
            let tx = c.client.transaction().await?;
            let n = tx
                .execute(
                    "INSERT INTO contracts (id, tenant, created_at, doc)
                     VALUES ($1, $2, $3, $4::text::jsonb) ON CONFLICT (id) DO NOTHING",
                    &[&k.id.as_str(), &k.tenant.as_str(), &k.created_at, &doc],
                )
                .await?;
            if n == 0 {
                return Ok(Created::Exists);
            }
            for p in &k.printers {
                let claimed = tx
                    .execute(
                        "INSERT INTO printer_contracts (tenant, printer, contract)
                         VALUES ($1, $2, $3) ON CONFLICT (tenant, printer) DO NOTHING",
                        &[&k.tenant.as_str(), &p.as_str(), &k.id.as_str()],
                    )
                    .await?;
                if claimed == 0 && !allow_shared {
                    let other: String = tx
                        .query_one(
                            "SELECT contract FROM printer_contracts WHERE tenant = $1 AND printer = $2",
                            &[&k.tenant.as_str(), &p.as_str()],
                        )
                        .await?
                        .get(0);
                    // Dropped without commit: rolled back.
                    return Ok(Created::PrinterTaken {
                        printer: p.clone(),
                        contract: other,
                    });
                }
            }
            insert_change(&tx, &rec, now).await?;
            tx.commit().await?;
            Ok(Created::New)
        })
    }
    fn add_change(&self, change: &ContractChange) -> Result<Inserted> {
        let rec = ChangeRecord {
            change: change.clone(),
            setup: SetupState::default(),
        };
        let now = Utc::now();
        let known = self.pool().with(async |c| {
            let tx = c.client.transaction().await?;
            let new = insert_change(&tx, &rec, now).await?;
            tx.commit().await?;
            Ok(new)
        })?;
        if known {
            return Ok(Inserted::New);
        }
        if self.contract(change.contract.as_str())?.is_none() {
            return Err(StoreError::Invalid {
                key: change.id.clone(),
                message: format!("contract {} does not exist", change.contract),
            });
        }
        Ok(Inserted::Exists)
    }
    fn save_change(&self, rec: &ChangeRecord, due_at: Option<DateTime<Utc>>) -> Result<()> {
        let settled = rec.setup.settled;
        let due_at = if settled { None } else { due_at };
        let doc = json(rec);
        let now = Utc::now();
        let n = self.pool().with(async |c| {
            const SAVE: &str =
                "UPDATE changes SET doc = $2::text::jsonb, due_at = $3, settled = $4 WHERE id = $1";
            let params: [&(dyn ToSql + Sync); 4] = [&rec.change.id, &doc, &due_at, &settled];
            save_reporting_settlement(c, SAVE, &params, rec, now).await
        })?;
        if n == 0 {
            return Err(StoreError::Invalid {
                key: rec.change.id.clone(),
                message: "no such change".into(),
            });
        }
        Ok(())
    }
    fn due_changes(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<ChangeRecord>> {
        let n = limit as i64;
        let rows = self.pool().with(async |c| {
            texts(
                c,
                "SELECT doc::text FROM changes WHERE due_at <= $1 ORDER BY due_at, id LIMIT $2",
                &[&now, &n],
            )
            .await
        })?;
        decode_all("due changes", rows)
    }
    fn claim_due(
        &self,
        claim: &Claim,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<ChangeRecord>> {
        let n = limit as i64;
        let until = now + claim.lease;
        let rows: Vec<(Option<DateTime<Utc>>, String)> = self.pool().with(async |c| {
            let st = c
                .prep(
                    "WITH free AS (
                       SELECT id FROM changes
                        WHERE due_at <= $2
                          AND (claimed_by IS NULL OR claimed_by = $1 OR claim_until < $2)
                        ORDER BY due_at, id LIMIT $4
                          FOR UPDATE SKIP LOCKED)
                     UPDATE changes SET claimed_by = $1, claim_until = $3, rewake = false
                       FROM free WHERE changes.id = free.id
                     RETURNING changes.due_at, changes.doc::text",
                )
                .await?;
            Ok(c.client
                .query(&st, &[&claim.owner, &now, &until, &n])
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect())
        })?;
        let mut rows = rows;
        rows.sort_by_key(|r| r.0);
        decode_all("claimed changes", rows.into_iter().map(|r| r.1).collect())
    }
    fn save_claimed(
        &self,
        claim: &Claim,
        rec: &ChangeRecord,
        due_at: Option<DateTime<Utc>>,
    ) -> Result<bool> {
        let settled = rec.setup.settled;
        let due_at = if settled { None } else { due_at };
        let doc = json(rec);
        let now = Utc::now();
        let n = self.pool().with(async |c| {
            const SAVE: &str = "UPDATE changes SET doc = $2::text::jsonb, settled = $4,
                        due_at = CASE WHEN $4 THEN NULL
                                      WHEN rewake THEN LEAST($3::timestamptz, $6::timestamptz)
                                      ELSE $3::timestamptz END,
                        claimed_by = NULL, claim_until = NULL, rewake = false
                  WHERE id = $1 AND claimed_by = $5";
            let params: [&(dyn ToSql + Sync); 6] =
                [&rec.change.id, &doc, &due_at, &settled, &claim.owner, &now];
            save_reporting_settlement(c, SAVE, &params, rec, now).await
        })?;
        Ok(n == 1)
    }
    fn wake_change(&self, change_id: &str) -> Result<()> {
        let now = Utc::now();
        self.pool().with(async |c| {
            exec(
                c,
                "UPDATE changes SET due_at = $2, rewake = (claimed_by IS NOT NULL)
                  WHERE id = $1 AND due_at IS NOT NULL",
                &[&change_id, &now],
            )
            .await
        })?;
        Ok(())
    }
    fn change(&self, id: &str) -> Result<Option<ChangeRecord>> {
        self.one("SELECT doc::text FROM changes WHERE id = $1", id)
    }
    fn changes_of(&self, contract: &Id) -> Result<Vec<ChangeRecord>> {
        self.all_of(
            "SELECT doc::text FROM changes WHERE contract = $1 ORDER BY seq",
            contract.as_str(),
        )
    }
    fn contract_of_printer(&self, tenant: &Id, printer: &Id) -> Result<Option<String>> {
        self.pool().with(async |c| {
            text(
                c,
                "SELECT contract FROM printer_contracts WHERE tenant = $1 AND printer = $2",
                &[&tenant.as_str(), &printer.as_str()],
            )
            .await
        })
    }
    fn open_changes(&self) -> Result<Vec<ChangeRecord>> {
        self.all(
            "SELECT doc::text FROM changes WHERE due_at IS NOT NULL ORDER BY id",
            "open changes",
        )
    }
    fn next_version(&self, tenant: &Id, printer: &Id) -> Result<u64> {
        let now_ms = Utc::now().timestamp_millis().max(0);
        let v: i64 = self.pool().with(async |c| {
            let st = c
                .prep(
                    "INSERT INTO versions (tenant, printer, last) VALUES ($1, $2, $3)
                     ON CONFLICT (tenant, printer)
                     DO UPDATE SET last = GREATEST(versions.last + 1, excluded.last)
                     RETURNING last",
                )
                .await?;
            Ok(c.client
                .query_one(&st, &[&tenant.as_str(), &printer.as_str(), &now_ms])
                .await?
                .get(0))
        })?;
        Ok(v.max(0) as u64)
    }

    fn append(&self, change_id: &str, event: Event) -> Result<Option<TimelineEntry>> {
        let once = event.once_key();
        let now = Utc::now();
        enum Outcome {
            Counted,
            Duplicate,
            Added(i64),
            NoChange,
        }
        let event_json = serde_json::to_value(&event).expect("plain data serializes");
        let r = self.pool().with(async |c| {
            let tx = c.client.transaction().await?;
            let Some((tenant, contract)) = tx
                .query_opt(
                    "SELECT tenant, contract FROM changes WHERE id = $1",
                    &[&change_id],
                )
                .await?
                .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
            else {
                return Ok(Outcome::NoChange);
            };
            if once.is_none() {
                // A recurring event identical to the change's last entry is counted on
                // that entry: a change nobody answers does not grow its timeline.
                let last = tx
                    .query_opt(
                        "SELECT seq, doc::text FROM timeline WHERE change_id = $1
                         ORDER BY seq DESC LIMIT 1 FOR UPDATE",
                        &[&change_id],
                    )
                    .await?;
                if let Some(row) = last {
                    let seq: i64 = row.get(0);
                    let doc: String = row.get(1);
                    if let Ok(mut entry) = serde_json::from_str::<TimelineEntry>(&doc) {
                        if serde_json::to_value(&entry.event).ok().as_ref() == Some(&event_json) {
                            let times = entry.repeated.as_ref().map_or(1, |r| r.times + 1);
                            entry.repeated = Some(Repeated {
                                times,
                                last_at: now,
                            });
                            tx.execute(
                                "UPDATE timeline SET doc = $3::text::jsonb WHERE change_id = $1 AND seq = $2",
                                &[&change_id, &seq, &json(&entry)],
                            )
                            .await?;
                            tx.commit().await?;
                            return Ok(Outcome::Counted);
                        }
                    }
                }
            }
            let seq: i64 = tx
                .query_one("SELECT nextval('platen_ids')", &[])
                .await?
                .get(0);
            let entry = TimelineEntry {
                seq: seq.max(0) as u64,
                at: now,
                change_id: change_id.to_string(),
                event: event.clone(),
                repeated: None,
            };
            let n = tx
                .execute(
                    "INSERT INTO timeline (change_id, seq, tenant, at, once_key, doc)
                     VALUES ($1, $2, $3, $4, $5, $6::text::jsonb)
                     ON CONFLICT (change_id, once_key) DO NOTHING",
                    &[&change_id, &seq, &tenant, &now, &once, &json(&entry)],
                )
                .await?;
            // A fault reports itself, in the same transaction.
            if let (1, Ok(t), Ok(c)) = (n, tenant.parse::<Id>(), contract.parse::<Id>()) {
                let reported: Vec<_> =
                    crate::model::timeline_event(&t, &c, change_id, &entry.event, now)
                        .into_iter()
                        .collect();
                super::webhooks::write_outbox(&tx, &reported, now).await?;
            }
            tx.commit().await?;
            Ok(if n == 1 {
                Outcome::Added(seq)
            } else {
                Outcome::Duplicate
            })
        })?;
        match r {
            Outcome::Counted | Outcome::Duplicate => Ok(None),
            Outcome::Added(seq) => Ok(Some(TimelineEntry {
                seq: seq.max(0) as u64,
                at: now,
                change_id: change_id.to_string(),
                event,
                repeated: None,
            })),
            Outcome::NoChange => Err(StoreError::Invalid {
                key: change_id.to_string(),
                message: "no such change".into(),
            }),
        }
    }
    fn timeline(&self, change_id: &str) -> Result<Vec<TimelineEntry>> {
        self.all_of(
            "SELECT doc::text FROM timeline WHERE change_id = $1 ORDER BY seq",
            change_id,
        )
    }

    fn add_ledger(&self, e: &LedgerEntry) -> Result<Inserted> {
        self.insert_ledger(e, true)
    }
    fn ledger_of(&self, owner: LedgerOwner<'_>) -> Result<Vec<LedgerEntry>> {
        match owner {
            LedgerOwner::Contract(k) => self.all_of(
                "SELECT doc::text FROM ledger WHERE contract = $1 ORDER BY key",
                k.as_str(),
            ),
            LedgerOwner::Tenant(t) => self.all_of(
                "SELECT doc::text FROM ledger WHERE tenant = $1 ORDER BY key",
                t.as_str(),
            ),
        }
    }
    fn ledger_entry(&self, key: &str) -> Result<Option<LedgerEntry>> {
        self.one("SELECT doc::text FROM ledger WHERE key = $1", key)
    }
    fn ledger(&self) -> Result<Vec<LedgerEntry>> {
        self.all("SELECT doc::text FROM ledger ORDER BY key", "ledger")
    }
    fn shipment_sent(&self, key: &str) -> Result<bool> {
        let t = self.pool().with(async |c| {
            text(c, "SELECT key FROM shipments_sent WHERE key = $1", &[&key]).await
        })?;
        Ok(t.is_some())
    }
    fn mark_shipment_sent(&self, key: &str, at: DateTime<Utc>) -> Result<()> {
        let n = self.pool().with(async |c| {
            exec(
                c,
                "INSERT INTO shipments_sent (key, tenant, at)
                 SELECT key, tenant, $2 FROM ledger WHERE key = $1
                 ON CONFLICT (key) DO NOTHING",
                &[&key, &at],
            )
            .await
        })?;
        if n == 0 && !self.shipment_sent(key)? {
            return Err(StoreError::Invalid {
                key: key.to_string(),
                message: "a shipment needs its ledger entry".into(),
            });
        }
        Ok(())
    }

    fn page_json(&self, list: List, after: Option<&str>, limit: usize) -> Result<Page<Vec<u8>>> {
        let sql = match list {
            List::Tenants => "SELECT id, doc::text FROM tenants WHERE id > $1 ORDER BY id LIMIT $2",
            List::Plans => "SELECT id, doc::text FROM plans WHERE id > $1 ORDER BY id LIMIT $2",
            List::Resellers => {
                "SELECT id, doc::text FROM resellers WHERE id > $1 ORDER BY id LIMIT $2"
            }
            List::Contracts => {
                "SELECT id, doc::text FROM contracts WHERE id > $1 ORDER BY id LIMIT $2"
            }
            List::Ledger => {
                "SELECT key, doc::text FROM ledger WHERE key > $1 ORDER BY key LIMIT $2"
            }
            List::Migrations => {
                "SELECT id, doc::text FROM migrations WHERE id > $1 ORDER BY id LIMIT $2"
            }
        };
        self.page_rows(sql, None, after, limit)
    }

    fn page_of_json(
        &self,
        index: OwnerIndex,
        owner: &Id,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Vec<u8>>> {
        let sql = match index {
            OwnerIndex::ContractsOfTenant => {
                "SELECT id, doc::text FROM contracts WHERE id > $1 AND tenant = $3 ORDER BY id LIMIT $2"
            }
            OwnerIndex::LedgerOfTenant => {
                "SELECT key, doc::text FROM ledger WHERE key > $1 AND tenant = $3 ORDER BY key LIMIT $2"
            }
            OwnerIndex::LedgerOfContract => {
                "SELECT key, doc::text FROM ledger WHERE key > $1 AND contract = $3 ORDER BY key LIMIT $2"
            }
            OwnerIndex::MigrationsOfTenant => {
                "SELECT id, doc::text FROM migrations WHERE id > $1 AND tenant = $3 ORDER BY id LIMIT $2"
            }
            OwnerIndex::MigrationsOfContract => {
                "SELECT id, doc::text FROM migrations WHERE id > $1 AND contract = $3 ORDER BY id LIMIT $2"
            }
        };
        self.page_rows(sql, Some(owner.as_str()), after, limit)
    }
}

/// Move a scheduled migration to `state` (with its change, for an execution), in one
/// transaction that locks the migration's row: two instances cannot both do it.
fn leave_scheduled(
    s: &PgStore,
    id: &str,
    state: MigrationState,
    change: Option<&ContractChange>,
) -> Result<bool> {
    let rec = change.map(|c| ChangeRecord {
        change: c.clone(),
        setup: SetupState::default(),
    });
    let now = Utc::now();
    let r = s.pool().with(async |c| {
        let tx = c.client.transaction().await?;
        let Some(row) = tx
            .query_opt(
                "SELECT doc::text FROM migrations WHERE id = $1 AND state = 'scheduled' FOR UPDATE",
                &[&id],
            )
            .await?
        else {
            return Ok(Ok(false));
        };
        let doc: String = row.get(0);
        let mut m = match serde_json::from_str::<Migration>(&doc) {
            Ok(m) => m,
            Err(e) => return Ok(Err(e.to_string())),
        };
        if let Some(rec) = &rec {
            if !insert_change(&tx, rec, now).await? {
                return Ok(Ok(false));
            }
        }
        m.state = state.clone();
        tx.execute(
            "UPDATE migrations SET state = $2, doc = $3::text::jsonb WHERE id = $1",
            &[&id, &m.state.name(), &json(&m)],
        )
        .await?;
        let reported: Vec<_> = crate::model::migration_event(&m, now).into_iter().collect();
        super::webhooks::write_outbox(&tx, &reported, now).await?;
        tx.commit().await?;
        Ok(Ok(true))
    })?;
    r.map_err(|message| StoreError::Corrupt {
        key: id.to_string(),
        message,
    })
}
