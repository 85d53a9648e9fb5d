//! The `recordings` store: an index table in SQL plus the audio objects in an object store.
//! Erase deletes each object first, checks it is gone, then deletes its index row — so a retry
//! after a crash finds either both or only the row, never an orphaned object.
//!
//! The retention sweep erases the same way, by key: objects first, then their index rows.
//!
//! A phone correction rewrites `caller_phone` of the index rows only: objects are keyed by call
//! id, which a correction does not change, so no audio moves.
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::{future::try_join_all, StreamExt, TryStreamExt};
use object_store::{path::Path, ObjectStore, ObjectStoreExt};
use sqlx::Row;

use super::{
    reference::Tables,
    row_json,
    sql::{
        delete_keys, identifier_columns, move_phone, phone_move, phone_moved, tenants, Expired, Ident, Key,
        Predicate,
    },
    ByteStream, Erasure, ExpiredRecord, Expiry, ExportFile, ExportSink, Holdings, Rectification,
    StoreAdapter, StoreError, StoreResult,
};
use crate::{
    clock::to_millis,
    db::Db,
    domain::{Corrections, Subject},
};

/// Index rows handled per round: bounds memory and the size of each DELETE.
const BATCH: usize = 256;
/// Object deletions in flight at once.
const OBJECT_CONCURRENCY: usize = 16;

pub struct RecordingsStore {
    db: Db,
    table: String,
    keys: Vec<Key>,
    objects: Arc<dyn ObjectStore>,
}

impl RecordingsStore {
    pub fn new(db: Db, t: &Tables, objects: Arc<dyn ObjectStore>) -> Self {
        Self {
            db,
            table: t.recordings.clone(),
            keys: vec![
                Key::Column("caller_phone", Ident::Phone),
                Key::ViaCallLogs { column: "call_id", call_logs_table: t.call_logs.clone() },
            ],
            objects,
        }
    }

    /// Deletes one object and makes sure it is gone (`delete` of a missing object is fine).
    async fn delete_object(&self, key: &str) -> StoreResult<()> {
        let path = Path::from(key);
        match self.objects.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        match self.objects.head(&path).await {
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            Ok(_) => Err(StoreError::Transient("a recording object is still present after delete".into())),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes the objects of these index rows `(id, object_key)`, then the rows; returns the
    /// rows deleted. A failure leaves rows whose objects may be gone: a retry deletes the rest
    /// (a missing object is fine), never an object without its row.
    async fn erase_rows(&self, tenant: &str, rows: &[(String, String)]) -> StoreResult<u64> {
        for chunk in rows.chunks(OBJECT_CONCURRENCY) {
            try_join_all(chunk.iter().map(|(_, key)| self.delete_object(key))).await?;
        }
        let ids: Vec<String> = rows.iter().map(|(id, _)| id.clone()).collect();
        Ok(delete_keys(self.db.pool(), &self.table, tenant, &ids).await?)
    }

    fn expired(&self, e: &Expiry<'_>) -> Expired {
        Expired::new(e.tenant, "created_at < $2", vec![to_millis(e.cutoff)])
    }
}

#[async_trait]
impl StoreAdapter for RecordingsStore {
    fn name(&self) -> &'static str {
        "recordings"
    }

    fn applies_to(&self, subject: &Subject) -> bool {
        Predicate::applies(subject, &self.keys)
    }

    async fn preview(&self, subject: &Subject) -> StoreResult<Holdings> {
        let Some(p) = Predicate::for_subject(subject, &self.keys) else {
            return Ok(Holdings::default());
        };
        let (records, bytes) = p.count(&self.db, &self.table, Some("bytes"), "").await?;
        Ok(Holdings { records, bytes, under_legal_hold: false })
    }

    async fn erase(&self, subject: &Subject, _now: DateTime<Utc>) -> StoreResult<Erasure> {
        let Some(p) = Predicate::for_subject(subject, &self.keys) else {
            return Ok(Erasure::Erased { found: 0, affected: 0 });
        };
        let select =
            format!("SELECT id, object_key FROM {} WHERE {} ORDER BY id LIMIT {BATCH}", self.table, p.sql);
        let mut total = 0;
        loop {
            let batch: Vec<(String, String)> = p.query_as(&select).fetch_all(self.db.pool()).await?;
            if batch.is_empty() {
                break;
            }
            total += self.erase_rows(subject.tenant.as_str(), &batch).await?;
        }
        Ok(Erasure::Erased { found: total, affected: total })
    }

    async fn verify_erased(&self, subject: &Subject) -> StoreResult<bool> {
        Ok(self.preview(subject).await?.records == 0)
    }

    fn holds_any_of(&self, corrections: &Corrections) -> bool {
        corrections.phone.is_some()
    }

    async fn rectify(
        &self,
        subject: &Subject,
        corrections: &Corrections,
        _now: DateTime<Utc>,
    ) -> StoreResult<Rectification> {
        let Some((old, new)) = phone_move(subject, corrections) else {
            return Ok(Rectification { found: 0, affected: 0, hold: None });
        };
        let moved = move_phone(self.db.pool(), &self.table, subject.tenant.as_str(), old, new).await?;
        Ok(Rectification { found: moved, affected: moved, hold: None })
    }

    async fn verify_rectified(&self, subject: &Subject, corrections: &Corrections) -> StoreResult<bool> {
        Ok(phone_moved(&self.db, &self.table, subject, corrections).await?)
    }

    async fn tenants(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<String>> {
        Ok(tenants(&self.db, &self.table, after, limit).await?)
    }

    async fn count_expired(&self, expiry: &Expiry<'_>) -> StoreResult<u64> {
        Ok(self.expired(expiry).count(&self.db, &self.table).await?)
    }

    async fn list_expired(
        &self,
        expiry: &Expiry<'_>,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<ExpiredRecord>> {
        let [a, e, p] = identifier_columns(&self.table, &self.keys);
        Ok(self.expired(expiry).list(&self.db, &self.table, [&a, &e, &p], after, limit).await?)
    }

    async fn erase_records(&self, tenant: &str, keys: &[String]) -> StoreResult<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        let sql = format!(
            "SELECT id, object_key FROM {} WHERE tenant_id = $1 AND id IN ({})",
            self.table,
            super::sql::params(2, keys.len())
        );
        let q = keys.iter().fold(sqlx::query_as(&sql).bind(tenant), |q, k| q.bind(k.as_str()));
        let rows: Vec<(String, String)> = q.fetch_all(self.db.pool()).await?;
        self.erase_rows(tenant, &rows).await
    }

    async fn erase_expired(&self, expiry: &Expiry<'_>, limit: usize) -> StoreResult<u64> {
        let e = self.expired(expiry);
        let sql = format!("SELECT id, object_key FROM {} WHERE {} LIMIT {limit}", self.table, e.sql);
        let rows: Vec<(String, String)> = e.query_as(&sql).fetch_all(self.db.pool()).await?;
        self.erase_rows(expiry.tenant, &rows).await
    }

    /// Lists each recording's audio object (read later through `read_file`), with its index row
    /// as the file's record.
    async fn export(&self, subject: &Subject, sink: &mut dyn ExportSink) -> StoreResult<u64> {
        let Some(p) = Predicate::for_subject(subject, &self.keys) else {
            return Ok(0);
        };
        let sql = format!(
            "SELECT id, call_id, object_key, bytes, created_at FROM {} WHERE {} ORDER BY call_id, id",
            self.table, p.sql
        );
        let mut rows = p.query(&sql).fetch(self.db.pool());
        let mut n = 0;
        while let Some(row) = rows.try_next().await? {
            let key: String = row.try_get("object_key")?;
            let call_id: String = row.try_get("call_id")?;
            let mut record = row_json(&row)?;
            // Where the audio lives is the platform's business, not part of the subject's data.
            record.remove("object_key");
            sink.file(ExportFile {
                name: format!("{call_id}.{}", extension(&key)),
                bytes: row.try_get::<i64, _>("bytes")?.max(0) as u64,
                key,
                record,
            })
            .await?;
            n += 1;
        }
        Ok(n)
    }

    async fn read_file(&self, key: &str) -> StoreResult<ByteStream> {
        let found = self.objects.get(&Path::from(key)).await?;
        Ok(found.into_stream().map_err(StoreError::from).boxed())
    }
}

/// The audio format, from the object key's extension (`bin` when it has none that is plain).
fn extension(key: &str) -> &str {
    let name = key.rsplit('/').next().unwrap_or(key);
    match name.rsplit_once('.') {
        Some((_, ext))
            if !ext.is_empty() && ext.len() <= 8 && ext.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            ext
        }
        _ => "bin",
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_extension_comes_from_the_key() {
        assert_eq!(super::extension("acme/c1.wav"), "wav");
        assert_eq!(super::extension("acme/c1"), "bin");
        assert_eq!(super::extension("a.b/c1"), "bin");
        assert_eq!(super::extension("acme/c1.../x"), "bin");
    }
}
