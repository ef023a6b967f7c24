//! Bounded scans for retention: visit at most a batch of entries from a key on and say
//! where the next batch starts, so a pass over a large history runs in slices.

/// Visit at most `max_keys` entries of `tree` from `from` on, in key order. `visit`
/// gets the entry and the one after it (if any) and returns whether it removed the
/// entry. Returns (removed, the key the next batch starts at; `None` at the end).
pub(crate) fn scan<E: From<sled::Error>>(
    tree: &sled::Tree,
    from: &[u8],
    max_keys: usize,
    mut visit: impl FnMut(&[u8], &[u8], Option<(&[u8], &[u8])>) -> Result<bool, E>,
) -> Result<(usize, Option<Vec<u8>>), E> {
    let mut iter = tree.range(from..).peekable();
    let (mut removed, mut scanned) = (0, 0);
    while let Some(kv) = iter.next() {
        let (k, v) = kv?;
        scanned += 1;
        let next = match iter.peek() {
            Some(Ok((nk, nv))) => Some((nk.as_ref(), nv.as_ref())),
            _ => None,
        };
        if visit(&k, &v, next)? {
            removed += 1;
        }
        if scanned >= max_keys {
            let next = match iter.peek() {
                Some(Ok((n, _))) => Some(n.to_vec()),
                _ => None,
            };
            return Ok((removed, next));
        }
    }
    Ok((removed, None))
}

#[cfg(test)]
mod tests {
    #[test]
    fn batches_cover_every_key_once() {
        let d = tempfile::tempdir().unwrap();
        let db = sled::open(d.path()).unwrap();
        let t = db.open_tree("t").unwrap();
        for i in 0..25u32 {
            t.insert(format!("k{i:03}"), &[]).unwrap();
        }
        let (mut seen, mut from, mut batches) = (Vec::new(), Vec::new(), 0);
        loop {
            let (_, next) = super::scan::<sled::Error>(&t, &from, 10, |k, _, _| {
                seen.push(String::from_utf8(k.to_vec()).unwrap());
                Ok(false)
            })
            .unwrap();
            batches += 1;
            match next {
                Some(k) => from = k,
                None => break,
            }
        }
        assert_eq!((seen.len(), batches), (25, 3));
        seen.dedup();
        assert_eq!(seen.len(), 25);
    }
}
