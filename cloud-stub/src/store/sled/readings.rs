//! [`Readings`] on sled: `{tenant}/{printer}/{read_at ms:020}` → sample JSON.

use super::SledStore;
use crate::model::Period;
use crate::model::Sample;
use crate::store::thinning::Thinner;
use crate::store::{Batch, Readings, Result};
use chrono::{DateTime, Utc};
use platen_protocol::Id;

pub(super) fn key(tenant: &Id, printer: &Id, at: DateTime<Utc>) -> String {
    let ms = u64::try_from(at.timestamp_millis()).unwrap_or(0);
    format!("{tenant}/{printer}/{ms:020}")
}

fn decode(v: &[u8]) -> Option<Sample> {
    serde_json::from_slice::<Sample>(v).ok()
}

impl Readings for SledStore {
    fn record_sample(&self, tenant: &Id, printer: &Id, s: &Sample) -> Result<bool> {
        let k = key(tenant, printer, s.read_at);
        let v = serde_json::to_vec(s).expect("plain data serializes");
        Ok(self
            .readings
            .compare_and_swap(k.as_bytes(), None as Option<&[u8]>, Some(v))?
            .is_ok())
    }

    /// Unreadable rows are skipped.
    fn samples(&self, tenant: &Id, printer: &Id, period: &Period) -> Result<Vec<Sample>> {
        let prefix = format!("{tenant}/{printer}/");
        let start = key(tenant, printer, period.start);
        let end = key(tenant, printer, period.end);
        let mut out = Vec::new();
        if let Some((_, v)) = self
            .readings
            .range(prefix.as_bytes()..start.as_bytes())
            .next_back()
            .transpose()?
        {
            out.extend(decode(&v));
        }
        for kv in self.readings.range(start.as_bytes()..end.as_bytes()) {
            out.extend(decode(&kv?.1));
        }
        Ok(out)
    }

    fn latest_sample(&self, tenant: &Id, printer: &Id) -> Result<Option<DateTime<Utc>>> {
        let prefix = format!("{tenant}/{printer}/");
        Ok(self
            .readings
            .scan_prefix(prefix.as_bytes())
            .next_back()
            .transpose()?
            .and_then(|(_, v)| decode(&v))
            .map(|s| s.read_at))
    }

    fn prune_samples(
        &self,
        delete_before: DateTime<Utc>,
        thin_before: DateTime<Utc>,
        from: &[u8],
        max_keys: usize,
    ) -> Result<Batch> {
        let parse = |k: &[u8]| -> Option<(usize, u64)> {
            // `{tenant}/{printer}/{ms:020}`: ids cannot hold '/', so the part up to the
            // last '/' is exactly this printer's prefix.
            let slash = k.iter().rposition(|b| *b == b'/')?;
            let at = std::str::from_utf8(&k[slash + 1..]).ok()?.parse().ok()?;
            Some((slash, at))
        };
        let value = |v: &[u8]| decode(v).and_then(|s| s.value);
        let mut thinner = Thinner::new(delete_before, thin_before);
        let r = super::scan::scan(&self.readings, from, max_keys, |k, v, next| {
            let Some((slash, at)) = parse(k) else {
                return Ok(false);
            };
            let prefix = &k[..=slash];
            let next = next
                .filter(|(nk, _)| nk.starts_with(prefix))
                .map(|(nk, nv)| (parse(nk).map(|(_, t)| t).unwrap_or(u64::MAX), value(nv)));
            let keep = thinner.keep(prefix, at, value(v), next);
            if !keep {
                self.readings.remove(k)?;
            }
            Ok::<bool, sled::Error>(!keep)
        })?;
        Ok(r)
    }
}
