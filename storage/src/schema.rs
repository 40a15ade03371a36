//! Who owns the schema, and what each side does with the version it finds.
//!
//! Both backends number their schemas: SQLite in `PRAGMA user_version`, ScyllaDB in a
//! `schema_version` row. Version 0 means the store holds no schema yet.
//!
//! - **The writer owns migrations.** The persister (and `chatfabric dev`, which opens the store
//!   once for all its roles) opens the store with [`crate::open_store`]: it creates the schema
//!   and applies every migration it knows ([`plan_migrations`]), and refuses a store whose schema
//!   is newer than it knows. Running a migration is only ever the writer's job, so a fleet of
//!   gateways never races to alter the store.
//! - **A reader never migrates.** The gateway opens the store with [`crate::open_store_for_reads`]
//!   and reads only a schema at exactly the version it was built for ([`check_readable`]). No
//!   schema at all ([`StoreError::SchemaMissing`]) means no writer ran yet, so nothing is stored:
//!   the reader answers as an empty store until the schema appears ([`crate::pending`]), which
//!   is what lets a gateway start before the persister. An older schema
//!   ([`StoreError::SchemaOutdated`]) waits for the writer of this version to migrate it; a newer
//!   one ([`StoreError::SchemaTooNew`]) is refused: this build cannot know how to read it.

use std::ops::Range;

use crate::store::StoreError;

/// The migrations a writer applies to a store at version `found` to bring it to `supported`
/// (indices into the backend's list of migrations; empty when it is up to date). A store newer
/// than `supported` is refused. `store` names the file or keyspace in the error.
pub(crate) fn plan_migrations(
    store: &str,
    found: i64,
    supported: i64,
) -> Result<Range<usize>, StoreError> {
    if found > supported {
        return Err(StoreError::SchemaTooNew {
            store: store.to_string(),
            found,
            supported,
        });
    }
    Ok(to_index(found)..to_index(supported))
}

/// Whether a reader built for schema `supported` may read a store at version `found`.
pub(crate) fn check_readable(store: &str, found: i64, supported: i64) -> Result<(), StoreError> {
    let store = store.to_string();
    match found {
        f if f == supported => Ok(()),
        f if f <= 0 => Err(StoreError::SchemaMissing { store }),
        f if f < supported => Err(StoreError::SchemaOutdated {
            store,
            found,
            expected: supported,
        }),
        _ => Err(StoreError::SchemaTooNew {
            store,
            found,
            supported,
        }),
    }
}

fn to_index(version: i64) -> usize {
    usize::try_from(version.max(0)).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writer_applies_what_is_missing_and_refuses_newer_schemas() {
        assert_eq!(plan_migrations("db", 0, 2).unwrap(), 0..2, "a fresh store");
        assert_eq!(plan_migrations("db", 1, 2).unwrap(), 1..2);
        assert!(plan_migrations("db", 2, 2).unwrap().is_empty());
        assert!(
            plan_migrations("db", -3, 1).unwrap() == (0..1),
            "garbage counts as none"
        );
        let err = plan_migrations("db", 3, 2).unwrap_err();
        assert!(matches!(
            err,
            StoreError::SchemaTooNew {
                found: 3,
                supported: 2,
                ..
            }
        ));
        let text = err.to_string();
        assert!(
            text.contains("db") && text.contains('3') && text.contains('2'),
            "{text}"
        );
    }

    #[test]
    fn a_reader_reads_only_its_own_version() {
        assert!(check_readable("ks", 2, 2).is_ok());
        assert!(matches!(
            check_readable("ks", 0, 2),
            Err(StoreError::SchemaMissing { .. })
        ));
        assert!(matches!(
            check_readable("ks", 1, 2),
            Err(StoreError::SchemaOutdated {
                found: 1,
                expected: 2,
                ..
            })
        ));
        let err = check_readable("ks", 5, 2).unwrap_err();
        assert!(matches!(
            err,
            StoreError::SchemaTooNew {
                found: 5,
                supported: 2,
                ..
            }
        ));
        assert!(err.to_string().contains("ks"), "{err}");
    }
}
