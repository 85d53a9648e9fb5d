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
    sql::{tenants, Expired},
    table::SubjectTable,
    ByteStream, CandidateRow, Erasure, ExpiredRecord, Expiry, ExportFile, ExportSink, Probe, Rectification,
    StoreAdapter, StoreError, StoreResult,
};
use crate::{
    clock::to_millis,
    db::Db,
    domain::Corrections,
    resolve::{IdentKind, Person},
};

/// Object deletions and checks in flight at once.
const OBJECT_CONCURRENCY: usize = 16;

pub struct RecordingsStore {
    rows: SubjectTable,
    call_logs: String,
    objects: Arc<dyn ObjectStore>,
}

/// The object store path of a key exactly as the platform stored it: no escaping (object_store's
/// `Path::from` would percent-encode `#`, `%`, `?` and more, and so address another object). A
/// leading `/` is relative to the recordings URL. A key the object store cannot address at all
/// (a control character, an empty or `.` segment) is an error, never a silent miss.
pub fn object_path(key: &str) -> StoreResult<Path> {
    Path::parse(key).map_err(|_| {
        StoreError::Fatal(
            "a recording's object key cannot be addressed in the object store (control character or empty segment)"
                .into(),
        )
    })
}

impl RecordingsStore {
    pub fn new(db: Db, t: &Tables, objects: Arc<dyn ObjectStore>) -> Self {
        Self {
            rows: SubjectTable {
                db,
                table: t.recordings.clone(),
                key: "id".into(),
                tenant: "tenant_id".into(),
                identifiers: super::table::columns(&[("caller_phone", IdentKind::Phone)]),
                link: Some("call_id".into()),
                bytes: Some("bytes".into()),
                object: Some("object_key".into()),
                cleared: None,
            },
            call_logs: t.call_logs.clone(),
            objects,
        }
    }

    /// Deletes one object and makes sure it is gone (`delete` of a missing object is fine).
    async fn delete_object(&self, key: &str) -> StoreResult<()> {
        let path = object_path(key)?;
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

    /// Deletes the objects of these index rows, then the rows; returns the rows deleted. A
    /// failure leaves rows whose objects may be gone: a retry deletes the rest (a missing object
    /// is fine), never an object without its row.
    async fn erase_rows(&self, tenant: &str, rows: &[CandidateRow]) -> StoreResult<u64> {
        for chunk in rows.chunks(OBJECT_CONCURRENCY) {
            try_join_all(chunk.iter().filter_map(|r| r.object.as_deref()).map(|key| self.delete_object(key)))
                .await?;
        }
        let ids: Vec<String> = rows.iter().map(|r| r.key.clone()).collect();
        self.rows.delete(tenant, &ids).await
    }

    async fn rows_by_key(&self, tenant: &str, keys: &[String]) -> StoreResult<Vec<CandidateRow>> {
        self.rows.candidates(&Probe { tenant, keys: keys.to_vec(), ..Default::default() }).await
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

    fn links_to(&self) -> Option<&'static str> {
        Some("call_logs")
    }

    async fn candidates(&self, probe: &Probe<'_>) -> StoreResult<Vec<CandidateRow>> {
        self.rows.candidates(probe).await
    }

    async fn check_schema(&self) -> Vec<String> {
        self.rows.check(&["tenant_id", "call_id", "bytes", "created_at"]).await
    }

    async fn erase(&self, tenant: &str, keys: &[String], _now: DateTime<Utc>) -> StoreResult<Erasure> {
        let rows = self.rows_by_key(tenant, keys).await?;
        Ok(Erasure::Erased { affected: self.erase_rows(tenant, &rows).await? })
    }

    /// A HEAD of each exact key: the check does not trust the index rows.
    async fn objects_present(&self, objects: &[String]) -> StoreResult<u64> {
        let mut present = 0;
        for chunk in objects.chunks(OBJECT_CONCURRENCY) {
            let found = try_join_all(chunk.iter().map(|key| async move {
                match self.objects.head(&object_path(key)?).await {
                    Ok(_) => Ok(1u64),
                    Err(object_store::Error::NotFound { .. }) => Ok(0),
                    Err(e) => Err(StoreError::from(e)),
                }
            }))
            .await?;
            present += found.iter().sum::<u64>();
        }
        Ok(present)
    }

    fn holds_any_of(&self, corrections: &Corrections) -> bool {
        corrections.phone.is_some()
    }

    /// Only the index rows change: objects are keyed by call id, which a correction keeps.
    async fn rectify(
        &self,
        person: &Person,
        mine: &[CandidateRow],
        corrections: &Corrections,
        _now: DateTime<Utc>,
    ) -> StoreResult<Rectification> {
        let (found, affected) = self.rows.rectify(person, mine, corrections).await?;
        Ok(Rectification { found, affected, hold: None })
    }

    async fn verify_rectified(&self, person: &Person, keys: &[String], c: &Corrections) -> StoreResult<bool> {
        self.rows.rectified(person, keys, c).await
    }

    async fn tenants(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<String>> {
        Ok(tenants(&self.rows.db, &self.rows.table, after, limit).await?)
    }

    async fn count_expired(&self, expiry: &Expiry<'_>) -> StoreResult<u64> {
        Ok(self.expired(expiry).count(&self.rows.db, &self.rows.table).await?)
    }

    async fn list_expired(
        &self,
        expiry: &Expiry<'_>,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<ExpiredRecord>> {
        let t = &self.rows.table;
        let account = format!(
            "(SELECT c.account_id FROM {c} c WHERE c.tenant_id = {t}.tenant_id AND c.id = {t}.call_id)",
            c = self.call_logs
        );
        let phone = format!("{t}.caller_phone");
        Ok(self.expired(expiry).list(&self.rows.db, t, [&account, "NULL", &phone], after, limit).await?)
    }

    async fn erase_records(&self, tenant: &str, keys: &[String]) -> StoreResult<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        let rows = self.rows_by_key(tenant, keys).await?;
        self.erase_rows(tenant, &rows).await
    }

    async fn erase_expired(&self, expiry: &Expiry<'_>, limit: usize) -> StoreResult<u64> {
        let e = self.expired(expiry);
        let sql = format!("SELECT id FROM {} WHERE {} LIMIT {limit}", self.rows.table, e.sql);
        let keys: Vec<String> = e
            .query_as::<(String,)>(&sql)
            .fetch_all(self.rows.db.pool())
            .await?
            .into_iter()
            .map(|r| r.0)
            .collect();
        self.erase_records(expiry.tenant, &keys).await
    }

    /// Lists each recording's audio object (read later through `read_file`), with its index row
    /// as the file's record.
    async fn export(&self, tenant: &str, keys: &[String], sink: &mut dyn ExportSink) -> StoreResult<u64> {
        let mut n = 0;
        let mut keys = keys.to_vec();
        keys.sort();
        for chunk in keys.chunks(500) {
            let sql = format!(
                "SELECT id, call_id, object_key, bytes, created_at FROM {} WHERE tenant_id = $1 AND id IN ({}) ORDER BY call_id, id",
                self.rows.table,
                super::sql::params(2, chunk.len())
            );
            let q = chunk.iter().fold(sqlx::query(&sql).bind(tenant), |q, k| q.bind(k.as_str()));
            let mut rows = q.fetch(self.rows.db.pool());
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
        }
        Ok(n)
    }

    async fn read_file(&self, key: &str) -> StoreResult<ByteStream> {
        let found = self.objects.get(&object_path(key)?).await?;
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
