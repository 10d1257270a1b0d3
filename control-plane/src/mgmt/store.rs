//! The embedded store: one SQLite file (`<data dir>/ringcast.db`, through rusqlite with SQLite
//! compiled in) holding the apps created through the API, the API tokens (hashes only), the
//! version of every app and token record with the tombstones of deleted ones (for cluster
//! replication, `replication.rs`), and the per-app usage by day. Each app, token and usage
//! row is one JSON document. Every write is its own transaction committed with
//! `synchronous = FULL` in WAL mode, so it is on disk before the API answers. Opening checks
//! the schema version, runs `PRAGMA quick_check` and parses every row: a corrupt or
//! unreadable store is an error at start-up, never a silent empty state.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use super::model::ManagedApp;
use super::replication::{Kind, Version};
use super::token::TokenRecord;
use super::usage::Day;

/// 2 added the `versions` and `usage` tables; a version-1 store is upgraded in place when
/// opened (the tables are created; its rows get version 0).
pub const SCHEMA_VERSION: i64 = 2;
pub const FILE_NAME: &str = "ringcast.db";

/// A store failure, with what was being done.
#[derive(Debug)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for StoreError {}

fn ctx<T>(what: &str, r: rusqlite::Result<T>) -> Result<T, StoreError> {
    r.map_err(|e| StoreError(format!("{what}: {e}")))
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
}

/// Everything the store holds, read at start-up.
pub struct Contents {
    pub apps: Vec<ManagedApp>,
    pub tokens: Vec<TokenRecord>,
    /// The version of every record, and whether it is a tombstone.
    pub versions: Vec<(Kind, String, Version, bool)>,
    /// Usage rows: (app id, day number, usage).
    pub usage: Vec<(String, u64, Day)>,
}

/// One durable change of a replicated record: written with its version in one transaction.
pub enum Write<'a> {
    PutApp(&'a ManagedApp),
    DeleteApp(&'a str),
    PutToken(&'a TokenRecord),
    DeleteToken(&'a str),
}

impl Store {
    /// Opens (creating the directory and file if needed) and verifies the store.
    pub fn open(dir: &Path) -> Result<(Store, Contents), StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError(format!("cannot create data dir {}: {e}", dir.display())))?;
        let path = dir.join(FILE_NAME);
        let what = format!("store {}", path.display());
        let conn = ctx(&what, Connection::open(&path))?;
        ctx(&what, conn.busy_timeout(std::time::Duration::from_secs(5)))?;
        let mode: String = ctx(
            &what,
            conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)),
        )?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(%mode, "store: WAL mode unavailable");
        }
        ctx(&what, conn.execute_batch("PRAGMA synchronous=FULL;"))?;
        let check: String = ctx(
            &what,
            conn.query_row("PRAGMA quick_check", [], |r| r.get(0)),
        )?;
        if check != "ok" {
            return Err(StoreError(format!("{what} is corrupt: {check}")));
        }
        ctx(
            &what,
            conn.execute_batch(
                "CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
                 CREATE TABLE IF NOT EXISTS apps (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
                 CREATE TABLE IF NOT EXISTS tokens (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
                 CREATE TABLE IF NOT EXISTS versions (kind TEXT NOT NULL, id TEXT NOT NULL,
                     clock INTEGER NOT NULL, node TEXT NOT NULL, deleted INTEGER NOT NULL,
                     PRIMARY KEY (kind, id));
                 CREATE TABLE IF NOT EXISTS usage (app TEXT NOT NULL, day INTEGER NOT NULL,
                     doc TEXT NOT NULL, PRIMARY KEY (app, day));",
            ),
        )?;
        let version: Option<String> = ctx(
            &what,
            conn.query_row("SELECT v FROM meta WHERE k = 'schema_version'", [], |r| {
                r.get(0)
            })
            .optional(),
        )?;
        match version.as_deref() {
            None => {
                ctx(
                    &what,
                    conn.execute(
                        "INSERT INTO meta (k, v) VALUES ('schema_version', ?1)",
                        params![SCHEMA_VERSION.to_string()],
                    ),
                )?;
            }
            Some(v) if v == SCHEMA_VERSION.to_string() => {}
            Some("1") => {
                // The new tables exist now (created above); the old rows have no version.
                ctx(
                    &what,
                    conn.execute(
                        "UPDATE meta SET v = ?1 WHERE k = 'schema_version'",
                        params![SCHEMA_VERSION.to_string()],
                    ),
                )?;
            }
            Some(v) => {
                return Err(StoreError(format!(
                    "{what} has schema version {v}, this build reads {SCHEMA_VERSION}"
                )))
            }
        }
        let store = Store { conn, path };
        let contents = Contents {
            apps: store.read_all("apps")?,
            tokens: store.read_all("tokens")?,
            versions: store.read_versions()?,
            usage: store.read_usage()?,
        };
        Ok((store, contents))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read_all<T: serde::de::DeserializeOwned>(&self, table: &str) -> Result<Vec<T>, StoreError> {
        let what = format!("store {} table {table}", self.path.display());
        let mut stmt = ctx(
            &what,
            self.conn
                .prepare(&format!("SELECT id, doc FROM {table} ORDER BY rowid")),
        )?;
        let rows = ctx(
            &what,
            stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))),
        )?;
        let mut out = Vec::new();
        for row in rows {
            let (id, doc) = ctx(&what, row)?;
            out.push(
                serde_json::from_str(&doc)
                    .map_err(|e| StoreError(format!("{what}: row {id:?} is unreadable: {e}")))?,
            );
        }
        Ok(out)
    }

    fn read_versions(&self) -> Result<Vec<(Kind, String, Version, bool)>, StoreError> {
        let what = format!("store {} table versions", self.path.display());
        let mut stmt = ctx(
            &what,
            self.conn
                .prepare("SELECT kind, id, clock, node, deleted FROM versions"),
        )?;
        let rows = ctx(
            &what,
            stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            }),
        )?;
        let mut out = Vec::new();
        for row in rows {
            let (kind, id, clock, node, deleted) = ctx(&what, row)?;
            let kind = Kind::parse(&kind)
                .ok_or_else(|| StoreError(format!("{what}: row {id:?} has kind {kind:?}")))?;
            out.push((
                kind,
                id,
                Version {
                    clock: clock as u64,
                    node,
                },
                deleted != 0,
            ));
        }
        Ok(out)
    }

    fn read_usage(&self) -> Result<Vec<(String, u64, Day)>, StoreError> {
        let what = format!("store {} table usage", self.path.display());
        let mut stmt = ctx(&what, self.conn.prepare("SELECT app, day, doc FROM usage"))?;
        let rows = ctx(
            &what,
            stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                ))
            }),
        )?;
        let mut out = Vec::new();
        for row in rows {
            let (app, day, doc) = ctx(&what, row)?;
            let d: Day = serde_json::from_str(&doc).map_err(|e| {
                StoreError(format!("{what}: row ({app:?}, {day}) is unreadable: {e}"))
            })?;
            out.push((app, day as u64, d));
        }
        Ok(out)
    }

    /// Writes changed records with their versions, all or nothing, durably.
    pub fn write(&self, writes: &[(Write<'_>, &Version)]) -> Result<(), StoreError> {
        let tx = ctx("store write", self.conn.unchecked_transaction())?;
        for (w, v) in writes {
            let (kind, id, deleted) = match w {
                Write::PutApp(a) => {
                    self.put_app(a)?;
                    (Kind::App, a.id.as_str(), false)
                }
                Write::DeleteApp(id) => {
                    self.delete_app(id)?;
                    (Kind::App, *id, true)
                }
                Write::PutToken(t) => {
                    self.put_token(t)?;
                    (Kind::Token, t.id.as_str(), false)
                }
                Write::DeleteToken(id) => {
                    self.delete_token(id)?;
                    (Kind::Token, *id, true)
                }
            };
            ctx(
                "store write",
                self.conn.execute(
                    "INSERT INTO versions (kind, id, clock, node, deleted) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT(kind, id) DO UPDATE SET clock = excluded.clock,
                         node = excluded.node, deleted = excluded.deleted",
                    params![kind.as_str(), id, v.clock as i64, v.node, deleted as i64],
                ),
            )?;
        }
        ctx("store commit", tx.commit())
    }

    /// Replaces the stored usage rows of these (app, day) pairs, in one transaction, and
    /// drops days older than `oldest_day`.
    pub fn put_usage(
        &self,
        rows: &[(String, u64, Day)],
        oldest_day: u64,
    ) -> Result<(), StoreError> {
        let tx = ctx("store usage", self.conn.unchecked_transaction())?;
        for (app, day, d) in rows {
            let doc = serde_json::to_string(d).map_err(|e| StoreError(e.to_string()))?;
            ctx(
                "store usage",
                self.conn.execute(
                    "INSERT INTO usage (app, day, doc) VALUES (?1, ?2, ?3)
                     ON CONFLICT(app, day) DO UPDATE SET doc = excluded.doc",
                    params![app, *day as i64, doc],
                ),
            )?;
        }
        ctx(
            "store usage",
            self.conn.execute(
                "DELETE FROM usage WHERE day < ?1",
                params![oldest_day as i64],
            ),
        )?;
        ctx("store usage commit", tx.commit())
    }

    fn put(&self, table: &str, id: &str, doc: String) -> Result<(), StoreError> {
        ctx(
            "store write",
            self.conn.execute(
                &format!(
                    "INSERT INTO {table} (id, doc) VALUES (?1, ?2)
                     ON CONFLICT(id) DO UPDATE SET doc = excluded.doc"
                ),
                params![id, doc],
            ),
        )?;
        Ok(())
    }

    fn delete(&self, table: &str, id: &str) -> Result<(), StoreError> {
        ctx(
            "store delete",
            self.conn
                .execute(&format!("DELETE FROM {table} WHERE id = ?1"), params![id]),
        )?;
        Ok(())
    }

    pub fn put_app(&self, app: &ManagedApp) -> Result<(), StoreError> {
        let doc = serde_json::to_string(app).map_err(|e| StoreError(e.to_string()))?;
        self.put("apps", &app.id, doc)
    }

    pub fn delete_app(&self, id: &str) -> Result<(), StoreError> {
        self.delete("apps", id)
    }

    pub fn put_token(&self, t: &TokenRecord) -> Result<(), StoreError> {
        let doc = serde_json::to_string(t).map_err(|e| StoreError(e.to_string()))?;
        self.put("tokens", &t.id, doc)
    }

    pub fn delete_token(&self, id: &str) -> Result<(), StoreError> {
        self.delete("tokens", id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "ringcast-store-{name}-{}-{}",
            std::process::id(),
            super::super::token::random_hex(4).unwrap()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn writes_survive_a_reopen() {
        let dir = tmp("reopen");
        let (s, c) = Store::open(&dir).unwrap();
        assert!(c.apps.is_empty() && c.tokens.is_empty());
        let app = ManagedApp {
            id: "1".into(),
            name: "one".into(),
            keys: vec![],
            settings: Default::default(),
            webhook_secret: None,
            created_at: 1,
            updated_at: 1,
        };
        s.put_app(&app).unwrap();
        s.put_app(&ManagedApp {
            name: "uno".into(),
            ..app.clone()
        })
        .unwrap();
        drop(s);
        let (s, c) = Store::open(&dir).unwrap();
        assert_eq!(c.apps.len(), 1);
        assert_eq!(c.apps[0].name, "uno");
        s.delete_app("1").unwrap();
        drop(s);
        assert!(Store::open(&dir).unwrap().1.apps.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_corrupt_store_is_an_error_not_an_empty_state() {
        let dir = tmp("corrupt");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(FILE_NAME), vec![0x42u8; 8192]).unwrap();
        let e = Store::open(&dir).err().expect("must fail");
        assert!(e.0.contains("ringcast.db"), "{e}");
        // A row that does not parse is an error too.
        let dir2 = tmp("badrow");
        let (s, _) = Store::open(&dir2).unwrap();
        s.put("apps", "x", "{not json".into()).unwrap();
        drop(s);
        let e = Store::open(&dir2).err().expect("must fail");
        assert!(e.0.contains("\"x\""), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&dir2);
    }
}
