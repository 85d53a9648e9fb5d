//! The reference schema of the platform's data (docs/api.md): the tables the embedded default, `dsr
//! seed` and the tests use. Deployments point the adapters at their real tables instead (table
//! names are configurable; columns follow this schema). Times are epoch milliseconds.
use crate::db::Db;

/// The table name of each store.
#[derive(Debug, Clone)]
pub struct Tables {
    pub accounts: String,
    pub call_logs: String,
    pub transcripts: String,
    pub recordings: String,
    pub billing: String,
}

impl Default for Tables {
    fn default() -> Self {
        Self {
            accounts: "accounts".into(),
            call_logs: "call_logs".into(),
            transcripts: "transcripts".into(),
            recordings: "recordings".into(),
            billing: "billing_records".into(),
        }
    }
}

/// Creates the reference tables and their subject indexes if they are missing, and the
/// `(tenant_id, <time>)` index each table's retention sweep runs on.
pub async fn ensure_schema(db: &Db, t: &Tables) -> sqlx::Result<()> {
    let statements = [
        format!(
            "CREATE TABLE IF NOT EXISTS {} (id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, email TEXT, phone TEXT, \
             name TEXT, created_at BIGINT NOT NULL, terminated_at BIGINT)",
            t.accounts
        ),
        format!("CREATE INDEX IF NOT EXISTS {0}_tenant_email ON {0} (tenant_id, email)", t.accounts),
        format!("CREATE INDEX IF NOT EXISTS {0}_tenant_phone ON {0} (tenant_id, phone)", t.accounts),
        format!("CREATE INDEX IF NOT EXISTS {0}_tenant_terminated ON {0} (tenant_id, terminated_at)", t.accounts),
        format!(
            "CREATE TABLE IF NOT EXISTS {} (id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, account_id TEXT, \
             caller_phone TEXT, agent_id TEXT, started_at BIGINT NOT NULL, duration_s BIGINT NOT NULL, outcome TEXT)",
            t.call_logs
        ),
        format!("CREATE INDEX IF NOT EXISTS {0}_tenant_phone ON {0} (tenant_id, caller_phone)", t.call_logs),
        format!("CREATE INDEX IF NOT EXISTS {0}_tenant_account ON {0} (tenant_id, account_id)", t.call_logs),
        format!("CREATE INDEX IF NOT EXISTS {0}_started ON {0} (started_at)", t.call_logs),
        format!("CREATE INDEX IF NOT EXISTS {0}_tenant_started ON {0} (tenant_id, started_at)", t.call_logs),
        format!(
            "CREATE TABLE IF NOT EXISTS {} (id TEXT PRIMARY KEY, call_id TEXT NOT NULL, tenant_id TEXT NOT NULL, \
             caller_phone TEXT, text TEXT, created_at BIGINT NOT NULL)",
            t.transcripts
        ),
        format!("CREATE INDEX IF NOT EXISTS {0}_tenant_phone ON {0} (tenant_id, caller_phone)", t.transcripts),
        format!("CREATE INDEX IF NOT EXISTS {0}_tenant_call ON {0} (tenant_id, call_id)", t.transcripts),
        format!("CREATE INDEX IF NOT EXISTS {0}_tenant_created ON {0} (tenant_id, created_at)", t.transcripts),
        format!(
            "CREATE TABLE IF NOT EXISTS {} (id TEXT PRIMARY KEY, call_id TEXT NOT NULL, tenant_id TEXT NOT NULL, \
             caller_phone TEXT, object_key TEXT NOT NULL, bytes BIGINT NOT NULL, created_at BIGINT NOT NULL)",
            t.recordings
        ),
        format!("CREATE INDEX IF NOT EXISTS {0}_tenant_phone ON {0} (tenant_id, caller_phone)", t.recordings),
        format!("CREATE INDEX IF NOT EXISTS {0}_tenant_call ON {0} (tenant_id, call_id)", t.recordings),
        format!("CREATE INDEX IF NOT EXISTS {0}_tenant_created ON {0} (tenant_id, created_at)", t.recordings),
        format!(
            "CREATE TABLE IF NOT EXISTS {} (id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, account_id TEXT, \
             caller_phone TEXT, amount_cents BIGINT NOT NULL, currency TEXT NOT NULL, created_at BIGINT NOT NULL, \
             restricted_at BIGINT)",
            t.billing
        ),
        format!("CREATE INDEX IF NOT EXISTS {0}_tenant_account ON {0} (tenant_id, account_id)", t.billing),
        format!("CREATE INDEX IF NOT EXISTS {0}_tenant_phone ON {0} (tenant_id, caller_phone)", t.billing),
        format!("CREATE INDEX IF NOT EXISTS {0}_tenant_created ON {0} (tenant_id, created_at)", t.billing),
    ];
    // The compared forms of identifiers (`resolve::normalize`): a person's email or phone, however
    // it was written, is one index lookup.
    let email = |c| crate::resolve::normalize::email_key(db.backend(), c);
    let phone = crate::resolve::normalize::phone_digits;
    let statements = statements.into_iter().chain([
        format!(
            "CREATE INDEX IF NOT EXISTS {0}_tenant_email_key ON {0} (tenant_id, ({1}))",
            t.accounts,
            email("email")
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS {0}_tenant_phone_digits ON {0} (tenant_id, ({1}))",
            t.accounts,
            phone("phone")
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS {0}_tenant_phone_digits ON {0} (tenant_id, ({1}))",
            t.call_logs,
            phone("caller_phone")
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS {0}_tenant_phone_digits ON {0} (tenant_id, ({1}))",
            t.transcripts,
            phone("caller_phone")
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS {0}_tenant_phone_digits ON {0} (tenant_id, ({1}))",
            t.recordings,
            phone("caller_phone")
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS {0}_tenant_phone_digits ON {0} (tenant_id, ({1}))",
            t.billing,
            phone("caller_phone")
        ),
    ]);
    let mut tx = db.begin_write().await?;
    for s in statements {
        sqlx::query(&s).execute(&mut *tx).await?;
    }
    tx.commit().await
}
