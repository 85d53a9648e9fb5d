//! Fuzzing the validation layer: arbitrary bytes, and arbitrary strings inside well-formed
//! messages, decoded as every request message and run through the same parsing the handlers
//! use. Nothing may panic, and everything accepted must respect the documented limits.
//!
//! CI runs a few thousand cases. The long run for the security issue's note:
//! `PROPTEST_CASES=2000000 cargo test --release --test fuzz -- --nocapture`.
use std::sync::atomic::{AtomicU64, Ordering};

use dsr::api::{
    pb,
    validate::{decode_and_validate, Verdict, METHODS},
};
use proptest::prelude::*;
use prost::Message;

static EXECUTIONS: AtomicU64 = AtomicU64::new(0);

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Strings that probe the parsers: unicode, control characters, near the length limits.
fn nasty() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,80}",
        "[+0-9 ]{0,20}",
        "[a-z0-9.@_-]{0,300}",
        "\\PC{0,600}",
        Just(String::new()),
        Just("+".repeat(16)),
        Just(format!("{}@{}.com", "a".repeat(64), "b".repeat(190))),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic(method in prop::sample::select(METHODS), bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        EXECUTIONS.fetch_add(1, Ordering::Relaxed);
        let _ = decode_and_validate(method, &bytes);
    }

    #[test]
    fn arbitrary_subjects_are_accepted_only_within_the_limits(
        tenant in nasty(), account in nasty(), email in nasty(), phone in nasty(),
        requested_by in nasty(), key in nasty(), regime in -2i32..5,
    ) {
        EXECUTIONS.fetch_add(1, Ordering::Relaxed);
        let msg = pb::SubmitDeletionRequest {
            subject: Some(pb::Subject { tenant_id: tenant.clone(), account_id: account.clone(), email: email.clone(), phone: phone.clone() }),
            regime,
            idempotency_key: key.clone(),
            requested_by: requested_by.clone(),
        };
        let verdict = decode_and_validate("SubmitDeletion", &msg.encode_to_vec());
        prop_assert_ne!(&verdict, &Verdict::Undecodable);
        if verdict == Verdict::Valid {
            prop_assert!(!tenant.is_empty() && tenant.len() <= 64);
            prop_assert!(!(account.is_empty() && email.is_empty() && phone.is_empty()));
            prop_assert!(account.len() <= 128 && email.trim().len() <= 254 && key.len() <= 256);
            prop_assert!(phone.is_empty() || (phone.starts_with('+') && phone.len() <= 16));
            prop_assert!(requested_by.chars().count() <= 512);
        }
    }
}

#[test]
fn zz_report_executions() {
    // Printed with --nocapture; the count covers the tests that ran before this one.
    eprintln!("fuzz executions so far: {}", EXECUTIONS.load(Ordering::Relaxed));
}
