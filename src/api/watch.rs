//! `WatchRequest`: the current state, then one message per change, ending after a terminal
//! state. Changes made in this process wake the stream at once; a slow poll catches changes
//! made by other replicas.
use std::{sync::Arc, time::Duration};

use futures::Stream;
use tokio::sync::{
    broadcast::{
        self,
        error::{RecvError, TryRecvError},
    },
    mpsc,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::{pb, rights::ServiceContext, slots::SlotGuard};
use crate::ledger::RequestRecord;

/// How often a watcher re-reads when nothing in this process said the request changed.
const POLL: Duration = Duration::from_secs(1);

/// `changes` must be subscribed before `first` was read, or a change in between is missed
/// until the next poll.
pub fn stream(
    ctx: Arc<ServiceContext>,
    mut changes: broadcast::Receiver<String>,
    first: RequestRecord,
    permit: SlotGuard,
) -> impl Stream<Item = Result<pb::DsrRequest, Status>> {
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        let _permit = permit;
        let id = first.id.clone();
        let mut version = first.version;
        let mut done = first.status.is_terminal();
        if tx.send(Ok((&first).into())).await.is_err() {
            return;
        }
        while !done {
            tokio::select! {
                _ = tx.closed() => return,
                r = changes.recv() => match r {
                    Ok(changed) if changed != id => continue,
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                },
                _ = tokio::time::sleep(POLL) => {}
            }
            // Changes signalled together (the tasks of a stage end in one transaction, each
            // signals) are read once: every signal already queued was sent after its change
            // was committed, so the read below sees them all.
            while !matches!(changes.try_recv(), Err(TryRecvError::Empty | TryRecvError::Closed)) {}
            let current = match ctx.ledger.get_if_changed(&id, version).await {
                Ok(None) => continue,
                Ok(Some(rec)) => Ok(rec),
                Err(e) => Err(e),
            };
            match current {
                Ok(rec) => {
                    version = rec.version;
                    done = rec.status.is_terminal();
                    if tx.send(Ok((&rec).into())).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(Status::from(super::ApiError::from(e)))).await;
                    return;
                }
            }
        }
    });
    ReceiverStream::new(rx)
}
