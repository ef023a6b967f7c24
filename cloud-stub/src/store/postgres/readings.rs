//! [`Readings`] on PostgreSQL: one row per (tenant, printer, reading time to the ms).

use super::{decode, json, PgStore};
use crate::model::Period;
use crate::model::Sample;
use crate::store::thinning::Thinner;
use crate::store::{Batch, Readings, Result};
use chrono::{DateTime, Utc};
use platen_protocol::Id;

/// A readings position: (tenant, printer, reading time).
type Cursor = (String, String, DateTime<Utc>);

/// Reading times are kept to the millisecond, as the embedded store keys them.
fn to_ms(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

impl Readings for PgStore {
    fn record_sample(&self, tenant: &Id, printer: &Id, s: &Sample) -> Result<bool> {
        let doc = json(s);
        let at = to_ms(s.read_at);
        let n = self.pool().with(async |c| {
            let st = c
                .prep(
                    "INSERT INTO readings (tenant, printer, read_at, doc)
                     VALUES ($1, $2, $3, $4::text::jsonb)
                     ON CONFLICT (tenant, printer, read_at) DO NOTHING",
                )
                .await?;
            c.client
                .execute(&st, &[&tenant.as_str(), &printer.as_str(), &at, &doc])
                .await
        })?;
        Ok(n == 1)
    }

    /// Unreadable rows are skipped.
    fn samples(&self, tenant: &Id, printer: &Id, period: &Period) -> Result<Vec<Sample>> {
        let (start, end) = (to_ms(period.start), to_ms(period.end));
        let rows: Vec<String> = self.pool().with(async |c| {
            let st = c
                .prep(
                    "(SELECT doc::text, read_at FROM readings
                      WHERE tenant = $1 AND printer = $2 AND read_at < $3
                      ORDER BY read_at DESC LIMIT 1)
                     UNION ALL
                     (SELECT doc::text, read_at FROM readings
                      WHERE tenant = $1 AND printer = $2 AND read_at >= $3 AND read_at < $4)
                     ORDER BY read_at",
                )
                .await?;
            Ok(c.client
                .query(&st, &[&tenant.as_str(), &printer.as_str(), &start, &end])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect())
        })?;
        Ok(rows
            .iter()
            .filter_map(|t| serde_json::from_str(t).ok())
            .collect())
    }

    fn latest_sample(&self, tenant: &Id, printer: &Id) -> Result<Option<DateTime<Utc>>> {
        let t: Option<String> = self.pool().with(async |c| {
            let st = c
                .prep(
                    "SELECT doc::text FROM readings WHERE tenant = $1 AND printer = $2
                     ORDER BY read_at DESC LIMIT 1",
                )
                .await?;
            Ok(c.client
                .query_opt(&st, &[&tenant.as_str(), &printer.as_str()])
                .await?
                .map(|r| r.get(0)))
        })?;
        Ok(t.and_then(|t| decode::<Sample>(printer.as_str(), &t).ok())
            .map(|s| s.read_at))
    }

    fn prune_samples(
        &self,
        delete_before: DateTime<Utc>,
        thin_before: DateTime<Utc>,
        from: &[u8],
        max_keys: usize,
    ) -> Result<Batch> {
        let epoch = DateTime::<Utc>::UNIX_EPOCH;
        let cursor: Cursor =
            serde_json::from_slice(from).unwrap_or_else(|_| (String::new(), String::new(), epoch));
        let max = max_keys.max(1);
        let n = max as i64 + 1;
        type Row = (Cursor, Option<u64>);
        let rows: Vec<Row> = self.pool().with(async |c| {
            Ok(c.client
                .query(
                    "SELECT tenant, printer, read_at, doc->>'value' FROM readings
                     WHERE (tenant, printer, read_at) >= ($1, $2, $3)
                     ORDER BY tenant, printer, read_at LIMIT $4",
                    &[&cursor.0, &cursor.1, &cursor.2, &n],
                )
                .await?
                .iter()
                .map(|r| {
                    let v: Option<String> = r.get(3);
                    (
                        (r.get(0), r.get(1), r.get(2)),
                        v.and_then(|v| v.parse().ok()),
                    )
                })
                .collect())
        })?;
        let ms = |t: &DateTime<Utc>| u64::try_from(t.timestamp_millis()).unwrap_or(0);
        let printer = |k: &Cursor| format!("{}/{}/", k.0, k.1).into_bytes();
        let mut thinner = Thinner::new(delete_before, thin_before);
        let mut gone: (Vec<String>, Vec<String>, Vec<DateTime<Utc>>) = Default::default();
        for (i, (k, value)) in rows.iter().enumerate().take(max) {
            let next = rows
                .get(i + 1)
                .filter(|(nk, _)| nk.0 == k.0 && nk.1 == k.1)
                .map(|(nk, nv)| (ms(&nk.2), *nv));
            if !thinner.keep(&printer(k), ms(&k.2), *value, next) {
                gone.0.push(k.0.clone());
                gone.1.push(k.1.clone());
                gone.2.push(k.2);
            }
        }
        let removed = gone.0.len();
        if removed > 0 {
            self.pool().with(async |c| {
                c.client
                    .execute(
                        "DELETE FROM readings r USING unnest($1::text[], $2::text[], $3::timestamptz[])
                           AS g(tenant, printer, read_at)
                         WHERE r.tenant = g.tenant AND r.printer = g.printer AND r.read_at = g.read_at",
                        &[&gone.0, &gone.1, &gone.2],
                    )
                    .await
            })?;
        }
        let next = rows
            .get(max)
            .map(|(k, _)| serde_json::to_vec(k).expect("plain data serializes"));
        Ok((removed, next))
    }
}
