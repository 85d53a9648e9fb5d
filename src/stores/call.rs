//! Which task a store call belongs to: the request id, task id and attempt (the idempotency key
//! and fencing token a remote adapter needs), and the trace to continue, set by the engine around
//! each task (`CallContext::scope`) and read by adapters that cross a process boundary. The
//! store traits' methods stay as they are; local stores simply never look.
use std::{future::Future, sync::Arc};

use crate::{domain::RequestKind, resolve::Resolution};

tokio::task_local! {
    static CURRENT: CallContext;
}

/// The task a store call is made for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallContext {
    pub request_id: String,
    pub task_id: String,
    /// 1 for the first attempt; a retry is one more.
    pub attempt: u32,
    /// The W3C `traceparent` of the task's span (or of the call that submitted the request).
    pub traceparent: Option<String>,
    pub kind: RequestKind,
    /// The request's resolution, once the task has read it (`with_resolution`).
    pub resolution: Option<Arc<Resolution>>,
}

impl CallContext {
    /// Runs `fut` with this context as the current one.
    pub async fn scope<F: Future>(self, fut: F) -> F::Output {
        CURRENT.scope(self, fut).await
    }

    /// Runs `fut` with the current context (if any) carrying the request's resolution.
    pub async fn with_resolution<F: Future>(resolution: &Resolution, fut: F) -> F::Output {
        match Self::current() {
            Some(c) => Self { resolution: Some(Arc::new(resolution.clone())), ..c }.scope(fut).await,
            None => fut.await,
        }
    }

    /// The context of the task this code runs for; `None` outside a task (a preview, a sweep).
    pub fn current() -> Option<CallContext> {
        CURRENT.try_with(Clone::clone).ok()
    }
}
