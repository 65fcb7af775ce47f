//! Checks shared by both backends, so that a request one accepts the other accepts too:
//! key and prefix shape, transaction size and self-conflicts, and which compare failed.

use std::collections::HashSet;

use super::{Compare, CompareFailed, KeyValue, Op, Result, StoreError, Txn, MAX_TXN_OPS};

fn invalid(op: &str, what: &str, reason: impl Into<String>) -> StoreError {
    StoreError::Invalid {
        op: format!("{op} {what}"),
        reason: reason.into(),
    }
}

/// A key is non-empty, starts with `/` and holds no NUL (etcd range ends are built by
/// appending bytes, and a NUL would make `a\0` sort between `a` and its children).
pub(crate) fn check_key(op: &str, key: &str) -> Result<()> {
    if !key.starts_with('/') {
        return Err(invalid(op, key, "keys start with '/'"));
    }
    if key.contains('\0') {
        return Err(invalid(op, key, "keys contain no NUL byte"));
    }
    Ok(())
}

/// A prefix is empty (all keys) or shaped like a key.
pub(crate) fn check_prefix(op: &str, prefix: &str) -> Result<()> {
    if prefix.is_empty() {
        return Ok(());
    }
    check_key(op, prefix)
}

/// Rejects what etcd would reject: too many compares or ops, and a key put twice or put
/// and deleted in the same transaction (the outcome would depend on op order).
pub(crate) fn check_txn(txn: &Txn) -> Result<()> {
    if txn.compares.len() > MAX_TXN_OPS || txn.ops.len() > MAX_TXN_OPS {
        return Err(invalid(
            "txn",
            "",
            format!(
                "{} compares and {} ops; at most {MAX_TXN_OPS} of each",
                txn.compares.len(),
                txn.ops.len()
            ),
        ));
    }
    for c in &txn.compares {
        check_key("txn compare", &c.key)?;
    }
    let mut puts = HashSet::new();
    let mut deletes: Vec<(&str, bool)> = Vec::new(); // (key or prefix, is_prefix)
    for op in &txn.ops {
        match op {
            Op::Put { key, .. } => {
                check_key("txn put", key)?;
                if !puts.insert(key.as_str()) {
                    return Err(invalid("txn put", key, "key is written twice in one txn"));
                }
            }
            Op::Delete { key } => {
                check_key("txn delete", key)?;
                deletes.push((key, false));
            }
            Op::DeletePrefix { prefix } => {
                check_prefix("txn delete prefix", prefix)?;
                deletes.push((prefix, true));
            }
        }
    }
    for key in &puts {
        let hit = deletes.iter().any(|(d, is_prefix)| {
            if *is_prefix {
                key.starts_with(d)
            } else {
                key == d
            }
        });
        if hit {
            return Err(invalid("txn put", key, "key is put and deleted in one txn"));
        }
    }
    Ok(())
}

/// The first compare that does not hold, given each compared key's current state.
pub(crate) fn first_failed<'a>(
    compares: &[Compare],
    mut current: impl FnMut(&str) -> Option<&'a KeyValue>,
) -> Option<CompareFailed> {
    compares.iter().find_map(|c| {
        let kv = current(&c.key);
        (!c.cond.holds(kv)).then(|| CompareFailed {
            op: "txn",
            key: c.key.clone(),
            expected: c.cond,
            current: kv.cloned(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Condition;

    #[test]
    fn keys_need_a_leading_slash() {
        assert!(check_key("put", "/hosts/a").is_ok());
        let err = check_key("put", "hosts/a").unwrap_err().to_string();
        assert_eq!(err, "store: put hosts/a: keys start with '/'");
        assert!(check_prefix("range", "").is_ok());
        assert!(check_prefix("range", "x").is_err());
    }

    #[test]
    fn txn_conflicts_are_refused() {
        let twice = Txn::new().put("/a", "1").put("/a", "2");
        assert!(check_txn(&twice).is_err());
        let put_and_delete = Txn::new().put("/a/b", "1").delete_prefix("/a/");
        assert!(check_txn(&put_and_delete).is_err());
        let fine = Txn::new().put("/a", "1").delete("/b").delete("/b");
        assert!(check_txn(&fine).is_ok());
        let mut big = Txn::new();
        for i in 0..=MAX_TXN_OPS {
            big = big.put(format!("/k{i}"), "v");
        }
        assert!(check_txn(&big).is_err());
    }

    #[test]
    fn compare_failure_names_the_revisions() {
        let kv = KeyValue {
            key: "/hosts/a".into(),
            value: vec![],
            create_revision: 3,
            mod_revision: 7,
            version: 2,
        };
        let compares = [Compare {
            key: "/hosts/a".into(),
            cond: Condition::ModRevision(5),
        }];
        let failed = first_failed(&compares, |_| Some(&kv)).expect("compare fails");
        let err = StoreError::from(failed).for_op("put");
        assert_eq!(
            err.to_string(),
            "store: put /hosts/a: compare failed: mod_revision is 7, expected 5"
        );
        assert_eq!(
            err.compare_failed().map(|c| c.current_mod_revision()),
            Some(7)
        );
    }
}
