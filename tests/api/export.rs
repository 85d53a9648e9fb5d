//! Exports end to end: the archive's exact contents, nobody else's data in it, the deadline,
//! downloads that resume, and the archive's expiry — through the real API, with the real stores.
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use chrono::{Duration, Utc};
use dsr::{
    api::pb::{self, OutcomeState, RequestStatus},
    clock::{ManualClock, SharedClock},
    export::{Manifest, MANIFEST_FORMAT},
    seed::SeededSubject,
    startup::Overrides,
    stores::{StoreAdapter, StoreError, StoreResult},
};
use object_store::ObjectStoreExt;
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, Semaphore};
use tonic::Code;

use crate::{both, helpers::*};

impl TestApp {
    pub async fn export(&self, subject: pb::Subject, regime: pb::Regime) -> pb::DsrRequest {
        self.client
            .clone()
            .submit_export(pb::SubmitExportRequest {
                subject: Some(subject),
                regime: regime as i32,
                ..Default::default()
            })
            .await
            .expect("submit export")
            .into_inner()
    }

    /// Every chunk of the archive from `offset`, checking offsets and chunk sizes on the way.
    pub async fn download(&self, id: &str, offset: u64) -> Result<Vec<u8>, tonic::Status> {
        let mut stream = self
            .client
            .clone()
            .download_export(pb::DownloadExportRequest { id: id.to_owned(), offset })
            .await?
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = stream.message().await? {
            assert_eq!(chunk.offset, offset + out.len() as u64, "chunks are contiguous");
            assert!(
                !chunk.data.is_empty() && chunk.data.len() <= 1024 * 1024,
                "chunk of {}",
                chunk.data.len()
            );
            out.extend_from_slice(&chunk.data);
        }
        Ok(out)
    }
}

/// The archive's files: path → bytes (checking every entry's CRC on the way).
pub(crate) fn unzip(archive: &[u8]) -> BTreeMap<String, Vec<u8>> {
    use std::io::Read;
    let zip = rawzip::ZipArchive::from_slice(archive).expect("a ZIP archive");
    let mut entries = zip.entries();
    let mut files = BTreeMap::new();
    while let Some(entry) = entries.next_entry().expect("entry") {
        let path = entry.file_path().try_normalize().expect("a safe path").as_ref().to_owned();
        assert_eq!(entry.compression_method(), rawzip::CompressionMethod::STORE, "{path}");
        let local = zip.get_entry(entry.wayfinder()).expect("local entry");
        let mut data = Vec::new();
        local.verifying_reader(local.data()).read_to_end(&mut data).expect("entry reads back with its CRC");
        assert!(files.insert(path.clone(), data).is_none(), "{path} twice");
    }
    files
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

pub(crate) fn records(
    files: &BTreeMap<String, Vec<u8>>,
    name: &str,
) -> Vec<serde_json::Map<String, serde_json::Value>> {
    serde_json::from_slice(&files[name]).unwrap_or_else(|e| panic!("{name} is a JSON array of objects: {e}"))
}

async fn an_export_archive_holds_exactly_the_subjects_data(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.seed("acme", 3, 4).await;
    let globex = app.seed_from("globex", 100, 2, 4).await;
    let target = &acme[1];

    let submitted = app.export(by_email("acme", &target.email), pb::Regime::Gdpr).await;
    assert_eq!(submitted.kind, pb::RequestKind::Export as i32);
    assert_eq!(submitted.outcomes.len(), 5, "one outcome per store: {:?}", submitted.outcomes);
    let due = submitted.due_at.as_ref().unwrap().seconds - submitted.created_at.as_ref().unwrap().seconds;
    assert_eq!(due, Duration::days(30).num_seconds());
    let done = app.wait_terminal(&submitted.id).await;
    assert_eq!(done.status, RequestStatus::Completed as i32, "{done:#?}");
    assert_eq!(done.outcomes.len(), 5, "the archive step is not a store: {:?}", done.outcomes);
    for (store, n) in &target.counts {
        let o = outcome(&done, store);
        assert_eq!(o.state, OutcomeState::Done as i32, "{store}: {o:?}");
        assert_eq!(o.records_found, *n, "{store} found");
        assert_eq!(o.records_affected, *n, "{store} exported");
    }
    let info = done.export.clone().expect("ExportInfo once COMPLETED");
    assert_eq!(info.format, "zip");
    let expires = info.expires_at.as_ref().unwrap().seconds - done.completed_at.as_ref().unwrap().seconds;
    assert!((expires - Duration::days(7).num_seconds()).abs() <= 1, "expires 7 days after: {expires}");

    let archive = app.download(&done.id, 0).await.expect("download");
    assert_eq!(archive.len() as u64, info.size_bytes);
    assert_eq!(sha256_hex(&archive), info.sha256, "ExportInfo.sha256 is of the archive downloaded");
    let files = unzip(&archive);

    // Exactly these files.
    let mut expected: Vec<String> =
        ["accounts.json", "billing.json", "call_logs.json", "manifest.json", "transcripts.json"]
            .map(String::from)
            .into();
    let recordings_dir = app.dir.path().join("recordings/acme");
    let mut audio: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for entry in std::fs::read_dir(&recordings_dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        // Seeded call ids carry the subject's number: acme-000001-…
        if name.contains("-000001-") {
            audio.insert(format!("recordings/{name}"), std::fs::read(entry.path()).unwrap());
        }
    }
    assert_eq!(audio.len() as u64, target.counts["recordings"]);
    expected.extend(audio.keys().cloned());
    expected.sort();
    assert_eq!(files.keys().cloned().collect::<Vec<_>>(), expected);

    // Recordings byte for byte as `dsr seed` wrote them; counts per store as found.
    for (path, bytes) in &audio {
        assert!(files[path] == *bytes, "{path} differs from the stored recording");
    }
    for store in ["accounts", "call_logs", "transcripts", "billing"] {
        let rows = records(&files, &format!("{store}.json"));
        assert_eq!(rows.len() as u64, target.counts[store], "{store}.json rows");
        assert!(rows.iter().all(|r| r["tenant_id"] == "acme"), "{store}: only the tenant's rows");
    }
    assert_eq!(records(&files, "accounts.json")[0]["email"], target.email.as_str());

    // The manifest: every file with its size and hash, every store, the Art. 15 information.
    let manifest: Manifest = serde_json::from_slice(&files["manifest.json"]).expect("manifest.json parses");
    assert_eq!(manifest.format, MANIFEST_FORMAT);
    assert_eq!(manifest.request_id, done.id);
    assert_eq!(manifest.tenant_id, "acme");
    assert_eq!(manifest.regime, "gdpr");
    assert_eq!(
        manifest.stores.iter().map(|s| s.store.as_str()).collect::<Vec<_>>(),
        ["accounts", "call_logs", "transcripts", "recordings", "billing"]
    );
    let mut listed = 0;
    for store in &manifest.stores {
        assert_eq!(store.state, "done");
        assert_eq!(store.records, target.counts[store.store.as_str()], "{}", store.store);
        assert!(!store.retention.is_empty(), "{} retention", store.store);
        for f in &store.files {
            assert_eq!(f.bytes, files[&f.path].len() as u64, "{}", f.path);
            assert_eq!(f.sha256, sha256_hex(&files[&f.path]), "{}", f.path);
            listed += 1;
        }
    }
    assert_eq!(listed, files.len() - 1, "the manifest lists every other file");
    let billing = manifest.stores.iter().find(|s| s.store == "billing").unwrap();
    assert!(billing.legal_basis.as_deref().unwrap_or_default().contains("Legal obligation"));
    assert!(billing.retention.contains("7 years"));
    let recipients: Vec<&str> = manifest.recipients.iter().map(|r| r.name.as_str()).collect();
    for sub in ["Speech-to-text", "Text-to-speech", "Language-model", "Database hosting", "Payment"] {
        assert!(recipients.iter().any(|r| r.contains(sub)), "recipient {sub}: {recipients:?}");
    }
    assert!(!manifest.purposes.is_empty() && !manifest.categories.is_empty());

    // Nothing of anyone else, in any file.
    let everything: Vec<u8> = files.values().flatten().copied().collect();
    let others: Vec<&SeededSubject> =
        acme.iter().chain(&globex).filter(|s| s.account_id != target.account_id).collect();
    for other in others {
        for id in [&other.email, &other.phone, &other.account_id] {
            assert!(
                !contains(&everything, id.as_bytes()),
                "another subject's identifier {id} is in the archive"
            );
        }
    }
    assert!(!contains(&everything, b"globex"), "another tenant's data is in the archive");
}
both!(an_export_archive_holds_exactly_the_subjects_data);

/// The archive reads files a few ahead of the one it writes: a recording gone from the object
/// store before it is read is left out and counted, and every other one — one larger than what
/// is read ahead — is in the archive byte for byte as the object store holds it (read here
/// from disk, not through the service).
async fn a_recording_gone_before_the_archive_reads_it_is_counted_and_the_rest_copied_whole(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.seed("acme", 3, 6).await;
    let target = &acme[1];
    let recordings_dir = app.dir.path().join("recordings/acme");
    let mut mine: Vec<std::path::PathBuf> = std::fs::read_dir(&recordings_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains("-000001-"))
        .collect();
    mine.sort();
    assert!(mine.len() >= 3, "the subject has recordings to spare: {mine:?}");
    let gone = mine.remove(1);
    std::fs::remove_file(&gone).unwrap();
    // 1.5 MiB: several reads of a local object (512 KiB each), more than a file's read-ahead
    // (64 KiB), so its rest is read as it is written.
    let large: Vec<u8> = (0..1536 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&mine[0], &large).unwrap();

    let submitted = app.export(by_email("acme", &target.email), pb::Regime::Gdpr).await;
    let done = app.wait_terminal(&submitted.id).await;
    assert_eq!(done.status, RequestStatus::Completed as i32, "{done:#?}");
    let files = unzip(&app.download(&done.id, 0).await.expect("download"));

    let audio: BTreeMap<String, Vec<u8>> = files
        .iter()
        .filter(|(path, _)| path.starts_with("recordings/"))
        .map(|(path, bytes)| (path.clone(), bytes.clone()))
        .collect();
    let expected: BTreeMap<String, Vec<u8>> = mine
        .iter()
        .map(|p| {
            (format!("recordings/{}", p.file_name().unwrap().to_string_lossy()), std::fs::read(p).unwrap())
        })
        .collect();
    assert_eq!(audio.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>());
    for (path, bytes) in &expected {
        assert!(audio[path] == *bytes, "{path} differs from the stored recording");
    }
    assert!(expected.values().any(|b| *b == large), "the large recording is among them");

    let manifest: Manifest = serde_json::from_slice(&files["manifest.json"]).expect("manifest.json parses");
    let recordings = manifest.stores.iter().find(|s| s.store == "recordings").unwrap();
    assert_eq!(recordings.files_erased_meanwhile, 1);
    assert_eq!(recordings.records, target.counts["recordings"] - 1);
    assert_eq!(recordings.files.len(), mine.len());
}
both!(a_recording_gone_before_the_archive_reads_it_is_counted_and_the_rest_copied_whole);

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn a_ccpa_export_is_due_in_45_days(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.seed("acme", 1, 1).await;
    let r = app.export(by_phone("acme", &acme[0].phone), pb::Regime::Ccpa).await;
    let due = r.due_at.as_ref().unwrap().seconds - r.created_at.as_ref().unwrap().seconds;
    assert_eq!(due, Duration::days(45).num_seconds());
    assert_eq!(r.regime, pb::Regime::Ccpa as i32);
    let done = app.wait_terminal(&r.id).await;
    assert_eq!(done.status, RequestStatus::Completed as i32, "{done:#?}");
}
both!(a_ccpa_export_is_due_in_45_days);

async fn a_download_resumes_from_an_offset(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.seed("acme", 1, 3).await;
    let done =
        app.wait_terminal(&app.export(by_phone("acme", &acme[0].phone), pb::Regime::Gdpr).await.id).await;
    let whole = app.download(&done.id, 0).await.unwrap();
    for offset in [1, 777, whole.len() as u64 / 2, whole.len() as u64 - 1] {
        let rest = app.download(&done.id, offset).await.unwrap();
        assert!(rest == whole[offset as usize..], "resuming at {offset} gives the same bytes");
    }
    assert!(app.download(&done.id, whole.len() as u64).await.unwrap().is_empty(), "at the end: nothing more");
    let past = app.download(&done.id, whole.len() as u64 + 1).await.unwrap_err();
    assert_eq!(past.code(), Code::InvalidArgument);
    assert!(past.message().contains("offset"), "{}", past.message());
    // Every download that reached the end is in the audit trail, with who and from where.
    let events = app
        .audit()
        .await
        .list_audit_events(pb::ListAuditEventsRequest { request_id: done.id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events;
    let downloads: Vec<_> = events.iter().filter(|e| e.action == "export_downloaded").collect();
    assert_eq!(downloads.len(), 6, "{downloads:#?}");
    assert_eq!(downloads[0].detail, "offset=0");
    assert_eq!(downloads[0].records_affected, whole.len() as u64);
    assert_eq!(downloads[0].actor, "anonymous");
}
both!(a_download_resumes_from_an_offset);

async fn a_download_before_completion_or_of_nothing_is_refused(backend: Backend) {
    let app =
        spawn_app_with(backend, TEST_CONFIG, Overrides { paused_engine: true, ..Default::default() }).await;
    let acme = app.seed("acme", 1, 1).await;
    let pending = app.export(by_phone("acme", &acme[0].phone), pb::Regime::Gdpr).await;
    assert!(pending.export.is_none());
    let early = app.download(&pending.id, 0).await.unwrap_err();
    assert_eq!(early.code(), Code::FailedPrecondition, "{early:?}");
    assert!(early.message().contains("COMPLETED"), "{}", early.message());

    let unknown = app.download("0193b2a0-0000-7000-8000-000000000000", 0).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    let malformed = app.download("not-an-id", 0).await.unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument, "{malformed:?}");

    let deletion = app.delete(by_phone("acme", &acme[0].phone)).await;
    let not_export = app.download(&deletion.id, 0).await.unwrap_err();
    assert_eq!(not_export.code(), Code::FailedPrecondition, "{not_export:?}");
}
both!(a_download_before_completion_or_of_nothing_is_refused);

async fn an_expired_export_is_deleted_and_answers_not_found(backend: Backend) {
    let clock = ManualClock::new(Utc::now());
    let shared: SharedClock = clock.clone();
    let app =
        spawn_app_with(backend, TEST_CONFIG, Overrides { clock: Some(shared), ..Default::default() }).await;
    let acme = app.seed("acme", 1, 2).await;
    let done =
        app.wait_terminal(&app.export(by_phone("acme", &acme[0].phone), pb::Regime::Gdpr).await.id).await;
    assert_eq!(done.status, RequestStatus::Completed as i32, "{done:#?}");
    let archive = app.dir.path().join("exports").join(&done.id).join("export.zip");
    assert!(archive.exists(), "the archive is in the export storage");
    let parts = app.dir.path().join("exports").join(&done.id).join("parts");
    let left = std::fs::read_dir(&parts).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "the parts go once they are in the archive");

    // One second before the end it still downloads.
    clock.advance(Duration::days(7) - Duration::seconds(1));
    app.download(&done.id, 0).await.expect("still downloadable");
    clock.advance(Duration::seconds(1));
    let gone = app.download(&done.id, 0).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound, "{gone:?}");
    assert!(gone.message().contains("expired"), "{}", gone.message());
    assert!(!archive.exists(), "an expired archive is deleted");
    let again = app.download(&done.id, 5).await.unwrap_err();
    assert_eq!(again.code(), Code::NotFound);

    let events = app
        .audit()
        .await
        .list_audit_events(pb::ListAuditEventsRequest { request_id: done.id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events.iter().filter(|e| e.action == "export_expired").count(), 1, "{events:#?}");
    // The request still tells what there was.
    assert!(app.get(&done.id).await.export.is_some());
}
both!(an_expired_export_is_deleted_and_answers_not_found);

/// The janitor deletes archives nobody downloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_janitor_deletes_expired_archives_nobody_asked_for() {
    let clock = ManualClock::new(Utc::now());
    let shared: SharedClock = clock.clone();
    let toml = format!("{TEST_CONFIG}\n[export]\njanitor_interval_secs = 1\n");
    let app =
        spawn_app_with(Backend::Sqlite, &toml, Overrides { clock: Some(shared), ..Default::default() }).await;
    let acme = app.seed("acme", 1, 1).await;
    let done =
        app.wait_terminal(&app.export(by_phone("acme", &acme[0].phone), pb::Regime::Gdpr).await.id).await;
    let archive = app.dir.path().join("exports").join(&done.id).join("export.zip");
    assert!(archive.exists());
    clock.advance(Duration::days(8));
    // Polls for the janitor's pass (a safety net, not a timing assertion).
    for _ in 0..200 {
        if !archive.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(!archive.exists(), "the janitor deleted the expired archive");
}

/// The production layout: recordings and archives on S3 (the archive big enough to go up as a
/// multipart upload), the ledger on Postgres.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_reads_recordings_from_s3_and_writes_its_archive_to_s3() {
    let dir = tempfile::tempdir().unwrap();
    let url = crate::support::fresh_platform_database(Backend::Postgres, dir.path()).await;
    let recordings = crate::support::fresh_s3_bucket().await;
    let mut settings = crate::support::settings(dir.path(), url, Some(recordings.clone()), TEST_CONFIG);
    settings.exports_url = recordings.replace("/recordings", "/exports");
    let app = spawn_on(settings, dir, Overrides::default()).await;
    let objects = dsr::stores::open_object_store(&app.settings.recordings_url).unwrap();
    let spec = dsr::seed::SeedSpec {
        tenant: dsr::domain::TenantId::parse("tenant", "acme").unwrap(),
        subjects: 1,
        calls: 3,
        recording_bytes: 3 * 1024 * 1024,
        first: 0,
    };
    let mut seeded = Vec::new();
    dsr::seed::seed(&app.db, &dsr::stores::reference::Tables::default(), objects, &spec, Utc::now(), |s| {
        seeded.push(s)
    })
    .await
    .unwrap();
    let done =
        app.wait_terminal(&app.export(by_phone("acme", &seeded[0].phone), pb::Regime::Gdpr).await.id).await;
    assert_eq!(done.status, RequestStatus::Completed as i32, "{done:#?}");
    let info = done.export.clone().unwrap();
    assert!(info.size_bytes > 9 * 1024 * 1024, "{}", info.size_bytes);
    let archive = app.download(&done.id, 0).await.unwrap();
    assert_eq!(sha256_hex(&archive), info.sha256);
    let files = unzip(&archive);
    let audio: Vec<_> = files.iter().filter(|(p, _)| p.starts_with("recordings/")).collect();
    assert_eq!(audio.len(), 3);
    for (path, bytes) in audio {
        let call_id = path.trim_start_matches("recordings/").trim_end_matches(".wav");
        assert!(**bytes == dsr::seed::recording_bytes(call_id, 3 * 1024 * 1024), "{path}");
    }
    let resumed = app.download(&done.id, 5 * 1024 * 1024 + 7).await.unwrap();
    assert!(resumed == archive[5 * 1024 * 1024 + 7..]);
}

/// An archive is a copy of the subject's data: when the subject asks for erasure afterwards, it
/// goes too, and the download says why.
async fn a_later_deletion_of_the_subject_deletes_the_archive(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.seed("acme", 2, 2).await;
    let mine =
        app.wait_terminal(&app.export(by_email("acme", &acme[0].email), pb::Regime::Gdpr).await.id).await;
    let other =
        app.wait_terminal(&app.export(by_email("acme", &acme[1].email), pb::Regime::Gdpr).await.id).await;
    app.download(&mine.id, 0).await.expect("downloadable before the deletion");
    // Named by another identifier than the export was: the tags of the resolved subject meet.
    let deletion = app.delete(by_phone("acme", &acme[0].phone)).await;
    app.wait_terminal(&deletion.id).await;
    let gone = app.download(&mine.id, 0).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound, "{gone:?}");
    assert!(gone.message().contains("erased"), "{}", gone.message());
    assert!(!app.dir.path().join("exports").join(&mine.id).join("export.zip").exists());
    app.download(&other.id, 0).await.expect("another subject's archive stays");
    let events = app
        .audit()
        .await
        .list_audit_events(pb::ListAuditEventsRequest { request_id: mine.id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events.iter().filter(|e| e.action == "export_erased").count(), 1, "{events:#?}");
}
both!(a_later_deletion_of_the_subject_deletes_the_archive);

/// The janitor deletes a superseded archive without anyone asking for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_janitor_deletes_archives_of_subjects_erased_since() {
    let toml = format!("{TEST_CONFIG}\n[export]\njanitor_interval_secs = 1\n");
    let app = spawn_app_with(Backend::Postgres, &toml, Overrides::default()).await;
    let acme = app.seed("acme", 1, 1).await;
    let done =
        app.wait_terminal(&app.export(by_phone("acme", &acme[0].phone), pb::Regime::Gdpr).await.id).await;
    let archive = app.dir.path().join("exports").join(&done.id).join("export.zip");
    assert!(archive.exists());
    app.wait_terminal(&app.delete(by_email("acme", &acme[0].email)).await.id).await;
    for _ in 0..200 {
        if !archive.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(!archive.exists(), "the janitor deleted the superseded archive");
}

/// Where a test's exports are written.
#[derive(Clone, Copy, Debug)]
enum ExportsOn {
    /// The default: `<data dir>/exports`.
    Local,
    /// A bucket on the test S3 server.
    S3,
}

async fn spawn_with_exports_on(backend: Backend, on: ExportsOn, toml: &str, overrides: Overrides) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let url = crate::support::fresh_platform_database(backend, dir.path()).await;
    let mut settings = crate::support::settings(dir.path(), url, None, toml);
    if let ExportsOn::S3 = on {
        settings.exports_url = crate::support::fresh_s3_bucket().await.replace("/recordings", "/exports");
    }
    spawn_on(settings, dir, overrides).await
}

/// Every object under `<request id>/` in the export storage, read directly: the directory on
/// disk, or the bucket through a client of its own.
async fn stored_objects(app: &TestApp, id: &str) -> Vec<String> {
    if app.settings.exports_url.starts_with("s3://") {
        use futures::TryStreamExt;
        let objects = dsr::stores::open_object_store(&app.settings.exports_url).unwrap();
        let prefix = object_store::path::Path::from(id.to_owned());
        let found: Vec<_> = objects.list(Some(&prefix)).try_collect().await.unwrap();
        let mut paths: Vec<String> = found.into_iter().map(|m| m.location.to_string()).collect();
        paths.sort();
        paths
    } else {
        fn walk(dir: &std::path::Path, out: &mut Vec<String>) {
            let Ok(entries) = std::fs::read_dir(dir) else { return };
            for entry in entries {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    out.push(path.to_string_lossy().into_owned());
                }
            }
        }
        let mut out = Vec::new();
        walk(&app.dir.path().join("exports").join(id), &mut out);
        out.sort();
        out
    }
}

/// `stored_objects` once the deletion that follows a request's end has run: the request's
/// status is committed first, so a caller can see it a moment before the objects go. Polls (a
/// safety net, not a timing assertion) and returns what is left.
async fn stored_objects_after_the_end(app: &TestApp, id: &str) -> Vec<String> {
    for _ in 0..200 {
        let left = stored_objects(app, id).await;
        if left.is_empty() {
            return left;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    stored_objects(app, id).await
}

/// Makes one step of an export fail while `failing` names it: a store's part (by store name),
/// or the archive (`"archive"`: the recordings' audio cannot be read).
struct FailsExport {
    inner: Arc<dyn StoreAdapter>,
    failing: Arc<Mutex<Option<&'static str>>>,
}

impl FailsExport {
    fn fails(&self, step: &str) -> bool {
        *self.failing.lock().unwrap() == Some(step)
    }
}

crate::store_wrapper!(FailsExport: Export);

#[async_trait::async_trait]
impl dsr::stores::Export for FailsExport {
    async fn read_file(&self, key: &str) -> StoreResult<dsr::stores::ByteStream> {
        if self.fails("archive") {
            return Err(StoreError::Fatal("the object store refused a read (test)".into()));
        }
        self.inner_export().read_file(key).await
    }
    async fn export(
        &self,
        tenant: &str,
        keys: &[String],
        sink: &mut dyn dsr::stores::ExportSink,
    ) -> StoreResult<u64> {
        if self.fails(self.inner.name()) {
            return Err(StoreError::Fatal(format!("the {} store refused (test)", self.inner.name())));
        }
        self.inner_export().export(tenant, keys, sink).await
    }
}

/// An export that ends FAILED leaves nothing in the export storage — neither the parts of the
/// stores that succeeded nor a partial archive — and RetryRequest still builds the complete
/// archive, every store's part written again.
async fn a_failed_export_leaves_nothing_stored_and_a_retry_rebuilds_every_part(
    backend: Backend,
    on: ExportsOn,
) {
    let failing = Arc::new(Mutex::new(None));
    let f = failing.clone();
    let overrides = Overrides {
        wrap_store: Some(Box::new(move |inner: Arc<dyn StoreAdapter>| -> Arc<dyn StoreAdapter> {
            Arc::new(FailsExport { inner, failing: f.clone() })
        })),
        ..Default::default()
    };
    let app = spawn_with_exports_on(backend, on, TEST_CONFIG, overrides).await;
    let acme = app.seed("acme", 2, 3).await;
    let target = &acme[0];
    // The archive fails (every store wrote its part), then the store of the last stage does
    // (those of the first stage wrote theirs).
    for step in ["archive", "call_logs"] {
        *failing.lock().unwrap() = Some(step);
        let id = app.export(by_phone("acme", &target.phone), pb::Regime::Gdpr).await.id;
        let failed = app.wait_terminal(&id).await;
        assert_eq!(failed.status, RequestStatus::Failed as i32, "{step}: {failed:#?}");
        assert_eq!(
            stored_objects_after_the_end(&app, &id).await,
            Vec::<String>::new(),
            "{step}: nothing left"
        );

        *failing.lock().unwrap() = None;
        app.client.clone().retry_request(pb::RetryRequestRequest { id: id.clone() }).await.unwrap();
        let done = app.wait_terminal(&id).await;
        assert_eq!(done.status, RequestStatus::Completed as i32, "{step}: {done:#?}");
        let archive = app.download(&id, 0).await.unwrap();
        assert_eq!(sha256_hex(&archive), done.export.unwrap().sha256);
        let files = unzip(&archive);
        for store in ["accounts", "call_logs", "transcripts", "billing"] {
            let rows = records(&files, &format!("{store}.json"));
            assert_eq!(rows.len() as u64, target.counts[store], "{step}: {store}.json rows after the retry");
        }
        let audio = files.keys().filter(|p| p.starts_with("recordings/")).count() as u64;
        assert_eq!(audio, target.counts["recordings"], "{step}: recordings after the retry");
        // The parts go once the archive is recorded: polls (a safety net) for that.
        let mut stored = Vec::new();
        for _ in 0..200 {
            stored = stored_objects(&app, &id).await;
            if stored.len() == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(
            stored.len() == 1 && stored[0].ends_with("export.zip"),
            "{step}: only the archive: {stored:?}"
        );
    }

    // What a crash between a FAILED end and the deletion would leave, the janitor deletes; an
    // unknown request's objects stay.
    *failing.lock().unwrap() = Some("archive");
    let id = app.export(by_phone("acme", &target.phone), pb::Regime::Gdpr).await.id;
    assert_eq!(app.wait_terminal(&id).await.status, RequestStatus::Failed as i32);
    assert_eq!(stored_objects_after_the_end(&app, &id).await, Vec::<String>::new());
    let objects = dsr::stores::open_object_store(&app.settings.exports_url).unwrap();
    let stray = object_store::path::Path::from(format!("{id}/parts/accounts.json"));
    let foreign = object_store::path::Path::from("not-a-request/parts/accounts.json");
    for path in [&stray, &foreign] {
        objects.put(path, object_store::PutPayload::from_static(b"[]\n")).await.unwrap();
    }
    assert_eq!(stored_objects(&app, &id).await.len(), 1);
    let storage = dsr::export::ExportStorage::open(&app.settings).unwrap();
    let ledger = dsr::ledger::Ledger::new(app.db.clone());
    let deleted = dsr::export::delete_leftovers(&storage, &ledger).await.unwrap();
    assert_eq!(deleted, 1);
    assert_eq!(stored_objects(&app, &id).await, Vec::<String>::new());
    assert_eq!(stored_objects(&app, "not-a-request").await.len(), 1, "not the ledger's: left alone");
    app.shutdown().await;
}

mod a_failed_export_leaves_nothing_stored {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_local() {
        a_failed_export_leaves_nothing_stored_and_a_retry_rebuilds_every_part(
            Backend::Sqlite,
            ExportsOn::Local,
        )
        .await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_local() {
        a_failed_export_leaves_nothing_stored_and_a_retry_rebuilds_every_part(
            Backend::Postgres,
            ExportsOn::Local,
        )
        .await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_s3() {
        a_failed_export_leaves_nothing_stored_and_a_retry_rebuilds_every_part(Backend::Sqlite, ExportsOn::S3)
            .await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_s3() {
        a_failed_export_leaves_nothing_stored_and_a_retry_rebuilds_every_part(
            Backend::Postgres,
            ExportsOn::S3,
        )
        .await
    }
}

/// Holds the call logs store's export at a gate, saying when it got there.
struct HeldExport {
    inner: Arc<dyn StoreAdapter>,
    entered: Arc<Notify>,
    gate: Arc<Semaphore>,
}

crate::store_wrapper!(HeldExport: Export);

#[async_trait::async_trait]
impl dsr::stores::Export for HeldExport {
    async fn export(
        &self,
        tenant: &str,
        keys: &[String],
        sink: &mut dyn dsr::stores::ExportSink,
    ) -> StoreResult<u64> {
        if self.inner.name() == "call_logs" {
            self.entered.notify_one();
            self.gate.acquire().await.expect("gate").forget();
        }
        self.inner_export().export(tenant, keys, sink).await
    }
    async fn read_file(&self, key: &str) -> StoreResult<dsr::stores::ByteStream> {
        self.inner_export().read_file(key).await
    }
}

/// An export cancelled while a store was writing its part ends CANCELLED with nothing left in
/// the export storage: not the parts written before the cancel, not the one finished after it.
async fn a_cancelled_export_leaves_nothing_stored(backend: Backend, on: ExportsOn) {
    let (entered, gate) = (Arc::new(Notify::new()), Arc::new(Semaphore::new(0)));
    let (e, g) = (entered.clone(), gate.clone());
    let overrides = Overrides {
        wrap_store: Some(Box::new(move |inner: Arc<dyn StoreAdapter>| -> Arc<dyn StoreAdapter> {
            Arc::new(HeldExport { inner, entered: e.clone(), gate: g.clone() })
        })),
        ..Default::default()
    };
    let app = spawn_with_exports_on(backend, on, TEST_CONFIG, overrides).await;
    let acme = app.seed("acme", 1, 2).await;
    let id = app.export(by_phone("acme", &acme[0].phone), pb::Regime::Gdpr).await.id;
    entered.notified().await;
    // The other stores run beside it: polls (a safety net) until each has written its part.
    let mut first = Vec::new();
    for _ in 0..200 {
        first = stored_objects(&app, &id).await;
        if first.iter().filter(|p| p.ends_with(".summary.json")).count() == 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        first.iter().filter(|p| p.ends_with(".summary.json")).count(),
        4,
        "the others' parts: {first:?}"
    );
    let cancelled = app
        .client
        .clone()
        .cancel_request(pb::CancelRequestRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.status, RequestStatus::InProgress as i32, "a store is still running");
    gate.add_permits(1);
    let ended = app.wait_terminal(&id).await;
    assert_eq!(ended.status, RequestStatus::Cancelled as i32, "{ended:#?}");
    assert_eq!(
        stored_objects_after_the_end(&app, &id).await,
        Vec::<String>::new(),
        "nothing left in storage"
    );
    app.shutdown().await;
}

mod a_cancelled_export_leaves_nothing {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_local() {
        a_cancelled_export_leaves_nothing_stored(Backend::Sqlite, ExportsOn::Local).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_s3() {
        a_cancelled_export_leaves_nothing_stored(Backend::Postgres, ExportsOn::S3).await
    }
}

/// A deletion that completes deletes the archives of its subject at once — without a download
/// asking and long before the janitor's next pass — and leaves other subjects' archives.
async fn a_completed_deletion_deletes_its_subjects_archives_at_once(backend: Backend, on: ExportsOn) {
    let toml = format!("{TEST_CONFIG}\n[export]\njanitor_interval_secs = 3600\n");
    let app = spawn_with_exports_on(backend, on, &toml, Overrides::default()).await;
    let acme = app.seed("acme", 2, 2).await;
    let mine =
        app.wait_terminal(&app.export(by_email("acme", &acme[0].email), pb::Regime::Gdpr).await.id).await;
    let other =
        app.wait_terminal(&app.export(by_email("acme", &acme[1].email), pb::Regime::Gdpr).await.id).await;
    assert_eq!(stored_objects(&app, &mine.id).await.len(), 1, "the archive");
    let deletion = app.delete(by_phone("acme", &acme[0].phone)).await;
    assert_eq!(app.wait_terminal(&deletion.id).await.status, RequestStatus::Completed as i32);
    // Polls for the janitor's pass (a safety net, not a timing assertion: its interval is an hour).
    for _ in 0..200 {
        if stored_objects(&app, &mine.id).await.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(stored_objects(&app, &mine.id).await, Vec::<String>::new(), "the subject's archive is gone");
    assert_eq!(stored_objects(&app, &other.id).await.len(), 1, "another subject's archive stays");
    app.shutdown().await;
}

mod a_completed_deletion_deletes_archives {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_local() {
        a_completed_deletion_deletes_its_subjects_archives_at_once(Backend::Sqlite, ExportsOn::Local).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_s3() {
        a_completed_deletion_deletes_its_subjects_archives_at_once(Backend::Postgres, ExportsOn::S3).await
    }
}
