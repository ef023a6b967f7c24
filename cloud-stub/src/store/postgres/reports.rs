//! [`Reports`] on PostgreSQL.

use super::{decode, json, to_i64, PgStore};
use crate::model::ReceivedReport;
use crate::model::{AgentSeen, PrinterSeen};
use crate::store::{Batch, NewReport, Reports, Result, Stored};
use chrono::{DateTime, Utc};
use platen_protocol::Id;
use std::collections::{HashMap, HashSet};
use std::ops::RangeInclusive;

/// The columns of a multi-row insert of reports.
#[derive(Default)]
struct ReportColumns<'a> {
    ids: Vec<&'a str>,
    tenants: Vec<&'a str>,
    printers: Vec<&'a str>,
    versions: Vec<i64>,
    received: Vec<DateTime<Utc>>,
    docs: Vec<String>,
}

/// A report-index position: (tenant, printer, version, report id).
type Cursor = (String, String, i64, String);

impl Reports for PgStore {
    fn record_published(
        &self,
        tenant: &Id,
        printer: &Id,
        versions: &[u64],
        change: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<()> {
        let versions: Vec<i64> = versions
            .iter()
            .map(|v| to_i64(*v, "config version"))
            .collect::<Result<_>>()?;
        self.pool().with(async |c| {
            let st = c
                .prep(
                    "INSERT INTO published (tenant, printer, version, at, change_id)
                     SELECT $1, $2, v, $4, $5 FROM unnest($3::bigint[]) AS v
                     ON CONFLICT (tenant, printer, version)
                     DO UPDATE SET at = excluded.at, change_id = excluded.change_id",
                )
                .await?;
            c.client
                .execute(
                    &st,
                    &[&tenant.as_str(), &printer.as_str(), &versions, &at, &change],
                )
                .await
        })?;
        Ok(())
    }

    fn was_published(&self, tenant: &Id, printer: &Id, version: u64) -> Result<bool> {
        // Nothing beyond the column's range was ever published.
        let Ok(version) = i64::try_from(version) else {
            return Ok(false);
        };
        self.pool().with(async |c| {
            let st = c
                .prep(
                    "SELECT EXISTS (SELECT 1 FROM published
                                    WHERE tenant = $1 AND printer = $2 AND version = $3)",
                )
                .await?;
            Ok(c.client
                .query_one(&st, &[&tenant.as_str(), &printer.as_str(), &version])
                .await?
                .get(0))
        })
    }

    fn store_report(
        &self,
        tenant: &Id,
        rec: &ReceivedReport,
        json: &[u8],
        max_per_version: usize,
    ) -> Result<Stored> {
        let r = &rec.report;
        // Nothing beyond the column's range was ever published.
        let Ok(version) = i64::try_from(r.config_version) else {
            return Ok(Stored::Unpublished);
        };
        let doc = String::from_utf8_lossy(json);
        let max = max_per_version as i64;
        // One statement: the report is inserted if its version was published, its id
        // is new and its version holds fewer than `max` reports.
        let (published, inserted, existed): (bool, bool, bool) = self.pool().with(async |c| {
            let st = c
                .prep(
                    "WITH published AS (SELECT 1 FROM published
                                        WHERE tenant = $2 AND printer = $3 AND version = $4),
                          own AS (SELECT 1 FROM reports WHERE report_id = $1),
                          n AS (SELECT count(*) AS n FROM
                                  (SELECT 1 FROM reports WHERE tenant = $2 AND printer = $3
                                     AND version = $4 LIMIT $6) x),
                          ins AS (INSERT INTO reports (report_id, tenant, printer, version,
                                                       received_at, doc)
                                  SELECT $1, $2, $3, $4, $5, $7::text::json
                                  WHERE EXISTS (SELECT 1 FROM published)
                                    AND NOT EXISTS (SELECT 1 FROM own)
                                    AND (SELECT n FROM n) < $6
                                  ON CONFLICT (report_id) DO NOTHING
                                  RETURNING 1)
                     SELECT EXISTS (SELECT 1 FROM published), EXISTS (SELECT 1 FROM ins),
                            EXISTS (SELECT 1 FROM own)",
                )
                .await?;
            let row = c
                .client
                .query_one(
                    &st,
                    &[
                        &r.report_id,
                        &tenant.as_str(),
                        &r.printer_id.as_str(),
                        &version,
                        &rec.received_at,
                        &max,
                        &doc.as_ref(),
                    ],
                )
                .await?;
            Ok((row.get(0), row.get(1), row.get(2)))
        })?;
        if !published {
            return Ok(Stored::Unpublished);
        }
        if inserted {
            return Ok(Stored::New);
        }
        if existed || self.report(&r.report_id)?.is_some() {
            // (The second look: another instance stored it in the meantime.)
            return Ok(Stored::Duplicate);
        }
        Ok(Stored::Full)
    }

    /// A batch in four statements instead of one per report: which ids exist, which
    /// versions were published, how many reports each version holds, then one
    /// multi-row insert of those accepted (in order, as one by one would).
    fn store_reports(
        &self,
        reports: &[NewReport<'_>],
        max_per_version: usize,
    ) -> Result<Vec<Stored>> {
        if reports.is_empty() {
            return Ok(Vec::new());
        }
        type Key = (String, String, i64);
        let key = |r: &NewReport<'_>| -> Option<Key> {
            let v = i64::try_from(r.report.report.config_version).ok()?;
            Some((
                r.tenant.to_string(),
                r.report.report.printer_id.to_string(),
                v,
            ))
        };
        let ids: Vec<String> = reports
            .iter()
            .map(|r| r.report.report.report_id.clone())
            .collect();
        let keys: Vec<Key> = reports.iter().filter_map(key).collect();
        let (ts, ps, vs): (Vec<&str>, Vec<&str>, Vec<i64>) = keys
            .iter()
            .map(|(t, p, v)| (t.as_str(), p.as_str(), *v))
            .fold(Default::default(), |(mut a, mut b, mut c), (t, p, v)| {
                a.push(t);
                b.push(p);
                c.push(v);
                (a, b, c)
            });
        // The three reads are sent together (tokio-postgres pipelines concurrent
        // queries on one connection): one round trip, not three.
        let (existing, published, counts) = self.pool().with(async |c| {
            let q_existing = c
                .prep("SELECT report_id FROM reports WHERE report_id = ANY($1)")
                .await?;
            let q_published = c
                .prep(
                    "SELECT p.tenant, p.printer, p.version FROM published p
                     JOIN unnest($1::text[], $2::text[], $3::bigint[]) AS k(t, p, v)
                       ON p.tenant = k.t AND p.printer = k.p AND p.version = k.v",
                )
                .await?;
            let q_counts = c
                .prep(
                    "SELECT r.tenant, r.printer, r.version, count(*) FROM reports r
                     JOIN (SELECT DISTINCT * FROM unnest($1::text[], $2::text[], $3::bigint[]))
                       AS k(t, p, v)
                       ON r.tenant = k.t AND r.printer = k.p AND r.version = k.v
                     GROUP BY r.tenant, r.printer, r.version",
                )
                .await?;
            let (existing, published, counts) = futures_util::future::try_join3(
                c.client.query(&q_existing, &[&ids]),
                c.client.query(&q_published, &[&ts, &ps, &vs]),
                c.client.query(&q_counts, &[&ts, &ps, &vs]),
            )
            .await?;
            let existing: HashSet<String> = existing.iter().map(|r| r.get(0)).collect();
            let published: HashSet<Key> = published
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect();
            let counts: HashMap<Key, i64> = counts
                .iter()
                .map(|r| ((r.get(0), r.get(1), r.get(2)), r.get(3)))
                .collect();
            Ok((existing, published, counts))
        })?;
        let mut counts = counts;
        let mut seen: HashSet<&str> = HashSet::new();
        let mut out = Vec::with_capacity(reports.len());
        let mut insert: Vec<usize> = Vec::new();
        for (i, r) in reports.iter().enumerate() {
            let id = r.report.report.report_id.as_str();
            let Some(k) = key(r).filter(|k| published.contains(k)) else {
                out.push(Stored::Unpublished);
                continue;
            };
            if existing.contains(id) || seen.contains(id) {
                out.push(Stored::Duplicate);
                continue;
            }
            let n = counts.entry(k).or_default();
            if *n >= max_per_version as i64 {
                out.push(Stored::Full);
                continue;
            }
            *n += 1;
            seen.insert(id);
            insert.push(i);
            out.push(Stored::New);
        }
        if !insert.is_empty() {
            let mut cols = ReportColumns::default();
            for &i in &insert {
                let r = &reports[i];
                let rep = &r.report.report;
                cols.ids.push(rep.report_id.as_str());
                cols.tenants.push(r.tenant.as_str());
                cols.printers.push(rep.printer_id.as_str());
                cols.versions.push(rep.config_version as i64);
                cols.received.push(r.report.received_at);
                cols.docs.push(String::from_utf8_lossy(r.json).into_owned());
            }
            let stored: HashSet<String> = self.pool().with(async |c| {
                let insert = c
                    .prep(
                        "INSERT INTO reports (report_id, tenant, printer, version, received_at, doc)
                         SELECT i, t, p, v, at, d::json
                         FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[],
                                     $5::timestamptz[], $6::text[]) AS x(i, t, p, v, at, d)
                         ON CONFLICT (report_id) DO NOTHING RETURNING report_id",
                    )
                    .await?;
                Ok(c.client
                    .query(
                        &insert,
                        &[
                            &cols.ids,
                            &cols.tenants,
                            &cols.printers,
                            &cols.versions,
                            &cols.received,
                            &cols.docs,
                        ],
                    )
                    .await?
                    .iter()
                    .map(|r| r.get(0))
                    .collect())
            })?;
            // Stored meanwhile by another instance: a duplicate here.
            for &i in &insert {
                if !stored.contains(&reports[i].report.report.report_id) {
                    out[i] = Stored::Duplicate;
                }
            }
        }
        Ok(out)
    }

    fn report(&self, report_id: &str) -> Result<Option<ReceivedReport>> {
        let t = self.pool().with(async |c| {
            let st = c
                .prep("SELECT doc::text FROM reports WHERE report_id = $1")
                .await?;
            Ok(c.client
                .query_opt(&st, &[&report_id])
                .await?
                .map(|r| r.get::<_, String>(0)))
        })?;
        t.map(|t| decode(report_id, &t)).transpose()
    }

    /// Unreadable rows are skipped.
    fn reports(&self) -> Result<Vec<ReceivedReport>> {
        let rows: Vec<String> = self.pool().with(async |c| {
            Ok(c.client
                .query("SELECT doc::text FROM reports ORDER BY report_id", &[])
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

    fn reports_for(
        &self,
        tenant: &Id,
        printer: &Id,
        versions: RangeInclusive<u64>,
    ) -> Result<Vec<ReceivedReport>> {
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let (from, to) = (clamp(*versions.start()), clamp(*versions.end()));
        let rows: Vec<String> = self.pool().with(async |c| {
            let st = c
                .prep(
                    "SELECT doc::text FROM reports
                     WHERE tenant = $1 AND printer = $2 AND version BETWEEN $3 AND $4
                     ORDER BY version, report_id",
                )
                .await?;
            Ok(c.client
                .query(&st, &[&tenant.as_str(), &printer.as_str(), &from, &to])
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

    fn prune_reports(
        &self,
        may_go: &mut dyn FnMut(&str) -> Result<bool>,
        from: &[u8],
        max_keys: usize,
    ) -> Result<Batch> {
        let cursor: Cursor = serde_json::from_slice(from).unwrap_or_default();
        let n = max_keys.max(1) as i64 + 1;
        type Row = (Cursor, Option<String>);
        let rows: Vec<Row> = self.pool().with(async |c| {
            Ok(c.client
                .query(
                    "SELECT r.tenant, r.printer, r.version, r.report_id, p.change_id
                     FROM reports r LEFT JOIN published p
                       ON p.tenant = r.tenant AND p.printer = r.printer AND p.version = r.version
                     WHERE (r.tenant, r.printer, r.version, r.report_id) >= ($1, $2, $3, $4)
                     ORDER BY r.tenant, r.printer, r.version, r.report_id
                     LIMIT $5",
                    &[&cursor.0, &cursor.1, &cursor.2, &cursor.3, &n],
                )
                .await?
                .iter()
                .map(|r| ((r.get(0), r.get(1), r.get(2), r.get(3)), r.get(4)))
                .collect())
        })?;
        let mut gone = Vec::new();
        for ((_, _, _, id), change) in rows.iter().take(max_keys.max(1)) {
            if let Some(change) = change {
                if may_go(change)? {
                    gone.push(id.clone());
                }
            }
        }
        if !gone.is_empty() {
            self.pool().with(async |c| {
                c.client
                    .execute("DELETE FROM reports WHERE report_id = ANY($1)", &[&gone])
                    .await
            })?;
        }
        let next = rows
            .get(max_keys.max(1))
            .map(|(k, _)| serde_json::to_vec(k).expect("plain data serializes"));
        Ok((gone.len(), next))
    }

    fn agent_seen(&self, agent: &Id) -> Result<Option<AgentSeen>> {
        let t = self.pool().with(async |c| {
            let st = c
                .prep("SELECT doc::text FROM agents_seen WHERE agent = $1")
                .await?;
            Ok(c.client
                .query_opt(&st, &[&agent.as_str()])
                .await?
                .map(|r| r.get::<_, String>(0)))
        })?;
        t.map(|t| decode(agent.as_str(), &t)).transpose()
    }

    fn set_agent_seen(&self, agent: &Id, seen: &AgentSeen) -> Result<()> {
        let doc = json(seen);
        self.pool().with(async |c| {
            let st = c
                .prep(
                    "INSERT INTO agents_seen (agent, doc) VALUES ($1, $2::text::jsonb)
                     ON CONFLICT (agent) DO UPDATE SET doc = excluded.doc",
                )
                .await?;
            c.client.execute(&st, &[&agent.as_str(), &doc]).await
        })?;
        Ok(())
    }

    fn printer_seen(&self, tenant: &Id, printer: &Id) -> Result<Option<PrinterSeen>> {
        let t = self.pool().with(async |c| {
            let st = c
                .prep("SELECT doc::text FROM printers_seen WHERE tenant = $1 AND printer = $2")
                .await?;
            Ok(c.client
                .query_opt(&st, &[&tenant.as_str(), &printer.as_str()])
                .await?
                .map(|r| r.get::<_, String>(0)))
        })?;
        t.map(|t| decode(printer.as_str(), &t)).transpose()
    }

    fn set_printer_seen(&self, tenant: &Id, printer: &Id, seen: &PrinterSeen) -> Result<()> {
        let doc = json(seen);
        self.pool().with(async |c| {
            let st = c
                .prep(
                    "INSERT INTO printers_seen (tenant, printer, doc) VALUES ($1, $2, $3::text::jsonb)
                     ON CONFLICT (tenant, printer) DO UPDATE SET doc = excluded.doc",
                )
                .await?;
            c.client
                .execute(&st, &[&tenant.as_str(), &printer.as_str(), &doc])
                .await
        })?;
        Ok(())
    }
}
