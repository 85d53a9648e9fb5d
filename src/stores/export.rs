//! What an adapter hands over on an export: its rows, as JSON objects, into an `ExportSink`, and
//! the files that go into the archive as they are (recordings' audio), read back later through
//! `Export::read_file`. `row_json` turns any table's row into JSON, whatever its columns,
//! so every SQL adapter exports the same way.
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use serde_json::{Map, Value};
use sqlx::{
    any::{AnyRow, AnyTypeInfoKind},
    Column, Row, ValueRef,
};

use super::StoreResult;

/// A JSON object: one record of a store.
pub type Record = Map<String, Value>;

/// A file's bytes, in order.
pub type ByteStream = BoxStream<'static, StoreResult<Bytes>>;

/// A file that goes into the archive byte for byte.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ExportFile {
    /// File name inside the store's folder of the archive (`<call_id>.wav`). Adapters may pass
    /// anything; the archive makes it a safe, unique name.
    pub name: String,
    /// What `Export::read_file` opens (an object key). Never shown to the subject.
    pub key: String,
    /// Size the store reports.
    pub bytes: u64,
    /// The file's index record (call id, created at, …), listed in the manifest.
    pub record: Record,
}

/// Where an adapter writes what it holds on a subject.
#[async_trait]
pub trait ExportSink: Send {
    /// One record (a row of the store).
    async fn record(&mut self, record: Record) -> StoreResult<()>;
    /// One file to copy into the archive.
    async fn file(&mut self, file: ExportFile) -> StoreResult<()>;
}

/// A row as a JSON object: column name → value (numbers, text, booleans, null; bytes as hex).
pub fn row_json(row: &AnyRow) -> sqlx::Result<Record> {
    let mut out = Map::with_capacity(row.columns().len());
    for (i, col) in row.columns().iter().enumerate() {
        let kind = {
            let raw = row.try_get_raw(i)?;
            if raw.is_null() {
                None
            } else {
                Some(raw.type_info().kind())
            }
        };
        let value = match kind {
            None | Some(AnyTypeInfoKind::Null) => Value::Null,
            Some(AnyTypeInfoKind::Bool) => Value::Bool(row.try_get(i)?),
            Some(AnyTypeInfoKind::SmallInt) => Value::from(row.try_get::<i16, _>(i)?),
            Some(AnyTypeInfoKind::Integer) => Value::from(row.try_get::<i32, _>(i)?),
            Some(AnyTypeInfoKind::BigInt) => Value::from(row.try_get::<i64, _>(i)?),
            Some(AnyTypeInfoKind::Real) => Value::from(row.try_get::<f32, _>(i)?),
            Some(AnyTypeInfoKind::Double) => Value::from(row.try_get::<f64, _>(i)?),
            Some(AnyTypeInfoKind::Text) => Value::String(row.try_get(i)?),
            Some(AnyTypeInfoKind::Blob) => Value::String(hex::encode(row.try_get::<Vec<u8>, _>(i)?)),
        };
        out.insert(col.name().to_owned(), value);
    }
    Ok(out)
}

/// Sinks for tests and dry runs: everything in memory.
#[derive(Debug, Default)]
pub struct CollectingSink {
    pub records: Vec<Record>,
    pub files: Vec<ExportFile>,
}

#[async_trait]
impl ExportSink for CollectingSink {
    async fn record(&mut self, record: Record) -> StoreResult<()> {
        self.records.push(record);
        Ok(())
    }

    async fn file(&mut self, file: ExportFile) -> StoreResult<()> {
        self.files.push(file);
        Ok(())
    }
}
