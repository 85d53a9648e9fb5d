//! `requested_by`: who asked for a request (a team, a ticket queue, a tool), kept verbatim in
//! the ledger and returned by GetRequest long after the subject is erased, so it must not be a
//! person's contact details: a value that holds an email address or a phone number is refused.
use super::{parse_text, FieldError};

/// Parses `requested_by`: free text (length, no control characters) that holds no email
/// address and no phone number, whole or as one of its words.
pub fn parse_requested_by(field: &'static str, value: &str) -> Result<String, FieldError> {
    let value = parse_text(field, value)?;
    if value.split(is_word_break).any(looks_like_email) {
        return Err(FieldError::new(
            field,
            "looks like an email address: name the team, queue or tool that asked, not a person's contact details",
        ));
    }
    if holds_phone(&value) {
        return Err(FieldError::new(
            field,
            "looks like a phone number: name the team, queue or tool that asked, not a person's contact details",
        ));
    }
    Ok(value)
}

fn is_word_break(c: char) -> bool {
    c.is_whitespace() || matches!(c, ',' | ';' | '<' | '>' | '"' | '\'' | '[' | ']' | '=')
}

/// `local@domain.tld`, whatever the case; `mailto:` and surrounding brackets do not hide it.
fn looks_like_email(word: &str) -> bool {
    let word = word.trim_matches(|c: char| matches!(c, '(' | ')' | ':' | '.'));
    let word = word.strip_prefix("mailto:").unwrap_or(word);
    super::Email::parse("requested_by", word).is_ok()
}

/// Seven to fifteen digits with nothing but phone punctuation between them, starting a word:
/// `+1 415 555 0100`, `(415) 555-0100`, `tel:0044.7700.900123`, also inside a sentence. Digits
/// glued to a word (`case-2024-0001234`, `zendesk#123456789`) are an id, not a phone number.
fn holds_phone(text: &str) -> bool {
    let text = text.replace("tel:", " ");
    let chars: Vec<char> = text.chars().collect();
    let phone_char = |c: char| c.is_ascii_digit() || matches!(c, '+' | ' ' | '-' | '.' | '(' | ')' | '/');
    let mut i = 0;
    while i < chars.len() {
        let starts_word = i == 0 || chars[i - 1].is_whitespace();
        if starts_word && (chars[i].is_ascii_digit() || matches!(chars[i], '+' | '(')) {
            let end = (i..chars.len()).find(|&j| !phone_char(chars[j])).unwrap_or(chars.len());
            let glued = end < chars.len() && chars[end].is_alphanumeric();
            let digits = chars[i..end].iter().filter(|c| c.is_ascii_digit()).count();
            if !glued && (7..=15).contains(&digits) {
                return true;
            }
            i = end.max(i + 1);
        } else {
            i += 1;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_and_phone_numbers_are_refused_naming_the_field() {
        for value in [
            "jane.doe@example.com",
            "  Jane.Doe@Example.COM ",
            "asked by jane.doe@example.com",
            "<jane@example.org>",
            "mailto:jane@example.org",
            "+14155550100",
            "+1 415 555 0100",
            "(415) 555-0100",
            "call back on +44 7700 900123",
            "tel:+447700900123",
            "0044.7700.900123",
        ] {
            let err = parse_requested_by("requested_by", value).unwrap_err();
            assert_eq!(err.field, "requested_by", "{value}");
            assert!(!err.to_string().contains(value.trim()), "the message repeats the value: {err}");
        }
    }

    #[test]
    fn names_of_teams_queues_and_tools_pass() {
        for value in [
            "",
            "dsr-cli",
            "privacy-inbox",
            "support team (ticket 4711)",
            "ids 12345678abc",
            "case-2024-0001234",
            "zendesk#123456789",
            "ops@night",
            "v1.2.3",
        ] {
            assert_eq!(parse_requested_by("requested_by", value).unwrap(), value);
        }
    }
}
