//! The person's records in one store, found by the rules of `resolve` a batch at a time, for
//! exports: an export must not hold a person's 100,000 calls in memory, so its request records
//! only the person at submit, and each store's records are found when the store writes its part.
//!
//! A store's records of the person are
//! 1. rows its identifier look-ups find whose identifiers make them the person's — unless they
//!    link to an existing record of the store they link to: such a row follows that record
//!    (`attribute`), and
//! 2. rows linked to the person's records of that store, found by this same walk (recursively),
//!    a batch of their keys at a time.
//!
//! The look-ups of (1) stream into a spool — an unlinked temporary file of keys, links and how
//! each row's identifiers read — because deciding on links takes more queries, and a streaming
//! read must not hold a connection while they wait for one (SQLite's pool has four). The spool is
//! then read a batch at a time: one look-up of the batch's link targets, the person's keys handed
//! on. What stays in memory is a batch, whatever the person holds.
use std::collections::{BTreeSet, HashMap};

use async_trait::async_trait;
use futures::{future::BoxFuture, FutureExt};
use tokio::io::{AsyncBufReadExt, AsyncSeekExt, AsyncWriteExt, BufReader, BufWriter, Lines};

use super::{attribute, Attribution, CandidateRow, Person};
use crate::stores::{CandidateSink, Probe, StoreAdapter, StoreError, StoreRegistry, StoreResult};

/// Keys handed on at a time (and link targets looked up at a time): one statement's values.
pub const BATCH: usize = crate::stores::CHUNK;

/// Where the walk hands the person's keys.
#[async_trait]
pub trait KeyBatches: Send {
    async fn keys(&mut self, keys: Vec<String>) -> StoreResult<()>;
}

/// What a walk found besides the keys it handed on: records that name the person but not only
/// them (nobody's in particular).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Walked {
    pub unattributed: u64,
}

/// Whether `adapter`, and every store down its links, streams its candidates: only then can
/// its records be walked; otherwise the request is resolved whole, as before.
pub fn walkable(stores: &StoreRegistry, adapter: &dyn StoreAdapter) -> bool {
    let mut at = adapter;
    for _ in 0..=stores.all().len() {
        if !at.streams_candidates() {
            return false;
        }
        match at.links_to() {
            None => return true,
            Some(t) => match stores.get(t) {
                Some(t) => at = t.as_ref(),
                None => return false,
            },
        }
    }
    false
}

/// Hands the keys of `person`'s records in `adapter` to `out`, a batch at a time (see the
/// module's comment for the rules; they are `resolve`'s).
pub fn mine_in_batches<'a>(
    stores: &'a StoreRegistry,
    adapter: &'a dyn StoreAdapter,
    person: &'a Person,
    out: &'a mut dyn KeyBatches,
) -> BoxFuture<'a, StoreResult<Walked>> {
    async move {
        let target = match adapter.links_to() {
            None => None,
            Some(t) => Some(stores.get(t).map(|t| t.as_ref()).ok_or_else(|| {
                StoreError::Fatal(format!(
                    "the {} store links to {t}, which is not configured",
                    adapter.name()
                ))
            })?),
        };
        let mut walked = Walked::default();
        let probe = Probe {
            tenant: &person.tenant,
            account_ids: person.account_id.iter().cloned().collect(),
            emails: person.emails.iter().cloned().collect(),
            phones: person.phones.iter().cloned().collect(),
            ..Default::default()
        };
        let mut spool = Spool::create(person).await?;
        adapter.candidates_into(&probe, &mut spool).await?;
        let mut spooled = spool.read().await?;
        loop {
            let batch = spooled.next_batch(BATCH).await?;
            if batch.is_empty() {
                break;
            }
            let targets = match target {
                Some(t) => link_targets(t, person, &batch).await?,
                None => HashMap::new(),
            };
            let mut mine = Vec::new();
            for row in batch {
                let attribution = match row.link.as_ref().and_then(|l| targets.get(l)) {
                    // Handed on with the record it links to, below.
                    Some(Attribution::Mine) => continue,
                    Some(a) => *a,
                    None => row.attribution,
                };
                match attribution {
                    Attribution::Mine => mine.push(row.key),
                    Attribution::Unattributed => walked.unattributed += 1,
                    Attribution::Foreign => {}
                }
            }
            if !mine.is_empty() {
                out.keys(mine).await?;
            }
        }
        if let Some(t) = target {
            let mut linked = Linked { adapter, tenant: &person.tenant, out };
            mine_in_batches(stores, t, person, &mut linked).await?;
        }
        Ok(walked)
    }
    .boxed()
}

/// Whose each existing record is that the batch's rows link to (by its own identifiers).
async fn link_targets(
    target: &dyn StoreAdapter,
    person: &Person,
    batch: &[Spooled],
) -> StoreResult<HashMap<String, Attribution>> {
    let links: BTreeSet<String> = batch.iter().filter_map(|r| r.link.clone()).collect();
    if links.is_empty() {
        return Ok(HashMap::new());
    }
    let probe = Probe { tenant: &person.tenant, keys: links.into_iter().collect(), ..Default::default() };
    let found = target.candidates(&probe).await?;
    Ok(found
        .into_iter()
        .map(|t| {
            let a = attribute(person, &t, None);
            (t.key, a)
        })
        .collect())
}

/// The rows of `adapter` linked to a batch of the person's keys of the store it links to: the
/// person's, whatever their own identifiers say.
struct Linked<'a> {
    adapter: &'a dyn StoreAdapter,
    tenant: &'a str,
    out: &'a mut dyn KeyBatches,
}

#[async_trait]
impl KeyBatches for Linked<'_> {
    async fn keys(&mut self, targets: Vec<String>) -> StoreResult<()> {
        let probe = Probe { tenant: self.tenant, links: targets, ..Default::default() };
        let keys: Vec<String> = self.adapter.candidates(&probe).await?.into_iter().map(|r| r.key).collect();
        if keys.is_empty() {
            return Ok(());
        }
        self.out.keys(keys).await
    }
}

/// A row as spooled: its key, its link, and whose its identifiers make it.
struct Spooled {
    key: String,
    link: Option<String>,
    attribution: Attribution,
}

/// The spool being written: one JSON line a row, `[key, link, how it reads]`.
struct Spool<'a> {
    person: &'a Person,
    file: BufWriter<tokio::fs::File>,
}

fn spool_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Transient(format!("the export's spool file: {e}"))
}

impl<'a> Spool<'a> {
    async fn create(person: &'a Person) -> StoreResult<Self> {
        let file = crate::files::spool_file().await.map_err(spool_error)?;
        Ok(Self { person, file: BufWriter::new(file) })
    }

    async fn read(mut self) -> StoreResult<SpoolReader> {
        self.file.flush().await.map_err(spool_error)?;
        let mut file = self.file.into_inner();
        file.rewind().await.map_err(spool_error)?;
        Ok(SpoolReader { lines: BufReader::new(file).lines() })
    }
}

#[async_trait]
impl CandidateSink for Spool<'_> {
    async fn row(&mut self, row: CandidateRow) -> StoreResult<()> {
        let attribution = attribute(self.person, &row, None);
        // A row with no link that is somebody else's counts for nothing.
        if row.link.is_none() && attribution == Attribution::Foreign {
            return Ok(());
        }
        let how = match attribution {
            Attribution::Mine => 'm',
            Attribution::Unattributed => 'u',
            Attribution::Foreign => 'f',
        };
        let mut line = serde_json::to_vec(&(&row.key, &row.link, how)).map_err(spool_error)?;
        line.push(b'\n');
        self.file.write_all(&line).await.map_err(spool_error)
    }
}

struct SpoolReader {
    lines: Lines<BufReader<tokio::fs::File>>,
}

impl SpoolReader {
    async fn next_batch(&mut self, n: usize) -> StoreResult<Vec<Spooled>> {
        let mut batch = Vec::with_capacity(n);
        while batch.len() < n {
            let Some(line) = self.lines.next_line().await.map_err(spool_error)? else { break };
            let (key, link, how): (String, Option<String>, char) =
                serde_json::from_str(&line).map_err(spool_error)?;
            let attribution = match how {
                'm' => Attribution::Mine,
                'u' => Attribution::Unattributed,
                _ => Attribution::Foreign,
            };
            batch.push(Spooled { key, link, attribution });
        }
        Ok(batch)
    }
}
