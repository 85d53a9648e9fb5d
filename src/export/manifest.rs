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
