//! The `recordings` store: an index table in SQL plus the audio objects in an object store.
//! Erase deletes each object first, checks it is gone, then deletes its index row — so a retry
//! after a crash finds either both or only the row, never an orphaned object.
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
    sql::{move_phone, phone_move, phone_moved, Ident, Key, Predicate},
    ByteStream, Erasure, ExportFile, ExportSink, Holdings, Rectification, StoreAdapter, StoreError,
    StoreResult,
};
use crate::{
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
            for chunk in batch.chunks(OBJECT_CONCURRENCY) {
                let mut deletions = Vec::with_capacity(chunk.len());
                for (_, key) in chunk {
                    deletions.push(self.delete_object(key));
                }
                try_join_all(deletions).await?;
            }
            let ids = (0..batch.len()).map(|i| format!("${}", i + 2)).collect::<Vec<_>>().join(", ");
            let delete = format!("DELETE FROM {} WHERE tenant_id = $1 AND id IN ({ids})", self.table);
            let q = batch
                .iter()
                .fold(sqlx::query(&delete).bind(subject.tenant.as_str()), |q, (id, _)| q.bind(id));
            total += q.execute(self.db.pool()).await?.rows_affected();
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
