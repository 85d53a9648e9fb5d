//! `manifest.json`, the archive's table of contents: who and what the export is about, every
//! store's state, record count and files (with their sizes and sha256), and what GDPR Art. 15(1)
//! says the subject is owed alongside the copy — from the configured notice, never from code.
use serde::{Deserialize, Serialize};

use crate::{
    config::{ExportNotice, Recipient},
    stores::Record,
};

/// Names the manifest's layout; a reader checks it before trusting the rest.
pub const MANIFEST_FORMAT: &str = "dsr-export/1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub request_id: String,
    pub tenant_id: String,
    /// `gdpr`, `ccpa` or `unspecified`.
    pub regime: String,
    /// RFC 3339.
    pub requested_at: String,
    pub generated_at: String,
    /// One entry per store, in the service's store order.
    pub stores: Vec<ManifestStore>,
    /// Art. 15(1)(a–c, e–h): the information owed with the copy.
    pub controller: String,
    pub purposes: Vec<String>,
    pub categories: Vec<String>,
    pub recipients: Vec<Recipient>,
    pub source: String,
    pub rights: String,
    pub automated_decision_making: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestStore {
    pub store: String,
    /// The store task's outcome: `done` (exported) or `skipped` (the subject has no identifier
    /// this store is keyed on).
    pub state: String,
    /// Records exported (a recording counts once).
    pub records: u64,
    /// The archive's files holding this store's data.
    pub files: Vec<ManifestFile>,
    /// Files listed for the subject but erased before the archive could copy them (a deletion
    /// of the same subject ran meanwhile): not in the archive, and no longer held.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub files_erased_meanwhile: u64,
    /// Art. 15(1)(d): how long the store keeps data.
    pub retention: String,
    /// Why the store processes (and may retain) the data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legal_basis: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Path inside the archive.
    pub path: String,
    pub bytes: u64,
    /// Lowercase hex sha256 of the file's bytes.
    pub sha256: String,
    /// For a recording: its index record (call id, when, size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<Record>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Manifest {
    /// A manifest with the notice's text and no stores yet.
    pub fn new(
        notice: &ExportNotice,
        request_id: &str,
        tenant_id: &str,
        regime: &str,
        requested_at: String,
        generated_at: String,
    ) -> Self {
        Self {
            format: MANIFEST_FORMAT.to_owned(),
            request_id: request_id.to_owned(),
            tenant_id: tenant_id.to_owned(),
            regime: regime.to_owned(),
            requested_at,
            generated_at,
            stores: Vec::new(),
            controller: notice.controller.clone(),
            purposes: notice.purposes.clone(),
            categories: notice.categories.clone(),
            recipients: notice.recipients.clone(),
            source: notice.source.clone(),
            rights: notice.rights.clone(),
            automated_decision_making: notice.automated_decision_making.clone(),
        }
    }

    /// Adds a store with the notice's retention and legal basis for it.
    pub fn store(
        &mut self,
        notice: &ExportNotice,
        store: &str,
        state: &str,
        records: u64,
    ) -> &mut ManifestStore {
        self.stores.push(ManifestStore {
            store: store.to_owned(),
            state: state.to_owned(),
            records,
            files: Vec::new(),
            files_erased_meanwhile: 0,
            retention: notice.retention.get(store).cloned().unwrap_or_default(),
            legal_basis: notice.legal_basis.get(store).cloned(),
        });
        self.stores.last_mut().expect("just pushed")
    }
}

/// Writes `manifest.json` a piece at a time, so a subject with 100,000 files never has their
/// entries in memory: the manifest's fields, then each store opened, its files one by one, and
/// closed with its counts (known only once its files are copied), then the rest. The JSON is
/// the same document `Manifest` reads; a store's `files` come before its counts.
pub struct ManifestWriter {
    tail: Vec<u8>,
    stores: u64,
    files_in_store: u64,
}

/// A store's fields after its files.
#[derive(Serialize)]
struct StoreCounts<'a> {
    records: u64,
    #[serde(skip_serializing_if = "is_zero")]
    files_erased_meanwhile: u64,
    retention: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    legal_basis: Option<&'a str>,
}

#[derive(Serialize)]
struct StoreHead<'a> {
    store: &'a str,
    state: &'a str,
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("manifest values serialise")
}

impl ManifestWriter {
    /// Starts with `manifest`'s fields (its `stores` are ignored); returns the first bytes.
    pub fn start(manifest: &Manifest) -> (Self, Vec<u8>) {
        let empty = Manifest { stores: Vec::new(), ..manifest.clone() };
        let whole = serde_json::to_vec_pretty(&empty).expect("a manifest serialises");
        let marker: &[u8] = b"\"stores\": []";
        let at = whole.windows(marker.len()).position(|w| w == marker).expect("the stores field");
        let mut head = whole[..at].to_vec();
        head.extend_from_slice(b"\"stores\": [");
        let mut tail = b"\n  ]".to_vec();
        tail.extend_from_slice(&whole[at + marker.len()..]);
        (Self { tail, stores: 0, files_in_store: 0 }, head)
    }

    /// Opens a store's entry.
    pub fn open_store(&mut self, store: &str, state: &str) -> Vec<u8> {
        let mut out = if self.stores == 0 { b"\n    ".to_vec() } else { b",\n    ".to_vec() };
        let head = to_json(&StoreHead { store, state });
        out.extend_from_slice(&head[..head.len() - 1]);
        out.extend_from_slice(b",\"files\":[");
        self.stores += 1;
        self.files_in_store = 0;
        out
    }

    /// One file of the open store.
    pub fn file(&mut self, file: &ManifestFile) -> Vec<u8> {
        let mut out = if self.files_in_store == 0 { b"\n      ".to_vec() } else { b",\n      ".to_vec() };
        out.extend_from_slice(&to_json(file));
        self.files_in_store += 1;
        out
    }

    /// Closes the open store with its counts and the notice's retention and legal basis.
    pub fn close_store(
        &mut self,
        notice: &ExportNotice,
        store: &str,
        records: u64,
        files_erased_meanwhile: u64,
    ) -> Vec<u8> {
        let counts = to_json(&StoreCounts {
            records,
            files_erased_meanwhile,
            retention: notice.retention.get(store).map(String::as_str).unwrap_or_default(),
            legal_basis: notice.legal_basis.get(store).map(String::as_str),
        });
        let mut out = if self.files_in_store == 0 { b"],".to_vec() } else { b"\n    ],".to_vec() };
        out.extend_from_slice(&counts[1..]);
        out
    }

    /// The bytes after the last store.
    pub fn finish(self) -> Vec<u8> {
        self.tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_written_piece_by_piece_reads_back_whole() {
        let mut notice = ExportNotice::default();
        notice.retention.insert("recordings".into(), "90 days".into());
        notice.legal_basis.insert("billing".into(), "Legal obligation".into());
        let mut expected = Manifest::new(&notice, "r1", "acme", "gdpr", "t0".into(), "t1".into());
        let mut record = Record::new();
        record.insert("call_id".into(), serde_json::json!("c1"));
        let file = |path: &str, record: Option<Record>| ManifestFile {
            path: path.into(),
            bytes: 3,
            sha256: "ab".into(),
            record,
        };
        expected.store(&notice, "accounts", "done", 1).files = vec![file("accounts.json", None)];
        expected.store(&notice, "billing", "skipped", 0);
        let rec = expected.store(&notice, "recordings", "done", 2);
        rec.files = vec![file("recordings/c1.wav", Some(record.clone())), file("recordings/c2.wav", None)];
        rec.files_erased_meanwhile = 1;

        let (mut w, mut out) = ManifestWriter::start(&expected);
        for s in &expected.stores {
            out.extend(w.open_store(&s.store, &s.state));
            for f in &s.files {
                out.extend(w.file(f));
            }
            out.extend(w.close_store(&notice, &s.store, s.records, s.files_erased_meanwhile));
        }
        out.extend(w.finish());
        let read: Manifest = serde_json::from_slice(&out).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&out));
        });
        assert_eq!(read, expected);

        let (w, mut none) = ManifestWriter::start(&Manifest { stores: Vec::new(), ..expected.clone() });
        none.extend(w.finish());
        let read: Manifest = serde_json::from_slice(&none).unwrap();
        assert!(read.stores.is_empty());
    }
}
