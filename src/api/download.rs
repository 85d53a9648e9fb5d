//! `DownloadExport`: streams a finished export's archive from an offset, in chunks of at most
//! `CHUNK_BYTES`, straight from the export storage. The stream is pulled: the next chunk is read
//! from storage only when the transport asks for it, and hyper asks only once the previous one
//! found room in the client's flow-control window, so a client that stops reading leaves at most
//! a few chunks in memory, and each stream holds a slot (per caller and in all) until it ends.
//! The end of a download is an audit event; an expired archive is deleted on the spot and the
//! caller told so.
use std::{pin::Pin, sync::Arc};

use bytes::{Bytes, BytesMut};
use chrono::SecondsFormat;
use futures::{stream::BoxStream, Stream, StreamExt};
use object_store::{GetOptions, GetRange};
use tonic::Status;
use tracing::{info, warn};

use super::{error::ApiError, pb, slots::SlotGuard, ServiceContext};
use crate::{
    domain::{FieldError, RequestKind, RequestStatus},
    export::{erase, expire},
    ledger::{ExportRecord, RequestRecord},
};

/// The most bytes one `ExportChunk` carries. Small, because a stalled stream holds about two
/// of them (one waiting in hyper for window space, one in h2's send queue) plus the gather
/// buffer: 64 KiB keeps that near 200 KiB a stream, where 1 MiB chunks held 1.6 MB, and costs
/// no throughput worth measuring (gRPC's own advice for streamed files is 16–64 KiB).
pub const CHUNK_BYTES: usize = 64 * 1024;

pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::ExportChunk, Status>> + Send + 'static>>;

/// Checks the request may be downloaded and opens its archive at `offset`.
pub async fn open(
    ctx: &Arc<ServiceContext>,
    request: &RequestRecord,
    offset: u64,
    actor: String,
    slot: SlotGuard,
) -> Result<ChunkStream, ApiError> {
    if request.kind != RequestKind::Export {
        return Err(ApiError::FailedPrecondition(format!(
            "request {} is a {}, not an export: it has no archive to download",
            request.id, request.kind
        )));
    }
    if request.status != RequestStatus::Completed {
        return Err(ApiError::FailedPrecondition(format!(
            "the export is {}: its archive can be downloaded once it is COMPLETED",
            request.status
        )));
    }
    let export = request.export.clone().ok_or_else(|| {
        ApiError::Unexpected(anyhow::anyhow!("export {} is COMPLETED but has no archive record", request.id))
    })?;
    let now = ctx.clock.now();
    if export.expired_at.is_some_and(|at| at < export.expires_at) && now < export.expires_at {
        return Err(ApiError::NotFound(
            "the subject's data was erased after this export was made, so its archive was deleted".into(),
        ));
    }
    if export.is_expired(now) {
        if export.expired_at.is_none() {
            if let Err(e) = expire(&ctx.exports, &ctx.ledger, &export, now).await {
                warn!(request_id = %export.request_id, error = %e, "deleting an expired archive failed; the janitor will");
            }
        }
        return Err(ApiError::NotFound(format!(
            "the export expired at {} and its archive was deleted; submit a new export",
            export.expires_at.to_rfc3339_opts(SecondsFormat::Secs, true)
        )));
    }
    if export.expired_at.is_none() && ctx.ledger.is_export_superseded(&export.request_id).await? {
        if let Err(e) = erase(&ctx.exports, &ctx.ledger, &export, now).await {
            warn!(request_id = %export.request_id, error = %e, "deleting a superseded archive failed; the janitor will");
        }
        return Err(ApiError::NotFound(
            "the subject's data was erased after this export was made, so its archive was deleted".into(),
        ));
    }
    if offset > export.size_bytes {
        return Err(FieldError::new(
            "offset",
            format!("is past the end of the archive ({} bytes)", export.size_bytes),
        )
        .into());
    }
    let source: BoxStream<'static, object_store::Result<Bytes>> = if offset == export.size_bytes {
        futures::stream::empty().boxed()
    } else {
        let path = object_store::path::Path::from(export.object_path.clone());
        let opts = GetOptions { range: Some(GetRange::Offset(offset)), ..Default::default() };
        match ctx.exports.objects().get_opts(&path, opts).await {
            Ok(found) => found.into_stream(),
            Err(object_store::Error::NotFound { .. }) => {
                return Err(ApiError::NotFound(
                    "the export's archive is missing from the export storage; submit a new export".into(),
                ))
            }
            Err(e) => return Err(ApiError::Unavailable(format!("export storage: {e}"))),
        }
    };
    info!(request_id = %export.request_id, offset, "export download started");
    let chunk = CHUNK_BYTES.min(ctx.config.server.max_message_bytes.saturating_sub(64)).max(1);
    let state = Download {
        ctx: ctx.clone(),
        export,
        actor,
        start: offset,
        offset,
        chunk,
        source,
        piece: Bytes::new(),
        buf: BytesMut::new(),
        ended: false,
        _slot: slot,
    };
    Ok(Box::pin(futures::stream::unfold(state, Download::next)))
}

struct Download {
    ctx: Arc<ServiceContext>,
    export: ExportRecord,
    actor: String,
    start: u64,
    /// Offset of the next byte to send.
    offset: u64,
    chunk: usize,
    source: BoxStream<'static, object_store::Result<Bytes>>,
    /// A piece read whole from storage, sent as it is (cut at `chunk`): no copy.
    piece: Bytes,
    /// Small pieces gathered into one message.
    buf: BytesMut,
    ended: bool,
    /// Freed when the stream is dropped: at its end, on an error, or when the client goes away.
    _slot: SlotGuard,
}

/// Pieces smaller than this are gathered before they are sent (a local file reads in 8 KiB
/// pieces, a network stream a few KiB at a time).
const GATHER_BELOW: usize = 16 * 1024;

impl Download {
    async fn next(mut self) -> Option<(Result<pb::ExportChunk, Status>, Self)> {
        if self.ended {
            return None;
        }
        loop {
            if !self.piece.is_empty() {
                let data = self.piece.split_to(self.chunk.min(self.piece.len()));
                return Some((Ok(self.emit(data)), self));
            }
            if self.buf.len() >= self.chunk {
                let data = self.buf.split_to(self.chunk).freeze();
                return Some((Ok(self.emit(data)), self));
            }
            match self.source.next().await {
                Some(Ok(bytes)) if self.buf.is_empty() && bytes.len() >= GATHER_BELOW => self.piece = bytes,
                Some(Ok(bytes)) => self.buf.extend_from_slice(&bytes),
                Some(Err(e)) => {
                    self.ended = true;
                    warn!(request_id = %self.export.request_id, error = %e, "reading the archive failed mid-download");
                    let status = Status::unavailable(format!(
                        "reading the archive failed at offset {}; resume from there",
                        self.offset
                    ));
                    return Some((Err(status), self));
                }
                None if !self.buf.is_empty() => {
                    let data = self.buf.split().freeze();
                    return Some((Ok(self.emit(data)), self));
                }
                None => {
                    self.ended = true;
                    if self.offset != self.export.size_bytes {
                        return Some((
                            Err(Status::data_loss(format!(
                                "the stored archive ends at {} bytes, not {}; submit a new export",
                                self.offset, self.export.size_bytes
                            ))),
                            self,
                        ));
                    }
                    let sent = self.offset - self.start;
                    let now = self.ctx.clock.now();
                    if let Err(e) = self
                        .ctx
                        .ledger
                        .record_download(&self.export, &self.actor, self.start, sent, now)
                        .await
                    {
                        warn!(request_id = %self.export.request_id, error = %e, "recording the download failed");
                    }
                    info!(request_id = %self.export.request_id, bytes = sent, "export downloaded");
                    return None;
                }
            }
        }
    }

    fn emit(&mut self, data: Bytes) -> pb::ExportChunk {
        let offset = self.offset;
        self.offset += data.len() as u64;
        pb::ExportChunk { data, offset }
    }
}
