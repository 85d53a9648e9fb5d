//! Slots for long-lived streams (WatchRequest, DownloadExport): a global cap, and a share per
//! caller so that one token cannot take every slot and lock the other tenants out.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

/// A pool of stream slots: at most `total` open at once, and at most `per_caller` of them held
/// by any one caller (a token or certificate identity, by name).
pub struct StreamSlots {
    what: &'static str,
    total: usize,
    per_caller: usize,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    total: usize,
    by_caller: HashMap<String, usize>,
}

/// Why a slot was refused (the message of the RESOURCE_EXHAUSTED status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotRefused {
    Caller { what: &'static str, limit: usize },
    Server { what: &'static str, limit: usize },
}

impl std::fmt::Display for SlotRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SlotRefused::Caller { what, limit } => write!(
                f,
                "this caller already has {limit} {what} streams open (its limit); close one or retry later"
            ),
            SlotRefused::Server { what, limit } => {
                write!(f, "the server has {limit} {what} streams open (its limit); retry later")
            }
        }
    }
}

impl StreamSlots {
    pub fn new(what: &'static str, total: usize, per_caller: usize) -> Arc<Self> {
        Arc::new(Self { what, total, per_caller, held: Mutex::default() })
    }

    /// Takes a slot for `caller`, released when the returned guard is dropped (when the stream
    /// ends, fails or the client goes away).
    pub fn acquire(self: &Arc<Self>, caller: &str) -> Result<SlotGuard, SlotRefused> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let mine = held.by_caller.get(caller).copied().unwrap_or(0);
        if mine >= self.per_caller {
            return Err(SlotRefused::Caller { what: self.what, limit: self.per_caller });
        }
        if held.total >= self.total {
            return Err(SlotRefused::Server { what: self.what, limit: self.total });
        }
        held.total += 1;
        *held.by_caller.entry(caller.to_owned()).or_default() += 1;
        Ok(SlotGuard { slots: self.clone(), caller: caller.to_owned() })
    }

    /// Slots held now (all callers).
    pub fn in_use(&self) -> usize {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

/// One open stream's slot; dropping it frees the slot.
pub struct SlotGuard {
    slots: Arc<StreamSlots>,
    caller: String,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock().unwrap_or_else(|e| e.into_inner());
        held.total -= 1;
        // No entry is kept for a caller with nothing open: the map holds only live callers.
        if let Some(n) = held.by_caller.get_mut(&self.caller) {
            *n -= 1;
            if *n == 0 {
                held.by_caller.remove(&self.caller);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_gets_its_share_and_no_more_and_others_keep_theirs() {
        let slots = StreamSlots::new("download", 5, 2);
        let a1 = slots.acquire("a").unwrap();
        let _a2 = slots.acquire("a").unwrap();
        assert_eq!(slots.acquire("a").err(), Some(SlotRefused::Caller { what: "download", limit: 2 }));
        let _b1 = slots.acquire("b").unwrap();
        drop(a1);
        let _a3 = slots.acquire("a").expect("a slot freed by a closed stream is the caller's again");
        assert_eq!(slots.in_use(), 3);
    }

    #[test]
    fn the_server_total_caps_every_caller_together() {
        let slots = StreamSlots::new("watch", 3, 2);
        let held: Vec<_> = ["a", "a", "b"].iter().map(|c| slots.acquire(c).unwrap()).collect();
        let refused = slots.acquire("c").err().unwrap();
        assert_eq!(refused, SlotRefused::Server { what: "watch", limit: 3 });
        assert!(refused.to_string().contains("retry later"));
        drop(held);
        assert_eq!(slots.in_use(), 0);
        assert!(slots.held.lock().unwrap().by_caller.is_empty());
        slots.acquire("c").unwrap();
    }
}
