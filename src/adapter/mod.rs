//! Remote stores: the `dsr.adapter.v1.StoreAdapter` contract that other teams' services
//! implement, the conformance suite they run against their service (`dsr adapter check`), and an
//! example implementation (a voicemail service with its own SQLite database).
//!
//! | module      | owns                                                                  |
//! |-------------|-----------------------------------------------------------------------|
//! | `pb`        | the code generated from `proto/dsr/adapter/v1/adapter.proto`           |
//! | `check`     | the conformance suite and its pass/fail table                          |
//! | `voicemail` | the example adapter (`dsr-voicemail-adapter`)                          |
//!
//! dsr's side of the contract, the client, is `stores::remote`.

pub mod check;
pub mod voicemail;

/// Code generated from `proto/dsr/adapter/v1/adapter.proto`.
pub mod pb {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("dsr.adapter.v1");
}

/// An adapter's error message, if it is tidy enough to keep: short, printable, and with nothing
/// that looks like an identifier (an `@`, a run of digits as long as a phone number's). Adapter
/// messages reach outcomes and logs; a message that may hold personal data is replaced by a fixed
/// text, so the adapter's mistake cannot leak a person's data through dsr.
pub fn tidy(message: &str) -> Option<&str> {
    let m = message.trim();
    let mut digits = 0usize;
    let mut longest = 0usize;
    for c in m.chars() {
        if c.is_ascii_digit() {
            digits += 1;
            longest = longest.max(digits);
        } else if !matches!(c, ' ' | '-' | '(' | ')' | '.') {
            digits = 0;
        }
    }
    let ok = !m.is_empty()
        && m.len() <= 160
        && longest < 5
        && !m.contains('@')
        && m.chars().all(|c| c.is_ascii_graphic() || c == ' ');
    ok.then_some(m)
}

/// The trace id of a W3C `traceparent` value (`00-<trace id>-<span id>-<flags>`).
pub fn trace_id_of(traceparent: &str) -> Option<&str> {
    let id = traceparent.trim().split('-').nth(1)?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tidy_messages_are_kept() {
        assert_eq!(tidy(" voicemail database busy "), Some("voicemail database busy"));
        for bad in [
            "no voicemail for +1 555 000 1234",
            "ann@example.com not found",
            "caller 5550001234",
            "line\nbreak",
            "",
        ] {
            assert_eq!(tidy(bad), None, "{bad:?}");
        }
        assert_eq!(
            trace_id_of("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
    }
}
