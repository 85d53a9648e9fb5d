//! SQL text shared by the adapters: numbered parameter lists. Values are always bound, never
//! spliced into SQL.

/// `$first, $first+1, …` for `n` values.
pub fn params(first: usize, n: usize) -> String {
    (first..first + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}
