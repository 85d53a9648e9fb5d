//! Identifiers as people write them: emails compared case-insensitively without surrounding
//! whitespace, phones by their E.164 meaning (national formats read with the tenant's region).
//! The SQL side of the same rules (`email_key`, `phone_digits`) lets a lookup stay one index
//! scan; every row it finds is confirmed here, in Rust, before it counts.
use std::str::FromStr;

use phonenumber::{country, Mode};

use crate::db::Backend;

/// A region for national phone formats (ISO 3166 alpha-2, `US`, `GB`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Region(country::Id);

impl Region {
    pub fn parse(s: &str) -> Option<Self> {
        country::Id::from_str(&s.to_ascii_uppercase()).ok().map(Self)
    }

    pub fn code(&self) -> String {
        format!("{:?}", self.0)
    }
}

impl Default for Region {
    fn default() -> Self {
        Self(country::Id::US)
    }
}

/// The last phones read on this thread, and their digit forms. One request reads the same few
/// numbers again and again (once per store probed, once per row found), and a libphonenumber
/// parse costs about 12 µs, its regular expressions behind one process-wide lock: parsing was 9%
/// of the submit path's CPU in a profile of `dsr bench submit`. Per thread, and a few hundred
/// entries long: sixteen submits at once, each moving between worker threads, missed a cache of
/// 32 (still 8% of the path's CPU in parsing); at the rates `bench submit` reaches that is under
/// a second of requests — a handful of numbers for moments, not a directory of them.
struct Recent<V> {
    entries: Option<std::collections::HashMap<(Region, String), V>>,
    order: std::collections::VecDeque<(Region, String)>,
}

const RECENT: usize = 256;

impl<V: Clone> Recent<V> {
    const fn new() -> Self {
        Self { entries: None, order: std::collections::VecDeque::new() }
    }

    fn get_or_insert_with(&mut self, (region, text): (Region, &str), make: impl FnOnce() -> V) -> V {
        let entries = self.entries.get_or_insert_with(Default::default);
        // The key is built for the look-up too: the map's keys are owned `(Region, String)`.
        let key = (region, text.to_owned());
        if let Some(v) = entries.get(&key) {
            return v.clone();
        }
        let v = make();
        if self.order.len() == RECENT {
            if let Some(oldest) = self.order.pop_front() {
                entries.remove(&oldest);
            }
        }
        entries.insert(key.clone(), v.clone());
        self.order.push_back(key);
        v
    }
}

thread_local! {
    static READ: std::cell::RefCell<Recent<Option<String>>> = const { std::cell::RefCell::new(Recent::new()) };
    static FORMS: std::cell::RefCell<Recent<Vec<String>>> = const { std::cell::RefCell::new(Recent::new()) };
}

/// A stored email as compared: trimmed, lower case. `None` when nothing is left.
pub fn email(stored: &str) -> Option<String> {
    let t = stored.trim();
    (!t.is_empty()).then(|| t.to_lowercase())
}

/// A stored phone as compared: its E.164 form, reading national formats in `region`. `None`
/// when the library cannot read it as a phone number.
pub fn phone(stored: &str, region: Region) -> Option<String> {
    let t = stored.trim();
    if t.is_empty() {
        return None;
    }
    READ.with(|r| r.borrow_mut().get_or_insert_with((region, t), || read_phone(t, region)))
}

/// Loads libphonenumber's metadata (every region's formats), which the library does on its
/// first parse: about 100 ms of one core here (`bench latency`: the first deletion after start
/// took 100–130 ms, the next ones 13–20 ms). The server calls this while it starts.
pub fn load_phone_metadata() {
    let _ = phonenumber::parse(None, "+15555550100");
}

fn read_phone(t: &str, region: Region) -> Option<String> {
    let n = phonenumber::parse(Some(region.0), t).ok()?;
    let e164 = n.format().mode(Mode::E164).to_string();
    let digits = e164.strip_prefix('+')?;
    ((7..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())).then_some(e164)
}

/// The digit strings a stored phone of this E.164 meaning may leave once its separators are
/// removed (`phone_digits`): with the country code, national, with the national prefix, and
/// dialled with an international prefix. A lookup by these finds every candidate; `phone`
/// then keeps only those that really mean this number.
pub fn phone_digit_forms(e164: &str) -> Vec<String> {
    // An E.164 number reads the same in every region: the key's region is always the default.
    FORMS.with(|f| f.borrow_mut().get_or_insert_with((Region::default(), e164), || digit_forms(e164)))
}

fn digit_forms(e164: &str) -> Vec<String> {
    let Ok(n) = phonenumber::parse(None, e164) else {
        return vec![e164.trim_start_matches('+').to_owned()];
    };
    let cc = n.code().value().to_string();
    let national = n.national().to_string();
    let full = format!("{cc}{national}");
    let mut forms = vec![full.clone(), national.clone(), format!("0{national}"), format!("00{full}")];
    forms.push(format!("011{full}"));
    if let Some(prefix) = n.metadata(&phonenumber::metadata::DATABASE).and_then(|m| m.national_prefix()) {
        forms.push(format!("{prefix}{national}"));
    }
    forms.sort();
    forms.dedup();
    forms
}

/// SQL: the compared form of an email column (same expression in lookups and in the index
/// that serves them).
pub fn email_key(backend: Backend, column: &str) -> String {
    match backend {
        Backend::Postgres => format!("lower(btrim({column}, E' \\t\\r\\n'))"),
        Backend::Sqlite => format!("lower(trim({column}, ' ' || char(9) || char(13) || char(10)))"),
    }
}

/// SQL: a phone column with the usual separators removed (spaces, `-`, `(`, `)`, `.`, `+`, `/`).
/// Plain `replace` calls, so the same expression indexes on Postgres and SQLite.
pub fn phone_digits(column: &str) -> String {
    let mut e = column.to_owned();
    for sep in [" ", "-", "(", ")", ".", "+", "/"] {
        e = format!("replace({e}, '{sep}', '')");
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_compare_without_case_or_padding() {
        assert_eq!(email(" Subject1@Example.COM \n").as_deref(), Some("subject1@example.com"));
        assert_eq!(email("  \t"), None);
    }

    #[test]
    fn phones_compare_by_their_meaning() {
        let us = Region::default();
        for stored in ["+15550000003", "(555) 000-0003", "+1 555-000-0003", "15550000003", "555.000.0003"] {
            assert_eq!(phone(stored, us).as_deref(), Some("+15550000003"), "{stored}");
        }
        let gb = Region::parse("gb").unwrap();
        assert_eq!(phone("07700 900123", gb).as_deref(), Some("+447700900123"));
        assert_ne!(phone("07700 900123", us).as_deref(), Some("+447700900123"));
        assert_eq!(phone("not a phone", us), None);
        assert_eq!(phone("", us), None);
    }

    #[test]
    fn digit_forms_cover_the_usual_ways_of_writing_a_number() {
        let forms = phone_digit_forms("+15550000003");
        for f in ["15550000003", "5550000003", "01115550000003"] {
            assert!(forms.contains(&f.to_owned()), "{f} in {forms:?}");
        }
        let uk = phone_digit_forms("+447700900123");
        assert!(uk.contains(&"07700900123".to_owned()), "{uk:?}");
    }

    #[test]
    fn remembered_readings_are_the_fresh_ones() {
        let (us, gb) = (Region::default(), Region::parse("GB").unwrap());
        // More numbers than are remembered, in both regions, three times over.
        for _ in 0..3 {
            for i in 0..(RECENT * 2) {
                let stored = format!(" 07700 9{i:05}");
                assert_eq!(phone(&stored, gb), read_phone(stored.trim(), gb), "{stored}");
                assert_eq!(phone(&stored, us), read_phone(stored.trim(), us), "{stored}");
                let e164 = format!("+1555{i:07}");
                assert_eq!(phone_digit_forms(&e164), digit_forms(&e164));
            }
        }
        assert_ne!(phone("07700 900123", gb), phone("07700 900123", us));
    }

    #[test]
    fn regions_parse_from_their_codes() {
        assert_eq!(Region::parse("US"), Some(Region::default()));
        assert_eq!(Region::parse("de").unwrap().code(), "DE");
        assert_eq!(Region::parse("XX"), None);
    }
}
