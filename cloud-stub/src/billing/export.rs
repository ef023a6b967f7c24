//! The ledger for finance, pure: one row per entry with its amount in minor units and
//! as a decimal by the currency's exponent, totals per currency, as CSV or JSON.
//!
//! The exponents are ISO 4217's (the number of digits after the decimal point): 2
//! unless listed in [`EXPONENTS`], so a code not listed is shown with 2; the minor
//! units are exact either way. (A table of 26 codes rather than a currency crate: the
//! exponent is all the export needs.)

use crate::model::LedgerEntry;
use serde::Serialize;
use std::collections::BTreeMap;

/// ISO 4217 currencies whose minor unit is not a hundredth (list of 2024).
pub const EXPONENTS: &[(&str, u32)] = &[
    ("BIF", 0),
    ("CLP", 0),
    ("DJF", 0),
    ("GNF", 0),
    ("ISK", 0),
    ("JPY", 0),
    ("KMF", 0),
    ("KRW", 0),
    ("PYG", 0),
    ("RWF", 0),
    ("UGX", 0),
    ("UYI", 0),
    ("VND", 0),
    ("VUV", 0),
    ("XAF", 0),
    ("XOF", 0),
    ("XPF", 0),
    ("BHD", 3),
    ("IQD", 3),
    ("JOD", 3),
    ("KWD", 3),
    ("LYD", 3),
    ("OMR", 3),
    ("TND", 3),
    ("CLF", 4),
    ("UYW", 4),
];

/// Digits after the decimal point of `currency`.
pub fn exponent(currency: &str) -> u32 {
    EXPONENTS
        .iter()
        .find(|(c, _)| *c == currency)
        .map_or(2, |(_, e)| *e)
}

/// `minor` units as a decimal with `exp` digits: 1234, 2 → "12.34"; −5, 2 → "-0.05".
pub fn decimal(minor: i128, exp: u32) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    if exp == 0 {
        return format!("{sign}{abs}");
    }
    let unit = 10u128.pow(exp);
    format!(
        "{sign}{}.{:0width$}",
        abs / unit,
        abs % unit,
        width = exp as usize
    )
}

/// One exported entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Row {
    pub key: String,
    /// `credit` or `correction` (a reversal: negative amounts).
    pub kind: &'static str,
    pub tenant: String,
    pub contract: String,
    pub change_id: String,
    pub period: String,
    pub currency: String,
    pub amount_minor: i128,
    pub amount: String,
    pub unavailable_secs: u64,
    pub extra_pages: Option<i128>,
    pub shipment_item: Option<String>,
    pub shipment_quantity: Option<u64>,
    pub reverses: Option<String>,
    pub created_at: String,
}

/// Totals of one currency.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Total {
    pub currency: String,
    pub entries: u64,
    pub amount_minor: i128,
    pub amount: String,
    pub extra_pages: i128,
}

/// The export of a period: rows in key order and totals per currency.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Export {
    pub period: String,
    pub rows: Vec<Row>,
    pub totals: Vec<Total>,
}

/// The entries of `period` (their billing period's label, `YYYY-MM`).
pub fn export(period: &str, entries: &[LedgerEntry]) -> Export {
    let mut rows: Vec<Row> = entries
        .iter()
        .filter(|e| e.part.period.label() == period)
        .map(|e| {
            let minor = e.signed_credit();
            let sign = if e.reverses.is_some() { -1 } else { 1 };
            Row {
                key: e.key.clone(),
                kind: if e.reverses.is_some() {
                    "correction"
                } else {
                    "credit"
                },
                tenant: e.tenant.to_string(),
                contract: e.contract.to_string(),
                change_id: e.change_id.clone(),
                period: e.part.period.label(),
                currency: e.currency.clone(),
                amount_minor: minor,
                amount: decimal(minor, exponent(&e.currency)),
                unavailable_secs: e.part.unavailable_secs,
                extra_pages: e
                    .part
                    .extra_pages
                    .as_ref()
                    .map(|p| sign * i128::from(p.pages)),
                shipment_item: e.part.shipment.as_ref().map(|s| s.item.clone()),
                shipment_quantity: e.part.shipment.as_ref().map(|s| s.quantity),
                reverses: e.reverses.clone(),
                created_at: e
                    .created_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            }
        })
        .collect();
    rows.sort_by(|a, b| a.key.cmp(&b.key));
    let mut by: BTreeMap<String, Total> = BTreeMap::new();
    for r in &rows {
        let t = by.entry(r.currency.clone()).or_insert_with(|| Total {
            currency: r.currency.clone(),
            entries: 0,
            amount_minor: 0,
            amount: String::new(),
            extra_pages: 0,
        });
        t.entries += 1;
        t.amount_minor += r.amount_minor;
        t.extra_pages += r.extra_pages.unwrap_or(0);
    }
    let totals = by
        .into_values()
        .map(|mut t| {
            t.amount = decimal(t.amount_minor, exponent(&t.currency));
            t
        })
        .collect();
    Export {
        period: period.to_string(),
        rows,
        totals,
    }
}

/// CSV: a header, the rows, then one `total` row per currency (key empty).
pub fn csv(x: &Export) -> Result<String, String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let err = |e: csv::Error| e.to_string();
    w.write_record([
        "key",
        "kind",
        "tenant",
        "contract",
        "change_id",
        "period",
        "currency",
        "amount_minor",
        "amount",
        "unavailable_secs",
        "extra_pages",
        "shipment_item",
        "shipment_quantity",
        "reverses",
        "created_at",
    ])
    .map_err(err)?;
    let opt = |v: Option<String>| v.unwrap_or_default();
    for r in &x.rows {
        w.write_record([
            r.key.clone(),
            r.kind.to_string(),
            r.tenant.clone(),
            r.contract.clone(),
            r.change_id.clone(),
            r.period.clone(),
            r.currency.clone(),
            r.amount_minor.to_string(),
            r.amount.clone(),
            r.unavailable_secs.to_string(),
            opt(r.extra_pages.map(|p| p.to_string())),
            opt(r.shipment_item.clone()),
            opt(r.shipment_quantity.map(|q| q.to_string())),
            opt(r.reverses.clone()),
            r.created_at.clone(),
        ])
        .map_err(err)?;
    }
    for t in &x.totals {
        w.write_record([
            String::new(),
            "total".into(),
            String::new(),
            String::new(),
            String::new(),
            x.period.clone(),
            t.currency.clone(),
            t.amount_minor.to_string(),
            t.amount.clone(),
            String::new(),
            t.extra_pages.to_string(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ])
        .map_err(err)?;
    }
    let bytes = w.into_inner().map_err(|e| e.to_string())?;
    String::from_utf8(bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ExtraPages, Part};

    #[test]
    fn decimals_by_the_currencys_exponent() {
        let cases: [(i128, &str, &str); 8] = [
            (1234, "EUR", "12.34"),
            (-5, "EUR", "-0.05"),
            (0, "USD", "0.00"),
            (1234, "JPY", "1234"),
            (-1234, "JPY", "-1234"),
            (1234, "KWD", "1.234"),
            (7, "CLF", "0.0007"),
            (100, "XYZ", "1.00"),
        ];
        for (minor, cur, want) in cases {
            assert_eq!(decimal(minor, exponent(cur)), want, "{minor} {cur}");
        }
    }

    fn entry(key: &str, currency: &str, fee: u64, reverses: Option<&str>) -> LedgerEntry {
        let p = crate::billing::period::month(chrono_tz::UTC, 2026, 3);
        LedgerEntry {
            key: key.into(),
            tenant: "acme".parse().unwrap(),
            contract: "c1".parse().unwrap(),
            change_id: "c1.1".into(),
            currency: currency.into(),
            created_at: p.start,
            reverses: reverses.map(str::to_string),
            part: Part {
                period: p,
                from: p.start,
                to: p.start,
                unavailable_secs: 60,
                period_secs: p.secs(),
                up_to_completion: true,
                fee_credit: fee,
                fee_arithmetic: "x".into(),
                extra_pages: Some(ExtraPages {
                    pages: 3,
                    period: "2026-03".into(),
                    arithmetic: "y".into(),
                }),
                shipment: None,
            },
        }
    }

    #[test]
    fn totals_per_currency_count_corrections_negative() {
        let entries = [
            entry("c1.1/2026-03", "EUR", 1000, None),
            entry("c1.1/2026-03/reversal", "EUR", 60, Some("c1.1/2026-03")),
            entry("c2.1/2026-03", "JPY", 500, None),
        ];
        let x = export("2026-03", &entries);
        assert_eq!(x.rows.len(), 3);
        assert_eq!(x.rows[1].kind, "correction");
        assert_eq!(x.rows[1].amount, "-0.60");
        let eur = x.totals.iter().find(|t| t.currency == "EUR").unwrap();
        assert_eq!(
            (eur.amount_minor, eur.amount.as_str(), eur.extra_pages),
            (940, "9.40", 0)
        );
        let jpy = x.totals.iter().find(|t| t.currency == "JPY").unwrap();
        assert_eq!(jpy.amount, "500");
        assert!(export("2026-04", &entries).rows.is_empty(), "other periods");
        let text = csv(&x).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1 + 3 + 2, "{text}");
        assert!(lines[0].starts_with("key,kind,tenant"));
        assert!(
            lines[4].starts_with(",total,,,,2026-03,EUR,940,9.40"),
            "{text}"
        );
    }
}
