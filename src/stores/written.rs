//! Candidate look-ups written once per shape. A table's look-up for a probe is the same SQL for
//! every probe of the same shape (which parts it asks, how many values each): only the bound
//! values differ. Writing it with sea-query for every call was a fifth of the submit path's CPU
//! in dsr (`dsr bench submit`, perf); here it is written once, with stand-in values, and each
//! call fills the probe's values into the stand-ins' places.
//!
//! The stand-ins are strings no caller can send (they begin with NUL, which Postgres text
//! refuses), and a statement in whose text one shows up is not kept: every value of a kept
//! statement is bound, never spliced into its SQL.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use sea_query::{Value, Values};

/// Which parts a probe asks for and how many values each binds, in order.
pub type Shape = Vec<(u16, usize)>;

/// Shapes kept per table; past it the table starts over (a burst of key or link probes of many
/// sizes does not pin the look-ups of identifiers out).
const SHAPES: usize = 128;

const STAND_IN: &str = "\u{0}dsr-value:";

/// The stand-in for the tenant.
pub fn tenant_stand_in() -> String {
    format!("{STAND_IN}t")
}

/// The stand-in for the probe's `i`th value (all parts' values, in order).
pub fn value_stand_in(i: usize) -> String {
    format!("{STAND_IN}{i}")
}

#[derive(Debug)]
enum Slot {
    Fixed(Value),
    Tenant,
    Probe(usize),
}

/// One statement, its values to fill.
#[derive(Debug)]
pub struct Template {
    sql: String,
    slots: Vec<Slot>,
}

impl Template {
    /// `None` when a stand-in reached the SQL text (a value written into it, not bound).
    fn new(sql: String, values: Values) -> Option<Self> {
        if sql.contains('\u{0}') {
            return None;
        }
        let slots = values
            .into_iter()
            .map(|v| {
                let stand_in = match &v {
                    Value::String(Some(s)) => s.strip_prefix(STAND_IN),
                    _ => None,
                };
                match stand_in {
                    None => Some(Slot::Fixed(v)),
                    Some("t") => Some(Slot::Tenant),
                    Some(i) => i.parse().ok().map(Slot::Probe),
                }
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self { sql, slots })
    }

    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// The values to bind for this tenant and these probe values; `None` when the probe has
    /// fewer values than the statement's shape (not the shape it was written for).
    pub fn values(&self, tenant: &str, probe: &[&str]) -> Option<Values> {
        self.slots
            .iter()
            .map(|s| match s {
                Slot::Fixed(v) => Some(v.clone()),
                Slot::Tenant => Some(Value::from(tenant.to_owned())),
                Slot::Probe(i) => probe.get(*i).map(|p| Value::from((*p).to_owned())),
            })
            .collect::<Option<Vec<_>>>()
            .map(Values)
    }
}

/// A table's look-ups, by shape.
#[derive(Debug, Default)]
pub struct Written {
    shapes: Mutex<HashMap<Shape, Arc<[Template]>>>,
}

impl Written {
    /// The statements of `shape`, written by `write` (with the stand-ins as values) the first
    /// time. `None` when they cannot be kept (a stand-in in the SQL text): write them for real.
    pub fn get_or_write(
        &self,
        shape: Shape,
        write: impl FnOnce() -> Vec<(String, Values)>,
    ) -> Option<Arc<[Template]>> {
        if let Some(t) = self.shapes.lock().expect("written look-ups lock").get(&shape) {
            return Some(t.clone());
        }
        let templates: Arc<[Template]> =
            write().into_iter().map(|(sql, values)| Template::new(sql, values)).collect::<Option<_>>()?;
        let mut shapes = self.shapes.lock().expect("written look-ups lock");
        if shapes.len() >= SHAPES {
            shapes.clear();
        }
        shapes.insert(shape, templates.clone());
        Some(templates)
    }
}

#[cfg(test)]
impl Written {
    /// How many shapes are kept.
    pub fn len(&self) -> usize {
        self.shapes.lock().expect("written look-ups lock").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stand_ins_become_the_calls_values_and_the_rest_stays() {
        let w = Written::default();
        let write = || {
            vec![(
                "SELECT $1 WHERE t = $2 AND v IN ($3, $4)".to_owned(),
                Values(vec![
                    Value::from(0i64),
                    Value::from(tenant_stand_in()),
                    Value::from(value_stand_in(1)),
                    Value::from(value_stand_in(0)),
                ]),
            )]
        };
        let t = w.get_or_write(vec![(0, 2)], write).unwrap();
        let values = t[0].values("acme", &["a", "b"]).unwrap();
        assert!(t[0].values("acme", &["a"]).is_none(), "a probe of another shape");
        assert_eq!(
            values.0,
            vec![
                Value::from(0i64),
                Value::from("acme".to_owned()),
                Value::from("b".to_owned()),
                Value::from("a".to_owned())
            ]
        );
        // Kept: the second call of the shape does not write.
        let again = w.get_or_write(vec![(0, 2)], || panic!("written twice")).unwrap();
        assert_eq!(again[0].sql(), t[0].sql());
    }

    #[test]
    fn a_statement_with_a_stand_in_in_its_text_is_not_kept() {
        let w = Written::default();
        let spliced = || vec![(format!("SELECT '{}'", value_stand_in(0)), Values(vec![]))];
        assert!(w.get_or_write(vec![(0, 1)], spliced).is_none());
        assert!(w.get_or_write(vec![(0, 1)], || vec![("SELECT 1".into(), Values(vec![]))]).is_some());
    }
}
