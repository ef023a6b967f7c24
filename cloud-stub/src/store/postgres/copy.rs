//! [`Portable`] on PostgreSQL: tables out in key order (the large ones a page at a
//! time), records in through the same statements the port writes with.

use super::{decode, json, to_i64, PgStore};
use crate::store::copy::{Portable, Record};
use crate::store::Webhooks;
use crate::store::{Contracts, Readings, Reports, Result};
use platen_protocol::Id;
use tokio_postgres::Row;

/// Rows per page of the large tables.
const PAGE: i64 = 2000;

fn id(text: String) -> Result<Id> {
    text.parse().map_err(
        |e: platen_protocol::IdError| crate::store::StoreError::Corrupt {
            key: text.clone(),
            message: e.to_string(),
        },
    )
}

impl PgStore {
    fn rows(&self, sql: &'static str) -> Result<Vec<Row>> {
        self.pool().with(async |c| c.client.query(sql, &[]).await)
    }

    /// Every row of `sql`, a page at a time: it takes the previous page's last key
    /// (as text, from `start`, which sorts before every row) then the page size.
    fn pages(
        &self,
        sql: &'static str,
        start: &[&str],
        key_of: impl Fn(&Row) -> Vec<String>,
        mut each: impl FnMut(Row) -> Result<()>,
    ) -> Result<()> {
        let mut after: Vec<String> = start.iter().map(|s| s.to_string()).collect();
        loop {
            let page: Vec<Row> = self.pool().with(async |c| {
                let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                    after.iter().map(|a| a as _).collect();
                params.push(&PAGE);
                c.client.query(sql, &params).await
            })?;
            let n = page.len();
            if let Some(last) = page.last() {
                after = key_of(last);
            }
            for row in page {
                each(row)?;
            }
            if (n as i64) < PAGE {
                return Ok(());
            }
        }
    }
}

impl Portable for PgStore {
    fn export(&self, out: &mut dyn FnMut(Record) -> Result<()>) -> Result<()> {
        for r in self.rows("SELECT doc::text FROM resellers ORDER BY id")? {
            out(Record::Reseller(decode("reseller", r.get(0))?))?;
        }
        for r in self.rows("SELECT doc::text FROM plans ORDER BY id")? {
            out(Record::Plan(decode("plan", r.get(0))?))?;
        }
        for r in self.rows("SELECT doc::text FROM tenants ORDER BY id")? {
            out(Record::Tenant(decode("tenant", r.get(0))?))?;
        }
        for r in self.rows("SELECT doc::text FROM contracts ORDER BY id")? {
            out(Record::Contract(decode("contract", r.get(0))?))?;
        }
        for r in self.rows(
            "SELECT tenant, printer, contract FROM printer_contracts ORDER BY tenant, printer",
        )? {
            out(Record::Claim {
                tenant: id(r.get(0))?,
                printer: id(r.get(1))?,
                contract: id(r.get(2))?,
            })?;
        }
        for r in self.rows("SELECT doc::text, due_at FROM changes ORDER BY id")? {
            out(Record::Change {
                record: decode("change", r.get(0))?,
                due_at: r.get(1),
            })?;
        }
        self.pages(
            "SELECT change_id, seq::text, doc::text FROM timeline
             WHERE (change_id, seq) > ($1, $2::text::bigint)
             ORDER BY change_id, seq LIMIT $3",
            &["", "-1"],
            |r| vec![r.get(0), r.get(1)],
            |r| out(Record::Timeline(decode("timeline", r.get(2))?)),
        )?;
        for r in self.rows("SELECT doc::text FROM ledger ORDER BY key")? {
            out(Record::Ledger(decode("ledger", r.get(0))?))?;
        }
        for r in self.rows("SELECT key, at FROM shipments_sent ORDER BY key")? {
            out(Record::Shipment {
                key: r.get(0),
                at: r.get(1),
            })?;
        }
        for r in self.rows("SELECT doc::text FROM migrations ORDER BY id")? {
            out(Record::Migration(decode("migration", r.get(0))?))?;
        }
        for r in self.rows("SELECT tenant, printer, last FROM versions ORDER BY tenant, printer")? {
            out(Record::Version {
                tenant: id(r.get(0))?,
                printer: id(r.get(1))?,
                last: r.get::<_, i64>(2).max(0) as u64,
            })?;
        }
        for r in self.rows(
            "SELECT tenant, printer, version, at, change_id FROM published
             ORDER BY tenant, printer, version",
        )? {
            out(Record::Published {
                tenant: id(r.get(0))?,
                printer: id(r.get(1))?,
                version: r.get::<_, i64>(2).max(0) as u64,
                at: r.get(3),
                change: r.get(4),
            })?;
        }
        self.pages(
            "SELECT report_id, tenant, doc::text FROM reports
             WHERE report_id > $1 ORDER BY report_id LIMIT $2",
            &[""],
            |r| vec![r.get(0)],
            |r| {
                out(Record::Report {
                    tenant: id(r.get(1))?,
                    report: decode("report", r.get(2))?,
                })
            },
        )?;
        for r in self.rows("SELECT agent, doc::text FROM agents_seen ORDER BY agent")? {
            out(Record::AgentSeen {
                agent: id(r.get(0))?,
                seen: decode("agent seen", r.get(1))?,
            })?;
        }
        for r in self
            .rows("SELECT tenant, printer, doc::text FROM printers_seen ORDER BY tenant, printer")?
        {
            out(Record::PrinterSeen {
                tenant: id(r.get(0))?,
                printer: id(r.get(1))?,
                seen: decode("printer seen", r.get(2))?,
            })?;
        }
        self.pages(
            "SELECT tenant, printer, to_char(read_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
                    doc::text FROM readings
             WHERE (tenant, printer, read_at) > ($1, $2, $3::text::timestamptz)
             ORDER BY tenant, printer, read_at LIMIT $4",
            &["", "", "-infinity"],
            |r| vec![r.get(0), r.get(1), r.get(2)],
            |r| {
                out(Record::Sample {
                    tenant: id(r.get(0))?,
                    printer: id(r.get(1))?,
                    sample: decode("sample", r.get(3))?,
                })
            },
        )?;
        for r in self.rows("SELECT doc::text FROM webhook_endpoints ORDER BY id")? {
            out(Record::WebhookEndpoint(decode(
                "webhook endpoint",
                r.get(0),
            )?))?;
        }
        for r in self.rows("SELECT doc::text, n FROM webhook_events ORDER BY n")? {
            out(Record::WebhookEvent {
                n: r.get::<_, i64>(1).max(0) as u64,
                event: decode("webhook event", r.get(0))?,
            })?;
        }
        for r in
            self.rows("SELECT doc::text FROM webhook_deliveries ORDER BY endpoint, event_id")?
        {
            out(Record::WebhookDelivery(decode(
                "webhook delivery",
                r.get(0),
            )?))?;
        }
        Ok(())
    }

    fn import(&self, records: Vec<Record>) -> Result<()> {
        let mut max_seq: i64 = 0;
        for r in records {
            match r {
                Record::Reseller(x) => {
                    self.add_reseller(&x)?;
                }
                Record::Plan(x) => self.put_plan(&x)?,
                Record::Tenant(x) => {
                    self.add_tenant(&x)?;
                }
                Record::Contract(k) => {
                    let doc = json(&k);
                    self.pool().with(async |c| {
                        c.client
                            .execute(
                                "INSERT INTO contracts (id, tenant, created_at, doc)
                                 VALUES ($1, $2, $3, $4::text::jsonb) ON CONFLICT DO NOTHING",
                                &[&k.id.as_str(), &k.tenant.as_str(), &k.created_at, &doc],
                            )
                            .await
                    })?;
                }
                Record::Claim {
                    tenant,
                    printer,
                    contract,
                } => {
                    self.pool().with(async |c| {
                        c.client
                            .execute(
                                "INSERT INTO printer_contracts (tenant, printer, contract)
                                 VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                                &[&tenant.as_str(), &printer.as_str(), &contract.as_str()],
                            )
                            .await
                    })?;
                }
                Record::Change { record, due_at } => {
                    let ch = &record.change;
                    let settled = record.setup.settled;
                    let due_at = if settled { None } else { due_at };
                    let doc = json(&record);
                    let seq = ch.seq as i32;
                    self.pool().with(async |c| {
                        c.client
                            .execute(
                                "INSERT INTO changes (id, tenant, contract, seq, due_at, settled, doc)
                                 SELECT $1, k.tenant, k.id, $3, $4, $5, $6::text::jsonb
                                 FROM contracts k WHERE k.id = $2 ON CONFLICT DO NOTHING",
                                &[&ch.id, &ch.contract.as_str(), &seq, &due_at, &settled, &doc],
                            )
                            .await
                    })?;
                }
                Record::Timeline(e) => {
                    let seq = to_i64(e.seq, "timeline seq")?;
                    max_seq = max_seq.max(seq);
                    let once = e.event.once_key();
                    let doc = json(&e);
                    self.pool().with(async |c| {
                        c.client
                            .execute(
                                "INSERT INTO timeline (change_id, seq, tenant, at, once_key, doc)
                                 SELECT $1, $2, tenant, $3, $4, $5::text::jsonb
                                 FROM changes WHERE id = $1 ON CONFLICT DO NOTHING",
                                &[&e.change_id, &seq, &e.at, &once, &doc],
                            )
                            .await
                    })?;
                }
                Record::Ledger(e) => {
                    self.insert_ledger(&e, false)?;
                }
                Record::Shipment { key, at } => self.mark_shipment_sent(&key, at)?,
                Record::Migration(m) => {
                    self.insert_migration(&m, false)?;
                }
                Record::Version {
                    tenant,
                    printer,
                    last,
                } => {
                    let last = to_i64(last, "config version")?;
                    self.pool().with(async |c| {
                        c.client
                            .execute(
                                "INSERT INTO versions (tenant, printer, last) VALUES ($1, $2, $3)
                                 ON CONFLICT (tenant, printer)
                                 DO UPDATE SET last = GREATEST(versions.last, excluded.last)",
                                &[&tenant.as_str(), &printer.as_str(), &last],
                            )
                            .await
                    })?;
                }
                Record::Published {
                    tenant,
                    printer,
                    version,
                    at,
                    change,
                } => self.record_published(&tenant, &printer, &[version], change.as_deref(), at)?,
                Record::Report { tenant, report } => {
                    let bytes = serde_json::to_vec(&report).expect("plain data serializes");
                    self.store_report(&tenant, &report, &bytes, usize::MAX >> 1)?;
                }
                Record::AgentSeen { agent, seen } => self.set_agent_seen(&agent, &seen)?,
                Record::PrinterSeen {
                    tenant,
                    printer,
                    seen,
                } => self.set_printer_seen(&tenant, &printer, &seen)?,
                Record::Sample {
                    tenant,
                    printer,
                    sample,
                } => {
                    self.record_sample(&tenant, &printer, &sample)?;
                }
                Record::WebhookEndpoint(e) => {
                    self.add_endpoint(&e)?;
                }
                Record::WebhookEvent { n, event } => {
                    let (n, seq) = (to_i64(n, "event order")?, to_i64(event.seq, "event seq")?);
                    let doc = json(&event);
                    self.pool().with(async |c| {
                        c.client
                            .execute(
                                "INSERT INTO webhook_events (id, n, contract, seq, doc)
                                 VALUES ($1, $2, $3, $4, $5::text::jsonb) ON CONFLICT DO NOTHING",
                                &[&event.id, &n, &event.contract.as_str(), &seq, &doc],
                            )
                            .await?;
                        c.client
                            .execute(
                                "INSERT INTO webhook_seq (contract, last) VALUES ($1, $2)
                                 ON CONFLICT (contract)
                                 DO UPDATE SET last = GREATEST(webhook_seq.last, excluded.last)",
                                &[&event.contract.as_str(), &seq],
                            )
                            .await?;
                        // New events are numbered after the imported ones.
                        c.client
                            .execute(
                                "SELECT setval(pg_get_serial_sequence('webhook_events', 'n'),
                                               GREATEST($1, (SELECT max(n) FROM webhook_events)))",
                                &[&n],
                            )
                            .await
                    })?;
                }
                Record::WebhookDelivery(d) => {
                    let doc = json(&d);
                    self.pool().with(async |c| {
                        c.client
                            .execute(
                                "INSERT INTO webhook_deliveries (endpoint, event_id, state, next_at, doc)
                                 VALUES ($1, $2, $3, $4, $5::text::jsonb) ON CONFLICT DO NOTHING",
                                &[&d.endpoint.as_str(), &d.event_id, &d.state.name(), &d.next_at, &doc],
                            )
                            .await
                    })?;
                }
            }
        }
        if max_seq > 0 {
            // New ids (timeline entries) after the imported ones.
            self.pool().with(async |c| {
                c.client
                    .execute(
                        "SELECT setval('platen_ids', GREATEST($1, (SELECT last_value FROM platen_ids)))",
                        &[&max_seq],
                    )
                    .await
            })?;
        }
        Ok(())
    }

    fn is_empty(&self) -> Result<bool> {
        self.pool().with(async |c| {
            let n: bool = c
                .client
                .query_one(
                    "SELECT NOT (EXISTS (SELECT 1 FROM tenants) OR EXISTS (SELECT 1 FROM plans)
                          OR EXISTS (SELECT 1 FROM resellers) OR EXISTS (SELECT 1 FROM reports)
                          OR EXISTS (SELECT 1 FROM readings) OR EXISTS (SELECT 1 FROM published))",
                    &[],
                )
                .await?
                .get(0);
            Ok(n)
        })
    }
}
